"""Fault 1: the leader is killed with SIGKILL during a write load, over and over
on one cluster: kill, measure the RTO a client sees, restart the killed node
(it rejoins as a replica, cutting any unacknowledged tail), kill the next leader.

SUTRA_CHAOS_KILLS sets the number of kills in sync mode (at least 20 in CI)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from tests.chaos.checker import Ledger, Report, distribution
from tests.chaos.cluster import ManagedCluster, WriteLoad, finish

pytestmark = pytest.mark.slow  # starts etcd and a node cluster

KILLS = int(os.environ.get("SUTRA_CHAOS_KILLS", "20"))
ASYNC_KILLS = 5
RTO_P99_GOAL_S = 3.0
ROUND_BUDGET_S = 25.0  # a round (heal, kill, fail over) that takes longer fails the test


def _summary(trace: list[tuple[float, str, str]]) -> dict[str, object]:
    """What the client that got the first acknowledgement went through (times from cluster start)."""
    if not trace:
        return {"attempts": 1}
    return {"attempts": len(trace), "first": trace[:2], "last": trace[-2:]}


def kill_rounds(cluster: ManagedCluster, load: WriteLoad, ledger: Ledger, rounds: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    deadline = time.monotonic() + rounds * ROUND_BUDGET_S
    for r in range(rounds):
        assert time.monotonic() < deadline, f"only {r} of {rounds} kills fitted in {rounds * ROUND_BUDGET_S:.0f}s"
        lead = cluster.wait_healthy(60)  # every node up, replicas streaming, (sync) a sync set
        load.wait_acks(10, since=time.monotonic(), node=lead.name)  # the load flows through this leader
        term = lead.status().term
        t, wall = time.monotonic(), time.time()
        lead.kill()
        first = load.first_ack(t, exclude=[lead], what=f"round {r}: the first write acknowledged after "
                                                         f"killing {lead.name}")
        rto = first.acked - t
        out.append({"round": r, "killed": lead.name, "term": term, "new_leader": first.node, "killed_at": wall,
                    "rto_s": round(rto, 3), "first_ack_attempts": _summary(load.traces.get(first.rid, []))})
        # The wall-clock time of the kill, to find the round in the nodes' logs (time-stamped).
        print(f"kill {r}: {lead.name} (term {term}) killed at {time.strftime('%H:%M:%S', time.localtime(wall))}"
              f".{int(wall % 1 * 1000):03d}, {first.node} acknowledged after {rto:.3f}s")
        lead.start(wait=False)  # rejoins as a replica; the next round waits until it streams
    return out


@pytest.mark.timeout(int(max(900, KILLS * ROUND_BUDGET_S + 300)))
def test_sigkill_leader_sync(make_cluster: Callable[..., ManagedCluster], ledger: Ledger,
                             chaos_report: Report) -> None:
    assert KILLS >= 1
    cluster = make_cluster("sync")
    load = WriteLoad(cluster, ledger).start()
    rounds = kill_rounds(cluster, load, ledger, KILLS)
    res = finish(cluster, load, ledger)
    rtos = [float(r["rto_s"]) for r in rounds]  # type: ignore[arg-type]
    dist = distribution(rtos)
    chaos_report.add("sigkill_sync", {
        "mode": "sync", "kills": len(rounds), "rto_s": dist, "rto_raw_s": rtos, "rounds": rounds,
        "unacknowledged_attempts": len(ledger.failures), **res.summary(),
    })
    print(f"SIGKILL RTO over {len(rtos)} kills: min {dist['min']}s p50 {dist['p50']}s "
          f"p99 {dist['p99']}s max {dist['max']}s")
    res.assert_sound()
    res.assert_no_loss()
    assert dist["p99"] <= RTO_P99_GOAL_S, f"p99 RTO {dist['p99']}s is above {RTO_P99_GOAL_S}s: {rtos}"


@pytest.mark.timeout(600)
def test_sigkill_leader_async_counts_loss(make_cluster: Callable[..., ManagedCluster], ledger: Ledger,
                                          chaos_report: Report) -> None:
    cluster = make_cluster("async")
    load = WriteLoad(cluster, ledger).start()
    rounds = kill_rounds(cluster, load, ledger, ASYNC_KILLS)
    res = finish(cluster, load, ledger)
    rtos = [float(r["rto_s"]) for r in rounds]  # type: ignore[arg-type]
    chaos_report.add("sigkill_async", {
        "mode": "async", "kills": len(rounds), "rto_s": distribution(rtos), "rto_raw_s": rtos,
        "rounds": rounds, "loss_rate": round(len(res.lost) / max(1, res.acks), 6), **res.summary(),
    })
    print(f"async: {len(res.lost)} of {res.acks} acknowledged writes lost over {len(rounds)} kills")
    # Async mode may lose the last few acknowledged writes of a killed leader; it
    # must still never have two leaders acknowledge at once. (Async is the default
    # commit mode, so the RTO goal holds here too.)
    res.assert_sound()
    assert max(rtos) <= RTO_P99_GOAL_S, f"RTO above {RTO_P99_GOAL_S}s: {rounds}"
    lost_nodes = set(res.lost_by_node)
    killed = {str(r["killed"]) for r in rounds}
    assert lost_nodes <= killed, f"writes lost from nodes that were never killed: {lost_nodes - killed}"
