"""Tests for sutra_cluster.storage.vectors.VectorIndex.

Deterministic (seeded data, background=False wherever timing could matter).
The recall/throughput benchmark lives in bench/bench_vectors.py; it ran on
gaussian and clustered 768-d data (slow; prints figures, asserts nothing
about gaussian, which no sane efSearch brings to 0.95 recall).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from sutra_cluster.api.validate import MAX_EF_SEARCH
from sutra_cluster.storage import ann as ann_module
from sutra_cluster.storage import vectors as vectors_module
from sutra_cluster.storage.ann import BEAM_MAX, default_beam
from sutra_cluster.storage.quant import PQ_BEAM_MAX
from sutra_cluster.storage.vectors import VectorIndex


def _keys(n: int, prefix: str = "c") -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(n)]


def _clustered(rng: np.random.Generator, n: int, dim: int, clusters: int = 20,
               rank: int = 128) -> np.ndarray:
    """Topic-like mixture: cluster centre + shared low-rank variation + noise.

    Stands in for real embeddings (clustered, lower intrinsic dimension than
    ``dim``).  Few, large clusters with strong isotropic noise keep it hard:
    at 20K x 768-d the mean nearest-neighbour cosine is ~0.4 and HNSW recall
    still moves with efSearch (0.95 at ef 32, 0.99 at 64), unlike easy
    mixtures that score 1.0 at any beam width.
    """
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    basis = rng.standard_normal((dim, rank), dtype=np.float32) / np.sqrt(rank)
    which = rng.integers(0, clusters, n)
    latent = 1.5 * rng.standard_normal((n, rank), dtype=np.float32)
    noise = rng.standard_normal((n, dim), dtype=np.float32)
    return np.ascontiguousarray(centres[which] + latent @ basis.T + noise, dtype=np.float32)


def _clustered_with_queries(seed: int, n: int, nq: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Data and held-out queries drawn from the same mixture."""
    both = _clustered(np.random.default_rng(seed), n + nq, dim)
    return both[:n], both[n:]


def _brute_force(keys: list[str], data: np.ndarray, q: np.ndarray, k: int) -> list[tuple[str, float]]:
    """Reference: cosine via float64 numpy, sorted by similarity desc, key asc."""
    d = data.astype(np.float64)
    sims = (d @ q.astype(np.float64)) / (np.linalg.norm(d, axis=1) * np.linalg.norm(q))
    order = sorted(range(len(keys)), key=lambda i: (-sims[i], keys[i]))
    return [(keys[i], float(sims[i])) for i in order[:k]]


def _recall(index: VectorIndex, keys: list[str], data: np.ndarray, queries: np.ndarray,
            k: int = 10, ef: int = 0) -> float:
    normed = data / np.linalg.norm(data, axis=1, keepdims=True)
    truth = np.argsort(-(queries @ normed.T), axis=1)[:, :k]
    hits = 0
    for q, want in zip(queries, truth):
        got, exact = index.search(q, k, ef_search=ef)
        assert not exact
        hits += len({key for key, _ in got} & {keys[i] for i in want})
    return hits / (k * len(queries))


def _wait_for(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before deadline")
        time.sleep(0.01)


# ------------------------------------------------------------------ exact path


def test_exact_search_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    keys, data = _keys(600), rng.standard_normal((600, 32), dtype=np.float32)
    index = VectorIndex(32, background=False)
    index.upsert(keys[:300], data[:300])
    index.upsert(keys[300:], data[300:])
    assert len(index) == 600
    for q in rng.standard_normal((20, 32), dtype=np.float32):
        got, exact = index.search(q, 10)
        assert exact
        want = _brute_force(keys, data, q, 10)
        assert [key for key, _ in got] == [key for key, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
    got, _ = index.search(data[5], 700)  # k beyond size returns everything
    assert len(got) == 600 and got[0][0] == keys[5]
    assert got[0][1] == pytest.approx(1.0, abs=1e-5)
    assert index.search(data[5], 0) == ([], True)


def test_ties_break_by_key_and_similarity_range() -> None:
    index = VectorIndex(4, background=False)
    v = np.array([[1, 0, 0, 0]], dtype=np.float32)
    index.upsert(["b", "c", "a"], np.repeat(v, 3, axis=0) * np.array([[1], [2], [3]], np.float32))
    index.upsert(["neg"], -v)
    got, _ = index.search(v[0], 4)
    assert [key for key, _ in got] == ["a", "b", "c", "neg"]
    assert all(-1.0 <= s <= 1.0 for _, s in got)
    assert got[-1][1] == pytest.approx(-1.0)


def test_upsert_replaces_get_returns_original() -> None:
    index = VectorIndex(3, background=False)
    index.upsert(["x", "y"], np.array([[3, 4, 0], [0, 0, 2]], dtype=np.float32))
    np.testing.assert_array_equal(index.get("x"), [3, 4, 0])  # not normalised
    copy = index.get("x")
    copy[0] = 99  # a copy: mutating it must not touch the index
    np.testing.assert_array_equal(index.get("x"), [3, 4, 0])
    index.upsert(["x"], np.array([[0, 0, -5]], dtype=np.float32))
    assert len(index) == 2 and index.get("missing") is None
    np.testing.assert_array_equal(index.get("x"), [0, 0, -5])
    got, _ = index.search(np.array([0, 0, 1], np.float32), 2)
    assert got == [("y", pytest.approx(1.0)), ("x", pytest.approx(-1.0))]


def test_duplicate_keys_in_one_call_last_wins() -> None:
    index = VectorIndex(2, background=False)
    index.upsert(["a", "b", "a"], np.array([[1, 0], [0, 1], [-1, 0]], dtype=np.float32))
    assert len(index) == 2
    np.testing.assert_array_equal(index.get("a"), [-1, 0])
    assert index.search(np.array([-1, 0], np.float32), 1)[0][0][0] == "a"


def test_remove_contains_clear() -> None:
    index = VectorIndex(2, background=False)
    index.upsert(["a", "b"], np.eye(2, dtype=np.float32))
    index.remove(["a", "unknown"])
    assert "a" not in index and "b" in index and len(index) == 1
    assert [key for key, _ in index.search(np.array([1, 0], np.float32), 5)[0]] == ["b"]
    index.upsert(["a"], np.eye(2, dtype=np.float32)[:1])  # re-add after removal
    assert len(index) == 2 and "a" in index
    index.clear()
    assert len(index) == 0 and index.search(np.array([1, 0], np.float32), 3) == ([], True)
    index.upsert(["z"], np.eye(2, dtype=np.float32)[:1])
    assert list(k for k, _ in index.items()) == ["z"]


@pytest.mark.parametrize("bad", [0.0, np.nan, np.inf, -np.inf])
def test_rejects_zero_nan_inf_atomically(bad: float) -> None:
    index = VectorIndex(3, background=False)
    index.upsert(["ok"], np.ones((1, 3), np.float32))
    vecs = np.ones((2, 3), np.float32)
    vecs[1] = 0.0 if bad == 0.0 else [1.0, bad, 1.0]
    with pytest.raises(ValueError):
        index.upsert(["new", "bad"], vecs)
    assert len(index) == 1 and "new" not in index  # whole batch rejected
    with pytest.raises(ValueError):
        index.search(vecs[1], 1)


def test_rejects_bad_shapes() -> None:
    index = VectorIndex(3, background=False)
    with pytest.raises(ValueError):
        index.upsert(["a"], np.ones((1, 4), np.float32))
    with pytest.raises(ValueError):
        index.upsert(["a", "b"], np.ones((1, 3), np.float32))
    with pytest.raises(ValueError):
        index.search(np.ones(4, np.float32), 1)
    index.upsert([], np.empty((0, 3), np.float32))
    assert len(index) == 0


def test_tiny_float32_values_normalise() -> None:
    index = VectorIndex(2, background=False)
    index.upsert(["tiny", "huge"], np.array([[1e-30, 0], [0, 3e38]], dtype=np.float32))
    got, _ = index.search(np.array([1, 0], np.float32), 2)
    assert got[0] == ("tiny", pytest.approx(1.0)) and got[1][1] == pytest.approx(0.0)


def test_items_is_a_snapshot_and_compaction_keeps_data() -> None:
    rng = np.random.default_rng(2)
    index = VectorIndex(8, background=False)
    keys, data = _keys(5000), rng.standard_normal((5000, 8), dtype=np.float32)
    index.upsert(keys, data)
    snapshot = index.items()
    # Enough replacements and removals to force several compactions.
    for round_ in range(3):
        index.upsert(keys[:3000], data[:3000] * (round_ + 2))
    index.remove(keys[4000:])
    got = dict(snapshot)  # one stored copy (normalised, plus its norm): originals to within rounding
    assert sorted(got) == keys
    np.testing.assert_allclose(np.array([got[k] for k in keys]), data, rtol=1e-6, atol=1e-6)
    assert len(index) == 4000 and index.stats()["rows"] == 5000  # compacted each round
    np.testing.assert_allclose(index.get(keys[10]), data[10] * 4, rtol=1e-6)
    np.testing.assert_allclose(index.get(keys[3500]), data[3500], rtol=1e-6)
    assert index.get(keys[4500]) is None
    got, _ = index.search(data[3500], 1)
    assert got[0][0] == keys[3500]


# -------------------------------------------------------------------- ANN path


@pytest.fixture(scope="module")
def clustered_20k() -> tuple[list[str], np.ndarray, np.ndarray, VectorIndex]:
    data, queries = _clustered_with_queries(seed=7, n=20_000, nq=200, dim=768)
    keys = _keys(len(data))
    index = VectorIndex(768, background=False)
    for lo in range(0, len(data), 4096):  # batches, like the reconciler
        index.upsert(keys[lo : lo + 4096], data[lo : lo + 4096])
    assert index.indexed == 0
    assert index.build_pending() == len(data)
    assert index.indexed == len(data)
    return keys, data, queries, index


@pytest.mark.slow  # builds a 20K x 768 HNSW index: half the quick loop on a busy machine
def test_ann_recall_at_10_on_20k_clustered_768d(clustered_20k) -> None:
    keys, data, queries, index = clustered_20k
    recall = _recall(index, keys, data, queries)
    print(f"\nrecall@10 (20K clustered 768-d, default ef): {recall:.4f}")
    assert recall >= 0.95
    # The caller's ef only raises the beam; a big one must not hurt.
    got, exact = index.search(queries[0], 10, ef_search=400)
    assert not exact and len(got) == 10


def test_search_correct_while_hnsw_trails() -> None:
    data, _ = _clustered_with_queries(seed=3, n=6000, nq=0, dim=64)
    keys = _keys(len(data))
    index = VectorIndex(64, exact_limit=1000, background=False, index_batch=500)
    index.upsert(keys[:4000], data[:4000])
    assert index.search(data[0], 5)[1]  # past exact_limit but no graph yet: exact
    index.build_pending()
    index.upsert(keys[4000:], data[4000:])
    assert index.build_pending(limit=1000) == 1000  # graph now trails by 1000 rows
    assert index.stats()["pending"] == 1000
    for i in (4100, 5500, 5999, 10):  # tail rows and a graph row
        got, exact = index.search(data[i], 5)
        assert not exact and got[0] == (keys[i], pytest.approx(1.0, abs=1e-5))
    # An update moves a key from the graph to the tail: found once, new value.
    fresh = np.random.default_rng(4).standard_normal((1, 64), dtype=np.float32)
    index.upsert([keys[10]], fresh)
    got, _ = index.search(fresh[0], 5)
    assert got[0] == (keys[10], pytest.approx(1.0, abs=1e-5))
    assert [k for k, _ in got].count(keys[10]) == 1
    got, _ = index.search(data[10], 5)  # the superseded vector is gone
    assert all(k != keys[10] or s < 0.999 for k, s in got)


def test_tombstones_filtered_and_rebuild_keeps_recall() -> None:
    data, queries = _clustered_with_queries(seed=5, n=8000, nq=100, dim=96)
    keys = _keys(len(data))
    index = VectorIndex(96, exact_limit=500, background=False)
    index.upsert(keys, data)
    index.build_pending()
    removed = set(keys[::5])  # 20% of the graph, just under the rebuild line
    index.remove(sorted(removed))
    assert index.stats()["hnsw_dead"] == len(removed)
    for q in np.concatenate([queries[:30], data[::200]]):  # incl. removed exact matches
        got, exact = index.search(q, 20)
        assert not exact and len(got) == 20
        assert not removed & {k for k, _ in got}
    more = set(keys[1::5])  # pushes the graph past 20% dead
    index.remove(sorted(more))
    removed |= more
    index.build_pending()  # rebuilds, then swaps the new graph in
    stats = index.stats()
    assert stats["hnsw_total"] == len(index) == 4800 and stats["hnsw_dead"] == 0
    live = [i for i, k in enumerate(keys) if k not in removed]
    recall = _recall(index, [keys[i] for i in live], data[live], queries)
    print(f"\nrecall@10 after rebuild (4.8K clustered 96-d): {recall:.4f}")
    assert recall >= 0.95


# ---------------------------------------------------------- background thread


def test_background_thread_indexes_and_close_stops_it() -> None:
    data, _ = _clustered_with_queries(seed=9, n=3000, nq=0, dim=32)
    keys = _keys(len(data))
    index = VectorIndex(32, exact_limit=400, index_batch=200)
    try:
        thread = index._thread
        assert thread is not None and thread.is_alive()
        for lo in range(0, 3000, 250):
            index.upsert(keys[lo : lo + 250], data[lo : lo + 250])
        _wait_for(lambda: index.indexed == len(index) == 3000)
        index.remove(keys[:1000])  # 33% dead: the thread rebuilds on its own
        _wait_for(lambda: index.stats()["hnsw_dead"] == 0 and index.indexed == 2000)
        got, exact = index.search(data[2500], 3)
        assert not exact and got[0][0] == keys[2500]
    finally:
        index.close()
    assert not thread.is_alive()
    index.close()  # idempotent
    index.upsert(["late"], data[:1])  # still usable, just no background indexing
    assert index.search(data[0], 1)[0][0][0] == "late"


def test_concurrent_search_during_background_indexing() -> None:
    data, queries = _clustered_with_queries(seed=11, n=4000, nq=50, dim=48)
    keys = _keys(len(data))
    index = VectorIndex(48, exact_limit=300, index_batch=100)
    errors: list[BaseException] = []
    done = threading.Event()

    def searcher() -> None:
        try:
            while not done.is_set():
                for q in queries:
                    before = len(index)  # live never drops below 180 once >0
                    got, _ = index.search(q, 10)
                    assert len(got) == 10 if before >= 10 else len(got) <= 10
                    assert all(got[i][1] >= got[i + 1][1] for i in range(len(got) - 1))
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for lo in range(0, 4000, 200):
            index.upsert(keys[lo : lo + 200], data[lo : lo + 200])
            index.remove(keys[lo : lo + 20])
        # The maintainer runs at nice +10 so indexing yields to serving: with the
        # two searchers and a busy machine it gets a small share of a core (2.6 s
        # alone, ~27 s beside four busy processes), so the deadline is generous.
        _wait_for(lambda: index.indexed == len(index) == 3600, timeout=180.0)
    finally:
        done.set()
        for t in threads:
            t.join()
        index.close()
    assert not errors, errors[0]
    got, _ = index.search(data[3999], 1)
    assert got[0][0] == keys[3999]


# ------------------------------------------------------------- filtered search


def _filtered_truth(keys: list[str], data: np.ndarray, allowed: set[str], q: np.ndarray,
                    k: int) -> list[tuple[str, float]]:
    rows = [i for i, key in enumerate(keys) if key in allowed]
    return _brute_force([keys[i] for i in rows], data[rows], q, k)


def test_filtered_exact_search_is_top_k_among_allowed() -> None:
    rng = np.random.default_rng(21)
    keys, data = _keys(800), rng.standard_normal((800, 16), dtype=np.float32)
    index = VectorIndex(16, background=False)
    index.upsert(keys, data)
    allowed = set(keys[::7]) | {"unknown-key"}
    for q in rng.standard_normal((10, 16), dtype=np.float32):
        got, exact = index.search(q, 5, allowed=allowed)
        want = _filtered_truth(keys, data, allowed, q, 5)
        assert exact and [key for key, _ in got] == [key for key, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
    assert index.search(data[0], 5, allowed=set()) == ([], True)
    assert index.search(data[0], 5, allowed={"unknown-key"}) == ([], True)
    index.remove([keys[0]])  # a removed key in the allowed set is never returned
    got, _ = index.search(data[0], 800, allowed=allowed)
    assert keys[0] not in {key for key, _ in got} and len(got) == len(allowed) - 2


def test_score_threshold_drops_weak_hits() -> None:
    index = VectorIndex(2, background=False)
    index.upsert(["x", "y", "z"], np.array([[1, 0], [1, 1], [0, 1]], dtype=np.float32))
    got, _ = index.search(np.array([1, 0], np.float32), 3, score_threshold=0.5)
    assert [key for key, _ in got] == ["x", "y"]
    got, _ = index.search(np.array([1, 0], np.float32), 3, allowed={"y", "z"}, score_threshold=0.5)
    assert [key for key, _ in got] == ["y"]


def test_filtered_graph_search_with_tail_and_tombstones() -> None:
    data, queries = _clustered_with_queries(seed=23, n=6000, nq=20, dim=64)
    keys = _keys(len(data))
    index = VectorIndex(64, exact_limit=500, background=False, filter_exact_limit=0)
    index.upsert(keys[:5000], data[:5000])
    index.build_pending()
    index.upsert(keys[5000:], data[5000:])  # an unindexed tail the filter also covers
    index.remove(keys[:5000:10])
    allowed = set(keys[::3])
    live = set(keys) - set(keys[:5000:10])
    hits = 0
    for q in np.concatenate([queries, data[5001:5002], data[30:31]]):
        got, exact = index.search(q, 10, allowed=allowed)
        assert not exact and len(got) == 10 and {key for key, _ in got} <= allowed & live
        want = _filtered_truth(keys, data, allowed & live, q, 10)
        hits += len({key for key, _ in got} & {key for key, _ in want})
    assert hits / (10 * (len(queries) + 2)) >= 0.95
    got, _ = index.search(data[5001], 1, allowed=allowed)  # in the tail, never in the graph
    assert got[0] == (keys[5001], pytest.approx(1.0, abs=1e-5))
    tiny = {keys[3], keys[6]}  # fewer allowed rows than k: the graph finds both or exact does
    got, _ = index.search(queries[0], 10, allowed=tiny)
    assert {key for key, _ in got} == tiny


@pytest.mark.slow  # uses the 20K x 768 graph
def test_filtered_recall_at_10_one_percent_filter(clustered_20k) -> None:
    keys, data, queries, index = clustered_20k
    rng = np.random.default_rng(29)
    picked = np.flatnonzero(rng.random(len(keys)) < 0.01)
    allowed = {keys[i] for i in picked}
    normed = data[picked] / np.linalg.norm(data[picked], axis=1, keepdims=True)
    results = {}
    for limit in (0, 10**9):  # the graph with a selector, then the exact scan of the allowed rows
        index.filter_exact_limit = limit
        hits = 0
        for q in queries:
            got, exact = index.search(q, 10, allowed=allowed)
            assert exact == (limit > 0) and {key for key, _ in got} <= allowed
            truth = {keys[picked[i]] for i in np.argsort(-(normed @ q))[:10]}
            hits += len({key for key, _ in got} & truth)
        results[limit] = hits / (10 * len(queries))
    index.filter_exact_limit = 4096
    print(f"\nfiltered recall@10 (1% filter, 20K clustered 768-d): graph {results[0]:.4f}, "
          f"exact scan {results[10**9]:.4f}")
    assert results[0] >= 0.95 and results[10**9] == 1.0


# ------------------------------------------------------------ one copy of each vector


def test_graph_rows_have_one_copy_and_read_back_through_compaction_and_rebuild() -> None:
    data, queries = _clustered_with_queries(seed=31, n=12_000, nq=10, dim=16)
    keys = _keys(len(data))
    index = VectorIndex(16, exact_limit=100, background=False)
    index.upsert(keys[:10_000], data[:10_000])
    index.build_pending()
    index.upsert(keys[10_000:], data[10_000:])  # a tail the graph does not cover yet
    stats = index.stats()
    # Covered chunks are freed: the graph's storage is their only copy (plus the
    # tail's chunks, 4096 rows each).
    assert stats["vector_bytes"] <= (12_000 + 2 * 4096) * 16 * 4
    assert stats["index_bytes"] > 0 and stats["metadata_bytes"] > 0
    for i in (0, 4095, 4096, 9_999, 10_000, 11_999):
        np.testing.assert_allclose(index.get(keys[i]), data[i], rtol=1e-6)
    index.remove(keys[:9_000:3])  # 3000 dead: the flat store compacts around the graph rows
    assert index.stats()["rows"] == 9_000
    live = [i for i in range(12_000) if not (i < 9_000 and i % 3 == 0)]
    for i in (1, 4097, 9_999, 11_999):
        np.testing.assert_allclose(index.get(keys[i]), data[i], rtol=1e-6)
    index.exact_limit = 10**9  # the exact path reads covered rows from the graph
    for q in queries:
        got, exact = index.search(q, 5)
        assert exact and [k for k, _ in got] == [k for k, _ in _brute_force([keys[i] for i in live], data[live], q, 5)]
    index.exact_limit = 100
    assert index.build_pending() == 9_000  # a rebuild, reading the old graph's vectors
    assert index.stats()["hnsw_dead"] == 0 and index.stats()["pending"] == 0
    assert dict(index.items()).keys() == {keys[i] for i in live}
    for i in (1, 4097, 11_999):
        np.testing.assert_allclose(index.get(keys[i]), data[i], rtol=1e-6)
        got, exact = index.search(data[i], 1)
        assert not exact and got[0][0] == keys[i]


def test_default_beam_widens_with_the_graph_and_is_capped() -> None:
    """At 20K the base beam gives recall@10 >= 0.99 on clustered 768-d data; at
    100K ef 96 gave 0.96, ef 192 0.9995; at 300K 0.98 took ef 512; at 1M 0.984
    took ef 3,072 (2,048 gave 0.979) (ann.default_beam)."""
    assert default_beam(96, 0) == default_beam(96, 20_000) == 96
    beams = [default_beam(96, n) for n in (20_000, 50_000, 100_000, 300_000, 1_000_000, 1_500_000, 10**8, 10**12)]
    assert beams == sorted(beams) and beams[-1] == BEAM_MAX == MAX_EF_SEARCH
    assert default_beam(96, 100_000) >= 192 and default_beam(96, 300_000) >= 512
    assert default_beam(96, 1_000_000) >= 3072 and default_beam(96, 1_500_000) > 3072
    assert default_beam(9000, 100_000) == BEAM_MAX  # a configured base above the cap is capped too
    assert default_beam(200, 10) == 200


def test_pq_default_beam_stops_where_it_was_measured() -> None:
    """pq probes its inverted lists by the beam; its default stops growing at
    PQ_BEAM_MAX (measured at 1M), while HNSW's (none, sq8) grows on."""
    pq = VectorIndex(8, quantization="pq", background=False)
    flat = VectorIndex(8, background=False)
    try:
        assert pq._beam(1_000_000) == PQ_BEAM_MAX < flat._beam(1_000_000) == default_beam(96, 1_000_000)
        assert pq._beam(100_000) == flat._beam(100_000)  # below it both follow the graph's size
    finally:
        pq.close()
        flat.close()


def test_search_uses_the_scaled_beam_unless_asked_for_more(monkeypatch: pytest.MonkeyPatch) -> None:
    data = np.random.default_rng(2).standard_normal((3000, 8)).astype(np.float32)
    index = VectorIndex(8, exact_limit=100, background=False)
    index.upsert(_keys(3000), data)
    index.build_pending()
    seen: list[int] = []
    real = vectors_module.search_params

    def spy(idx: object, ef: int, sel: object = None) -> object:
        seen.append(ef)
        return real(idx, ef, sel)

    monkeypatch.setattr(vectors_module, "search_params", spy)
    # as if 3000 labels were a large graph
    monkeypatch.setattr(ann_module, "BEAM_POINTS", ((1000, 1.0), (15_000, 5.36), (50_000, 32.0)))
    try:
        index.search(data[0], 10)
        index.search(data[0], 10, ef_search=2000)
    finally:
        index.close()
    assert seen == [default_beam(96, 3000), 2000] and seen[0] > 96
