"""Cluster identity on the replication stream: a leader never feeds, counts or
sends a snapshot to a node of another cluster, and a replica never acts on a
leader of another cluster (the gap behind a sync write acknowledged while its
only real sync replica was stopped: a leftover node of an earlier cluster,
named like that replica, had connected to a reused port and was counted)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from sutra_cluster import config
from sutra_cluster.failover import cluster_id
from sutra_cluster.failover.keys import cluster_uuid_key
from sutra_cluster.pb import replication_pb2 as rpb
from sutra_cluster.replication.follower import FollowerLoop
from sutra_cluster.replication.manager import ReplicationManager
from sutra_cluster.retry import FOREIGN_CLUSTER, REASON_KEY
from sutra_cluster.storage.engine import Engine
from sutra_cluster.storage.identity import IDENTITY_FILE, ClusterIdentity, ForeignCluster, new_cluster_uuid
from tests.cluster import DIM, Node, free_ports, running_cluster, wait_streaming
from tests.helpers import wait_for
from tests.test_peer_claims import Aborted, Context


# ---- the file ------------------------------------------------------------------------
def test_identity_is_created_once_kept_across_loads_and_adopted_only_when_absent(tmp_path: Path) -> None:
    ident = ClusterIdentity(tmp_path, "sutra")
    assert ident.uuid == ""
    first = ident.ensure()
    assert ident.ensure() == first, "ensure must not rename a named cluster"
    assert ClusterIdentity(tmp_path, "sutra").uuid == first
    assert json.loads((tmp_path / IDENTITY_FILE).read_text()) == {"cluster": "sutra", "uuid": first}

    ident.adopt(first)  # the same id: a no-op
    with pytest.raises(ForeignCluster, match="empty data directory"):
        ident.adopt(new_cluster_uuid())
    assert ClusterIdentity(tmp_path, "sutra").uuid == first, "a refused adoption must change nothing"

    fresh = ClusterIdentity(tmp_path / "other", "sutra")
    (tmp_path / "other").mkdir()
    fresh.adopt(first)
    assert ClusterIdentity(tmp_path / "other", "sutra").uuid == first
    with pytest.raises(ForeignCluster, match="is not a uuid"):
        ClusterIdentity(tmp_path / "x", "sutra").adopt("not-a-uuid")


def test_a_data_directory_of_another_cluster_name_or_a_damaged_file_is_refused_at_load(tmp_path: Path) -> None:
    ClusterIdentity(tmp_path, "alpha").ensure()
    with pytest.raises(ForeignCluster, match="belongs to cluster 'alpha'.*SUTRA_CLUSTER_NAME is 'beta'"):
        ClusterIdentity(tmp_path, "beta")
    (tmp_path / IDENTITY_FILE).write_text('{"cluster": "alpha", "uuid": ')
    with pytest.raises(ValueError, match="damaged"):
        ClusterIdentity(tmp_path, "alpha")


def test_refusal_names_both_clusters_and_accepts_nodes_without_an_id(tmp_path: Path) -> None:
    ident = ClusterIdentity(tmp_path, "sutra")
    mine = ident.ensure()
    other = new_cluster_uuid()
    assert ident.refusal("r1", "sutra", mine) is None
    assert ident.refusal("r1", "", "") is None  # a new node, or an older version: it adopts ours
    why = ident.refusal("follower 'r2'", "sutra", other)
    assert why is not None and other in why and mine in why and "another cluster" in why
    why = ident.refusal("r1", "elsewhere", mine)
    assert why is not None and "SUTRA_CLUSTER_NAME" in why


class _Store:
    def __init__(self) -> None:
        self.kv: dict[str, str] = {}

    def create(self, key: str, value: str) -> tuple[bool, str]:
        if key in self.kv:
            return False, self.kv[key]
        self.kv[key] = value
        return True, value


def test_etcd_names_the_cluster_once_and_a_node_of_another_cluster_is_refused(tmp_path: Path) -> None:
    store = _Store()
    a = ClusterIdentity(tmp_path / "a", "sutra")
    (tmp_path / "a").mkdir()
    kept = a.ensure()  # data written before etcd knew the cluster (etcd lost and recreated)
    assert cluster_id.confirm(store, a) == kept
    assert store.kv[cluster_uuid_key("sutra")] == kept, "the first node proposes the id its data holds"
    (tmp_path / "b").mkdir()
    b = ClusterIdentity(tmp_path / "b", "sutra")
    assert cluster_id.confirm(store, b) == kept and b.uuid == kept
    (tmp_path / "c").mkdir()
    c = ClusterIdentity(tmp_path / "c", "sutra")
    c.ensure()
    with pytest.raises(ForeignCluster):
        cluster_id.confirm(store, c)


# ---- the stream, in process ------------------------------------------------------------
def _leader(tmp_path: Path) -> tuple[Engine, ReplicationManager]:
    cfg = config.load({"STORAGE_PATH": str(tmp_path / "n"), "VECTOR_DIMENSION": "4", "SUTRA_NODE_ID": "n1",
                       "SUTRA_NODE_ROLE": "leader"})
    eng = Engine(cfg)
    m = ReplicationManager(eng, cfg)
    m.start()
    return eng, m


def test_a_leader_refuses_a_hello_and_a_snapshot_request_of_another_cluster(tmp_path: Path) -> None:
    eng, m = _leader(tmp_path)
    try:
        mine = m.identity.uuid
        assert mine, "a leader without etcd names its cluster when it starts leading"
        foreign = new_cluster_uuid()
        hello = rpb.Hello(node_id="r2", address="127.0.0.1:1", cluster_name="sutra", cluster_uuid=foreign)
        ctx = Context()
        with pytest.raises(Aborted) as refused:
            next(m.leader.stream(iter([rpb.FollowerMessage(hello=hello)]), ctx))  # type: ignore[arg-type]
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert foreign in refused.value.details and mine in refused.value.details
        assert ctx.trailing == ((REASON_KEY, FOREIGN_CLUSTER),)
        assert "r2" not in m.leader.followers and m.leader.commit.connected() == {}, "a refused node is never counted"

        ctx = Context()
        with pytest.raises(Aborted, match="another cluster"):
            m.leader.check_cluster("snapshot requester 'r2'", "sutra", foreign, ctx)  # type: ignore[arg-type]
    finally:
        m.stop()
        eng.close()


class _Call:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def test_a_replica_refuses_a_leader_of_another_cluster_before_acting_on_it(tmp_path: Path) -> None:
    cfg = config.load({"STORAGE_PATH": str(tmp_path / "r"), "VECTOR_DIMENSION": "4", "SUTRA_NODE_ID": "r1",
                       "SUTRA_NODE_ROLE": "replica", "SUTRA_LEADER": "127.0.0.1:9"})
    eng = Engine(cfg)
    try:
        ident = ClusterIdentity(eng.dir, "sutra")
        mine = ident.ensure()
        loop = FollowerLoop(eng, cfg, "127.0.0.1:9", identity=ident)
        term = eng.term
        msg = rpb.LeaderMessage(term=term + 40, leader_id="x", cluster_uuid=new_cluster_uuid(),
                                need_snapshot=rpb.NeedSnapshot(reason="give me everything"))
        call = _Call()
        with pytest.raises(ForeignCluster, match="empty data directory"):
            loop._handle(msg, call, None, None)  # type: ignore[arg-type]
        assert call.cancelled
        assert eng.term == term, "a foreign leader's term must not be observed"
        assert ident.uuid == mine and not list(eng.dir.glob("replaced-*"))
    finally:
        eng.close()


# ---- real processes ---------------------------------------------------------------------
@pytest.mark.slow
def test_a_leftover_node_of_another_cluster_is_neither_fed_nor_counted(tmp_path: Path) -> None:
    """Cluster A: leader + r1, sync. Cluster B: leader + r1 with data of its own.
    B's r1 is then started against A's leader (the same name, r1, as A's real
    replica). A's leader must refuse it, it must keep its own data, and with A's
    r1 stopped, a sync write to A must not be acknowledged."""
    env = {"SUTRA_SYNC_TIMEOUT_MS": "300"}
    with running_cluster(tmp_path / "a", replicas=1, mode="sync", env=env) as a, \
            running_cluster(tmp_path / "b", replicas=1, mode="sync") as b:
        wait_streaming(a.leader, ["r1"])
        wait_streaming(b.leader, ["r1"])
        with b.leader.client() as bc:
            bc.learn_concept("b-only", "written in cluster B", np.ones(DIM, dtype=np.float32))
        stray_dir = b.replicas[0].data_dir
        b.replicas[0].stop(timeout=10)
        b_id = json.loads((stray_dir / IDENTITY_FILE).read_text())["uuid"]
        a_id = json.loads((a.leader.data_dir / IDENTITY_FILE).read_text())["uuid"]
        assert a_id != b_id and json.loads((a.replicas[0].data_dir / IDENTITY_FILE).read_text())["uuid"] == a_id

        port, mport = free_ports(2)
        stray = Node("r1", stray_dir, {"VECTOR_DIMENSION": str(DIM), "SUTRA_COMMIT_MODE": "sync",
                                       "SUTRA_NODE_ROLE": "replica", "SUTRA_LEADER": a.leader.address},
                     port, mport, tmp_path / "stray.log")
        a.extra.append(stray)  # ended with cluster A, pass or fail
        stray.start()
        wait_for(lambda: "another cluster" in a.leader.log_text(), 30, "A's leader to refuse the stray node")
        wait_for(lambda: "rejected-foreign-cluster" in stray.log_text() or "refused this node" in stray.log_text(),
                 30, "the stray node to log the refusal")
        assert [r.node_id for r in a.leader.status().replicas if r.state == "streaming"] == ["r1"]
        assert not list(stray_dir.glob("replaced-*")), "the stray node's own data must not be replaced"
        assert json.loads((stray_dir / IDENTITY_FILE).read_text())["uuid"] == b_id

        a.replicas[0].pause()
        try:
            with a.leader.client() as ac, pytest.raises(grpc.RpcError) as refused:
                got = ac.learn_concept("a-pending", "must not be acknowledged", np.ones(DIM, dtype=np.float32))
                pytest.fail(f"acknowledged at LSN {got} with A's only replica stopped: "
                            f"{[(r.node_id, r.state) for r in a.leader.status().replicas]}")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        finally:
            a.replicas[0].resume()
