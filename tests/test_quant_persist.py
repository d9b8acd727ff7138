"""The sq8 and pq index persisted with each checkpoint (storage.hnsw version 2:
codes, trained ranges or codebooks, links or lists): a restart adopts it
instead of retraining and rebuilding; a damaged, truncated, foreign or
mismatching file is refused with its reason; a real node restarts ready."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import grpc
import numpy as np
import pytest

from sutra_cluster.client import Concept
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc as pbg
from sutra_cluster.storage import annfile, checkpoint
from sutra_cluster.storage.vectors import VectorIndex
from tests.helpers import NodeProcess, wait_for
from tests.mutators import flip_bit, truncate_to
from tests.test_vectors import _clustered_with_queries, _keys

DIM = 32
QUANTIZED = ["sq8", "pq"]


def _index(quantization: str, keys: list[str], data: np.ndarray, build: bool = True) -> VectorIndex:
    index = VectorIndex(DIM, exact_limit=200, background=False, quantization=quantization)
    index.upsert(keys, data)
    if build:
        index.remove(keys[:300:3])  # dead labels travel with the graph
        index.build_pending()
    return index


def _saved(tmp_path: Path, quantization: str) -> tuple[list[str], np.ndarray, np.ndarray, VectorIndex]:
    data, queries = _clustered_with_queries(seed=3, n=3000, nq=20, dim=DIM)
    keys = _keys(len(data))
    index = VectorIndex(DIM, exact_limit=200, background=False, quantization=quantization)
    index.upsert(keys, data)
    index.build_pending()
    index.remove(keys[:300:3])  # tombstoned after indexing: dead labels in the stored graph
    cap = index.capture_graph()
    assert cap is not None and cap.quantization == quantization
    annfile.write_graph(tmp_path, cap, 42, DIM, fsync=True)
    return keys, data, queries, index


def _reloaded(keys: list[str], data: np.ndarray, quantization: str) -> VectorIndex:
    """A fresh index loaded as a checkpoint loads it: the live vectors, in label order."""
    index = VectorIndex(DIM, exact_limit=200, background=False, quantization=quantization)
    live = [i for i in range(len(keys)) if not (i < 300 and i % 3 == 0)]
    index.upsert([keys[i] for i in live], data[live])
    return index


@pytest.mark.parametrize("quantization", QUANTIZED)
def test_round_trip_answers_as_before_without_a_rebuild(tmp_path: Path, quantization: str) -> None:
    keys, data, queries, before = _saved(tmp_path, quantization)
    raw = (tmp_path / annfile.GRAPH_FILE).read_bytes()
    magic, version, _ = checkpoint.FILE_HEADER.unpack(raw[: checkpoint.FILE_HEADER.size])
    assert (magic, version) == (annfile.MAGIC, annfile.VERSION_QUANTIZED)
    after = _reloaded(keys, data, quantization)
    try:
        assert annfile.adopt_stored_graph(tmp_path, 42, DIM, after) == annfile.GRAPH_FILE
        assert after.build_pending() == 0  # nothing retrained or rebuilt
        s0, s1 = before.stats(), after.stats()
        assert (s1["hnsw_total"], s1["hnsw_dead"], s1["pending"]) == (3000, 100, 0)
        assert s1["index_bytes"] == s0["index_bytes"]  # the same codes and links, not a sample's worth
        for q in queries:
            got0, exact0 = before.search(q, 10)
            got1, exact1 = after.search(q, 10)
            assert not exact0 and not exact1
            assert got1 == got0  # same graph, same codes, exact rescoring from the same vectors
        assert "c000000" not in {key for key, _ in after.search(data[0], 10)[0]}  # dead stays dead
        after.upsert(["new"], data[:1] + 0.5)  # and it keeps growing
        assert after.build_pending() == 1 and after.search(data[0] + 0.5, 1)[0][0][0] == "new"
    finally:
        before.close()
        after.close()


@pytest.mark.parametrize("quantization", QUANTIZED)
@pytest.mark.parametrize("damage", ["flip", "truncate", "other-lsn", "other-mode", "other-keys", "no-vectors"])
def test_a_damaged_or_foreign_quantized_graph_is_refused_with_its_reason(
        tmp_path: Path, quantization: str, damage: str) -> None:
    keys, data, _, before = _saved(tmp_path, quantization)
    before.close()
    path = tmp_path / annfile.GRAPH_FILE
    size = path.stat().st_size
    lsn, mode, reload_keys = 42, quantization, keys
    if damage == "flip":
        flip_bit(path, size // 2, 0x10)
    elif damage == "truncate":
        truncate_to(path, size - 100)
    elif damage == "other-lsn":
        lsn = 43
    elif damage == "other-mode":
        mode = "sq8" if quantization == "pq" else "pq"
    elif damage == "other-keys":
        reload_keys = [k.replace("c", "d") for k in keys]
    index = _reloaded(reload_keys, data, mode)
    if damage == "no-vectors":
        index.clear()
    reason = {"flip": "checksum mismatch", "truncate": "truncated", "other-lsn": "belongs to the checkpoint at LSN 42",
              "other-mode": f"holds a SUTRA_QUANTIZATION={quantization} graph, this node runs SUTRA_QUANTIZATION={mode}",
              "other-keys": "are not the first", "no-vectors": "not freshly loaded"}[damage]
    try:
        source = annfile.adopt_stored_graph(tmp_path, lsn, DIM, index)
        assert source.startswith("rebuilding: ") and reason in source, source
        assert index.stats()["hnsw_total"] == 0  # nothing half-adopted
        if damage != "no-vectors":
            assert index.build_pending() == 2900  # built from the vectors instead
    finally:
        index.close()


def test_a_links_only_graph_is_refused_by_a_quantized_node_and_keeps_version_1(tmp_path: Path) -> None:
    data, _ = _clustered_with_queries(seed=3, n=1000, nq=1, dim=DIM)
    keys = _keys(len(data))
    plain = _index("none", keys, data, build=False)
    plain.build_pending()
    cap = plain.capture_graph()
    assert cap is not None
    annfile.write_graph(tmp_path, cap, 7, DIM)
    plain.close()
    raw = (tmp_path / annfile.GRAPH_FILE).read_bytes()
    assert checkpoint.FILE_HEADER.unpack(raw[: checkpoint.FILE_HEADER.size])[1] == annfile.VERSION
    assert b"quantization" not in raw[:4096]  # version 1's header is unchanged
    index = VectorIndex(DIM, exact_limit=200, background=False, quantization="sq8")
    index.upsert(keys, data)
    try:
        source = annfile.adopt_stored_graph(tmp_path, 7, DIM, index)
        assert "holds a SUTRA_QUANTIZATION=none graph, this node runs SUTRA_QUANTIZATION=sq8" in source
    finally:
        index.close()


def _stats(node: NodeProcess) -> pb.GetStatsResponse:
    """GetStats with the vector fields (the client's Stats keeps the guide's)."""
    with grpc.insecure_channel(node.address) as channel:
        return pbg.StorageServiceStub(channel).GetStats(pb.GetStatsRequest(), timeout=10)


@pytest.mark.slow  # a real node, two starts
@pytest.mark.parametrize("quantization", QUANTIZED)
def test_a_real_node_restarts_with_its_quantized_graph_ready(
        node_factory: Callable[..., NodeProcess], quantization: str) -> None:
    env = {"SUTRA_QUANTIZATION": quantization, "VECTOR_DIMENSION": str(DIM), "SUTRA_ANN_THRESHOLD": "400"}
    node = node_factory(env=env)
    data, queries = _clustered_with_queries(seed=11, n=4000, nq=5, dim=DIM)
    with node.client() as c:
        for lo in range(0, len(data), 500):
            c.learn_batch([Concept(f"c{i:05d}", f"c{i}", data[i]) for i in range(lo, lo + 500)])
        wait_for(lambda: _stats(node).vector_index_ready, 120, "the index to cover the vectors")
        c.flush()
        before = [[(h.concept_id, round(h.similarity, 5)) for h in c.vector_search(q, 5)] for q in queries]
    assert node.stop() == 0
    node.start()
    stats = _stats(node)  # at once: the graph came with the checkpoint, nothing to rebuild
    assert stats.vector_index_source == annfile.GRAPH_FILE, stats.vector_index_source
    assert stats.vector_index_ready and stats.vectors == 4000
    assert stats.index_memory_bytes >= 4000 * (DIM if quantization == "sq8" else DIM // 8 + 8)
    assert "adopted a stored HNSW graph" in node.log_tail(200)
    with node.client() as c:
        for q, hits in zip(queries, before):
            assert [(h.concept_id, round(h.similarity, 5)) for h in c.vector_search(q, 5)] == hits
        for i in (0, 1999, 3999):
            assert c.vector_search(data[i], 1)[0].concept_id == f"c{i:05d}"
