"""SIGKILL of a sync-mode leader whose machine loses a tail its replicas hold.

A managed leader streams a group of records to its replicas once the group is
in its log file, while its own fsync runs (``LeaderStreams.unflushed``), so the
replicas' receive, append and fsync overlap it. If the leader's machine dies in
that window, the replicas hold records the leader's disk never kept.

The test makes that window last: the leader's fsync is held
(``SUTRA_FAULT_FSYNC_GATE``) until a replica has flushed the held group. Then
the leader is SIGKILLed and its log file cut back to where its last fsync ended,
which is what losing the page cache with the machine does, and it is restarted.

It must acknowledge none of the held writes, fail over, take the old leader
back as a replica, and end with every node holding the same record at every
LSN they share (log matching, checked record by record from their files), the
same digest, and no acknowledged write lost.

In the second case iptables drops what the leader sends the sync-set member,
so only the other replica receives the held group (pausing the member would
not do: the records would wait in its socket and arrive on SIGCONT). The
member, which lacks the group, must then be the one to take over, and the
replica holding it must cut it (into a ``divergent-*`` file) when it follows:
the lost tail is told apart by its term. The rule stays until the member has
acknowledged a write as leader, so no retransmission of the dead leader's
socket reaches it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sutra_cluster.storage.wal import FSYNC_GATE
from tests.chaos.checker import Ledger, LogRecord, Report
from tests.chaos.cluster import ChaosNode, Firewall, ManagedCluster, PinnedWriter, WriteLoad, finish
from tests.helpers import wait_for

pytestmark = pytest.mark.slow  # starts etcd and a node cluster


def _stream_end(node: ChaosNode, port: int) -> tuple[str, int]:
    """(address, port) of ``node``'s established TCP connection to ``port``: its
    replication stream to the leader listening there (from /proc, by socket inode)."""
    assert node.proc is not None
    fds = Path(f"/proc/{node.proc.pid}/fd")
    inodes = set()
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    # grpcio's sockets are IPv6 ones with IPv4-mapped addresses: the IPv4 address is the
    # last 32-bit word, in host byte order, as in the IPv4 table.
    lines = [ln for t in ("tcp", "tcp6") for ln in Path(f"/proc/{node.proc.pid}/net/{t}").read_text().splitlines()[1:]]
    for line in lines:
        cols = line.split()
        local, remote, state, inode = cols[1], cols[2], cols[3], cols[9]
        if state == "01" and inode in inodes and int(remote.split(":")[1], 16) == port:
            ip_hex, port_hex = local.split(":")
            found.append((".".join(str(b) for b in reversed(bytes.fromhex(ip_hex[-8:]))), int(port_hex, 16)))
    assert len(found) == 1, f"{node.name}'s connections to port {port}: {found}"
    return found[0]


def _mismatches(logs: dict[str, dict[int, LogRecord]]) -> list[str]:
    """LSNs at which two nodes' logs hold different records."""
    out = []
    names = sorted(logs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for lsn in sorted(logs[a].keys() & logs[b].keys()):
                if logs[a][lsn] != logs[b][lsn]:
                    out.append(f"LSN {lsn}: {a} has {logs[a][lsn]}, {b} has {logs[b][lsn]}")
    return out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("member_cut_off", [False, True], ids=["replicas-hold-it", "only-the-non-member-holds-it"])
def test_leader_machine_loses_a_tail_its_replicas_hold(
        make_cluster: Callable[..., ManagedCluster], ledger: Ledger, chaos_report: Report,
        request: pytest.FixtureRequest, member_cut_off: bool) -> None:
    if member_cut_off:
        Firewall.require()
    # A member cut off stays the member (the stall rule would replace it): it must take over.
    cluster = make_cluster("sync", env={"SUTRA_SYNC_REPLICAS": "1", "SUTRA_FAULT_FSYNC_GATE": "1",
                                        "SUTRA_SYNC_STALL_MS": "600000"})
    load = WriteLoad(cluster, ledger).start()
    request.addfinalizer(load.stop_event.set)  # a failing test leaves no writer running
    lead, member, other = cluster.steady_sync_roles(load)
    cuts_before = set(other.data_dir.glob("divergent-*"))
    rule: list[str] = []
    if member_cut_off:  # every packet of the leader's stream to the member (the stack's cleanup deletes the rule)
        ip, port = _stream_end(member, lead.port)
        rule = cluster.firewall.drop("-p", "tcp", "-s", lead.host, "--sport", str(lead.port), "-d", ip,
                                     "--dport", str(port))

    gate = lead.data_dir / FSYNC_GATE
    where = lead.data_dir / (FSYNC_GATE + ".json")
    gate.touch()
    request.addfinalizer(lambda: gate.unlink(missing_ok=True))
    pin = PinnedWriter(lead, "held", interval=0.01, timeout=10.0).start()
    request.addfinalizer(pin.halt)
    wait_for(where.exists, 30, f"{lead.name} to hold a written group before its fsync")
    held = json.loads(where.read_text())
    first, last = int(held["first_lsn"]), int(held["last_lsn"])
    assert lead.status().durable_lsn == first - 1, "the held group is the first one not durable on the leader"
    others = [other] if member_cut_off else cluster.others(lead)
    wait_for(lambda: max(n.status().durable_lsn for n in others) >= last, 30,
             f"a replica to flush LSNs {first}..{last}, held before {lead.name}'s fsync")
    holders = sorted(n.name for n in others if n.status().durable_lsn >= last)
    pin.halt()

    t = time.monotonic()
    lead.kill()
    log_file = Path(held["path"])
    size = log_file.stat().st_size
    assert size > int(held["durable_size"]), "the held group was written to the leader's log file"
    os.truncate(log_file, int(held["durable_size"]))  # the page cache, lost with the machine
    gate.unlink()
    new = load.first_ack(t, exclude=[lead], what=f"the first write acknowledged after {lead.name}'s machine died")
    rto = new.acked - t
    if rule:
        cluster.firewall.remove(rule)
    lead.start(wait=False)

    pin.stop()
    pin.record(ledger)
    acked_held = [p.cid for p in pin.requests if p.outcome == "ok"]
    res = finish(cluster, load, ledger)
    logs, _ = cluster.read_logs()
    mismatches = _mismatches(logs)
    kept = sorted(name for name, log in logs.items() if last in log and log[last].term == logs[new.node][last].term) \
        if last in logs[new.node] else []
    cut = sorted(p.name for p in set(other.data_dir.glob("divergent-*")) - cuts_before)
    chaos_report.add(f"sigkill_leader_lost_streamed_tail{'_member_cut_off' if member_cut_off else ''}", {
        "held_lsns": [first, last], "cut_bytes": size - int(held["durable_size"]), "holders": holders,
        "new_leader": new.node, "rto_s": round(rto, 3), "held_writes_acknowledged": len(acked_held),
        "nodes_holding_the_held_group_at_the_end": kept, "cut_by_" + other.name: cut, **res.summary()})
    print(f"held LSNs {first}..{last} on {lead.name}; flushed by {holders}; {lead.name} killed and its log cut "
          f"by {size - int(held['durable_size'])} bytes; {new.node} acknowledged after {rto:.3f}s; at the end "
          f"{kept or 'no node'} hold LSN {last} as the new leader does; {other.name} cut {cut or 'nothing'}")
    assert not acked_held, f"writes acknowledged although the leader never made them durable: {acked_held}"
    res.assert_sound()
    res.assert_no_loss()
    assert not mismatches, "\n".join(mismatches[:10])
    # The old leader came back without the held group and took the cluster's history as it is.
    assert lead.name in logs and max(logs[lead.name]) >= last
    if member_cut_off:
        # Only the non-member had the held group: the member took over without it, and the
        # holder cut the lost tail when it followed (its term is the dead leader's).
        assert holders == [other.name], holders
        assert new.node == member.name, f"{new.node} took over, not the sync member {member.name}"
        assert cut, f"{other.name} held LSNs {first}..{last} the new leader lacks, and cut nothing"
