"""Safety: a live leader whose advertised address refuses connections (issue 10,
Defect 2), in async and in sync mode.

The leader L is cut from etcd (iptables DROP on its own etcd client port, both
directions; see cluster.py), and every TCP segment to L's advertised address
(127.0.0.1x:port) is answered with a reset (iptables REJECT --reject-with
tcp-reset), as a firewall, a port-forward or a proxy in front of a live process
would. L itself stays alive and keeps its listening socket, and a pinned client
keeps writing to it through 127.0.0.1 (its other path), as a client that never
noticed a failover would. The load's ClusterClients follow etcd.

A refused connection is a signal, not a proof of death: at no instant may two
nodes acknowledge writes for the shard. The checker's ordering check is the
assertion: an acknowledgement by L (its term, read from its own log) of a write
SENT after a newer term's first acknowledgement had ARRIVED is proven overlap.
Besides, L may acknowledge nothing sent after its fence bound (its last renewal
started before the cut, so: cut + TTL - margin). In sync mode 0 acknowledged
writes are lost; in async mode the loss is counted and reported.

Every rule carries the run's own comment (``sutra-chaos-<pid>``) and is deleted
in a ``finally``; rules left by a run that died are swept at the next start.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.chaos.checker import Ledger, Report, fault_window
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
@pytest.mark.parametrize("mode", ["async", "sync"])
def test_refused_but_alive_leader(mode: str, make_cluster: Callable[..., ManagedCluster], ledger: Ledger,
                                  chaos_report: Report, request: pytest.FixtureRequest) -> None:
    Firewall.require()  # a missing or powerless iptables fails the test, in CI and everywhere
    cluster = make_cluster(mode)
    load = WriteLoad(cluster, ledger).start()
    old = cluster.wait_healthy()
    load.wait_acks(20, since=time.monotonic(), node=old.name)
    old_term = old.status().term
    etcd_port = cluster.etcd.node_ports[cluster.nodes.index(old)]
    # Every 10 ms, through 127.0.0.1: the path the REJECT rule leaves open.
    pinned = PinnedWriter(old, f"pinned-{mode}", interval=0.01).start()
    request.addfinalizer(pinned.halt)  # a failing test leaves no writer running
    request.addfinalizer(load.stop_event.set)
    wait_for(lambda: any(p.outcome == "ok" for p in pinned.requests), 10, "a pinned write acknowledged")

    rules: list[list[str]] = []
    t_fault = time.monotonic()
    try:
        rules.append(cluster.firewall.drop("-p", "tcp", "--dport", str(etcd_port)))
        rules.append(cluster.firewall.drop("-p", "tcp", "--sport", str(etcd_port)))
        t_cut = time.monotonic()  # no renewal can start after this and succeed
        rules.append(cluster.firewall.reject("-p", "tcp", "-d", old.host, "--dport", str(old.port)))
        t_refuse = time.monotonic()
        first = load.first_ack(t_fault, exclude=[old], what=f"a write acknowledged by a node other than {old.name}")
        # L steps down by itself, still cut off and refused (the test reaches it through 127.0.0.1).
        wait_for(lambda: old.status().role == "replica", 15, f"{old.name} to step down while cut off")
        t_down = time.monotonic()
        new = cluster.wait_leader(15, exclude=[old])
        old_log = old.log_text()
    finally:
        for r in rules:
            cluster.firewall.remove(r)
    t_heal = time.monotonic()
    healed = cluster.wait_healthy(60)
    rejoin_s = time.monotonic() - t_heal

    pinned_results = pinned.stop()
    pinned.record(ledger)
    acks = ledger.all()
    bound = t_cut + LEASE_TTL_S - FENCE_MARGIN_S
    past_fence = [a for a in ledger.by(old.name) if a.sent >= bound]
    old_acks = ledger.by(old.name)
    last_old = max((a.acked for a in old_acks), default=t_cut)
    # The overlap as a client sees it, against the new leader's first acknowledgement.
    proven = [a for a in old_acks if a.sent > first.acked]
    possible = [a for a in old_acks if a.acked > first.sent]
    fig = fault_window(acks, t_fault, exclude=[old.name], t0=cluster.t0)
    res = finish(cluster, load, ledger)
    lost_old = len([a for a in res.lost_acks if a.node == old.name])
    chaos_report.add(f"refused_alive_leader_{mode}", {
        "mode": mode, "method": "iptables DROP on the leader's etcd client port (both directions) and REJECT "
                                "--reject-with tcp-reset on its advertised address; pinned writes via 127.0.0.1",
        "old_leader": old.name, "old_term": old_term, "new_leader": new.name, "first_new_ack_node": first.node,
        "new_leader_first_ack_after_cut_s": round(first.acked - t_cut, 3),
        "old_last_ack_after_cut_s": round(last_old - t_cut, 3),
        "old_stepped_down_after_cut_s": round(t_down - t_cut, 3),
        "refuse_rule_after_cut_s": round(t_refuse - t_cut, 3),
        "old_acks_sent_after_new_first_ack": len(proven), "old_acks_answered_after_new_first_sent": len(possible),
        "old_acks_past_fence_bound": len(past_fence), "old_logged_refused_revoke": "refuses connections" in old_log,
        "pinned_after_cut": pinned.outcomes(since=t_cut), "pinned_sent": len(pinned_results),
        "rejoin_after_heal_s": round(rejoin_s, 3), "healed_leader": healed.name,
        "faults": [{"fault": f"{old.name} cut from etcd and refused, alive", **fig, "lost": len(res.lost),
                    "lost_acked_by_old_leader": lost_old}],
        **res.summary(),
    })
    print(f"{mode}: {new.name} acknowledged {first.acked - t_cut:.3f}s after the cut; {old.name} acknowledged "
          f"until +{last_old - t_cut:.3f}s: {len(proven)} of its acknowledgements were of writes sent after the "
          f"new leader's first ack; {len(res.lost)} acknowledged writes lost")
    assert not past_fence, f"{old.name} acknowledged writes sent past its fence bound: {past_fence[:5]}"
    assert not proven, (f"two nodes acknowledged at once: {old.name} (term {old_term}) acknowledged {len(proven)} "
                        f"writes sent after {first.node} had acknowledged {first.rid} at "
                        f"+{first.acked - cluster.t0:.3f}s; first: {proven[:3]}")
    res.assert_sound()
    if mode == "sync":
        res.assert_no_loss()
