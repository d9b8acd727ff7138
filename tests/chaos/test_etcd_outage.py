"""Fault 4: etcd itself is killed (SIGKILL) during a write load and restarted.

While etcd is gone no node can prove it leads: the leader stops acknowledging
once its lease could have expired, and demotes; writes pause (refused, never
acknowledged); replicas keep serving reads. Once etcd is back a leader is
elected again, writes resume, and no acknowledged write is lost (sync).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest

from sutra_cluster.failover.etcd import etcd_answers
from tests.chaos.checker import Ledger, Report
from tests.chaos.cluster import (
    FENCE_MARGIN_S,
    LEASE_TTL_S,
    ManagedCluster,
    WriteLoad,
    content_of,
    finish,
    vector,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.slow  # starts etcd and a node cluster

OUTAGE_S = LEASE_TTL_S + 1.5  # longer than a lease TTL: writes must stay paused for all of it


@pytest.mark.timeout(300)
def test_etcd_killed_and_restarted(make_cluster: Callable[..., ManagedCluster], ledger: Ledger,
                                   chaos_report: Report) -> None:
    cluster = make_cluster("sync")
    load = WriteLoad(cluster, ledger, failover_deadline=60.0).start()
    old = cluster.wait_healthy()
    load.wait_acks(20, since=time.monotonic(), node=old.name)
    cluster.wait_caught_up()
    probe = ledger.all()[-1]  # acknowledged before the outage, on every node

    t_kill = time.monotonic()
    cluster.etcd.kill()  # SIGKILL and reap: etcd is gone when this returns
    t_dead = time.monotonic()  # every lease renewal that succeeded started before this
    # The leader demotes once it can no longer prove it leads.
    wait_for(lambda: old.status().role == "replica", LEASE_TTL_S + 5, f"{old.name} to demote without etcd")
    demoted_s = time.monotonic() - t_kill
    roles = {n.name: n.status().role for n in cluster.nodes}
    assert set(roles.values()) == {"replica"}, f"a node leads with etcd down: {roles}"

    # Writes pause: every node refuses them (none is acknowledged).
    refusals = {}
    for n in cluster.nodes:
        cid = f"outage-{n.name}"
        with n.client(timeout=5) as c, pytest.raises(grpc.RpcError) as exc:
            c.learn_concept(cid, content_of(cid), vector(1), request_id=f"rid-{cid}")
        refusals[n.name] = exc.value.code().name  # type: ignore[attr-defined]
        assert exc.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION), refusals

    # Reads from replicas go on.
    reads = {}
    for n in cluster.others(old):
        r = n.query(probe.cid)
        assert r.found and r.content == content_of(probe.cid), f"{n.name} does not serve {probe.cid} during the outage"
        reads[n.name] = "found"
    try:
        old.query(probe.cid)
        reads[old.name] = "found"
    except grpc.RpcError as e:  # a demoted leader serves no reads until its history is checked again
        reads[old.name] = e.code().name  # type: ignore[attr-defined]
    # The fault itself: etcd stays down OUTAGE_S in all (bounded); nothing may be acknowledged past the
    # fence bound (the last renewal started before the kill).
    time.sleep(max(0.0, t_kill + OUTAGE_S - time.monotonic()))
    acks_during = [a for a in ledger.after(t_kill) if a.sent >= t_dead + LEASE_TTL_S - FENCE_MARGIN_S]
    assert not acks_during, f"writes acknowledged with etcd down, past the fence bound: {acks_during[:5]}"

    t_restart = time.monotonic()
    outage_s = t_restart - t_kill
    cluster.etcd.start()
    host, _, port = cluster.etcd.endpoint.rpartition(":")
    wait_for(lambda: etcd_answers(host, int(port), timeout=0.2), 30, "etcd to answer after its restart")
    t_answers = time.monotonic()
    first = load.first_ack(t_restart, what="a write acknowledged after etcd returned")
    resume_s = first.acked - t_restart
    # Issue 10's goal counts from the moment etcd answers again (its own start-up is not ours).
    after_answer_s = first.acked - t_answers
    cluster.wait_healthy(30)
    last_before = max((a.acked for a in ledger.acks if a.acked < t_restart), default=t_kill)
    res = finish(cluster, load, ledger)
    chaos_report.add("etcd_killed_and_restarted", {
        "mode": "sync", "old_leader": old.name, "demoted_after_s": round(demoted_s, 3),
        "etcd_down_s": round(outage_s, 3), "last_ack_after_kill_s": round(last_before - t_kill, 3),
        "direct_write_refusals": refusals, "replica_reads_during_outage": reads,
        "writes_resumed_after_restart_s": round(resume_s, 3), "etcd_answered_after_restart_s":
            round(t_answers - t_restart, 3), "writes_resumed_after_etcd_answered_s": round(after_answer_s, 3),
        "new_leader": first.node,
        "rto_s": round(first.acked - t_kill, 3), **res.summary(),
    })
    res.assert_sound()
    res.assert_no_loss()
