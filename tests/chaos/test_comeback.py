"""A killed leader comes back and is made leader again (switchover): clients
that were writing to it when it died must follow it at once.

During a failover the load's clients hit the dead leader's port (refused), so
their connection to that address goes into gRPC's reconnect backoff (1 s, then
x1.6 per failure, up to 2 minutes). When the node is back and leads again, a
client that keeps that connection answers UNAVAILABLE without dialling until
the backoff runs out: the RTO the client sees is then set by the backoff, not
by failover. This test makes the node stay down long enough (the fault) for
that backoff to have grown past several seconds, then hands leadership back to
it, and asserts clients reach it well inside that backoff: a client that waited
the backoff out fails, however loaded the machine. How fast the switchover is
is a benchmark's question (the chaos report keeps the figure), not this test's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from sutra_cluster import admin
from tests.chaos.checker import Ledger, Report
from tests.chaos.cluster import ManagedCluster, WriteLoad, finish

pytestmark = pytest.mark.slow  # starts etcd and a node cluster

DOWN_S = 10.0  # how long the killed leader stays down (the fault)
# gRPC's reconnect backoff after DOWN_S of refused dials: 1 + 1.6 + 2.56 + 4.1 s have passed, so the
# connection waits at least 4.1 s x 0.8 (its jitter) = 3.3 s before it dials again. A client that
# reaches the returned leader sooner than this did not wait it out.
BACKOFF_FLOOR_S = 3.0


@pytest.mark.timeout(300)
def test_clients_follow_a_leader_that_comes_back(make_cluster: Callable[..., ManagedCluster], ledger: Ledger,
                                                 chaos_report: Report) -> None:
    cluster = make_cluster("sync")
    load = WriteLoad(cluster, ledger).start()
    old = cluster.wait_healthy()
    load.wait_acks(20, since=time.monotonic(), node=old.name)
    t_kill = time.monotonic()
    old.kill()
    first = load.first_ack(t_kill, exclude=[old])
    rto = first.acked - t_kill
    time.sleep(max(0.0, t_kill + DOWN_S - time.monotonic()))
    old.start()
    cluster.wait_healthy(30)
    load.wait_acks(20, since=time.monotonic())

    t = time.monotonic()
    target, secs = admin.switchover([cluster.etcd.endpoint], "sutra", 0, target=old.name)
    back = load.first_ack(t, exclude=[n for n in cluster.nodes if n is not old],
                          what=f"the first write acknowledged by {old.name} after it leads again")
    seen = back.acked - t
    trace = load.traces.get(back.rid, [])
    res = finish(cluster, load, ledger)
    chaos_report.add("comeback_leader", {
        "mode": "sync", "node": old.name, "down_s": DOWN_S, "rto_after_kill_s": round(rto, 3),
        "switchover_s": round(secs, 3), "first_ack_on_returned_leader_s": round(seen, 3),
        "first_ack_attempts": {"attempts": len(trace) or 1, "first": trace[:2], "last": trace[-2:]},
        **res.summary(),
    })
    res.assert_sound()
    res.assert_no_loss()
    assert target == old.name
    assert seen < BACKOFF_FLOOR_S, (
        f"clients took {seen:.3f}s, as long as gRPC's reconnect backoff, to write to {old.name} after it "
        f"became leader again (switchover itself {secs:.3f}s); the successful client's attempts: {trace[:3]} ... {trace[-3:]}")
