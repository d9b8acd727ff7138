"""Cutting a divergent tail that was appended but never applied (issue 10's
survivor-ahead failover, docs/HA.md Failover): a sync replica shows, and applies,
only up to its leader's commit LSN, so a survivor outside the sync set that is
ahead of the new leader holds its extra records unapplied. ``rewind_to`` then
undoes only what appending them did, instead of rebuilding the whole state from
the checkpoint and the WAL (2.7 s with 60K concepts since the checkpoint).

The state after the fast cut must be exactly the state a rebuild gives, the cut
writes' request ids must be forgotten (a retry is written again, not answered
from a cut record), and any case the fast cut does not cover (a cut record that
was applied, async mode, a cross-shard record) still rebuilds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from sutra_cluster.config import Config
from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage.engine import Engine
from sutra_cluster.storage.wal_format import RT_BATCH, RT_TERM

DIM = 4


class Hooks:
    """A sync replica's view of its leader: reads see up to ``limit``."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit

    def wait_commit(self, lsn: int) -> None:
        pass

    def visible_limit(self) -> int | None:
        return self.limit

    def retain_floor(self, backup_lsn: int) -> int:
        return backup_lsn


def _engine(path: Path, limit: int | None) -> Engine:
    eng = Engine(dataclasses.replace(Config(), storage_path=str(path), vector_dimension=DIM, ann_threshold=10**9,
                                     memory_threshold=1 << 40))
    eng.attach(Hooks(limit))  # type: ignore[arg-type]
    return eng


def _batch(i: int, *, txn: str = "") -> bytes:
    b = wal_pb2.WalBatch(request_id=f"req-{i}", timestamp_us=1000 + i, txn_id=txn)
    b.concepts.add(concept_id=f"c{i}", content=f"text {i}",
                   embedding_f32=np.random.default_rng(i).standard_normal(DIM).astype("<f4").tobytes())
    return b.SerializeToString()


def _records(n: int, term: int = 1, first: int = 1) -> list[tuple[int, int, int, bytes]]:
    out: list[tuple[int, int, int, bytes]] = []
    if first == 1:
        out.append((1, term, RT_TERM, b""))
    for lsn in range(max(first, 2), n + 1):
        out.append((lsn, term, RT_BATCH, _batch(lsn)))
    return out


def _rebuilds(eng: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = eng._replay

    def spy() -> int:
        calls.append(1)
        return real()

    monkeypatch.setattr(eng, "_replay", spy)
    return calls


def test_an_unapplied_tail_is_cut_without_a_rebuild_to_the_state_a_rebuild_gives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eng = _engine(tmp_path / "a", limit=20)
    try:
        eng.append_replicated(_records(30))
        eng.reconcile_once()
        assert eng.applied_lsn == 20 and eng.pending_items == 10
        assert eng.request_ids["req-25"][0] == 25
        rebuilds = _rebuilds(eng, monkeypatch)
        assert eng.rewind_to(22, tmp_path / "cut.wal") == 8
        assert rebuilds == []  # no replay: nothing cut had been applied
        assert eng.wal.last_lsn == 22 and eng.applied_lsn == 20 and eng.pending_items == 2
        assert "req-22" in eng.request_ids and "req-23" not in eng.request_ids and "req-30" not in eng.request_ids
        assert eng.read_after(20) is None  # the in-memory tail was dropped: replicas read the WAL files
        # The new leader's history goes on from the cut, in its own term.
        eng.append_replicated([(23, 2, RT_TERM, b"")] + [(lsn, 2, RT_BATCH, _batch(100 + lsn)) for lsn in (24, 25)])
        eng.attach(Hooks(25))  # type: ignore[arg-type]
        eng.reconcile_once()
        assert eng.applied_lsn == 25 and eng.pending_items == 0
        assert eng.state.concepts.keys() == {f"c{i}" for i in range(2, 23)} | {"c124", "c125"}
        fast = eng.digest()[1:]
    finally:
        eng.close()
    # The same WAL opened afresh (a full replay) gives the same state.
    again = _engine(tmp_path / "a", limit=None)
    try:
        assert again.applied_lsn == 25 and again.digest()[1:] == fast
    finally:
        again.close()
    cut = (tmp_path / "cut.wal").read_bytes()
    assert b"req-23" in cut and b"req-30" in cut and b"req-22" not in cut


@pytest.mark.parametrize("case", ["applied", "async", "transaction"])
def test_what_the_fast_cut_does_not_cover_still_rebuilds(case: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    limit = {"applied": 25, "async": None, "transaction": 20}[case]
    eng = _engine(tmp_path / "a", limit=limit)
    try:
        records = _records(30)
        if case == "transaction":  # a cut record that a cross-shard transaction's decision wrote
            records[25] = (26, 1, RT_BATCH, _batch(26, txn="t-1"))
        eng.append_replicated(records)
        eng.reconcile_once()
        rebuilds = _rebuilds(eng, monkeypatch)
        assert eng.rewind_to(22, tmp_path / "cut.wal") == 8
        assert rebuilds == [1]
        assert eng.wal.last_lsn == 22 and "req-23" not in eng.request_ids
        assert eng.applied_lsn == 22  # a rebuild replays everything left
        assert "c25" not in eng.state.concepts
    finally:
        eng.close()
