"""Fault 5: the old leader rejoins with a divergent tail (async mode).

The leader is made to acknowledge writes its replicas never receive: iptables
drops every packet it sends from its advertised address's port, which carries
its replication streams, while the test writes to it through 127.0.0.1 (see
cluster.py). (Pausing the replicas would not do: the records would wait in
their sockets and arrive on SIGCONT.) Then it is killed, the rule deleted, a
replica takes over and takes new writes, and the old leader is restarted.

It must find where its history left the new leader's, cut its divergent tail
into a ``divergent-*.wal`` file and log it, never serve the divergent writes
(while rejoining its reads answer UNAVAILABLE or not found, never the data),
and end with the same digest as the new leader.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import grpc
import pytest

from tests.chaos.checker import Ledger, Report
from tests.chaos.cluster import Firewall, ManagedCluster, content_of, finish, vector
from tests.helpers import wait_for

pytestmark = pytest.mark.slow  # starts etcd and a node cluster

COMMON = 40  # writes every node holds
DIVERGENT = 15  # writes only the old leader holds (acknowledged: async)
AFTER = 30  # writes of the new leader


@pytest.mark.timeout(300)
def test_old_leader_rejoins_with_divergent_tail(make_cluster: Callable[..., ManagedCluster], ledger: Ledger,
                                                chaos_report: Report) -> None:
    Firewall.require()
    cluster = make_cluster("async")
    old = cluster.wait_healthy()

    def write(node_client: object, node: str, cid: str, i: int) -> int:
        t = time.monotonic()
        lsn = node_client.learn_concept(cid, content_of(cid), vector(i), request_id=f"rid-{cid}")  # type: ignore[attr-defined]
        ledger.ack(f"rid-{cid}", cid, lsn, node, t, 1)
        return int(lsn)

    with old.client() as c:
        for i in range(COMMON):
            write(c, old.name, f"common-{i}", i)
    common_lsn = cluster.wait_caught_up()

    # Cut the leader's replication streams, then have it acknowledge writes.
    rule = cluster.firewall.drop("-p", "tcp", "-s", old.host, "--sport", str(old.port))
    try:
        with old.client() as c:
            div_lsns = [write(c, old.name, f"div-{i}", i) for i in range(DIVERGENT)]
        behind = {n.name: n.status().durable_lsn for n in cluster.others(old)}
        assert all(v < div_lsns[0] for v in behind.values()), \
            f"replicas received divergent records (first at LSN {div_lsns[0]}): {behind}"
        t_kill = time.monotonic()
        old.kill()
        # Keep dropping until a replica has taken over: the killed process's orphaned sockets keep
        # retransmitting the records they hold, and must not reach a replica's stream before it ends.
        new = cluster.wait_leader(30, exclude=[old])
        takeover_s = time.monotonic() - t_kill
    finally:
        cluster.firewall.remove(rule)
    with new.client() as c:
        after_lsns = [write(c, new.name, f"after-{i}", i) for i in range(AFTER)]
    new_term = new.status().term

    # Restart the old leader; until it has rejoined, its reads must never show the divergent data.
    old.start(wait=False)
    seen: dict[str, int] = {}

    def rejoined() -> bool:
        try:
            r = old.query("div-0", timeout=1.0)
            seen["found" if r.found else "not found"] = seen.get("found" if r.found else "not found", 0) + 1
        except grpc.RpcError as exc:
            code = exc.code().name  # type: ignore[attr-defined]
            if "serves no reads" in (exc.details() or ""):  # type: ignore[attr-defined]
                code += " (read fence)"
            seen[code] = seen.get(code, 0) + 1
        st = old.status()
        return st.role == "replica" and st.follow_state == "streaming" and st.applied_lsn >= after_lsns[-1]

    wait_for(rejoined, 60, f"{old.name} to rejoin as a replica and apply LSN {after_lsns[-1]}", interval=0.005)
    assert "found" not in seen, f"{old.name} served a divergent write while rejoining: {seen}"
    assert seen.get("UNAVAILABLE (read fence)"), f"{old.name} never refused reads while rejoining: {seen}"

    log = old.log_text()
    m = re.findall(r"cut (\d+) divergent record\(s\), LSN (\d+)\.\.(\d+)", log)
    assert m, f"{old.name} did not log cutting its divergent tail:\n{old.log_tail(30)}"
    cut, first_cut, last_cut = (int(x) for x in m[-1])
    assert cut >= DIVERGENT and first_cut <= div_lsns[0] and last_cut >= div_lsns[-1], (m, div_lsns)
    files = sorted(p.name for p in old.data_dir.glob("divergent-*.wal"))
    assert files, f"no divergent-*.wal in {old.data_dir}"
    for n in cluster.nodes:
        for i in range(DIVERGENT):
            r = n.query(f"div-{i}")
            assert not r.found, f"{n.name} serves the divergent write div-{i}"
    with old.client(30) as a, new.client(30) as b:
        da, db = a.digest(after_lsns[-1]), b.digest(after_lsns[-1])
    assert (da.lsn, da.digest) == (db.lsn, db.digest), f"digests differ: {old.name} {da} vs {new.name} {db}"

    res = finish(cluster, None, ledger)
    lost = sorted(x.split(" ")[0] for x in res.lost)
    chaos_report.add("divergent_tail_rejoin", {
        "mode": "async", "old_leader": old.name, "new_leader": new.name, "new_term": new_term,
        "common_lsn": common_lsn, "divergent_lsns": [div_lsns[0], div_lsns[-1]], "takeover_s": round(takeover_s, 3),
        "cut_records": cut, "divergent_files": files, "reads_of_divergent_concept_while_rejoining": seen,
        "digest_equal": True, **res.summary(),
    })
    # Async mode: exactly the divergent writes are lost, and they are the only loss.
    assert lost == sorted(f"div-{i}" for i in range(DIVERGENT)), res.problems()
    res.assert_sound()
