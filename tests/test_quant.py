"""SUTRA_VECTOR_STORAGE=memory|mmap and SUTRA_QUANTIZATION=none|sq8|pq (issue
12): settings refused with the setting's name, recall@10 of sq8 and pq with
exact rescoring (plain and filtered), the mapped store read back through
compaction and rebuilds, memory by part, and restarts in each mode (the
quantized graph's persistence itself: tests/test_quant_persist.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sutra_cluster.config import Config, load
from sutra_cluster.errors import ConfigError
from sutra_cluster.storage import annfile, quant
from sutra_cluster.storage.engine import Engine
from sutra_cluster.storage.vectors import VectorIndex
from tests.test_scale_persist import _exact, _learn
from tests.test_vectors import _brute_force, _clustered_with_queries, _keys, _recall

MODES = [("memory", "sq8"), ("mmap", "sq8"), ("memory", "pq"), ("mmap", "pq")]


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize("env, named", [
    ({"SUTRA_VECTOR_STORAGE": "disk"}, "SUTRA_VECTOR_STORAGE"),
    ({"SUTRA_QUANTIZATION": "pq4"}, "SUTRA_QUANTIZATION"),
    ({"SUTRA_QUANTIZATION": "int4"}, "SUTRA_QUANTIZATION"),
    ({"SUTRA_VECTOR_STORAGE": "mmap"}, "SUTRA_VECTOR_STORAGE=mmap needs SUTRA_QUANTIZATION=sq8 or pq"),
])
def test_settings_refused_name_the_setting_and_what_is_allowed(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env)
    msg = str(info.value)
    assert named in msg
    if "mmap needs" not in named:
        assert ("memory|mmap" if "STORAGE" in named else "none|sq8|pq") in msg
    with pytest.raises(ValueError, match=named.split("=")[0]):
        VectorIndex(8, storage=env.get("SUTRA_VECTOR_STORAGE", "memory"),
                    quantization=env.get("SUTRA_QUANTIZATION", "none"), background=False)


def test_settings_accepted() -> None:
    cfg = load({"SUTRA_VECTOR_STORAGE": "MMAP", "SUTRA_QUANTIZATION": "sq8"})
    assert (cfg.vector_storage, cfg.quantization) == ("mmap", "sq8")
    assert load({"SUTRA_VECTOR_STORAGE": "mmap", "SUTRA_QUANTIZATION": "PQ"}).quantization == "pq"
    assert (load({}).vector_storage, load({}).quantization) == ("memory", "none")


# -------------------------------------------------------------------- recall


@pytest.fixture(scope="module", params=MODES, ids=lambda m: "-".join(m))
def clustered_quant(request, tmp_path_factory) -> tuple[list[str], np.ndarray, np.ndarray, VectorIndex]:
    storage, quantization = request.param
    data, queries = _clustered_with_queries(seed=7, n=20_000, nq=200, dim=768)
    keys = _keys(len(data))
    index = VectorIndex(768, background=False, storage=storage, quantization=quantization,
                        map_dir=tmp_path_factory.mktemp("map") / quant.MAP_DIR)
    for lo in range(0, len(data), 4096):
        index.upsert(keys[lo : lo + 4096], data[lo : lo + 4096])
    assert index.build_pending() == len(data)
    assert index.indexed == len(data)
    yield keys, data, queries, index
    index.close()


@pytest.mark.slow  # builds a 20K x 768 HNSW SQ8 graph or IVF-PQ index per mode
def test_quantized_recall_at_10_with_exact_rescoring(clustered_quant) -> None:
    keys, data, queries, index = clustered_quant
    recall = _recall(index, keys, data, queries)
    print(f"\nrecall@10 ({index.storage}/{index.quantization}, 20K clustered 768-d, default ef): {recall:.4f}")
    assert recall >= 0.95
    # Scores are exact cosines (rescored from the full vectors), not code estimates.
    got, _ = index.search(queries[0], 10)
    want = dict(_brute_force(keys, data, queries[0], 50))
    for key, score in got:
        if key in want:
            assert abs(score - want[key]) < 1e-5
    stats = index.stats()
    raw = len(data) * 768 * 4
    # The codes: a byte a dimension (sq8), a byte per 8 dimensions and an 8-byte id (pq).
    assert stats["index_bytes"] >= len(data) * (768 if index.quantization == "sq8" else 96 + 8)
    if index.storage == "mmap":
        assert stats["vector_bytes"] == 0 and stats["mapped_vector_bytes"] >= raw
    else:
        assert stats["vector_bytes"] >= raw and stats["mapped_vector_bytes"] == 0


@pytest.mark.slow
def test_quantized_filtered_recall_one_percent_filter(clustered_quant) -> None:
    keys, data, queries, index = clustered_quant
    rng = np.random.default_rng(29)
    picked = np.flatnonzero(rng.random(len(keys)) < 0.01)
    allowed = {keys[i] for i in picked}
    normed = data[picked] / np.linalg.norm(data[picked], axis=1, keepdims=True)
    index.filter_exact_limit = 0  # the graph walked with a selector, then rescored
    hits = 0
    try:
        for q in queries:
            got, exact = index.search(q, 10, allowed=allowed)
            assert not exact and {key for key, _ in got} <= allowed
            truth = {keys[picked[i]] for i in np.argsort(-(normed @ q))[:10]}
            hits += len({key for key, _ in got} & truth)
    finally:
        index.filter_exact_limit = 4096
    recall = hits / (10 * len(queries))
    print(f"\nfiltered recall@10 ({index.storage}/{index.quantization}, 1% filter): {recall:.4f}")
    assert recall >= 0.95


# ------------------------------------------------- one store, read back in every mode


@pytest.mark.parametrize("storage, quantization", MODES)
def test_rows_read_back_through_compaction_and_rebuild(tmp_path: Path, storage: str, quantization: str) -> None:
    data, queries = _clustered_with_queries(seed=31, n=12_000, nq=10, dim=16)
    keys = _keys(len(data))
    index = VectorIndex(16, exact_limit=100, background=False, storage=storage, quantization=quantization,
                        map_dir=tmp_path / quant.MAP_DIR)
    index.upsert(keys[:10_000], data[:10_000])
    index.build_pending()
    index.upsert(keys[10_000:], data[10_000:])
    if storage == "mmap":  # mapped files are unlinked once mapped
        assert list((tmp_path / quant.MAP_DIR).iterdir()) == []
    index.remove(keys[:9_000:3])  # compaction keeps every full vector (rescoring reads them)
    live = [i for i in range(12_000) if not (i < 9_000 and i % 3 == 0)]
    for i in (1, 4097, 9_999, 10_000, 11_999):
        np.testing.assert_allclose(index.get(keys[i]), data[i], rtol=1e-6)
    for q in queries:  # graph + tail, rescored: the top hit is the exact one
        got, exact = index.search(q, 5)
        assert not exact and got[0][0] == _brute_force([keys[i] for i in live], data[live], q, 1)[0][0]
    assert index.build_pending() == 9_000  # a rebuild (retrained) from the kept vectors
    assert dict(index.items()).keys() == {keys[i] for i in live}
    for i in (1, 4097, 11_999):
        got, _ = index.search(data[i], 1)
        assert got[0][0] == keys[i] and abs(got[0][1] - 1.0) < 1e-5
    cap = index.capture_graph()  # persisted with its codes (tests/test_quant_persist.py)
    assert cap is not None and cap.quantization == quantization and cap.count == 9_000


# ------------------------------------------------------------------ restarts


def _cfg(path: Path, storage: str, quantization: str) -> Config:
    return Config(storage_path=str(path), vector_dimension=16, reconcile_interval_ms=1, node_id="quant",
                  memory_threshold=1 << 30, ann_threshold=200, vector_storage=storage, quantization=quantization)


@pytest.mark.parametrize("storage, quantization", [("memory", "none"), *MODES])
def test_restart_in_each_mode_rebuilds_derived_state(tmp_path: Path, storage: str, quantization: str) -> None:
    """Flush and restart in the same mode, then in another: every vector is back,
    search answers exactly as the data says, a stray or damaged map file and a
    graph of another mode are never trusted."""
    data = np.random.default_rng(5).standard_normal((3000, 16)).astype(np.float32)
    engine = Engine(_cfg(tmp_path, storage, quantization))
    engine.lead("single-node")
    try:
        for lo in range(0, 2500, 500):
            _learn(engine, range(lo, lo + 500), data)
        engine.vectors.build_pending()
        engine.checkpoint(drain=True)
        assert (tmp_path / annfile.GRAPH_FILE).exists()  # in every mode
        _learn(engine, range(2500, 3000), data)  # a WAL tail past the checkpoint
        digest = engine.digest()[1]
    finally:
        engine.close()
    mapdir = tmp_path / quant.MAP_DIR
    mapdir.mkdir(exist_ok=True)
    (mapdir / "chunk-1-1.f32").write_bytes(b"\xff" * 4096)  # as if a crash left a damaged map file
    for again in (f"{storage}/{quantization}", "mmap/sq8", "memory/pq", "memory/none"):
        st, qt = again.split("/")
        engine = Engine(_cfg(tmp_path, st, qt))
        engine.lead("single-node")
        try:
            if st == "mmap":  # the stray file is deleted, never read
                assert list(mapdir.iterdir()) == []
            assert engine.digest()[1] == digest and len(engine.vectors) == 3000
            engine.vectors.build_pending()
            if again == f"{storage}/{quantization}":
                assert engine.graph_source == annfile.GRAPH_FILE
            elif qt != quantization:  # a graph of another mode is refused, naming the setting
                assert engine.graph_source.startswith("rebuilding: ") and f"SUTRA_QUANTIZATION={qt}" in \
                    engine.graph_source
            stats = engine.stats()
            assert stats["vector_index_ready"]
            assert (stats["vector_memory_bytes"] == 0) == (st == "mmap")
            for i in (0, 1234, 2999):
                # A beam as wide as the data: the graph (built by one or more threads, so not the
                # same graph each run) or every inverted list is searched, so the answer is exact.
                got = engine.vectors.search(data[i], 3, ef_search=3000)[0]
                assert [k for k, _ in got] == _exact(engine, data, list(range(3000)), data[i], 3)
        finally:
            engine.close()
