"""Filtered vector search through the engine: the attribute index follows
applies, attribute changes, deletes, a checkpoint reload and a WAL replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sutra_cluster.config import Config
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage.engine import Engine

DIM = 8


def _vec(i: int) -> bytes:
    return (np.random.default_rng(i).random(DIM, dtype=np.float32) + 0.1).astype("<f4").tobytes()


def _learn(engine: Engine, items: list[tuple[str, dict[str, str]]], delete: tuple[str, ...] = ()) -> int:
    b = wal_pb2.WalBatch()
    for cid, attrs in items:
        b.concepts.append(pb.LearnConceptRequest(concept_id=cid, content=cid, embedding_f32=_vec(int(cid[1:])),
                                                 attributes=attrs))
    b.delete_concept_ids.extend(delete)
    lsn = engine.submit(b)
    engine.wait_visible(lsn)
    return lsn


def _cfg(path: Path) -> Config:
    return Config(storage_path=str(path), vector_dimension=DIM, reconcile_interval_ms=1, node_id="filter",
                  memory_threshold=1 << 30)


def _ids(engine: Engine, where: dict, k: int = 100) -> set[str]:
    hits, _ = engine.search(np.frombuffer(_vec(0), dtype="<f4"), k, where=where)
    return {cid for cid, _ in hits}


def test_where_filters_by_attributes_across_updates_deletes_and_restart(tmp_path: Path) -> None:
    engine = Engine(_cfg(tmp_path))
    engine.lead("single-node")
    try:
        _learn(engine, [(f"c{i}", {"lang": ("en", "de", "fr")[i % 3], "tier": str(i % 2)}) for i in range(60)])
        en = {f"c{i}" for i in range(0, 60, 3)}
        assert _ids(engine, {"lang": ["en"]}) == en
        assert _ids(engine, {"lang": "en"}) == en  # a str is one value
        assert _ids(engine, {"lang": ["en", "de"], "tier": ["0"]}) == {
            f"c{i}" for i in range(60) if i % 3 != 2 and i % 2 == 0}
        assert _ids(engine, {"lang": []}) == set() and _ids(engine, {"nope": ["x"]}) == set()
        assert len(_ids(engine, {})) == 60  # no filter
        hits, _ = engine.search(np.frombuffer(_vec(3), dtype="<f4"), 3, where={"lang": ["en"]})
        assert hits[0][0] == "c3" and len(hits) == 3  # top-k among the matching concepts
        _learn(engine, [("c0", {"lang": "de"})], delete=("c3",))  # re-attributed, deleted
        assert _ids(engine, {"lang": ["en"]}) == en - {"c0", "c3"}
        engine.checkpoint(drain=True)
        _learn(engine, [("c6", {"lang": "fr"})])  # after the checkpoint: replayed from the WAL
    finally:
        engine.close()
    restarted = Engine(_cfg(tmp_path))
    try:
        assert _ids(restarted, {"lang": ["en"]}) == en - {"c0", "c3", "c6"}
        assert "c0" in _ids(restarted, {"lang": ["de"]}) and "c6" in _ids(restarted, {"lang": ["fr"]})
        hits, _ = restarted.search(np.frombuffer(_vec(9), dtype="<f4"), 2, where={"lang": ["en"]},
                                   score_threshold=0.9999)
        assert [cid for cid, _ in hits] == ["c9"]
    finally:
        restarted.close()
