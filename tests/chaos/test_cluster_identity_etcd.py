"""Cluster identity with etcd: the first node names the cluster in
/<cluster>/cluster_uuid, every node's data directory holds the same id, and a
node whose data belongs to another cluster never takes part (no member key, no
stream, no vote) until its data is replaced."""

from __future__ import annotations

import json
from collections.abc import Callable

from sutra_cluster.failover.keys import cluster_uuid_key
from sutra_cluster.storage.identity import IDENTITY_FILE, new_cluster_uuid
from tests.chaos.cluster import ManagedCluster
from tests.helpers import wait_for


def _uuid_of(c: ManagedCluster, name: str) -> str:
    return str(json.loads((c.node(name).data_dir / IDENTITY_FILE).read_text())["uuid"])


def test_every_node_shares_etcds_cluster_id_and_a_foreign_node_stays_out(
        make_cluster: Callable[..., ManagedCluster]) -> None:
    c = make_cluster("sync")
    lead = c.wait_healthy()
    stored = c.coord.get(cluster_uuid_key("sutra"))
    assert stored, "the first node must name the cluster in etcd"
    assert {_uuid_of(c, n.name) for n in c.nodes} == {stored}

    out = next(n for n in c.nodes if n is not lead)
    out.stop(timeout=15)
    foreign = new_cluster_uuid()
    (out.data_dir / IDENTITY_FILE).write_text(json.dumps({"cluster": "sutra", "uuid": foreign}))
    out.start(wait=False)
    wait_for(lambda: "not taking part in cluster sutra" in out.log_text(), 30, f"{out.name} to refuse to take part")
    # Its member key (bound to its old process's lease) expires and is not published again.
    wait_for(lambda: out.name not in c.snapshot().members, 30, f"{out.name}'s member key to expire")
    st = lead.status()
    assert out.name not in [r.node_id for r in st.replicas if r.state == "streaming"]
    assert c.coord.get(cluster_uuid_key("sutra")) == stored, "a foreign node must not rename the cluster"
    assert "not taking part" in out.log_text() and foreign in out.log_text()

    # With its data directory's id removed (as an empty data directory would be), it adopts etcd's and rejoins.
    out.stop(timeout=15)
    (out.data_dir / IDENTITY_FILE).unlink()
    out.start(wait=False)
    c.wait_healthy(60)
    assert _uuid_of(c, out.name) == stored
