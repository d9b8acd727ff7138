"""TLS: SUTRA_TLS_CERT/KEY serve TLS to clients; SUTRA_TLS_CA adds mutual TLS, so
a process without a certificate from the cluster's CA can neither stream the
WAL from a leader, nor feed a replica, nor call Promote. Certificates are made
in the test."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sutra_cluster.client import SutraClient
from sutra_cluster.pb import replication_pb2 as rpb
from sutra_cluster.pb import replication_pb2_grpc
from sutra_cluster.tlsutil import peer_credentials
from tests.helpers import NodeProcess, free_port, wait_for

pytestmark = pytest.mark.slow  # starts nodes and a router over TLS

DIM = 8


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[str, str]:
    kp, cp = path.with_suffix(".key"), path.with_suffix(".crt")
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cp), str(kp)


def make_ca(path: Path, cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    crt, _ = _write(path, key, cert)
    return key, cert, crt


def make_cert(path: Path, cn: str, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            # The role URI makes the member a node of the cluster (sutra_cluster.auth); the stranger's
            # names a node too, so only its CA keeps it out.
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.UniformResourceIdentifier(f"spiffe://sutra/node/{cn}")]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return _write(path, key, cert)


ISSUERS: dict[str, tuple[ec.EllipticCurvePrivateKey, x509.Certificate]] = {}


def node_cert(pki: dict[str, str], node_id: str) -> tuple[str, str]:
    """A member certificate naming ``node_id``: a node's stream must come from
    the node its certificate names (one shared certificate cannot say which node
    acknowledges in a sync set)."""
    ca_key, ca = ISSUERS[str(Path(pki["ca"]).parent)]
    return make_cert(Path(pki["ca"]).parent / node_id, node_id, ca_key, ca)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    ca_key, ca, ca_crt = make_ca(tmp_path / "ca", "sutra-cluster-ca")
    other_key, other, other_crt = make_ca(tmp_path / "other-ca", "stranger-ca")
    member_crt, member_key = make_cert(tmp_path / "member", "node", ca_key, ca)
    ISSUERS[str(tmp_path)] = (ca_key, ca)
    stranger_crt, stranger_key = make_cert(tmp_path / "stranger", "stranger", other_key, other)
    return {"ca": ca_crt, "cert": member_crt, "key": member_key, "other_ca": other_crt,
            "stranger_cert": stranger_crt, "stranger_key": stranger_key}


def tls_env(cert: str, key: str, ca: str) -> dict[str, str]:
    return {"SUTRA_TLS_CERT": cert, "SUTRA_TLS_KEY": key, "SUTRA_TLS_CA": ca, "VECTOR_DIMENSION": str(DIM)}


def client(address: str, cert: str, key: str, ca: str) -> SutraClient:
    return SutraClient(address, timeout=5, retry_deadline=0, credentials=peer_credentials(cert, key, ca))


def test_mutual_tls_member_served_stranger_refused(pki: dict[str, str],
                                                   node_factory: Callable[..., NodeProcess]) -> None:
    lport, rport = free_port(), free_port()
    lcert, rcert = node_cert(pki, f"node-{lport}"), node_cert(pki, f"node-{rport}")
    leader = node_factory("leader", env={**tls_env(*lcert, pki["ca"]), "SUTRA_NODE_ROLE": "leader",
                                         "SUTRA_REPLICAS": f"127.0.0.1:{rport}"}, port=lport, start=False)
    replica = node_factory("replica", env={**tls_env(*rcert, pki["ca"]), "SUTRA_NODE_ROLE": "replica",
                                           "SUTRA_LEADER": f"127.0.0.1:{lport}"}, port=rport, start=False)
    for n in (leader, replica):
        n.start(wait=False)
    # The readiness probe of the helpers speaks plaintext; wait with a member's credentials instead.
    for n in (leader, replica):
        wait_for(lambda n=n: client(n.address, pki["cert"], pki["key"], pki["ca"]).health().healthy, 60,
                 f"{n.address} healthy over mutual TLS")

    with client(leader.address, pki["cert"], pki["key"], pki["ca"]) as c:
        seq = c.learn_concept("secret", "members only", np.ones(DIM, dtype=np.float32))
    with client(replica.address, pki["cert"], pki["key"], pki["ca"]) as c:
        assert c.query_concept("secret", sequence=seq) is not None, "a member replica streamed the WAL"

    # A stranger (certificate from another CA) can neither read, nor stream the WAL, nor promote.
    strange = peer_credentials(pki["stranger_cert"], pki["stranger_key"], pki["ca"])
    ch = grpc.secure_channel(leader.address, strange)
    stub = replication_pb2_grpc.ReplicationServiceStub(ch)
    with pytest.raises(grpc.RpcError) as info:
        hello = rpb.FollowerMessage(hello=rpb.Hello(node_id="stranger", last_lsn=0))
        next(iter(stub.StreamWal(iter([hello]), timeout=5)))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    rstub = replication_pb2_grpc.ReplicationServiceStub(grpc.secure_channel(replica.address, strange))
    with pytest.raises(grpc.RpcError) as info:
        rstub.Promote(rpb.PromoteRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with client(replica.address, pki["cert"], pki["key"], pki["ca"]) as c:
        assert c.stats().role == "replica", "the stranger's Promote must not have run"
    # No certificate at all, or plaintext: refused too.
    with pytest.raises(grpc.RpcError):
        SutraClient(leader.address, timeout=5, retry_deadline=0,
                    credentials=grpc.ssl_channel_credentials(root_certificates=Path(pki["ca"]).read_bytes())).stats()
    with pytest.raises(grpc.RpcError):
        SutraClient(leader.address, timeout=5, retry_deadline=0).stats()
    ch.close()


def test_stranger_leader_cannot_feed_a_member_replica(pki: dict[str, str],
                                                      node_factory: Callable[..., NodeProcess]) -> None:
    """A node with a foreign certificate poses as a leader: the member replica's
    TLS check fails, so it receives nothing."""
    sport, rport = free_port(), free_port()
    stranger = node_factory("stranger", env={**tls_env(pki["stranger_cert"], pki["stranger_key"], pki["other_ca"]),
                                             "SUTRA_NODE_ROLE": "leader"}, port=sport, start=False)
    replica = node_factory("replica", env={**tls_env(pki["cert"], pki["key"], pki["ca"]), "SUTRA_NODE_ROLE": "replica",
                                           "SUTRA_LEADER": f"127.0.0.1:{sport}"}, port=rport, start=False)
    stranger.start(wait=False)
    replica.start(wait=False)
    wait_for(lambda: client(stranger.address, pki["stranger_cert"], pki["stranger_key"], pki["other_ca"]).health().healthy,
             60, "the stranger node")
    with client(stranger.address, pki["stranger_cert"], pki["stranger_key"], pki["other_ca"]) as c:
        c.learn_concept("forged", "from outside the cluster", np.ones(DIM, dtype=np.float32))
    with client(replica.address, pki["cert"], pki["key"], pki["ca"]) as c:
        wait_for(lambda: c.health().healthy, 60, "the member replica")
        # Once its connection attempt has failed, check nothing arrived.
        wait_for(lambda: "UNAVAILABLE" in replica.log_path.read_text(), 30,
                 "the replica's failed TLS connection to the stranger to be logged")
        assert c.query_concept("forged") is None
        assert c.stats().last_lsn == 0


def test_server_tls_without_client_certificates(pki: dict[str, str],
                                                node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory("tls", env={"SUTRA_TLS_CERT": pki["cert"], "SUTRA_TLS_KEY": pki["key"],
                                    "VECTOR_DIMENSION": str(DIM)}, start=False)
    node.start(wait=False)
    creds = grpc.ssl_channel_credentials(root_certificates=Path(pki["ca"]).read_bytes())
    wait_for(lambda: SutraClient(node.address, timeout=2, retry_deadline=0, credentials=creds).health().healthy,
             60, "TLS node")
    with SutraClient(node.address, timeout=5, retry_deadline=0, credentials=creds) as c:
        seq = c.learn_concept("a", "over TLS", np.ones(DIM, dtype=np.float32))
        assert c.query_concept("a", sequence=seq) is not None
    with pytest.raises(grpc.RpcError) as info:
        SutraClient(node.address, timeout=5, retry_deadline=0).stats()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_router_serves_and_reaches_nodes_over_mutual_tls(pki: dict[str, str], tmp_path: Path,
                                                          node_factory: Callable[..., NodeProcess]) -> None:
    """A router with the cluster's certificate serves members, refuses strangers,
    and reaches its (mutual-TLS) node with its own certificate."""
    from tests.shard_cluster import RouterProcess

    member = tls_env(pki["cert"], pki["key"], pki["ca"])
    node = node_factory("node", env={**member, "SUTRA_NODE_ROLE": "leader"}, start=False)
    node.start(wait=False)
    wait_for(lambda: client(node.address, pki["cert"], pki["key"], pki["ca"]).health().healthy, 60, "TLS node")
    router = RouterProcess("router", {**member, "SUTRA_SHARD_MAP": f"0={node.address}"}, tmp_path / "router.log")
    try:
        router.start(wait=False)
        wait_for(lambda: client(router.address, pki["cert"], pki["key"], pki["ca"]).health().healthy, 60,
                 "the TLS router to reach its node")
        with client(router.address, pki["cert"], pki["key"], pki["ca"]) as c:
            seq = c.learn_concept("via-router", "over mutual TLS", np.ones(DIM, dtype=np.float32))
            assert c.query_concept("via-router", sequence=seq) is not None
        strange = peer_credentials(pki["stranger_cert"], pki["stranger_key"], pki["ca"])
        with pytest.raises(grpc.RpcError) as info:
            SutraClient(router.address, timeout=5, retry_deadline=0, credentials=strange).stats()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        router.stop()


def test_the_reshard_driver_reaches_leaders_over_mutual_tls_with_an_admin_certificate(
        tmp_path: Path, node_factory: Callable[..., NodeProcess]) -> None:
    """`sutra-cluster reshard` calls ReshardService (admin plane) on shard leaders:
    under mutual TLS it must present SUTRA_TLS_* like the other admin tools, and
    only an admin certificate may move data."""
    from sutra_cluster import certs
    from sutra_cluster.pb import reshard_pb2 as reshpb
    from sutra_cluster.pb import reshard_pb2_grpc
    from sutra_cluster.sharding.reshard import Leaders

    d = tmp_path / "certs"
    certs.create_ca(d)
    node_c = certs.create_cert(d, "node", "n1", ["127.0.0.1"])
    admin_c, client_c = certs.create_cert(d, "admin", "ops"), certs.create_cert(d, "client", "app")
    ca = str(d / "ca.crt")
    node = node_factory("n1", env={**tls_env(str(node_c.cert), str(node_c.key), ca), "SUTRA_NODE_ID": "n1",
                                   "SUTRA_NODE_ROLE": "leader"}, start=False)
    node.start(wait=False)
    wait_for(lambda: client(node.address, str(admin_c.cert), str(admin_c.key), ca).health().healthy, 60, "TLS node")

    def purge(env: dict[str, str]) -> grpc.RpcError:
        leaders = Leaders([], "sutra", env=env)
        try:
            stub = reshard_pb2_grpc.ReshardServiceStub(leaders.channels.channel(node.address))
            with pytest.raises(grpc.RpcError) as info:
                stub.Purge(reshpb.PurgeRequest(map_json="not a map"), timeout=10)
            return info.value
        finally:
            leaders.close()

    # The admin certificate reaches the servicer, which answers for the bad map (nothing was purged).
    got = purge({"SUTRA_TLS_CERT": str(admin_c.cert), "SUTRA_TLS_KEY": str(admin_c.key), "SUTRA_TLS_CA": ca})
    assert "invalid shard map 'not a map'" in (got.details() or ""), got  # type: ignore[attr-defined]
    got = purge({"SUTRA_TLS_CERT": str(client_c.cert), "SUTRA_TLS_KEY": str(client_c.key), "SUTRA_TLS_CA": ca})
    assert got.code() == grpc.StatusCode.PERMISSION_DENIED, got  # type: ignore[attr-defined]
    assert "admin" in (got.details() or "")  # type: ignore[attr-defined]
    got = purge({})  # plaintext against a TLS port: no handshake
    assert got.code() == grpc.StatusCode.UNAVAILABLE, got  # type: ignore[attr-defined]
