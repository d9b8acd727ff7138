"""HNSW indexing never starves writes (issue 13): the background thread starts
no graph work while vectors keep arriving, unless the unindexed tail (which
every search scans exactly) passes SUTRA_INDEX_MAX_TAIL, and it catches up once
writes pause.  The pause is checked with a one-hour quiet window, so no
scheduling delay of this test can end it early: every assertion below holds on
however slow a machine, and every wait has a deadline."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from sutra_cluster.config import Config, ConfigError, load
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage.engine import Engine
from sutra_cluster.storage.maintainer import may_index
from sutra_cluster.storage.vecstats import index_ready
from sutra_cluster.storage.vectors import VectorIndex
from tests.helpers import wait_for

DIM = 32
HOUR = 3600.0


def _data(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"k{seed}-{i:05d}" for i in range(n)], rng.standard_normal((n, DIM), dtype=np.float32)


@pytest.mark.parametrize(("idle_for", "quiet", "tail", "max_tail", "expected"), [
    (0.0, 0.25, 0, 20_000, False),  # a write just arrived, nothing waits: pause
    (0.1, 0.25, 20_000, 20_000, False),  # tail exactly at the bound is still within it
    (0.1, 0.25, 20_001, 20_000, True),  # one past the bound: index despite the writes
    (0.25, 0.25, 5, 20_000, True),  # quiet for the whole window: catch up
    (9.0, 0.25, 0, 0, True),
    (0.0, 0.25, 1, 0, True),  # SUTRA_INDEX_MAX_TAIL=0: never pause (the old behaviour)
    (0.0, 0.0, 1, 20_000, True),  # SUTRA_INDEX_QUIET_MS=0: never wait either
])
def test_may_index(idle_for: float, quiet: float, tail: int, max_tail: int, expected: bool) -> None:
    assert may_index(idle_for, quiet, tail, max_tail) is expected


def test_indexing_waits_while_writes_are_recent_and_past_the_bound_runs_anyway() -> None:
    keys, data = _data(1300, seed=1)
    keys2, data2 = _data(300, seed=3)
    # exact_limit 200: graph work is due from 100 vectors on; the quiet window is
    # an hour, so "writes are recent" holds for the whole test.
    index = VectorIndex(DIM, exact_limit=200, index_batch=64, index_quiet=HOUR, index_max_tail=500)
    try:
        index.upsert(keys[:400], data[:400])
        wait_for(lambda: index.index_state == "paused", 60, "the thread parks with work due")
        stats = index.stats()
        assert (stats["hnsw_total"], stats["pending"]) == (0, 400)
        assert not index_ready(stats, index.exact_limit)  # sutra_vector_index_ready stays honest
        got, exact = index.search(data[399], 1)  # the tail is scanned exactly meanwhile
        assert exact and got[0][0] == keys[399]

        index.upsert(keys[400:1300], data[400:1300])  # 1,300 waiting > 500: index while writes flow
        # A first build covers its whole snapshot; then nothing is due, or the
        # rest waits again (the thread must not be indexing by now).
        wait_for(lambda: index.indexed > 0 and index.index_state in ("paused", "idle"), 60,
                 "a build past the bound, then parked again")
        stats = index.stats()
        assert stats["hnsw_total"] > 500 and stats["pending"] <= 500
        assert index.build_threads == 1  # while writes flow it leaves the other cores to them
        got, exact = index.search(data[1299], 1)
        assert not exact and got[0][0] == keys[1299]

        covered = stats["hnsw_total"]
        index.upsert(keys2[:300], data2[:300])  # back within the bound: paused again
        wait_for(lambda: index.index_state == "paused", 60, "parked again within the bound")
        stats = index.stats()
        assert stats["hnsw_total"] == covered and stats["pending"] == 1300 - covered + 300

        assert index.build_pending() == stats["pending"]  # explicit catch-up never waits
        assert index.indexed == len(index) == 1600
        assert index_ready(index.stats(), index.exact_limit)
    finally:
        t0 = time.monotonic()
        index.close()  # wakes the parked thread at once, hour-long window or not
    assert time.monotonic() - t0 < 10
    assert index.index_state == "idle" or index._thread is None


def test_indexing_catches_up_once_writes_pause() -> None:
    keys, data = _data(1200, seed=2)
    index = VectorIndex(DIM, exact_limit=200, index_batch=64, index_quiet=0.05, index_max_tail=100_000)
    try:
        for lo in range(0, 1200, 100):
            index.upsert(keys[lo : lo + 100], data[lo : lo + 100])
        wait_for(lambda: index.indexed == len(index) == 1200, 60, "the graph covers every vector")
        wait_for(lambda: index.index_state == "idle", 60, "the thread goes idle when caught up")
        assert index.stats()["pending"] == 0
        assert index.build_threads == len(os.sched_getaffinity(0))  # quiet: every core
        got, exact = index.search(data[7], 1)
        assert not exact and got[0][0] == keys[7]
    finally:
        index.close()


def test_settings_are_checked_at_load() -> None:
    cfg = load({"SUTRA_INDEX_QUIET_MS": "500", "SUTRA_INDEX_MAX_TAIL": "0"})
    assert (cfg.index_quiet_ms, cfg.index_max_tail) == (500, 0)
    assert (load({}).index_quiet_ms, load({}).index_max_tail) == (250, 20_000)
    with pytest.raises(ConfigError, match="SUTRA_INDEX_QUIET_MS=.*60000"):
        load({"SUTRA_INDEX_QUIET_MS": "60001"})
    with pytest.raises(ConfigError, match="SUTRA_INDEX_MAX_TAIL=.*must be 0"):
        load({"SUTRA_INDEX_MAX_TAIL": "-1"})


def _learn(engine: Engine, keys: list[str], data: np.ndarray) -> None:
    b = wal_pb2.WalBatch()
    for key, vec in zip(keys, data):
        b.concepts.append(pb.LearnConceptRequest(concept_id=key, content=key, embedding_f32=vec.astype("<f4").tobytes()))
    engine.wait_visible(engine.submit(b))


@pytest.mark.parametrize("quiet_ms", [60_000, 50])
def test_a_node_engine_waits_for_its_writes_and_reports_it(tmp_path: Path, quiet_ms: int) -> None:
    """The settings reach a real engine (WAL, fsync): with a minute-long quiet
    window the graph waits and GetStats' vector_index_ready says so; with 50 ms
    it is ready soon after the last write."""
    keys, data = _data(400, seed=4)
    cfg = Config(storage_path=str(tmp_path), vector_dimension=DIM, reconcile_interval_ms=1, node_id="pressure",
                 ann_threshold=200, index_quiet_ms=quiet_ms, index_max_tail=10_000)
    engine = Engine(cfg)
    engine.lead("single-node")
    try:
        for lo in range(0, 400, 50):
            _learn(engine, keys[lo : lo + 50], data[lo : lo + 50])
        if quiet_ms > 1000:
            wait_for(lambda: engine.vectors.index_state == "paused", 60, "the engine's indexing waits")
            assert engine.stats()["vector_index_ready"] is False and engine.vectors.indexed == 0
        else:
            wait_for(lambda: engine.stats()["vector_index_ready"] is True and engine.vectors.indexed == 400, 60,
                      "the graph catches up after the writes")
    finally:
        engine.close()


def test_writes_wake_the_maintainer_only_when_graph_work_is_due() -> None:
    """Below the threshold an upsert or a removal wakes no thread (it used to
    notify the maintainer on every write, a thread switch per write for nothing);
    the write that makes a build due does, and the build then runs."""
    keys, data = _data(300, seed=5)
    index = VectorIndex(DIM, exact_limit=200, index_batch=64, index_quiet=0.0, index_max_tail=0)
    wakes = []
    notify = index._cv.notify_all
    index._cv.notify_all = lambda: (wakes.append(len(index)), notify())  # type: ignore[method-assign]
    try:
        for i in range(50):  # under the build threshold (half the exact limit)
            index.upsert(keys[i:i + 1], data[i:i + 1])
        index.remove(keys[:10])
        assert wakes == [], f"writes below the threshold woke the maintainer {len(wakes)} times"
        index.upsert(keys[50:300], data[50:300])
        assert wakes, "the write that made a build due did not wake the maintainer"
        wait_for(lambda: index.stats()["hnsw_total"] > 0, 60, "the graph build the wake-up started")
    finally:
        index.close()


def test_the_maintainers_state_is_a_metric() -> None:
    """sutra_vector_index_state{state} says what the maintainer does: 1 for the
    current state, 0 for the others (paused here: work due, writes recent)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from sutra_cluster.storage.vecstats import INDEX_STATES, VectorCollector

    keys, data = _data(400, seed=7)
    index = VectorIndex(DIM, exact_limit=200, index_batch=64, index_quiet=HOUR, index_max_tail=100_000)
    registry = CollectorRegistry()
    registry.register(VectorCollector(index))
    try:
        def series() -> dict[str, float]:
            text = generate_latest(registry).decode()
            return {s: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() for s in INDEX_STATES
                    if line.startswith(f'sutra_vector_index_state{{state="{s}"}}')}

        assert series() == {"idle": 1.0, "paused": 0.0, "indexing": 0.0, "forced": 0.0}
        index.upsert(keys, data)
        wait_for(lambda: index.index_state == "paused", 60, "the thread parks with work due")
        assert series() == {"idle": 0.0, "paused": 1.0, "indexing": 0.0, "forced": 0.0}
    finally:
        index.close()
