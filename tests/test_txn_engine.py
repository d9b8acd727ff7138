"""Prepared cross-shard parts on one node (storage/prepared.py): invisible until
committed, locked, kept across restarts and checkpoints, dropped by an abort.
Real engine, real WAL and fsync, no network."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sutra_cluster import config
from sutra_cluster.errors import FailedPrecondition, NotFound
from sutra_cluster.pb import storage_pb2 as spb
from sutra_cluster.pb import wal_pb2
from sutra_cluster.replication.manager import ReplicationManager
from sutra_cluster.storage.engine import Engine
from sutra_cluster.storage.prepared import TxnConflict, TxnLocked


def _open(path: Path) -> tuple[Engine, ReplicationManager]:
    cfg = config.load({"STORAGE_PATH": str(path), "VECTOR_DIMENSION": "4", "SUTRA_NODE_ID": "n1",
                       "SUTRA_NODE_ROLE": "leader", "SUTRA_COMMIT_MODE": "async", "SUTRA_READ_WAIT_MS": "1500"})
    eng = Engine(cfg)
    m = ReplicationManager(eng, cfg)
    m.start()
    return eng, m


@pytest.fixture
def node(tmp_path: Path) -> Iterator[list[tuple[Engine, ReplicationManager]]]:
    opened = [_open(tmp_path / "n")]
    try:
        yield opened
    finally:
        for eng, m in opened:
            m.stop()
            eng.close()


def _restart(opened: list[tuple[Engine, ReplicationManager]], path: Path) -> Engine:
    eng, m = opened.pop()
    m.stop()
    eng.close()
    opened.append(_open(path))
    return opened[-1][0]


def _prep(txn: str, *ids: str, edge: tuple[str, str] | None = None) -> wal_pb2.WalPrepare:
    b = wal_pb2.WalBatch(request_id=f"r-{txn}")
    for cid in ids:
        b.concepts.append(spb.LearnConceptRequest(concept_id=cid, content=f"c {cid}"))
    if edge:
        b.associations.append(spb.LearnAssociationRequest(source_id=edge[0], target_id=edge[1]))
    return wal_pb2.WalPrepare(txn_id=txn, batch=b, shards=[0, 1])


def _plain(*ids: str) -> wal_pb2.WalBatch:
    b = wal_pb2.WalBatch()
    for cid in ids:
        b.concepts.append(spb.LearnConceptRequest(concept_id=cid, content="plain"))
    return b


def test_prepared_part_is_invisible_locked_then_committed(node: list, tmp_path: Path) -> None:
    eng: Engine = node[0][0]
    p = eng.prepare_txn(_prep("t1", "a", "b", edge=("a", "x")))
    eng.wait_visible(p)
    assert eng.state.concepts.get("a") is None and [t.txn_id for t in eng.txns.snapshot()] == ["t1"]
    with pytest.raises(TxnLocked, match="t1"):
        eng.get_concept("a")  # a read by key waits for the outcome (SUTRA_READ_WAIT_MS), then is retryable
    assert eng.get_concept("unrelated") is None  # other keys read at once
    seen: list[object] = []
    reader = threading.Thread(target=lambda: seen.append(eng.neighbors("x")))
    reader.start()  # waits: x is the target of the prepared edge
    with pytest.raises(TxnLocked, match="t1"):
        eng.submit(_plain("x"))  # the target of the prepared edge is locked too
    with pytest.raises(TxnConflict, match="t1"):
        eng.prepare_txn(_prep("t2", "b"))
    assert eng.prepare_txn(_prep("t1", "a", "b", edge=("a", "x"))) == p  # idempotent
    c = eng.decide_txn("t1", True)
    reader.join(timeout=10)
    assert seen == [[("a", 0, 0.0, False)]], "the waiting reader saw the committed part"
    assert c > p and eng.decide_txn("t1", True) == c  # a repeated commit answers the same LSN
    eng.wait_visible(c)
    assert eng.get_concept("a") is not None and eng.neighbors("a") == [("x", 0, 0.0, True)]
    assert eng.submit(_plain("x")) > c  # unlocked
    with pytest.raises(FailedPrecondition, match="already committed"):
        eng.decide_txn("t1", False)


def test_scans_and_searches_wait_for_parts_open_when_they_began(node: list) -> None:
    """A read that names no key (vector search, scroll, count) waits for every part
    prepared before it began, then sees its outcome: it never shows this shard
    without its part of a transaction another shard has already committed."""
    import numpy as np

    eng: Engine = node[0][0]
    b = wal_pb2.WalBatch(request_id="r-v")
    b.concepts.append(spb.LearnConceptRequest(concept_id="v", content="c v",
                                              embedding_f32=np.array([1, 0, 0, 0], "<f4").tobytes()))
    eng.wait_visible(eng.prepare_txn(wal_pb2.WalPrepare(txn_id="tv", batch=b, shards=[0, 1])))
    query = np.array([1, 0, 0, 0], "float32")
    with pytest.raises(TxnLocked, match="tv"):
        eng.search(query, 1)  # undecided past SUTRA_READ_WAIT_MS: retryable, never a half answer
    seen: list[object] = []
    reader = threading.Thread(target=lambda: seen.append(eng.search(query, 1)[0]))
    reader.start()
    reader.join(timeout=0.3)
    assert reader.is_alive() and not seen, "the search waits while the part is undecided"
    eng.decide_txn("tv", True)
    reader.join(timeout=10)
    assert [h[0] for h in seen[0]] == ["v"], "the waiting search saw the committed part"  # type: ignore[index]
    eng.wait_txns_all()  # nothing open: free


def test_abort_drops_the_part_and_survives_restart(node: list, tmp_path: Path) -> None:
    eng: Engine = node[0][0]
    eng.prepare_txn(_prep("t1", "a"))
    a = eng.decide_txn("t1", False, "test")
    assert a and eng.decide_txn("t1", False) == a
    with pytest.raises(NotFound):
        eng.decide_txn("never", True)
    assert eng.decide_txn("never", False) == 0
    eng = _restart(node, tmp_path / "n")
    assert eng.get_concept("a") is None and not eng.txns.open and eng.txns.decided["t1"] == (False, a)


def test_in_doubt_part_survives_restart_and_checkpoint(node: list, tmp_path: Path) -> None:
    eng: Engine = node[0][0]
    eng.prepare_txn(_prep("t1", "a"))
    for i in range(5):
        eng.submit(_plain(f"p{i}"))
    eng.checkpoint(drain=True)
    eng.submit(_plain("q"))
    eng.checkpoint(drain=True)  # two checkpoints: the prepare's segment would be dropped but for the floor
    eng = _restart(node, tmp_path / "n")
    assert [t.txn_id for t in eng.txns.snapshot()] == ["t1"], "the in-doubt prepare was lost"
    with pytest.raises(TxnLocked):
        eng.submit(_plain("a"))
    c = eng.decide_txn("t1", True)
    eng.wait_visible(c)
    assert eng.get_concept("a") is not None
    eng = _restart(node, tmp_path / "n")
    assert not eng.txns.open and eng.get_concept("a") is not None


def test_cutting_a_divergent_tail_keeps_a_part_prepared_before_the_checkpoint(node: list, tmp_path: Path) -> None:
    eng: Engine = node[0][0]
    eng.prepare_txn(_prep("t1", "a"))
    eng.submit(_plain("p"))
    ckpt_lsn = eng.checkpoint(drain=True)
    eng.submit(_plain("q"))  # the "divergent" tail
    assert eng.rewind_to(ckpt_lsn, tmp_path / "cut.wal") == 1
    assert [t.txn_id for t in eng.txns.snapshot()] == ["t1"]
    with pytest.raises(TxnLocked):
        eng.submit(_plain("a"))


class _Context:
    """Just enough of grpc.ServicerContext for the grpc_errors wrapper."""

    def __init__(self) -> None:
        self.code: object = None

    def abort(self, code: object, details: str) -> None:
        self.code = code
        raise RuntimeError(details)

    def set_trailing_metadata(self, md: object) -> None:
        pass


def test_txn_service_checks_its_input_and_reports_prepared_parts(node: list) -> None:
    from sutra_cluster.pb import txn_pb2
    from sutra_cluster.txn.service import TxnServicer

    eng: Engine = node[0][0]
    svc = TxnServicer(eng)
    part = spb.LearnBatchRequest(concepts=[spb.LearnConceptRequest(concept_id="a", content="x")], request_id="r")
    for bad, why in ((txn_pb2.PrepareTxnRequest(txn_id="a/b", part=part, shards=[0]), "txn_id"),
                     (txn_pb2.PrepareTxnRequest(txn_id="t1", part=part, shards=[1]), "this node's shard"),
                     (txn_pb2.PrepareTxnRequest(txn_id="t1", part=part, shards=[0, 0]), "each participant")):
        ctx = _Context()
        with pytest.raises(RuntimeError, match=why):
            svc.PrepareTxn(bad, ctx)
        assert "INVALID_ARGUMENT" in str(ctx.code)
    lsn = svc.PrepareTxn(txn_pb2.PrepareTxnRequest(txn_id="t1", part=part, shards=[0, 1]), _Context()).sequence
    listed = svc.ListTxns(txn_pb2.ListTxnsRequest(), _Context()).open
    assert [(t.txn_id, t.prepare_sequence, list(t.shards), t.items) for t in listed] == [("t1", lsn, [0, 1], 1)]
    assert svc._gauges()["sutra_txn_prepared"][1] == 1
    assert svc.DecideTxn(txn_pb2.DecideTxnRequest(txn_id="t1", commit=True), _Context()).sequence > lsn
    assert svc._gauges()["sutra_txn_prepared"][1] == 0


class _Store:
    """The decision store's contract in memory: create-once, the first decision stands."""

    def __init__(self) -> None:
        self.kv: dict[str, object] = {}
        self.down = False

    def get(self, txn: str) -> object:
        if self.down:
            from sutra_cluster.failover.coordinator import CoordinatorUnavailable
            raise CoordinatorUnavailable("etcd down (test)")
        return self.kv.get(txn)

    def decide(self, txn: str, commit: bool, shards: object) -> object:
        from sutra_cluster.txn.decision import Decision

        return self.kv.setdefault(txn, Decision(commit, (0, 1), "resolver", 0))

    def close(self) -> None:
        pass


def test_resolver_applies_a_decision_and_makes_presumed_abort_durable(node: list) -> None:
    from sutra_cluster.txn.decision import Decision
    from sutra_cluster.txn.recovery import Resolver

    eng: Engine = node[0][0]
    store = _Store()
    r = Resolver(eng, store, timeout_s=0.0)  # type: ignore[arg-type]
    eng.prepare_txn(_prep("decided", "a"))
    eng.prepare_txn(_prep("orphan", "b"))
    store.kv["decided"] = Decision(True, (0, 1), "router", 0)
    assert r.tick() == []  # younger than PROBE_S: the coordinator may still be at work
    for p in list(eng.txns.open.values()):
        eng.txns.open[p.txn_id] = p.__class__(p.txn_id, p.lsn, p.batch, p.shards, p.keys, p.since - 10)
    store.down = True
    assert r.tick() == [] and len(eng.txns.open) == 2  # etcd unreachable: nothing decided locally
    store.down = False
    done = r.tick()
    assert len(done) == 2 and not eng.txns.open, done
    assert eng.txns.decided["decided"][0] is True and eng.txns.decided["orphan"][0] is False
    assert store.kv["orphan"] == Decision(False, (0, 1), "resolver", 0)  # the abort is durable: a late commit loses
    eng.wait_visible(eng.txns.decided["decided"][1])
    assert eng.get_concept("a") is not None and eng.get_concept("b") is None
