"""A start that adopts storage.hnsw (SUTRA_QUANTIZATION=none) reads each vector
once: storage.dat's vectors are written straight into the stored graph's float
storage, sized before the load (annfile.GraphStorage), instead of into flat
chunks that the adoption then copies.  What must hold: every vector reads back
as stored, searches and the digest are those of before the restart, the WAL
tail joins the graph afterwards (faiss may move the storage then), and any
change to a loaded row, or a graph that is refused, falls back to chunks of
their own without losing a vector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sutra_cluster.config import Config
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage import annfile
from sutra_cluster.storage.annfile import GraphStorage, LoadedGraph
from sutra_cluster.storage.engine import Engine
from sutra_cluster.storage.flatstore import CHUNK_ROWS
from sutra_cluster.storage.vectors import VectorIndex

DIM = 8
N = 2 * CHUNK_ROWS + 1000  # two whole chunks and a partial one


def _cfg(path: Path) -> Config:
    return Config(storage_path=str(path), vector_dimension=DIM, reconcile_interval_ms=1, node_id="shared",
                  memory_threshold=1 << 30, ann_threshold=200)


def _data(n: int) -> np.ndarray:
    return np.random.default_rng(11).standard_normal((n, DIM)).astype(np.float32)


def _learn(engine: Engine, ids: range, data: np.ndarray, delete: list[str] | None = None) -> None:
    b = wal_pb2.WalBatch()
    for i in ids:
        b.concepts.append(pb.LearnConceptRequest(concept_id=f"c{i:05d}", content=f"c{i}",
                                                 embedding_f32=data[i].astype("<f4").tobytes()))
    b.delete_concept_ids.extend(delete or [])
    engine.wait_visible(engine.submit(b))


def _spy_chunks(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record, per chunk the load asks the reservation for, whether it gave its slots."""
    given: list[bool] = []
    real = GraphStorage.chunk

    def chunk(self: GraphStorage, c: int) -> np.ndarray | None:
        slots = real(self, c)
        given.append(slots is not None)
        return slots

    monkeypatch.setattr(GraphStorage, "chunk", chunk)
    return given


def test_a_start_loads_the_vectors_into_the_stored_graph_and_the_tail_joins_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data(N + 600)
    # Deleted before the checkpoint, all in the second chunk's labels: the graph keeps them as dead
    # labels, so chunk 0's rows are labels 0..4095 (loaded in place) and chunk 1's are not consecutive.
    gone = [f"c{i:05d}" for i in range(CHUNK_ROWS + 10, CHUNK_ROWS + 200, 7)]
    engine = Engine(_cfg(tmp_path))
    engine.lead("single-node")
    try:
        for lo in range(0, N, 2000):
            _learn(engine, range(lo, min(N, lo + 2000)), data)
        engine.vectors.build_pending()
        _learn(engine, range(0, 0), data, delete=gone)
        engine.checkpoint(drain=True)
        _learn(engine, range(N, N + 600), data, delete=["c00003"])  # the WAL tail
        digest = engine.digest()[1]
        before = engine.search(data[17], 10)[0]
    finally:
        engine.close()
    given = _spy_chunks(monkeypatch)
    engine = Engine(_cfg(tmp_path))
    try:
        assert engine.graph_source == annfile.GRAPH_FILE
        assert given[:2] == [True, False]  # chunk 0 written in place; chunk 1 holds rows of dead labels' gaps
        assert engine.digest()[1] == digest
        engine.vectors.build_pending()  # the tail joins the graph: faiss grows (moves) the storage
        assert engine.stats()["vector_index_ready"] is True
        dead = set(gone) | {"c00003"}
        for i in range(N + 600):
            key = f"c{i:05d}"
            got = engine.vectors.get(key)
            if key in dead:
                assert got is None
            else:
                assert got is not None
                np.testing.assert_allclose(got, data[i], rtol=1e-5, atol=1e-6)
        assert engine.search(data[17], 10)[0] == before
        for i in (5, CHUNK_ROWS - 1, CHUNK_ROWS, N - 1, N + 599):
            assert engine.search(data[i], 1)[0][0][0] == f"c{i:05d}"
    finally:
        engine.close()


def _graph(vi: VectorIndex) -> LoadedGraph:
    cap = vi.capture_graph()
    assert cap is not None
    return LoadedGraph(cap.index, cap.count, cap.alive, cap.keys_hash)


def _fresh(n: int) -> tuple[VectorIndex, np.ndarray, list[str], LoadedGraph]:
    data = _data(n)
    keys = [f"k{i:05d}" for i in range(n)]
    built = VectorIndex(DIM, exact_limit=100, background=False)
    built.upsert(keys, data)
    built.build_pending()
    graph = _graph(built)
    built.close()
    return VectorIndex(DIM, exact_limit=100, background=False), data, keys, graph


def _reservation(graph: LoadedGraph) -> GraphStorage:
    storage, flat = annfile._sized_flat(graph.total, DIM)
    return GraphStorage(graph.total, graph.alive, np.flatnonzero(graph.alive), storage, flat)


def test_an_update_during_the_load_stops_loading_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    vi, data, keys, graph = _fresh(3 * CHUNK_ROWS)
    given = _spy_chunks(monkeypatch)
    try:
        vi.reserve_graph_storage(_reservation(graph))
        vi.upsert(keys[:CHUNK_ROWS], data[:CHUNK_ROWS])
        vi.upsert(keys[5:6], data[6:7])  # a repeated key: rows no longer map onto labels
        vi.upsert(keys[CHUNK_ROWS:], data[CHUNK_ROWS:])
        assert given == [True]  # only the chunk appended before the update
        with pytest.raises(ValueError, match="not freshly loaded"):
            vi.adopt_graph(graph)
        vi.reserve_graph_storage(None)
        vi.build_pending()
        for i in range(0, 3 * CHUNK_ROWS, 997):
            np.testing.assert_allclose(vi.get(keys[i]), data[6] if i == 5 else data[i], rtol=1e-5, atol=1e-6)
        assert vi.search(data[CHUNK_ROWS + 1], 1)[0][0][0] == keys[CHUNK_ROWS + 1]
    finally:
        vi.close()


def test_a_refused_graph_leaves_the_loaded_vectors_readable() -> None:
    vi, data, keys, graph = _fresh(2 * CHUNK_ROWS)
    try:
        vi.reserve_graph_storage(_reservation(graph))
        other = [f"x{i:05d}" for i in range(2 * CHUNK_ROWS)]  # other keys: the adoption is refused
        vi.upsert(other, data)
        with pytest.raises(ValueError, match="live labels are not"):
            vi.adopt_graph(graph)
        vi.reserve_graph_storage(None)
        vi.upsert(["late"], data[:1] + 1)
        vi.build_pending()  # a graph of its own, with its own storage
        for i in range(0, 2 * CHUNK_ROWS, 511):
            np.testing.assert_allclose(vi.get(other[i]), data[i], rtol=1e-5, atol=1e-6)
        assert vi.search(data[CHUNK_ROWS + 3], 1)[0][0][0] == other[CHUNK_ROWS + 3]
    finally:
        vi.close()


def test_quantized_indexes_reserve_nothing() -> None:
    empty, _, _, graph = _fresh(CHUNK_ROWS)
    vi = VectorIndex(DIM, exact_limit=100, background=False, quantization="sq8")
    try:
        vi.reserve_graph_storage(_reservation(graph))
        assert vi._reserved is None
    finally:
        vi.close()
        empty.close()


def _written_in_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quantization: str) -> tuple[LoadedGraph, int]:
    """storage.hnsw written with small faiss frames, so the reader streams across many."""
    data = _data(3000)
    vi = VectorIndex(DIM, exact_limit=100, background=False, quantization=quantization)
    try:
        vi.upsert([f"k{i:05d}" for i in range(3000)], data)
        vi.build_pending()
        cap = vi.capture_graph()
        assert cap is not None
        monkeypatch.setattr(annfile, "_PART", 4000)
        size = annfile.write_graph(tmp_path, cap, 9, DIM, fsync=False)
        return _graph(vi), size
    finally:
        vi.close()


@pytest.mark.parametrize("quantization", ["none", "sq8"])
def test_the_graph_is_parsed_frame_by_frame_and_damage_anywhere_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quantization: str) -> None:
    saved, size = _written_in_parts(tmp_path, monkeypatch, quantization)
    graph = annfile.read_graph(tmp_path, 9, DIM, quantization)
    assert graph.total == saved.total and graph.keys_hash == saved.keys_hash
    np.testing.assert_array_equal(graph.alive, saved.alive)
    assert graph.index.hnsw.neighbors.size() == saved.index.hnsw.neighbors.size()
    path = tmp_path / annfile.GRAPH_FILE
    good = path.read_bytes()
    for offset in (size // 3, size - 300, size - 50):  # inside the index's frames, its last one, the end frame
        broken = bytearray(good)
        broken[offset] ^= 0x10
        path.write_bytes(bytes(broken))
        with pytest.raises(annfile.GraphFileError, match="checksum mismatch") as err:
            annfile.read_graph(tmp_path, 9, DIM, quantization)
        assert str(err.value).count(str(path)) == 1
    for cut in (size // 2, size - 10):
        path.write_bytes(good[:cut])
        with pytest.raises(annfile.GraphFileError, match="truncated"):
            annfile.read_graph(tmp_path, 9, DIM, quantization)
