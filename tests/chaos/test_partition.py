"""Fault 3: the leader is cut from etcd by a silent network partition (iptables
DROP, both directions, on the etcd client port that only this node uses; see
cluster.py). Its replicas and clients can still reach it: only its lease stops
being renewed. It must stop acknowledging before the lease can expire, step
down, and a replica must take over; once healed it rejoins as a replica.

The sound fence bound: the leader's last successful renewal started before the
partition (t_cut), so it may acknowledge nothing sent after t_cut + TTL - margin.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.chaos.checker import Ledger, Report
from tests.chaos.cluster import (
    FENCE_MARGIN_S,
    LEASE_TTL_S,
    Firewall,
    ManagedCluster,
    PinnedWriter,
    WriteLoad,
    finish,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.slow  # starts etcd and a node cluster


@pytest.mark.timeout(300)
def test_leader_partitioned_from_etcd(make_cluster: Callable[..., ManagedCluster], ledger: Ledger,
                                      chaos_report: Report) -> None:
    Firewall.require()
    cluster = make_cluster("sync")
    load = WriteLoad(cluster, ledger).start()
    old = cluster.wait_healthy()
    load.wait_acks(20, since=time.monotonic(), node=old.name)
    old_term = old.status().term
    port = cluster.etcd.node_ports[cluster.nodes.index(old)]
    pinned = PinnedWriter(old, "pinned").start()
    wait_for(lambda: any(p.outcome == "ok" for p in pinned.requests), 10, "a pinned write acknowledged")

    t_fault = time.monotonic()
    rules = [cluster.firewall.drop("-p", "tcp", "--dport", str(port)),
             cluster.firewall.drop("-p", "tcp", "--sport", str(port))]
    t_cut = time.monotonic()  # no renewal can start after this and succeed
    try:
        first = load.first_ack(t_fault, exclude=[old])
        rto = first.acked - t_fault
        # It steps down while still cut off (its replicas and clients can still reach it).
        wait_for(lambda: old.status().role == "replica", 10, f"{old.name} to step down while partitioned")
        t_down = time.monotonic() - t_cut
        new = cluster.wait_leader(10, exclude=[old])
        still_cut = old.status()
    finally:
        for r in rules:
            cluster.firewall.remove(r)
    t_heal = time.monotonic()
    healed = cluster.wait_healthy(60)  # it rejoins, as a replica of the new leader
    rejoin_s = time.monotonic() - t_heal
    assert healed is new, f"leadership moved again after healing: {healed.name}, expected {new.name}"
    assert old.status().role == "replica" and old.status().term > old_term

    bound = t_cut + LEASE_TTL_S - FENCE_MARGIN_S
    late_load = [a for a in ledger.by(old.name) if a.sent >= bound]
    last_old = max((a.acked for a in ledger.by(old.name)), default=t_cut)
    pinned_results = pinned.stop()
    pinned.record(ledger)
    late_pinned = [p for p in pinned_results if p.outcome == "ok" and p.sent >= bound]
    res = finish(cluster, load, ledger)
    chaos_report.add("partition_leader_from_etcd", {
        "mode": "sync", "method": "iptables DROP on the node's own etcd client port, both directions",
        "rto_s": round(rto, 3), "old_leader": old.name, "old_term": old_term, "new_leader": new.name,
        "old_stepped_down_after_s": round(t_down, 3), "old_role_while_cut": still_cut.role,
        "last_load_ack_from_old_after_cut_s": round(last_old - t_cut, 3),
        "pinned_after_cut": pinned.outcomes(since=t_cut), "pinned_acks_past_fence_bound": len(late_pinned),
        "rejoin_after_heal_s": round(rejoin_s, 3), **res.summary(),
    })
    assert not late_pinned, f"{old.name} acknowledged writes sent after its lease could have expired: {late_pinned[:5]}"
    assert not late_load, f"{old.name} acknowledged load writes sent after its lease could have expired: {late_load[:5]}"
    res.assert_sound()
    res.assert_no_loss()
