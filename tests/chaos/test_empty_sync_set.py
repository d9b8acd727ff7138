"""A sync-mode leader that dies while its published sync set is empty (it had just
taken over and no replica had joined yet, or every member had left) is replaced by
a replica that holds that leader's log up to the set's floor (decide._sync_holders).

Before, a set published empty named only its leader as holding every acknowledged
write, so the shard waited for that node to come back ("no member of the sync set
[] (nor its leader n0) is alive"), however far along its replicas were.

The state is the one such a leader leaves behind, made here without racing its
loop: both replicas are stopped (SIGSTOP), the leader is killed (SIGKILL), and the
test writes the /sync key a leader publishes when its set has no member, with the
floor it would carry (the highest LSN it acknowledged: the write load was stopped
and every node had applied the leader's last LSN). The HA loop's own tests show a
leader publishing exactly that (tests/test_ha_loop.py). Then the replicas resume:
their real logs end in that leader's term at the floor, so one of them takes over,
and the checker finds every acknowledged write on every node.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from sutra_cluster.failover.coordinator import SyncState
from tests.chaos.checker import Ledger, Report
from tests.chaos.cluster import PREFIX, ManagedCluster, WriteLoad, finish

pytestmark = pytest.mark.slow  # starts etcd and a node cluster


@pytest.mark.timeout(300)
def test_leader_dead_with_an_empty_sync_set_is_replaced(make_cluster: Callable[..., ManagedCluster],
                                                        ledger: Ledger, chaos_report: Report) -> None:
    cluster = make_cluster("sync")
    load = WriteLoad(cluster, ledger).start()
    lead = cluster.wait_healthy()
    load.wait_acks(30, since=time.monotonic(), node=lead.name)
    load.stop()
    floor = cluster.wait_caught_up()
    term = lead.status().term
    replicas = cluster.others(lead)
    assert all(r.status().durable_lsn >= floor for r in replicas)
    for r in replicas:
        r.pause()
    try:
        lead.kill()
        cluster.coord.client.put(PREFIX + "sync", SyncState(lead.name, term, (), floor).encode())
    finally:
        for r in replicas:
            r.resume()
    t_resume = time.monotonic()
    new = cluster.wait_leader(30, exclude=[lead])
    took = time.monotonic() - t_resume
    assert new.status().term > term
    lead.start(wait=False)  # the old leader rejoins as a replica of the new one
    lead.wait_ready(60)
    res = finish(cluster, None, ledger)
    chaos_report.add("empty_sync_set_leader_dead", {
        "mode": "sync", "old_leader": lead.name, "term": term, "floor": floor, "new_leader": new.name,
        "leader_after_resume_s": round(took, 3), **res.summary(),
    })
    assert res.acks >= 30
    res.assert_sound()
    res.assert_no_loss()
