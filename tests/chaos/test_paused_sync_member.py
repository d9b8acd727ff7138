"""Liveness: the sync member is paused (SIGSTOP) while another replica is
caught up (issue 10). Sync mode, three nodes, SUTRA_SYNC_REPLICAS=1.

With more replicas than SUTRA_SYNC_REPLICAS, a sync member that stops
acknowledging must be replaced by a caught-up replica, so that sync writes
resume within a bound (goal 1 s), never by admitting a replica that lacks an
acknowledged write. The pause is long (SUTRA_CHAOS_SYNC_PAUSE_S, default 6 s)
and the stall bound loose (SUTRA_CHAOS_STALL_BOUND_S, default 3 s: a loaded
2-core machine) but well inside the pause, so a cluster that stalls for the
whole pause fails it.

The stall a client sees: from SIGSTOP to the first acknowledgement of a write
sent after it (an answer already on its way at SIGSTOP does not count). After
SIGCONT the old member catches up, the leader is killed (a later failover:
whoever the sync set names then must hold every acknowledged write), and the
checker asserts 0 acknowledged writes lost.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from tests.chaos.checker import Ledger, Report, fault_window, loss_by_window
from tests.chaos.cluster import ManagedCluster, WriteLoad, finish
from tests.helpers import wait_for

pytestmark = pytest.mark.slow  # starts etcd and a node cluster

PAUSE_S = float(os.environ.get("SUTRA_CHAOS_SYNC_PAUSE_S", "6"))
STALL_BOUND_S = float(os.environ.get("SUTRA_CHAOS_STALL_BOUND_S", "3"))
GOAL_S = 1.0  # the goal; reported, the assertion uses the looser bound above


@pytest.mark.timeout(300)
def test_paused_sync_member_is_replaced(make_cluster: Callable[..., ManagedCluster], ledger: Ledger,
                                        chaos_report: Report, request: pytest.FixtureRequest) -> None:
    assert STALL_BOUND_S < PAUSE_S - 1.0, "the stall bound must end well before the pause does"
    cluster = make_cluster("sync", env={"SUTRA_SYNC_REPLICAS": "1"})
    load = WriteLoad(cluster, ledger).start()
    request.addfinalizer(load.stop_event.set)  # a failing test leaves no writer running
    lead = cluster.wait_healthy()
    load.wait_acks(20, since=time.monotonic(), node=lead.name)
    snap = cluster.snapshot()
    assert snap.sync is not None and len(snap.sync.members) == 1, f"expected one sync member: {snap.sync}"
    member = cluster.node(snap.sync.members[0])
    spare = next(n for n in cluster.others(lead) if n is not member)
    # The spare is caught up: it has flushed what the leader had made durable a moment ago.
    target = lead.status().durable_lsn
    wait_for(lambda: spare.status().durable_lsn >= target, 15, f"{spare.name} to flush LSN {target}")
    term = lead.status().term
    first_leader = lead.name

    t_fault = time.monotonic()
    member.pause()
    sync_moved: dict[str, float | tuple[str, ...]] = {}
    try:
        # The fault lasts PAUSE_S (bounded); meanwhile note when the published sync set changes.
        while time.monotonic() < t_fault + PAUSE_S:
            s = cluster.snapshot().sync
            if "at_s" not in sync_moved and s is not None and s.members != (member.name,):
                sync_moved.update(at_s=round(time.monotonic() - t_fault, 3), members=s.members, term=s.term)
            time.sleep(0.05)
    finally:
        t_cont = time.monotonic()
        member.resume()
    first = load.first_ack(t_fault, what="a write acknowledged after the sync member was paused")
    fresh = wait_for(lambda: next((a for a in ledger.after(t_fault) if a.sent >= t_fault), None), 30,
                     "the first acknowledgement of a write sent after SIGSTOP")
    assert fresh is not None
    stall = fresh.acked - t_fault
    pause_fig = fault_window(ledger.all(), t_fault, sent_after=True, t0=cluster.t0)
    fails_during = [f for f in ledger.failures if t_fault <= f.sent < t_cont]
    print(f"sync member {member.name} paused {t_cont - t_fault:.1f}s: writes sent after SIGSTOP were first "
          f"acknowledged after {stall:.3f}s (by {fresh.node}); sync set moved: {sync_moved or 'never'}")

    # A later failover: whoever is in the sync set now must hold every acknowledged write.
    lead = cluster.wait_healthy(60)
    load.wait_acks(20, since=time.monotonic(), node=lead.name)
    sync_before_kill = cluster.snapshot().sync
    t_kill = time.monotonic()
    lead.kill()
    after_kill = load.first_ack(t_kill, exclude=[lead], what=f"a write acknowledged after killing {lead.name}")
    lead.start(wait=False)
    kill_fig = fault_window(ledger.all(), t_kill, exclude=[lead.name], t0=cluster.t0)
    res = finish(cluster, load, ledger)
    lost = loss_by_window(res.lost_acks, [t_fault, t_kill])
    chaos_report.add("paused_sync_member", {
        "mode": "sync", "sync_replicas": 1, "leader": first_leader, "term": term, "paused_member": member.name,
        "spare": spare.name, "pause_s": round(t_cont - t_fault, 3), "stall_s": round(stall, 3),
        "stall_bound_s": STALL_BOUND_S, "goal_s": GOAL_S, "first_ack_after_pause_any_s": round(first.acked - t_fault, 3),
        "sync_set_moved": sync_moved or None, "unacknowledged_attempts_during_pause": len(fails_during),
        "faults": [
            {"fault": f"SIGSTOP sync member {member.name} for {PAUSE_S:.0f}s", **pause_fig, "lost": lost[0]},
            {"fault": f"SIGKILL leader {lead.name} (sync set {sync_before_kill.members if sync_before_kill else None})",
             "new_leader": after_kill.node, **kill_fig, "lost": lost[1]},
        ],
        **res.summary(),
    })
    res.assert_sound()
    res.assert_no_loss()
    assert stall <= STALL_BOUND_S, (
        f"sync writes stalled {stall:.3f}s while {member.name} was paused ({PAUSE_S:.0f}s) although "
        f"{spare.name} was caught up (bound {STALL_BOUND_S}s, goal {GOAL_S}s); sync set moved: {sync_moved or 'never'}")
