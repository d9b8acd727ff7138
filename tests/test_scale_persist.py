"""The HNSW graph persisted with checkpoints (storage.hnsw): a restart adopts
it (no rebuild) and replays the WAL tail on top; a damaged, truncated or
mismatching file is refused with its reason and the graph is rebuilt."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest

from sutra_cluster.config import Config
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage import annfile
from sutra_cluster.storage.engine import Engine
from tests.mutators import flip_bit, truncate_to

DIM = 16


def _cfg(path: Path) -> Config:
    return Config(storage_path=str(path), vector_dimension=DIM, reconcile_interval_ms=1, node_id="persist",
                  memory_threshold=1 << 30, ann_threshold=200)


def _data(n: int) -> np.ndarray:
    return np.random.default_rng(5).standard_normal((n, DIM)).astype(np.float32)


def _learn(engine: Engine, ids: range, data: np.ndarray, delete: list[str] | None = None) -> None:
    b = wal_pb2.WalBatch()
    for i in ids:
        b.concepts.append(pb.LearnConceptRequest(concept_id=f"c{i:05d}", content=f"c{i}",
                                                 embedding_f32=data[i].astype("<f4").tobytes()))
    b.delete_concept_ids.extend(delete or [])
    engine.wait_visible(engine.submit(b))


def _exact(engine: Engine, data: np.ndarray, live: list[int], q: np.ndarray, k: int) -> list[str]:
    d = data[live] / np.linalg.norm(data[live], axis=1, keepdims=True)
    return [f"c{live[i]:05d}" for i in np.argsort(-(d @ (q / np.linalg.norm(q))))[:k]]


def _build(tmp_path: Path) -> tuple[np.ndarray, list[int], str]:
    """A data dir with a checkpoint + graph file, and a WAL tail after it."""
    data = _data(3500)
    engine = Engine(_cfg(tmp_path))
    engine.lead("single-node")
    try:
        for lo in range(0, 3000, 500):
            _learn(engine, range(lo, lo + 500), data)
        engine.vectors.build_pending()
        assert engine.vectors.indexed == 3000
        engine.checkpoint(drain=True)
        assert (tmp_path / annfile.GRAPH_FILE).exists()
        _learn(engine, range(3000, 3500), data, delete=[f"c{i:05d}" for i in range(0, 300, 3)])
        digest = engine.digest()[1]
    finally:
        engine.close()
    live = [i for i in range(3500) if not (i < 300 and i % 3 == 0)]
    return data, live, digest


def _check(engine: Engine, data: np.ndarray, live: list[int], digest: str) -> None:
    assert engine.digest()[1] == digest
    assert len(engine.vectors) == len(live)
    hits = 0
    for i in (1, 700, 2999, 3100, 3499):
        got, exact = engine.search(data[i], 10)
        assert not exact and got[0][0] == f"c{i:05d}"
        hits += len({cid for cid, _ in got} & set(_exact(engine, data, live, data[i], 10)))
    assert hits >= 45
    got, _ = engine.search(data[0], 10)  # a deleted concept is never returned
    assert "c00000" not in {cid for cid, _ in got}


def test_restart_adopts_the_stored_graph_and_replays_the_tail(tmp_path: Path) -> None:
    data, live, digest = _build(tmp_path)
    engine = Engine(_cfg(tmp_path))
    try:
        assert engine.graph_source == annfile.GRAPH_FILE
        stats = engine.vectors.stats()
        # The graph covers the checkpoint's 3000 at once (100 of them deleted since); the
        # 500 from the WAL tail join it on the maintainer thread, which may already have
        # begun (so up to 3500), and are scanned exactly meanwhile.
        assert 3000 <= stats["hnsw_total"] <= 3500 and stats["hnsw_dead"] == 100
        assert engine.stats()["vector_index_source"] == annfile.GRAPH_FILE
        engine.vectors.build_pending()  # the tail joins the graph: ready (at most exact_limit scanned exactly)
        st = engine.stats()
        assert st["vector_index_ready"] is True
        # One float32 copy: graph storage (3500 labels) plus at most the one chunk the covered rows end in.
        assert 3500 * DIM * 4 <= int(st["vector_memory_bytes"]) <= (3500 + 4096) * DIM * 4
        assert int(st["index_memory_bytes"]) > 0 and int(st["metadata_memory_bytes"]) > 0
        # metadata: the vector index's arrays plus the concept records (estimated, ~200+ B each)
        records = engine.records_memory()
        assert records > 3400 * 200
        assert int(st["metadata_memory_bytes"]) == engine.vectors.stats()["metadata_bytes"] + records
        text = generate_latest(engine.metrics.registry).decode()
        line = next(x for x in text.splitlines() if x.startswith('sutra_vector_memory_bytes{part="metadata"}'))
        assert float(line.split()[-1]) == float(st["metadata_memory_bytes"])
        assert f'sutra_vector_memory_bytes{{part="vectors"}} {float(st["vector_memory_bytes"])}' in text
        assert 'sutra_vector_memory_bytes{part="index"}' in text and "sutra_vector_index_ready 1.0" in text
        _check(engine, data, live, digest)
        np.testing.assert_allclose(np.frombuffer(engine.embedding("c00001"), "<f4"), data[1], rtol=1e-6)
    finally:
        engine.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "other-checkpoint", "missing"])
def test_an_unusable_graph_file_is_refused_and_rebuilt(tmp_path: Path, damage: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    data, live, digest = _build(tmp_path / "d")
    path = tmp_path / "d" / annfile.GRAPH_FILE
    size = path.stat().st_size
    if damage == "flip":
        flip_bit(path, size // 2, 0x01)
    elif damage == "truncate":
        truncate_to(path, size - 100)
    elif damage == "other-checkpoint":
        older = tmp_path / "older"
        shutil.copytree(tmp_path / "d", older)
        engine = Engine(_cfg(older))  # a later checkpoint of a copy: its graph is for another LSN
        engine.lead("single-node")
        try:
            _learn(engine, range(3499, 3500), data)
            engine.checkpoint(drain=True)
        finally:
            engine.close()
        shutil.copy(older / annfile.GRAPH_FILE, path)
    else:
        path.unlink()
    reason = {"flip": "checksum mismatch", "truncate": "truncated", "other-checkpoint": "belongs to the checkpoint",
              "missing": "does not exist"}[damage]
    engine = Engine(_cfg(tmp_path / "d"))
    try:
        assert engine.graph_source.startswith("rebuilding: ") and reason in engine.graph_source
        assert engine.stats()["vector_index_source"] == engine.graph_source
        assert "not using the stored HNSW graph: " in caplog.text and reason in caplog.text
        engine.vectors.build_pending()
        assert engine.vectors.indexed == len(live) and engine.vectors.stats()["pending"] == 0
        _check(engine, data, live, digest)
    finally:
        engine.close()
