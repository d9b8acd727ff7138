"""SIGKILL of a sync-mode leader while the replica OUTSIDE the sync set is ahead
of the sync member. Sync mode, three nodes, SUTRA_SYNC_REPLICAS=1.

Only a sync-set member may take over, so the other survivor, holding records
the winner lacks (written by the dead leader, never acknowledged), cuts them
when it follows the winner; and it is the only replica left, so the new
leader acknowledges nothing until that cut is done. A cut used to rebuild the
replica's state from its checkpoint and WAL (storage ``rewind_to``): the slow
failover seen once in a 60-kill run (3.75 s at kill 50, where the WAL held
~75K records). The cut records were appended and never applied (a sync
replica applies up to its leader's commit LSN), so the survivor now undoes
only their appending; the test asserts that from its log, pins the scenario
(the survivor really was ahead, the checker finds no acknowledged write lost)
and reports the failover time. SUTRA_CHAOS_AHEAD_PRELOAD (concepts written in
batches before the first round; default 0) shows whether that time still
grows with the data since the last checkpoint (none is taken in the chaos
suite; with a rebuild it did).

How the survivor is put ahead: the sync member is paused (SIGSTOP), so the
leader appends writes it cannot commit and streams them to the other replica;
once that replica has flushed past everything the member acknowledged, the
leader is killed and the member resumed. The stall rule that would replace a
paused member is set far off, so the member stays the member.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sutra_cluster.client import ClusterClient, Concept
from tests.chaos.checker import Ledger, Report, distribution
from tests.chaos.cluster import DIM, ChaosNode, ManagedCluster, PinnedWriter, WriteLoad, finish
from tests.helpers import wait_for

pytestmark = pytest.mark.slow  # starts etcd and a node cluster

ROUNDS = int(os.environ.get("SUTRA_CHAOS_AHEAD_ROUNDS", "2"))
PRELOAD = int(os.environ.get("SUTRA_CHAOS_AHEAD_PRELOAD", "0"))
RTO_GOAL_S = 3.0  # test_kill's p99 goal, as a bound on every round here
AHEAD = 20  # records the other replica must hold beyond what the member acknowledged


def _cuts(node: ChaosNode) -> set[Path]:
    """The files a cut leaves beside the WAL (``divergent-<term>-...``)."""
    return set(node.data_dir.glob("divergent-*"))


def _member_acked(lead: ChaosNode, member: ChaosNode) -> int:
    return max((r.flushed_lsn for r in lead.status().replicas if r.node_id == member.name), default=0)


@pytest.mark.timeout(600)
def test_sigkill_leader_while_the_replica_outside_the_sync_set_is_ahead(
        make_cluster: Callable[..., ManagedCluster], ledger: Ledger, chaos_report: Report,
        request: pytest.FixtureRequest) -> None:
    cluster = make_cluster("sync", env={"SUTRA_SYNC_REPLICAS": "1", "SUTRA_SYNC_STALL_MS": "600000"})
    if PRELOAD:
        with ClusterClient([cluster.etcd.endpoint], timeout=30, failover_deadline=30) as cc:
            for b in range(0, PRELOAD, 500):
                cc.learn_batch([Concept(f"pre-{b + i}", f"preloaded {b + i}", np.full(DIM, 0.5, dtype=np.float32))
                                for i in range(min(500, PRELOAD - b))])
    load = WriteLoad(cluster, ledger).start()
    request.addfinalizer(load.stop_event.set)  # a failing test leaves no writer running
    pinned: list[PinnedWriter] = []
    rounds: list[dict[str, object]] = []
    for r in range(ROUNDS):
        lead, member, other = cluster.steady_sync_roles(load)
        before = _cuts(other)
        member.pause()
        pin = PinnedWriter(lead, f"ahead{r}-", interval=0.01, timeout=10.0).start()
        pinned.append(pin)
        request.addfinalizer(pin.halt)  # a failing round leaves no writer sending
        acked = _member_acked(lead, member)
        wait_for(lambda: other.status().durable_lsn >= acked + AHEAD, 30,
                 f"{other.name} to flush {AHEAD} records past LSN {acked}, the paused member's last acknowledgement")
        pin.halt()
        ahead_at = other.status().durable_lsn
        t = time.monotonic()
        lead.kill()
        member.resume()
        first = load.first_ack(t, exclude=[lead], what=f"round {r}: the first write acknowledged after "
                                                         f"killing {lead.name}")
        rto = first.acked - t
        cut = sorted(p.name for p in _cuts(other) - before)
        # The cut records were appended, never applied (a sync replica applies up to its leader's
        # commit LSN): the survivor undid only their appending, without rebuilding its state.
        fast = other.log_text().count("none was applied, so the state stays as it was")
        rounds.append({"round": r, "killed": lead.name, "member": member.name, "other": other.name,
                       "member_acked": acked, "other_durable": ahead_at, "new_leader": first.node,
                       "rto_s": round(rto, 3), "other_cut": cut, "cuts_without_rebuild": fast})
        print(f"round {r}: killed {lead.name}; member {member.name} (acknowledged LSN {acked}), {other.name} ahead at "
              f"{ahead_at}; {first.node} acknowledged after {rto:.3f}s; {other.name} cut: {cut or 'nothing'}")
        lead.start(wait=False)
    for pin in pinned:
        pin.stop()
        pin.record(ledger)  # whatever the old leader acknowledged counts too (nothing, with its member paused)
    res = finish(cluster, load, ledger)
    rtos = [float(x["rto_s"]) for x in rounds]  # type: ignore[arg-type]
    chaos_report.add("sigkill_sync_survivor_ahead",
                     {"preload": PRELOAD, "rounds": rounds, "rto_s": distribution(rtos), **res.summary()})
    res.assert_sound()
    res.assert_no_loss()
    assert max(rtos) <= RTO_GOAL_S, f"RTO above {RTO_GOAL_S}s: {rounds}"
    assert all(x["other_cut"] and x["cuts_without_rebuild"] for x in rounds), f"a cut rebuilt: {rounds}"
