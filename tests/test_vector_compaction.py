"""The flat store's compaction off the lock (VectorIndex._compact_step).

Once a quarter of the rows are tombstones, the store drops them. Under the lock
that copy is O(rows) (bench/bench_compaction.py: ~1.1 s at 160K rows), and every
search and the apply wait behind it. With a maintainer thread the copy now runs
without the lock and the result is installed under it, with the writes that came
in meanwhile. These tests pin that the outcome is the layout the compaction under
the lock builds, that writes made during the copy are all there, that a reset
during the copy wins, and that a search does not wait for the copy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from sutra_cluster.storage import vectors as vectors_module
from sutra_cluster.storage.vectors import VectorIndex
from tests.helpers import wait_for

DIM = 16


def _keys(n: int, prefix: str = "k") -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(n)]


@pytest.fixture
def deferred(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Writes leave compaction to the test (as they leave it to a maintainer thread)."""
    monkeypatch.setattr(VectorIndex, "_maybe_compact_locked", lambda self: None)
    yield


def _layout(index: VectorIndex) -> dict[str, object]:
    n = index._n
    return {"n": n, "live": index._live, "keys": list(index._keys[:n]), "seq": index._seq[:n].tolist(),
            "alive": index._alive[:n].tolist(), "norms": index._norms[:n].tolist(), "row_of": dict(index._row_of),
            "covered": index._covered, "next_seq": index._next_seq}


def _check_invariants(index: VectorIndex) -> None:
    n = index._n
    assert np.all(np.diff(index._seq[:n]) > 0), "rows keep sequence order"
    assert int(index._alive[:n].sum()) == index._live == len(index._row_of)
    for key, row in index._row_of.items():
        assert index._keys[row] == key and index._alive[row]


def _store_with_tombstones(graph: bool) -> tuple[VectorIndex, dict[str, np.ndarray]]:
    """12,000 rows, a graph over the first 10,000 when ``graph``, then replacements
    and removals past a quarter of the rows."""
    rng = np.random.default_rng(5)
    index = VectorIndex(DIM, exact_limit=100 if graph else 10**9, background=False)
    keys = _keys(12_000)
    data = rng.standard_normal((12_000, DIM), dtype=np.float32)
    index.upsert(keys[:10_000], data[:10_000])
    if graph:
        index.build_pending()
    index.upsert(keys[10_000:], data[10_000:])  # a tail the graph does not cover
    model = dict(zip(keys, data))
    again = rng.standard_normal((3_000, DIM), dtype=np.float32)
    index.upsert(keys[1_000:4_000], again)  # covered rows replaced: tombstones, new rows in the tail
    model.update(zip(keys[1_000:4_000], again))
    index.remove(keys[5_000:7_000:2])
    for k in keys[5_000:7_000:2]:
        del model[k]
    assert index._compaction_due_locked()
    return index, model


def _assert_holds(index: VectorIndex, model: dict[str, np.ndarray]) -> None:
    _check_invariants(index)
    assert len(index) == len(model) and set(index._row_of) == set(model)
    for key in list(model)[::97]:
        np.testing.assert_allclose(index.get(key), model[key], rtol=1e-5, atol=1e-6)
    index.exact_limit = 10**9
    keys = list(model)
    for key in keys[::1_013]:
        got, exact = index.search(model[key], 1)
        assert exact and got[0][0] == key


@pytest.mark.parametrize("graph", [False, True])
def test_compacting_off_the_lock_builds_the_layout_compacting_under_it_builds(deferred: None, graph: bool) -> None:
    a, model = _store_with_tombstones(graph)
    b, _ = _store_with_tombstones(graph)
    with a._lock:
        a._compact_locked()
    with b._maint_lock:
        assert b._compact_step()
    assert not b._compaction_due_locked()
    assert _layout(b) == _layout(a)
    for key in list(model)[::211]:
        stored_a, stored_b = a.stored(key), b.stored(key)
        assert stored_a is not None and stored_b is not None
        np.testing.assert_array_equal(stored_a[0], stored_b[0])
        assert stored_a[1] == stored_b[1]
    _assert_holds(b, model)


def _during_copy(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None],
                 then: tuple[int, Callable[[], None]] | None = None) -> None:
    """Run ``action`` at the copy's first gather, which runs without the store's
    lock; with ``then`` = (row, second), run ``second`` at the first gather of
    rows from ``row`` on (the catch-up copy of rows appended during the first)."""
    real, fired = vectors_module.gather, []

    def gather(chunks, rows, dim):  # type: ignore[no-untyped-def]
        if not fired:
            fired.append(1)
            action()
        elif then is not None and len(fired) == 1 and len(rows) and rows[0] >= then[0]:
            fired.append(2)
            then[1]()
        return real(chunks, rows, dim)

    monkeypatch.setattr(vectors_module, "gather", gather)


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("appended", [500, 9_000])  # 9,000: more than a chunk, copied after the copy, unlocked
def test_writes_made_during_the_copy_are_all_kept(deferred: None, graph: bool, appended: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    index, model = _store_with_tombstones(graph)
    rng = np.random.default_rng(9)
    keys = list(model)
    replaced = keys[100:400]  # rows the copy has already read as live
    fresh = _keys(appended, "new")
    gone = keys[8_000:8_200]
    brief = _keys(50, "brief")  # appended during the copy, removed before it ends
    later = _keys(300, "later")  # appended while the rows appended during the copy are copied
    vr = rng.standard_normal((len(replaced), DIM), dtype=np.float32)
    vf = rng.standard_normal((len(fresh), DIM), dtype=np.float32)
    vl = rng.standard_normal((len(later), DIM), dtype=np.float32)
    n0 = index._n

    def writes() -> None:
        assert not index._lock.locked()
        index.upsert(replaced, vr)
        index.upsert(fresh, vf)
        index.remove(gone)
        index.upsert(brief, rng.standard_normal((len(brief), DIM), dtype=np.float32))
        index.remove(brief)

    ran: list[bool] = []

    def more() -> None:
        if index._lock.locked():  # the install copies the last rows under the lock: nothing may come in
            return
        ran.append(True)
        index.upsert(later, vl)
        index.remove(fresh[:10])

    _during_copy(monkeypatch, writes, (n0, more))
    with index._maint_lock:
        assert index._compact_step()
    model.update(zip(replaced, vr))
    model.update(zip(fresh, vf))
    for k in gone:
        del model[k]
    dead = len(replaced) + len(gone) + len(brief)
    # Past a chunk's worth, the rows appended during the copy were copied without the lock too.
    assert ran == ([True] if appended > 4096 else [])
    if ran:
        model.update(zip(later, vl))
        for k in fresh[:10]:
            del model[k]
        dead += 10
    _assert_holds(index, model)
    # What was tombstoned during the copy stays a tombstone: dropped by the next compaction.
    assert index._n - index._live == dead


def test_a_reset_during_the_copy_wins(deferred: None, monkeypatch: pytest.MonkeyPatch) -> None:
    index, _ = _store_with_tombstones(graph=False)
    _during_copy(monkeypatch, index.clear)
    with index._maint_lock:
        assert not index._compact_step()
    assert len(index) == 0 and index._n == 0 and not index._row_of
    index.upsert(["a"], np.ones((1, DIM), dtype=np.float32))
    assert index.search(np.ones(DIM, dtype=np.float32), 1)[0][0][0] == "a"


def test_the_maintainer_thread_compacts_and_searches_do_not_wait_for_the_copy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    index = VectorIndex(DIM, exact_limit=10**9, background=True)
    try:
        keys = _keys(20_000)
        data = rng.standard_normal((20_000, DIM), dtype=np.float32)
        index.upsert(keys, data)
        entered, release = threading.Event(), threading.Event()

        def hold() -> None:
            assert not index._lock.locked()
            entered.set()
            assert release.wait(30), "the test never released the copy"

        _during_copy(monkeypatch, hold)
        again = rng.standard_normal((7_000, DIM), dtype=np.float32)
        index.upsert(keys[:7_000], again)  # 7,000 of 27,000 rows dead: past a quarter
        assert entered.wait(30), "the maintainer thread did not start compacting"
        # The copy is parked without the lock: a search and a write go through meanwhile.
        found: list[tuple[list[tuple[str, float]], bool]] = []

        def search_and_write() -> None:
            found.append(index.search(again[10], 1))
            index.upsert(["late"], np.ones((1, DIM), dtype=np.float32))

        t = threading.Thread(target=search_and_write)
        t.start()
        t.join(timeout=20)
        assert not t.is_alive(), "a search waited for the compaction's copy"
        got, exact = found[0]
        assert exact and got[0][0] == keys[10]
        release.set()
        wait_for(lambda: index.stats()["rows"] == index.stats()["live"], 30, "the compaction to finish")
        model = dict(zip(keys, data))
        model.update(zip(keys[:7_000], again))
        model["late"] = np.ones(DIM, dtype=np.float32)
        _assert_holds(index, model)
    finally:
        release.set()
        index.close()


@pytest.mark.parametrize("writes_recent", [True, False])
def test_the_copy_rests_between_chunks_only_while_writes_flow(deferred: None, writes_recent: bool,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    index, model = _store_with_tombstones(graph=False)
    index._index_yield = 1.0
    index._last_upsert = vectors_module.time.monotonic() - (0.0 if writes_recent else 60.0)
    if writes_recent:  # (the rest is measured from when the last upsert came: keep it recent throughout)
        monkeypatch.setattr(vectors_module.time, "monotonic", lambda: index._last_upsert)
    rests: list[float] = []
    monkeypatch.setattr(vectors_module.time, "sleep", rests.append)
    with index._maint_lock:
        assert index._compact_step()
    # 11,000 live rows: three chunks of 4,096 copied without the lock, a rest after each while writes flow.
    assert len(rests) == (3 if writes_recent else 0)
    _assert_holds(index, model)
