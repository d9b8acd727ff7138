"""A peer's numbers are claims (issue 11, "never trust a peer's numbers"): an
authenticated caller's hello, a leader's stream and the Promote/Follow calls are
checked before anything acts on them. Runs a real engine and replication manager
in this process (the auth plane itself is tested in test_auth.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sutra_cluster import config
from sutra_cluster.errors import FailedPrecondition
from sutra_cluster.pb import replication_pb2 as rpb
from sutra_cluster.replication.follower import FollowerLoop, StaleLeader
from sutra_cluster.replication.leader import MAX_FOLLOWERS
from sutra_cluster.replication.manager import ReplicationManager
from sutra_cluster.roles import MAX_TERM, Role
from sutra_cluster.storage.engine import Engine


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class Context:
    """The parts of grpc.ServicerContext the stream handler uses."""

    def __init__(self) -> None:
        self.trailing: tuple[tuple[str, str], ...] = ()

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    def set_trailing_metadata(self, md: tuple[tuple[str, str], ...]) -> None:
        self.trailing = md

    def is_active(self) -> bool:
        return False


def _node(tmp_path: Path, managed: bool) -> tuple[Engine, ReplicationManager]:
    env = {"STORAGE_PATH": str(tmp_path / "n"), "VECTOR_DIMENSION": "4", "SUTRA_NODE_ID": "n1",
           "SUTRA_NODE_ROLE": "leader"}
    if managed:
        env["SUTRA_ETCD_ENDPOINTS"] = "127.0.0.1:9"  # never contacted: no HA loop runs here
    cfg = config.load(env)
    eng = Engine(cfg)
    m = ReplicationManager(eng, cfg)
    m.start()
    if managed:
        m.lead(3)  # as the HA loop would after taking the key at term 3
    return eng, m


@pytest.fixture(params=["manual", "managed"])
def leader(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Engine, ReplicationManager, Path]]:
    eng, m = _node(tmp_path, request.param == "managed")
    try:
        yield eng, m, tmp_path / "n" / "terms.json"
    finally:
        m.stop()
        eng.close()


def _bytes(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def _hello(**kw: int | str) -> Iterator[rpb.FollowerMessage]:
    fields: dict = {"node_id": "r1", "address": "127.0.0.1:1", **kw}
    yield rpb.FollowerMessage(hello=rpb.Hello(**fields))


def _stream(m: ReplicationManager, **kw: int | str) -> Aborted:
    with pytest.raises(Aborted) as got:
        list(m.leader.stream(_hello(**kw), Context()))  # type: ignore[arg-type]
    return got.value


@pytest.mark.parametrize("field", ["highest_term", "last_term"])
def test_a_term_beyond_the_bound_is_refused_and_nothing_is_saved(
        leader: tuple[Engine, ReplicationManager, Path], field: str) -> None:
    eng, m, terms = leader
    before = _bytes(terms)
    err = _stream(m, **{field: 2**64 - 1, "last_lsn": 1})
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details == f"hello.{field} is {2**64 - 1}, above the largest allowed term {MAX_TERM}"
    assert _bytes(terms) == before and eng.role == Role.LEADER


def test_under_etcd_a_hello_claiming_a_newer_term_does_not_step_the_leader_down(tmp_path: Path) -> None:
    eng, m = _node(tmp_path, managed=True)
    try:
        before = (tmp_path / "n" / "terms.json").read_bytes()
        err = _stream(m, highest_term=eng.term + 1)
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.details.startswith("stale leader")
        assert eng.role == Role.LEADER, "a peer's claim stepped down a leader that etcd still names"
        assert (tmp_path / "n" / "terms.json").read_bytes() == before
    finally:
        m.stop()
        eng.close()


def test_without_etcd_an_authenticated_newer_term_steps_the_leader_down(tmp_path: Path) -> None:
    eng, m = _node(tmp_path, managed=False)
    try:
        newer = eng.term + 1
        err = _stream(m, highest_term=newer)
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION
        assert eng.role == Role.REPLICA and eng.term == newer
        assert eng.read_fence is not None  # the same step-down as every other: reads fenced until checked
    finally:
        m.stop()
        eng.close()


def test_a_hello_naming_the_leader_itself_or_nobody_is_refused(leader: tuple[Engine, ReplicationManager, Path]) -> None:
    _, m, _ = leader
    assert _stream(m, node_id="n1").code == grpc.StatusCode.INVALID_ARGUMENT
    assert _stream(m, node_id="").code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_hello_must_carry_the_certificates_node_name(leader: tuple[Engine, ReplicationManager, Path]) -> None:
    _, m, _ = leader
    with pytest.raises(Aborted) as got:
        list(m.leader.stream(_hello(node_id="r2"), Context(), peer_name="r1"))  # type: ignore[arg-type]
    assert got.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert got.value.details == "hello.node_id 'r2' is not the authenticated node 'r1'"


def test_under_etcd_promote_and_follow_are_refused(tmp_path: Path) -> None:
    eng, m = _node(tmp_path, managed=True)
    try:
        term = eng.term
        with pytest.raises(FailedPrecondition, match="switchover"):
            m.promote()
        with pytest.raises(FailedPrecondition, match="switchover"):
            m.follow_request("127.0.0.1:9")
        assert eng.role == Role.LEADER and eng.term == term and m.follower is None
    finally:
        m.stop()
        eng.close()


def test_a_replica_refuses_a_stream_whose_term_is_not_etcds(tmp_path: Path) -> None:
    eng, m = _node(tmp_path, managed=True)
    try:
        m.step_down("test")
        before = (tmp_path / "n" / "terms.json").read_bytes()
        loop = FollowerLoop(eng, eng.cfg, "127.0.0.1:9", expected_term=eng.term + 1)

        class Call:
            def cancel(self) -> None:
                pass

        forged = rpb.LeaderMessage(term=MAX_TERM, leader_id="fake", heartbeat=rpb.Heartbeat(last_lsn=1))
        with pytest.raises(StaleLeader, match="etcd's leader key says term"):
            loop._handle(forged, Call(), None, None)  # type: ignore[arg-type]
        assert (tmp_path / "n" / "terms.json").read_bytes() == before
        assert eng.read_fence is not None, "a forged stream lifted the read fence"
    finally:
        m.stop()
        eng.close()


def test_streams_that_come_and_go_leave_bounded_state(leader: tuple[Engine, ReplicationManager, Path]) -> None:
    # 2,000 hellos once left 2,000 followers (and metric series) for good.
    _, m, _ = leader
    for i in range(200):
        list(m.leader.stream(_hello(node_id=f"fake-{i}"), Context()))  # type: ignore[arg-type]
    assert len(m.leader.followers) <= MAX_FOLLOWERS + 1
    assert len(m.leader.commit.replicas) <= MAX_FOLLOWERS + 1
    assert not m.leader.connected()
    # Hellos that never acknowledged anything hold no WAL back (one kept 50 MB for 5 minutes).
    assert m.leader.retain_floor() is None


def test_a_replica_that_can_fill_a_short_sync_set_wakes_the_ha_loop(tmp_path: Path) -> None:
    # Right after an election the sync set may be empty and writes wait for a
    # replica to catch up: the loop is woken at once instead of a tick later.
    env = {"STORAGE_PATH": str(tmp_path / "n"), "VECTOR_DIMENSION": "4", "SUTRA_NODE_ID": "n1",
           "SUTRA_COMMIT_MODE": "sync", "SUTRA_ETCD_ENDPOINTS": "127.0.0.1:9"}
    cfg = config.load(env)
    eng = Engine(cfg)
    m = ReplicationManager(eng, cfg)
    woken = threading.Event()
    m.set_wake(woken.set)
    try:
        m.start()
        lsn = m.lead(3)
        assert m.sync_members() == ()

        def messages() -> Iterator[rpb.FollowerMessage]:
            yield from _hello(last_lsn=lsn, last_term=3)
            yield rpb.FollowerMessage(ack=rpb.Ack(written_lsn=lsn, flushed_lsn=lsn - 1, applied_lsn=lsn - 1))
            assert not woken.wait(0.2), "woken by a replica that lacks an acknowledged write"
            yield rpb.FollowerMessage(ack=rpb.Ack(written_lsn=lsn, flushed_lsn=lsn, applied_lsn=lsn))
            woken.wait(5)

        class Active(Context):
            def is_active(self) -> bool:
                return not woken.is_set()

        stream = m.leader.stream(messages(), Active())  # type: ignore[arg-type]
        consumer = threading.Thread(target=lambda: list(stream), daemon=True)
        consumer.start()
        assert woken.wait(10), "the HA loop was not woken when the replica caught up"
        consumer.join(10)
        assert not consumer.is_alive()
    finally:
        m.stop()
        eng.close()
