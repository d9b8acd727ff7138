"""The authenticated node plane (issue 11, Critical findings C1-C3).

Each attack from the security review is performed against real nodes by a
caller without the node plane's credentials and must fail with nothing changed:
the state digest (GetDigest), ``terms.json``'s bytes and every data file.
Nodes with the right secret or node certificate must still replicate. The pure
parts (method planes, peer strings, certificate roles) are tested directly.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from sutra_cluster import auth, certs
from sutra_cluster.client import Concept, SutraClient
from sutra_cluster.pb import replication_pb2 as rpb
from sutra_cluster.pb import replication_pb2_grpc
from sutra_cluster.tlsutil import peer_credentials
from tests.cluster import DIM, Node, running_cluster, wait_streaming
from tests.helpers import CLUSTER_SECRET, SECRET_METADATA, NodeProcess, free_port, rpc_code, tool, wait_for

NO_SECRET = {"SUTRA_CLUSTER_SECRET": "", "SUTRA_CLUSTER_SECRET_FILE": ""}


# ---- pure: planes, peers, roles ----------------------------------------------------------------------------
def test_every_replication_call_is_node_or_admin_plane_and_unknown_methods_are_closed() -> None:
    r = "/sutra.replication.ReplicationService/"
    assert auth.required_roles(r + "StreamWal") == {"node"}
    assert auth.required_roles(r + "GetSnapshot") == {"node", "admin"}
    assert auth.required_roles(r + "GetReplicationStatus") == {"node", "admin"}
    assert auth.required_roles(r + "Promote") == {"admin"}
    assert auth.required_roles(r + "Follow") == {"admin"}
    assert auth.required_roles(r + "Switchover") == {"admin"}, "an unclassified method must be closed"
    assert auth.required_roles("/other.Service/Anything") == {"admin"}
    for m in ("/sutra.storage.StorageService/LearnConcept", "/sutra.storage.StorageService/Flush",
              "/grpc.health.v1.Health/Check", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
              "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"):
        assert auth.required_roles(m) is None, m
    # Every method the service defines is classified explicitly.
    names = rpb.DESCRIPTOR.services_by_name["ReplicationService"].methods_by_name
    assert {r + n for n in names} == set(auth.NODE_PLANE) | set(auth.ADMIN_PLANE)


@pytest.mark.parametrize("peer,local", [
    ("ipv4:127.0.0.1:5000", True), ("ipv4:127.0.0.11:5000", True), ("ipv4:127.255.255.254:1", True),
    ("ipv6:[::1]:5000", True), ("ipv6:%5B::1%5D:5000", True), ("ipv6:[::ffff:127.0.0.1]:5000", True),
    ("unix:/tmp/sock", True), ("unix-abstract:x", True),
    ("ipv4:192.0.2.2:5000", False), ("ipv4:10.0.0.1:5000", False), ("ipv4:0.0.0.0:5000", False),
    ("ipv6:[::ffff:10.0.0.1]:5000", False), ("ipv6:[fe80::1%25eth0]:5000", False), ("ipv6:[2001:db8::1]:1", False),
    ("ipv4:128.0.0.1:5000", False), ("", False), ("garbage", False), ("ipv4:localhost:5000", False),
    ("ipv6:::1:5000", False),
])
def test_loopback_peer_classifier(peer: str, local: bool) -> None:
    assert auth.is_loopback_peer(peer) is local


def test_identity_from_certificate_role_secret_and_loopback() -> None:
    mtls = auth.Policy(mtls=True, secret=CLUSTER_SECRET)
    ctx = {"peer_uri": [b"spiffe://sutra/node/n1"], "x509_common_name": [b"n1"]}
    assert mtls.identify((), "ipv4:10.0.0.1:1", ctx) == auth.Identity("node", "n1", "certificate")
    ctx = {"peer_uri": [b"spiffe://other/admin/x", b"spiffe://sutra/admin/ops"]}
    assert mtls.identify((), "ipv4:10.0.0.1:1", ctx).role == "admin"
    # A CA-signed certificate without a role is a client, even with the secret and on loopback.
    ident = mtls.identify(SECRET_METADATA, "ipv4:127.0.0.1:1", {"x509_common_name": [b"app"]})
    assert ident == auth.Identity("client", "app", "certificate") and not ident.roles & {"node", "admin"}
    assert mtls.identify((), "ipv4:10.0.0.1:1", {"peer_uri": [b"spiffe://sutra/root/x"],
                                                 "x509_common_name": [b"x"]}).role == "client"

    sec = auth.Policy(mtls=False, secret=CLUSTER_SECRET)
    meta = (*SECRET_METADATA, (auth.NODE_ID_HEADER, "r1"))
    assert sec.identify(meta, "ipv4:10.0.0.1:1", {}) == auth.Identity("node", "r1", "secret")
    assert sec.identify(((auth.SECRET_HEADER, CLUSTER_SECRET + "x"),), "ipv4:127.0.0.1:1", {}) == auth.ANONYMOUS
    assert sec.identify((), "ipv4:127.0.0.1:1", {}) == auth.ANONYMOUS, "loopback is no credential once a secret is set"

    prot = auth.Policy(mtls=False)
    assert prot.mode == "protected"
    assert prot.identify((), "ipv4:127.0.0.1:1", {}).via == "loopback"
    assert prot.identify(SECRET_METADATA, "ipv4:192.0.2.2:1", {}) == auth.ANONYMOUS


def test_refusals_name_what_is_missing() -> None:
    promote = "/sutra.replication.ReplicationService/Promote"
    need = auth.required_roles(promote)
    assert need is not None
    code, msg = auth.Policy(mtls=True).refusal(promote, need, auth.Identity("client", "app", "certificate"), "p", False)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "role client (app)" in msg and "spiffe://sutra/admin/" in msg
    code, msg = auth.Policy(mtls=False, secret=CLUSTER_SECRET).refusal(promote, need, auth.ANONYMOUS, "p", False)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "sutra-cluster-secret" in msg and "SUTRA_CLUSTER_SECRET" in msg
    assert CLUSTER_SECRET not in msg
    code, msg = auth.Policy(mtls=False, secret=CLUSTER_SECRET).refusal(promote, need, auth.ANONYMOUS, "p", True)
    assert "does not match" in msg
    code, msg = auth.Policy(mtls=False).refusal(promote, need, auth.ANONYMOUS, "ipv4:192.0.2.2:9", False)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "protected mode" in msg and "192.0.2.2" in msg


# ---- helpers for the attacks ---------------------------------------------------------------------------------
def _files(data_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data_dir.rglob("*")) if p.is_file()}


def _terms(data_dir: Path) -> bytes | None:
    """terms.json's bytes (None until the node first saves a term: then term 1 is implied)."""
    path = data_dir / "terms.json"
    return path.read_bytes() if path.exists() else None


def _state(node: NodeProcess) -> tuple[object, ...]:
    """What an attack must not change: digest, role, term, terms.json's bytes, every data file."""
    with node.client() as c:
        st = c.stats()
        # At the durable LSN: the apply runs behind the log, so a digest taken right after an
        # acknowledged write could be of the state before it (CI saw 0 concepts, then 1).
        d = c.digest(st.durable_lsn)
    return d.digest, d.lsn, d.concepts, st.role, st.term, _terms(node.data_dir), _files(node.data_dir)


def _load_and_flush(node: NodeProcess, n: int = 20) -> int:
    with node.client() as c:
        seq = c.learn_batch([Concept(f"c{i}", f"concept {i}", np.full(DIM, i + 1, dtype=np.float32)) for i in range(n)])
        c.flush()
    return seq


def _repl(address: str, creds: grpc.ChannelCredentials | None = None) -> tuple[grpc.Channel, Any]:
    ch = grpc.secure_channel(address, creds) if creds is not None else grpc.insecure_channel(address)
    return ch, replication_pb2_grpc.ReplicationServiceStub(ch)


class HostileLeader:
    """The review's Appendix A.1: answers every hello with need_snapshot at term 99
    and serves an empty snapshot. Records every hello it gets."""

    def __init__(self) -> None:
        outer = self
        self.hellos: list[rpb.Hello] = []

        class Servicer(replication_pb2_grpc.ReplicationServiceServicer):
            def StreamWal(self, request_iterator, context):  # type: ignore[no-untyped-def]
                outer.hellos.append(next(request_iterator).hello)
                yield rpb.LeaderMessage(term=99, leader_id="evil", leader_address=outer.address,
                                        need_snapshot=rpb.NeedSnapshot(reason="take mine"))

            def GetSnapshot(self, request, context):  # type: ignore[no-untyped-def]
                return iter(())

        self.address = f"127.0.0.1:{free_port()}"
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        replication_pb2_grpc.add_ReplicationServiceServicer_to_server(Servicer(), self.server)
        self.server.add_insecure_port(self.address)

    def __enter__(self) -> HostileLeader:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(0).wait()


@pytest.fixture
def secured(node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    """A leader with the suite's cluster secret, holding flushed data."""
    node = node_factory("secured", env={"SUTRA_NODE_ROLE": "leader"})
    _load_and_flush(node)
    return node


# ---- C1: Follow to a fake leader ------------------------------------------------------------------------------
@pytest.mark.slow
def test_follow_to_a_fake_leader_without_the_secret_changes_nothing(secured: NodeProcess) -> None:
    before = _state(secured)
    with HostileLeader() as evil:
        ch, stub = _repl(secured.address)
        with ch:
            for meta in ((), ((auth.SECRET_HEADER, "not-the-cluster-secret-at-all"),)):
                with pytest.raises(grpc.RpcError) as info:
                    stub.Follow(rpb.FollowRequest(leader_address=evil.address), metadata=meta, timeout=5)
                assert rpc_code(info.value) == grpc.StatusCode.UNAUTHENTICATED
                assert "sutra-cluster-secret" in info.value.details()  # type: ignore[attr-defined]
            # Follow demotes synchronously, so the role read now is final; and the node never dialled out.
            assert _state(secured) == before
            assert evil.hellos == []
            with secured.client() as c:
                assert c.learn_concept("after", "still the leader", np.ones(DIM, dtype=np.float32)) > 0
            assert "Traceback" not in secured.log_tail(200)
            # The control: the same call with the secret does reach the fake leader (the attack
            # path exists; only authentication closes it).
            stub.Follow(rpb.FollowRequest(leader_address=evil.address), metadata=SECRET_METADATA, timeout=5)
            wait_for(lambda: evil.hellos, 10, "the authenticated Follow to reach the fake leader")


# ---- C2: a hello with highest_term = 2^64 - 1 ------------------------------------------------------------------
@pytest.mark.slow
def test_stream_wal_hello_with_a_huge_term_without_the_secret_changes_nothing(secured: NodeProcess) -> None:
    before = _state(secured)
    ch, stub = _repl(secured.address)
    with ch:
        hello = rpb.FollowerMessage(hello=rpb.Hello(node_id="x", highest_term=2**64 - 1, last_lsn=2**63))
        for meta in ((), ((auth.SECRET_HEADER, "wrong-secret-wrong-secret"),)):
            with pytest.raises(grpc.RpcError) as info:
                next(iter(stub.StreamWal(iter([hello]), metadata=meta, timeout=5)))
            assert rpc_code(info.value) == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            stub.Promote(rpb.PromoteRequest(), timeout=5)
        assert rpc_code(info.value) == grpc.StatusCode.UNAUTHENTICATED
    assert _state(secured) == before
    with secured.client() as c:
        assert c.learn_concept("after", "writes still work", np.ones(DIM, dtype=np.float32)) > 0
        assert c.stats().role == "leader"


# ---- C3: a fake follower claiming the sync member's id ---------------------------------------------------------
@pytest.mark.slow
def test_fake_sync_follower_without_the_secret_gets_no_write_acknowledged(tmp_path: Path) -> None:
    with running_cluster(tmp_path, replicas=1, mode="sync", leader_env={"SUTRA_SYNC_TIMEOUT_MS": "1500"}) as c:
        wait_streaming(c.leader, ["r1"])
        with c.leader.client() as lc:
            lc.learn_concept("ok", "acknowledged by r1", np.ones(DIM, dtype=np.float32))
        ch, stub = _repl(c.leader.address)
        with ch:
            # Reconnaissance is closed too: the sync member's id is not readable without the secret.
            with pytest.raises(grpc.RpcError) as info:
                stub.GetReplicationStatus(rpb.ReplicationStatusRequest(), timeout=5)
            assert rpc_code(info.value) == grpc.StatusCode.UNAUTHENTICATED
            c.replicas[0].pause()
            try:
                msgs = [rpb.FollowerMessage(hello=rpb.Hello(node_id="r1", last_lsn=0)),
                        *(rpb.FollowerMessage(ack=rpb.Ack(written_lsn=2**62, flushed_lsn=2**62, applied_lsn=2**62))
                          for _ in range(50))]
                with pytest.raises(grpc.RpcError) as info:
                    next(iter(stub.StreamWal(iter(msgs), timeout=5)))
                assert rpc_code(info.value) == grpc.StatusCode.UNAUTHENTICATED
                with c.leader.client() as lc, pytest.raises(grpc.RpcError) as info:
                    lc.learn_concept("unreplicated", "no replica holds this", np.ones(DIM, dtype=np.float32))
                assert rpc_code(info.value) == grpc.StatusCode.UNAVAILABLE, info.value
                st = c.leader.status()
                assert [r.node_id for r in st.replicas if r.flushed_lsn > st.durable_lsn] == []
            finally:
                c.replicas[0].resume()


# ---- the right secret still replicates; a wrong one does not ---------------------------------------------------
@pytest.mark.slow
def test_replica_with_the_secret_replicates_and_one_with_another_secret_is_refused(tmp_path: Path) -> None:
    with running_cluster(tmp_path, replicas=1, mode="async") as c:
        wait_streaming(c.leader, ["r1"])
        with c.leader.client() as lc:
            seq = lc.learn_concept("shared", "replicated with the secret", np.ones(DIM, dtype=np.float32))
        with c.replicas[0].client() as rc:
            assert rc.query_concept("shared", sequence=seq) is not None
        port = free_port()
        intruder = Node("intruder", tmp_path / "intruder", {
            "VECTOR_DIMENSION": str(DIM), "SUTRA_NODE_ROLE": "replica", "SUTRA_LEADER": c.leader.address,
            "SUTRA_CLUSTER_SECRET": "another-cluster-secret-entirely"}, port, free_port(), tmp_path / "intruder.log")
        c.extra.append(intruder)
        intruder.start()
        wait_for(lambda: "UNAUTHENTICATED" in intruder.log_text(), 30, "the intruder's refused stream to be logged")
        assert "intruder" not in {r.node_id for r in c.leader.status().replicas}
        with intruder.client() as ic:
            assert ic.stats().last_lsn == 0 and ic.query_concept("shared") is None
        assert "refused: sutra.replication.ReplicationService/StreamWal" in c.leader.log_text()


# ---- protected mode --------------------------------------------------------------------------------------------
def _non_loopback_ip() -> str:
    """This machine's address on its default route ("" when it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the source address
            ip = str(s.getsockname()[0])
        except OSError:
            return ""
    return "" if ip.startswith("127.") else ip


@pytest.mark.slow
def test_protected_mode_serves_replication_to_loopback_only(tmp_path: Path,
                                                            node_factory: Callable[..., NodeProcess]) -> None:
    lport, rport = free_port(), free_port()
    leader = node_factory("p-leader", env={**NO_SECRET, "SUTRA_HOST": "0.0.0.0", "SUTRA_NODE_ROLE": "leader"},
                          port=lport)
    replica = node_factory("p-replica", env={**NO_SECRET, "SUTRA_NODE_ROLE": "replica",
                                             "SUTRA_LEADER": f"127.0.0.1:{lport}"}, port=rport)
    warnings = [ln for ln in leader.log_tail(400).splitlines() if "WARNING" in ln and "PROTECTED MODE" in ln]
    assert len(warnings) == 1, leader.log_tail()
    # Loopback peers replicate and may ask for the status, with no secret at all.
    with leader.client() as c:
        seq = c.learn_concept("local", "replicated over loopback", np.ones(DIM, dtype=np.float32))
    with replica.client() as rc:
        assert rc.query_concept("local", sequence=seq) is not None
    ch, stub = _repl(leader.address)
    with ch:
        assert stub.GetReplicationStatus(rpb.ReplicationStatusRequest(), timeout=5).role == "leader"

    ip = _non_loopback_ip()
    if ip:  # the machine has another address: call from it (the classifier test covers the rest)
        before = _state(leader)
        ch, stub = _repl(f"{ip}:{lport}")
        with ch:
            for call in (lambda: stub.Follow(rpb.FollowRequest(leader_address="127.0.0.1:1"), timeout=5),
                         lambda: stub.Promote(rpb.PromoteRequest(), metadata=SECRET_METADATA, timeout=5),
                         lambda: stub.GetReplicationStatus(rpb.ReplicationStatusRequest(), timeout=5),
                         lambda: next(iter(stub.StreamWal(iter([rpb.FollowerMessage(
                             hello=rpb.Hello(node_id="x", highest_term=2**64 - 1))]), timeout=5)))):
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert rpc_code(info.value) == grpc.StatusCode.PERMISSION_DENIED
                assert "protected mode" in info.value.details() and ip in info.value.details()  # type: ignore[attr-defined]
        with SutraClient(f"{ip}:{lport}", timeout=5, retry_deadline=0) as far:
            assert far.stats().role == "leader", "the client plane stays open to other hosts"
        assert _state(leader) == before


# ---- mutual TLS with roles -------------------------------------------------------------------------------------
@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "certs"
    certs.create_ca(d)
    certs.create_cert(d, "node", "leader", ["localhost", "127.0.0.1"])
    certs.create_cert(d, "node", "r1", ["localhost", "127.0.0.1"])
    certs.create_cert(d, "admin", "ops")
    certs.create_cert(d, "client", "app")
    return d


def _creds(d: Path, who: str) -> grpc.ChannelCredentials:
    c = peer_credentials(str(d / f"{who}.crt"), str(d / f"{who}.key"), str(d / "ca.crt"))
    assert c is not None
    return c


@pytest.mark.slow
def test_mtls_roles_client_cannot_promote_stream_or_follow_node_and_admin_can(pki: Path, tmp_path: Path) -> None:
    def tls(name: str) -> dict[str, str]:
        return {"SUTRA_TLS_CERT": str(pki / f"node.{name}.crt"), "SUTRA_TLS_KEY": str(pki / f"node.{name}.key"),
                "SUTRA_TLS_CA": str(pki / "ca.crt"), **NO_SECRET}

    lport, rport = free_port(), free_port()
    leader = Node("leader", tmp_path / "leader", {**tls("leader"), "SUTRA_NODE_ROLE": "leader",
                  "VECTOR_DIMENSION": str(DIM)}, lport, free_port(), tmp_path / "leader.log")
    replica = Node("r1", tmp_path / "r1", {**tls("r1"), "SUTRA_NODE_ROLE": "replica",
                   "SUTRA_LEADER": f"127.0.0.1:{lport}", "VECTOR_DIMENSION": str(DIM)}, rport, free_port(),
                   tmp_path / "r1.log")
    app, ops, node = _creds(pki, "client.app"), _creds(pki, "admin.ops"), _creds(pki, "node.r1")
    try:
        for n in (leader, replica):
            n.start(wait=False)
        for n in (leader, replica):
            wait_for(lambda n=n: SutraClient(n.address, timeout=1, retry_deadline=0, credentials=app).health().healthy,
                     60, f"{n.name} healthy over mutual TLS")
        # Node certificates replicate; the client certificate writes and reads (client plane).
        with SutraClient(leader.address, timeout=5, retry_deadline=0, credentials=app) as c:
            seq = c.learn_concept("m", "over mutual TLS with roles", np.ones(DIM, dtype=np.float32))
            c.flush()
        with SutraClient(replica.address, timeout=10, retry_deadline=0, credentials=app) as c:
            assert c.query_concept("m", sequence=seq) is not None

        def state(n: Node) -> tuple[object, ...]:
            with SutraClient(n.address, timeout=5, retry_deadline=0, credentials=app) as c:
                d, st = c.digest(seq), c.stats()
            return d.digest, st.role, st.term, _terms(n.data_dir)

        before = {n.name: state(n) for n in (leader, replica)}
        attempts: list[tuple[grpc.ChannelCredentials, str, Callable[[Any], object]]] = [
            (app, replica.address, lambda s: s.Promote(rpb.PromoteRequest(), timeout=5)),
            (app, leader.address, lambda s: s.Follow(rpb.FollowRequest(leader_address="127.0.0.1:1"), timeout=5)),
            (app, leader.address, lambda s: next(iter(s.StreamWal(iter([rpb.FollowerMessage(
                hello=rpb.Hello(node_id="r1", highest_term=2**64 - 1))]), timeout=5)))),
            (app, leader.address, lambda s: next(iter(s.GetSnapshot(rpb.SnapshotRequest(node_id="x"), timeout=5)))),
            (app, leader.address, lambda s: s.GetReplicationStatus(rpb.ReplicationStatusRequest(), timeout=5)),
            (node, replica.address, lambda s: s.Promote(rpb.PromoteRequest(), timeout=5)),  # admin only
            (ops, leader.address, lambda s: next(iter(s.StreamWal(iter([rpb.FollowerMessage(
                hello=rpb.Hello(node_id="r1"))]), timeout=5)))),  # nodes only
        ]
        for creds, address, call in attempts:
            ch, stub = _repl(address, creds)
            with ch, pytest.raises(grpc.RpcError) as info:
                call(stub)
            assert rpc_code(info.value) == grpc.StatusCode.PERMISSION_DENIED, info.value
            assert "certificate has role" in info.value.details()  # type: ignore[attr-defined]
        assert {n.name: state(n) for n in (leader, replica)} == before
        # The admin certificate reads the status (and grpcurl accepts the certificates' SANs).
        ch, stub = _repl(leader.address, ops)
        with ch:
            st = stub.GetReplicationStatus(rpb.ReplicationStatusRequest(), timeout=5)
            assert [r.node_id for r in st.replicas] == ["r1"]
        out = subprocess.run([tool("grpcurl"), "-cacert", str(pki / "ca.crt"), "-cert", str(pki / "client.app.crt"),
                              "-key", str(pki / "client.app.key"), f"localhost:{rport}",
                              "sutra.replication.ReplicationService/Promote"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode != 0 and "PermissionDenied" in out.stderr, out.stderr
        out = subprocess.run([tool("grpcurl"), "-cacert", str(pki / "ca.crt"), "-cert", str(pki / "admin.ops.crt"),
                              "-key", str(pki / "admin.ops.key"), f"127.0.0.1:{lport}",
                              "sutra.replication.ReplicationService/GetReplicationStatus"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and '"role": "leader"' in out.stdout, out.stderr
    finally:
        for n in (replica, leader):
            n.stop(timeout=10)


# ---- the calling side: tools and env ---------------------------------------------------------------------------
@pytest.mark.slow
def test_admin_tools_send_the_secret_from_the_environment(secured: NodeProcess, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(CLUSTER_SECRET + "\n")
    env = {k: v for k, v in os.environ.items() if k != "SUTRA_CLUSTER_SECRET"}
    cli = [str(Path(tool("sutra-cluster"))), "status", "--nodes", secured.address]
    ok = subprocess.run(cli, env={**env, "SUTRA_CLUSTER_SECRET_FILE": str(secret_file)}, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0 and " leader " in ok.stdout, ok.stdout + ok.stderr
    refused = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stdout, refused.stdout + refused.stderr
    bad = subprocess.run(cli, env={**env, "SUTRA_CLUSTER_SECRET": "short"}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "at least 16" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr



# ---- etcd: user/password and TLS -------------------------------------------------------------------------------
def _etcdctl(endpoint: str, *args: str, user: str = "", scheme: str = "http", tls: tuple[str, ...] = ()) -> str:
    cmd = [tool("etcdctl"), f"--endpoints={scheme}://{endpoint}", *tls, *((f"--user={user}",) if user else ()), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, (cmd, out.stdout, out.stderr)
    return out.stdout


@pytest.mark.slow
def test_etcd_with_user_password_auth(tmp_path: Path, node_factory: Callable[..., NodeProcess]) -> None:
    """etcd with auth enabled: the coordinator logs in with SUTRA_ETCD_USER/PASSWORD
    (and again after etcd restarts and forgets its tokens), a node leads through it,
    and wrong or missing credentials are refused with a message naming the setting."""
    from sutra_cluster.credentials import EtcdSecurity
    from sutra_cluster.failover.coordinator import CoordinatorUnavailable, LeaderKey
    from sutra_cluster.failover.etcd import EtcdCoordinator, shard_prefix
    from tests.etcd import EtcdProcess

    etcd = EtcdProcess(tmp_path / "etcd").start()
    try:
        ep = etcd.endpoint
        _etcdctl(ep, "user", "add", "root:root-password-0")
        _etcdctl(ep, "user", "grant-role", "root", "root")
        _etcdctl(ep, "role", "add", "sutra")
        _etcdctl(ep, "role", "grant-permission", "sutra", "--prefix=true", "readwrite", "/sutra/")
        _etcdctl(ep, "user", "add", "sutra:sutra-password-0")
        _etcdctl(ep, "user", "grant-role", "sutra", "sutra")
        _etcdctl(ep, "auth", "enable")

        good = EtcdSecurity(user="sutra", password="sutra-password-0")
        prefix = shard_prefix("sutra", 7)
        c = EtcdCoordinator([ep], prefix, "n1", security=good, timeout=2.0)
        try:
            key = c.acquire(LeaderKey("n1", "127.0.0.1:1", 1), 0)
            assert key is not None and c.snapshot().leader is not None
            # etcd forgets its simple tokens when it restarts: the coordinator logs in again.
            token = c.client.metadata
            assert token is not None
            etcd.stop()
            etcd.start()
            assert wait_for(lambda: c.snapshot().term == 1, 30, "the coordinator to log in again after a restart")
            assert c.client.metadata not in (None, token), "a new token after the restart"
        finally:
            c.close()
        for sec, words in ((EtcdSecurity(user="sutra", password="wrong-password"), "SUTRA_ETCD_USER='sutra'"),
                           (EtcdSecurity(), "etcd")):
            bad = EtcdCoordinator([ep], prefix, "n2", security=sec, timeout=2.0)
            try:
                with pytest.raises(CoordinatorUnavailable) as info:
                    bad.snapshot()
                assert words in str(info.value) and "wrong-password" not in str(info.value)
            finally:
                bad.close()

        # A real node leads through the authenticated etcd.
        node = node_factory("etcd-auth", env={"SUTRA_ETCD_ENDPOINTS": ep, "SUTRA_ETCD_USER": "sutra",
                                              "SUTRA_ETCD_PASSWORD": "sutra-password-0"})
        reader = EtcdCoordinator([ep], shard_prefix("sutra", 0), "reader", security=good, timeout=2.0)
        try:
            lead = wait_for(lambda: reader.snapshot().leader, 30, "the node to take the leader key")
            assert lead.address == node.address
        finally:
            reader.close()
    finally:
        etcd.stop()


@pytest.mark.slow
def test_etcd_over_tls_with_client_certificates(tmp_path: Path) -> None:
    """etcd serving TLS and asking for client certificates: the coordinator reaches
    it with SUTRA_ETCD_CACERT/CERT/KEY and cannot without them."""
    from sutra_cluster.credentials import EtcdSecurity
    from sutra_cluster.failover.coordinator import CoordinatorUnavailable, LeaderKey
    from sutra_cluster.failover.etcd import EtcdCoordinator

    d = tmp_path / "etcd-certs"
    certs.create_ca(d)
    server = certs.create_cert(d, "node", "etcd", ["localhost", "127.0.0.1"])
    client = certs.create_cert(d, "client", "sutra")
    port, peer = free_port(), free_port()
    cu, pu = f"https://127.0.0.1:{port}", f"http://127.0.0.1:{peer}"
    cmd = [tool("etcd"), "--name", "tls", "--data-dir", str(tmp_path / "etcd"), "--listen-client-urls", cu,
           "--advertise-client-urls", cu, "--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
           "--initial-cluster", f"tls={pu}", "--cert-file", str(server.cert), "--key-file", str(server.key),
           "--trusted-ca-file", str(d / "ca.crt"), "--client-cert-auth", "--log-level", "warn"]
    with open(tmp_path / "etcd.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    sec = EtcdSecurity(cacert=str(d / "ca.crt"), cert=str(client.cert), key=str(client.key))
    assert sec.problems() == []
    try:
        c = EtcdCoordinator([f"127.0.0.1:{port}"], "/sutra/shards/0/", "n1", security=sec, timeout=2.0)
        try:
            wait_for(lambda: c.snapshot() is not None, 30, "etcd to answer over TLS")
            assert c.acquire(LeaderKey("n1", "127.0.0.1:1", 1), 0) is not None
        finally:
            c.close()
        for s in (EtcdSecurity(), EtcdSecurity(cacert=str(d / "ca.crt"))):  # plaintext; TLS without a client cert
            bad = EtcdCoordinator([f"127.0.0.1:{port}"], "/sutra/shards/0/", "n2", security=s, timeout=2.0)
            try:
                with pytest.raises(CoordinatorUnavailable):
                    bad.snapshot()
            finally:
                bad.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
