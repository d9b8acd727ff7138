"""Cosine-similarity vector index over concept embeddings.

Over 450 lines, knowingly: the flat store, the trailing HNSW graph, its
maintainer thread and the merged search share one publication protocol (row
counts, watermarks, the phase-fair lock) that is easiest to check in one file.
Issue 12 (one copy of each vector, a persisted index) will reshape it.

Design (why it looks like this):

* An exact *flat store* keeps every live vector, original and L2-normalised,
  in fixed-size row chunks.  Appending is a memcpy, so reconciler writes never
  wait on graph construction.  Rows are append-only, ordered by a sequence
  number; updates and removals tombstone the old row and the store compacts
  (order kept) past 25 % tombstones.  Rows below the published count are never
  rewritten, so searches and checkpoints read snapshots outside the lock.
* An *HNSW* graph (faiss ``IndexHNSWFlat``, inner product on normalised
  vectors) trails the flat store: a maintainer thread inserts rows at or past
  the graph's sequence *watermark* in small batches, so slow graph insertion
  is never on a request path.  HNSW cannot delete: dead entries are filtered
  at search time (over-fetch) and past 20 % dead the graph is rebuilt off to
  the side and swapped in.
* ``search`` is exact up to ``exact_limit`` vectors or while no graph exists;
  beyond, it merges HNSW hits for the covered prefix with an exact scan of the
  uncovered tail, so a fresh vector is findable at once, whatever the lag.

Thread-safety: all public methods may be called from any thread.  One lock
guards the flat store; the graph has its own reader/writer lock because faiss
forbids searching an index while ``add`` runs on it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Sequence

import faiss
import numpy as np

logger = logging.getLogger(__name__)

# Measured at 20K x 768-d, M=32: efConstruction 64 builds 1.5-3x faster than
# 100-200 for the same recall at efSearch >= 64 on clustered data.
DEFAULT_EF_CONSTRUCTION = 64
# recall@10 at 20K x 768-d clustered data: 0.985-1.0 at ef 64, 0.995-1.0 at 96
# (~4K qps per thread).  Gaussian data needs ef ~1000 for 0.95: see tests.
DEFAULT_EF_SEARCH = 96

_BUSY_WINDOW_S = 0.25  # an upsert this recent means writes are flowing
_CHUNK_ROWS = 4096  # rows per storage chunk: growth never copies old rows
_COMPACT_FRACTION = 0.25  # compact the flat store past this tombstone share
_COMPACT_MIN_DEAD = 1024  # ...but never for a handful of rows
_REBUILD_FRACTION = 0.2  # rebuild the HNSW past this tombstone share
_TIE_SLACK = 64  # extra equal-score rows kept so ties break by key, not row
_FETCH_SLACK = 16  # extra HNSW hits requested beyond the tombstone estimate
_BUILD_BATCH = 1024  # private (re)builds block no one; batch only for stop checks
# A filter this narrow or narrower is searched exactly over its own rows:
# 4096 x 768-d rows is a ~12 MB gather + matmul, a few ms, and always exact.
_FILTER_EXACT_ROWS = 4096
_FILTER_MAX_WIDEN = 32  # the filtered beam grows with 1/selectivity up to this factor


class _RWLock:
    """Phase-fair reader/writer lock: many readers or one writer.

    A waiting writer blocks new readers (search traffic cannot starve the
    maintainer); readers waiting when a writer releases go before the next
    writer (a maintainer re-locking at once cannot starve searches).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._readers_waiting = 0
        self._readers_turn = False
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._readers_waiting += 1
            while self._writer or (self._writers_waiting and not self._readers_turn):
                self._cond.wait()
            self._readers_waiting -= 1
            self._readers += 1
            if self._readers_waiting == 0 and self._readers_turn:
                self._readers_turn = False
                self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers or self._readers_turn:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._readers_turn = self._readers_waiting > 0
                self._cond.notify_all()


class _Ann:
    """An HNSW graph plus the map from its labels to flat-store sequence numbers.

    Invariants (fields other than ``index``/``rw`` are guarded by the owning
    VectorIndex's lock): labels ``< count`` are published; label ``i`` holds
    the vector of sequence ``labels_seq[i]``; every row with sequence
    ``< watermark`` that was live when indexed is in the graph; ``dead``
    counts published labels whose row has since been tombstoned.
    """

    def __init__(self, dim: int, m: int, ef_construction: int) -> None:
        self.index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.rw = _RWLock()
        self.labels_seq = np.empty(0, dtype=np.int64)
        self.count = 0
        self.dead = 0
        self.watermark = 0

    def stage_labels(self, seqs: np.ndarray) -> None:
        """Write labels past ``count`` (maintainer only; published later).  Growth
        reallocates, so readers' old arrays stay valid below their count."""
        need = self.count + len(seqs)
        if need > len(self.labels_seq):
            grown = np.empty(max(need, 2 * len(self.labels_seq), 1024), dtype=np.int64)
            grown[: self.count] = self.labels_seq[: self.count]
            self.labels_seq = grown
        self.labels_seq[self.count : need] = seqs


def _range_scores(chunks: list[np.ndarray], start: int, stop: int, q: np.ndarray) -> np.ndarray:
    """Inner products of ``q`` with rows ``[start, stop)`` of chunked storage."""
    out = np.empty(stop - start, dtype=np.float32)
    row = start
    while row < stop:
        c, off = divmod(row, _CHUNK_ROWS)
        end = min(stop, (c + 1) * _CHUNK_ROWS)
        np.matmul(chunks[c][off : off + end - row], q, out=out[row - start : end - start])
        row = end
    return out


def _gather(chunks: list[np.ndarray], rows: np.ndarray, dim: int) -> np.ndarray:
    """Copy the given (ascending) rows of chunked storage into one C array."""
    out = np.empty((len(rows), dim), dtype=np.float32)
    if len(rows) == 0:
        return out
    chunk_ids = rows // _CHUNK_ROWS
    bounds = np.flatnonzero(np.diff(chunk_ids)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(rows)]):
        c = int(chunk_ids[lo])
        out[lo:hi] = chunks[c][rows[lo:hi] - c * _CHUNK_ROWS]
    return out


def _ranked(cands: list[tuple[str, float]], k: int) -> list[tuple[str, float]]:
    """Top-k by similarity desc, key asc, with similarities clipped to [-1, 1]."""
    cands.sort(key=lambda c: (-c[1], c[0]))
    return [(key, min(1.0, max(-1.0, sim))) for key, sim in cands[:k]]


def _rows_candidates(chunks: list[np.ndarray], keys: list[str], rows: np.ndarray, qn: np.ndarray,
                     k: int, dim: int) -> list[tuple[str, float]]:
    """Exact top-k (plus boundary ties) over the given ascending rows."""
    if len(rows) == 0:
        return []
    scores = _gather(chunks, rows, dim) @ qn
    if k < len(rows):
        kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
        top = np.flatnonzero(scores >= kth)
        if len(top) > k + _TIE_SLACK:
            top = np.argpartition(-scores, k - 1)[:k]
    else:
        top = np.arange(len(rows))
    return [(keys[int(rows[i])], float(scores[i])) for i in top]


class VectorIndex:
    """Cosine top-k over concept embeddings keyed by concept id.

    Contract: ``search`` is exact (flag True) while ``len(self) <=
    exact_limit`` or no HNSW graph exists; otherwise approximate (flag False)
    but it always sees every vector upserted before the call and never
    returns a removed or superseded one.  ``background=False`` runs no thread;
    the caller drives indexing with ``build_pending()``.
    """

    def __init__(
        self,
        dim: int,
        *,
        exact_limit: int = 10_000,
        hnsw_m: int = 32,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        default_ef_search: int = DEFAULT_EF_SEARCH,
        background: bool = True,
        index_batch: int = 64,
        search_threads: int = 1,
        index_threads: int = 1,
        index_yield: float = 1.0,
        filter_exact_limit: int = _FILTER_EXACT_ROWS,
    ) -> None:
        """Create an empty index.

        ``index_batch`` bounds how long one HNSW insert holds the graph's
        write lock, i.e. how long a search may wait while the graph catches
        up (measured at 768-d, 30K rows: p99 ~25-35 ms at 64, ~60-85 ms at
        256; idle p99 < 1 ms).  Insert throughput barely depends on it.
        ``search_threads``/``index_threads`` are faiss OpenMP threads per
        search call and for the maintainer: one query gains nothing from
        more (faiss parallelises across queries), and on a small box the
        maintainer should leave cores to request threads.
        ``index_yield``: while vectors keep arriving, the maintainer rests
        ``index_yield`` times as long as each step took (1.0: at most half a
        core), so writes and replication keep the CPU; search stays correct
        meanwhile by scanning the unindexed tail exactly. 0 disables it.
        ``filter_exact_limit``: a filtered search allowing at most this many
        vectors scans them exactly instead of walking the graph.
        """
        if dim <= 0 or exact_limit < 0 or hnsw_m <= 0 or index_batch <= 0:
            raise ValueError("dim, hnsw_m and index_batch must be positive, exact_limit >= 0")
        self.dim = dim
        self.exact_limit = exact_limit
        self.filter_exact_limit = max(0, filter_exact_limit)
        self._m = hnsw_m
        self._ef_construction = ef_construction
        self._default_ef = max(1, default_ef_search)
        self._batch = index_batch
        self._search_threads = max(1, search_threads)
        self._index_threads = max(1, index_threads)
        self._index_yield = max(0.0, index_yield)
        self._last_upsert = 0.0
        # Start indexing before exact_limit so the graph is (nearly) ready
        # when search switches to it; below the limit it costs only CPU.
        self._ann_start = exact_limit // 2

        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._maint_lock = threading.Lock()  # one maintainer step at a time
        self._reset_locked()
        self._stop = False
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="vector-index-hnsw", daemon=True)
            self._thread.start()

    # ----------------------------------------------------------- flat store

    def _reset_locked(self) -> None:
        self._orig: list[np.ndarray] = []
        self._norm: list[np.ndarray] = []
        self._seq = np.empty(0, dtype=np.int64)
        self._alive = np.empty(0, dtype=bool)
        self._keys: list[str] = []
        self._row_of: dict[str, int] = {}
        self._n = 0  # rows used, live or dead
        self._live = 0
        self._next_seq = 0
        self._ann: _Ann | None = None
        self._epoch = getattr(self, "_epoch", 0) + 1  # invalidates in-flight builds

    def _check_vectors(self, keys: list[str], vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (original, normalised) float32 copies or raise ValueError."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim or x.shape[0] != len(keys):
            raise ValueError(f"vectors must have shape ({len(keys)}, {self.dim}), got {x.shape}")
        for key in keys:
            if not isinstance(key, str):
                raise TypeError(f"keys must be str, got {type(key).__name__}")
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            raise ValueError(f"vector for {keys[int(np.argmin(finite))]!r} has NaN/inf")
        # float64: squares of large float32 would overflow, and exact rounding
        # keeps vectors of one direction at exactly equal similarity (stable ties).
        x64 = x.astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", x64, x64))
        if not (norms > 0).all():
            bad = keys[int(np.argmin(norms > 0))]
            raise ValueError(f"vector for {bad!r} is zero; cosine similarity is undefined")
        return x, (x64 / norms[:, None]).astype(np.float32)

    def _kill_row_locked(self, row: int) -> None:
        self._alive[row] = False
        self._live -= 1
        ann = self._ann
        # A live row below the watermark is in the graph: rows never revive,
        # so it was live when indexed.
        if ann is not None and self._seq[row] < ann.watermark:
            ann.dead += 1

    def _append_locked(self, keys: list[str], orig: np.ndarray, norm: np.ndarray) -> None:
        n, m = self._n, len(keys)
        if n + m > len(self._seq):
            cap = max(n + m, 2 * len(self._seq), 1024)
            self._seq = np.concatenate([self._seq[:n], np.empty(cap - n, dtype=np.int64)])
            self._alive = np.concatenate([self._alive[:n], np.zeros(cap - n, dtype=bool)])
        while len(self._orig) * _CHUNK_ROWS < n + m:
            self._orig.append(np.empty((_CHUNK_ROWS, self.dim), dtype=np.float32))
            self._norm.append(np.empty((_CHUNK_ROWS, self.dim), dtype=np.float32))
        row = n
        while row < n + m:
            c, off = divmod(row, _CHUNK_ROWS)
            take = min(n + m - row, _CHUNK_ROWS - off)
            self._orig[c][off : off + take] = orig[row - n : row - n + take]
            self._norm[c][off : off + take] = norm[row - n : row - n + take]
            row += take
        self._seq[n : n + m] = np.arange(self._next_seq, self._next_seq + m)
        self._alive[n : n + m] = True
        self._next_seq += m
        self._keys.extend(keys)
        for i, key in enumerate(keys):
            self._row_of[key] = n + i
        self._n += m
        self._live += m

    def _maybe_compact_locked(self) -> None:
        """Drop tombstoned rows (order kept, so the watermark stays valid).

        O(rows) under the lock but amortised: it only runs once a quarter of
        the rows are dead.  New chunk/list objects are built, so snapshots
        held by concurrent searches remain valid.
        """
        dead = self._n - self._live
        if dead < _COMPACT_MIN_DEAD or dead < _COMPACT_FRACTION * self._n:
            return
        keep = np.flatnonzero(self._alive[: self._n])
        orig, norm = self._orig, self._norm
        keys = [self._keys[i] for i in keep]
        seq = self._seq[keep]
        self._orig, self._norm = [], []
        self._seq = np.empty(0, dtype=np.int64)
        self._alive = np.empty(0, dtype=bool)
        self._keys, self._row_of, self._n, self._live = [], {}, 0, 0
        next_seq = self._next_seq
        for lo in range(0, len(keep), _CHUNK_ROWS):
            rows = keep[lo : lo + _CHUNK_ROWS]
            self._append_locked(keys[lo : lo + _CHUNK_ROWS], _gather(orig, rows, self.dim),
                                _gather(norm, rows, self.dim))
        self._seq[: self._n] = seq
        self._next_seq = next_seq
        logger.debug("compacted vector store: %d dead rows dropped, %d kept", dead, self._n)

    def _rows_for_seqs_locked(self, seqs: np.ndarray) -> np.ndarray:
        """Current row of each sequence number, or -1 if dead/gone."""
        n = self._n
        if n == 0 or len(seqs) == 0:
            return np.full(len(seqs), -1, dtype=np.int64)
        pos = np.searchsorted(self._seq[:n], seqs)
        clipped = np.minimum(pos, n - 1)
        ok = (pos < n) & (self._seq[clipped] == seqs) & self._alive[clipped]
        return np.where(ok, pos, -1)

    # ------------------------------------------------------------ public API

    def upsert(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or replace vectors; within one call the last duplicate wins.

        Validates the whole batch first (ValueError on shape, NaN/inf or zero
        vectors), so a rejected call changes nothing.
        """
        keys = list(keys)
        orig, norm = self._check_vectors(keys, vectors)
        if not keys:
            return
        last = {key: i for i, key in enumerate(keys)}
        if len(last) != len(keys):
            idx = np.fromiter(sorted(last.values()), dtype=np.int64, count=len(last))
            keys = [keys[i] for i in idx]
            orig, norm = orig[idx], norm[idx]
        with self._cv:
            self._last_upsert = time.monotonic()
            for key in keys:
                row = self._row_of.get(key)
                if row is not None:
                    self._kill_row_locked(row)
            self._append_locked(keys, orig, norm)
            self._maybe_compact_locked()
            self._cv.notify_all()

    def remove(self, keys: Iterable[str]) -> None:
        """Remove keys; unknown keys are ignored."""
        with self._cv:
            for key in keys:
                row = self._row_of.pop(key, None)
                if row is not None:
                    self._kill_row_locked(row)
            self._maybe_compact_locked()
            self._cv.notify_all()  # may have made a rebuild due

    def search(
        self, query: np.ndarray, k: int, ef_search: int = 0, *,
        allowed: Collection[str] | None = None, score_threshold: float | None = None,
    ) -> tuple[list[tuple[str, float]], bool]:
        """Top-k ``[(key, cosine)]`` sorted by similarity desc then key asc.

        Returns ``(results, exact)``.  ``ef_search`` can only raise the HNSW
        beam above ``max(k, default_ef_search)``.  ``allowed`` restricts the
        answer to those keys (unknown keys are ignored): the top-k *among
        them*, not a post-filtered global top-k.  ``score_threshold`` drops
        hits below that cosine.  Raises ValueError for a query of the wrong
        shape, non-finite or zero.
        """
        qn = self._normalised_query(query)
        if allowed is not None:
            hits, exact = self._search_filtered(qn, k, ef_search, allowed)
        else:
            hits, exact = self._search_all(qn, k, ef_search)
        if score_threshold is not None:
            hits = [h for h in hits if h[1] >= score_threshold]
        return hits, exact

    def _normalised_query(self, query: np.ndarray) -> np.ndarray:
        q = np.asarray(query, dtype=np.float64).reshape(-1)
        if q.shape != (self.dim,):
            raise ValueError(f"query must have shape ({self.dim},), got {np.shape(query)}")
        norm = float(np.linalg.norm(q)) if np.isfinite(q).all() else math.nan
        if not norm > 0:
            raise ValueError("query must be finite and non-zero")
        return (q / norm).astype(np.float32)

    def _search_all(self, qn: np.ndarray, k: int, ef_search: int) -> tuple[list[tuple[str, float]], bool]:
        with self._lock:
            ann = self._ann
            use_ann = ann is not None and ann.count > 0 and self._live > self.exact_limit
            start = 0
            if use_ann:
                assert ann is not None
                start = int(np.searchsorted(self._seq[: self._n], ann.watermark))
                view = (ann.count, ann.dead, ann.labels_seq)
            snap = self._snapshot_locked(start)
        if k <= 0:
            return [], not use_ann
        cands = self._exact_candidates(*snap, qn, k)
        if use_ann:
            assert ann is not None
            cands.extend(self._ann_candidates(ann, *view, qn, k, ef_search))
        return _ranked(cands, k), not use_ann

    def _search_filtered(
        self, qn: np.ndarray, k: int, ef_search: int, allowed: Collection[str],
    ) -> tuple[list[tuple[str, float]], bool]:
        """Top-k among ``allowed``: an exact scan of just those rows when they
        are few (or there is no graph), else the graph with a bitmap selector
        over the covered rows plus an exact scan of the allowed uncovered tail;
        if the graph finds fewer than it should, exact over the covered rows too."""
        with self._lock:
            row_of = self._row_of
            rows = np.fromiter((row_of.get(key, -1) for key in allowed), dtype=np.int64, count=len(allowed))
            rows = np.unique(rows[rows >= 0])
            chunks, keys = self._norm, self._keys
            ann = self._ann
            use_ann = (ann is not None and ann.count > 0 and self._live > self.exact_limit
                       and len(rows) > self.filter_exact_limit)
            split = len(rows)
            if use_ann:
                assert ann is not None
                start = int(np.searchsorted(self._seq[: self._n], ann.watermark))
                split = int(np.searchsorted(rows, start))
                count, labels_seq = ann.count, ann.labels_seq
                labels = np.searchsorted(labels_seq[:count], self._seq[rows[:split]])
        if k <= 0 or len(rows) == 0:
            return [], not use_ann
        if not use_ann:
            return _ranked(_rows_candidates(chunks, keys, rows, qn, k, self.dim), k), True
        assert ann is not None
        cands = _rows_candidates(chunks, keys, rows[split:], qn, k, self.dim)
        graph = self._ann_filtered(ann, count, labels, labels_seq, qn, k, ef_search)
        if len(graph) < min(k, split):  # the beam ran dry inside the filter: be exact
            graph = _rows_candidates(chunks, keys, rows[:split], qn, k, self.dim)
        cands.extend(graph)
        return _ranked(cands, k), False

    def _snapshot_locked(self, start: int) -> tuple[list[np.ndarray], list[str], int, int, np.ndarray]:
        """What an exact scan of rows ``[start, n)`` needs, readable unlocked:
        rows below ``n`` are never rewritten; only liveness must be copied."""
        n = self._n
        return self._norm, self._keys, start, n, self._alive[start:n].copy()

    def _exact_candidates(
        self, chunks: list[np.ndarray], keys: list[str], start: int, stop: int,
        alive: np.ndarray, qn: np.ndarray, k: int,
    ) -> list[tuple[str, float]]:
        """Exact top-k (plus boundary ties) over live rows ``[start, stop)``."""
        live = int(alive.sum())
        if live == 0:
            return []
        scores = _range_scores(chunks, start, stop, qn)
        scores[~alive] = -np.inf
        if k < live:
            kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
            top = np.flatnonzero(scores >= kth)
            if len(top) > k + _TIE_SLACK:  # pathological mass of duplicates
                top = np.argpartition(-scores, k - 1)[:k]
        else:
            top = np.flatnonzero(alive)
        return [(keys[start + int(i)], float(scores[i])) for i in top]

    def _ann_candidates(
        self, ann: _Ann, count: int, dead: int, labels_seq: np.ndarray,
        qn: np.ndarray, k: int, ef_search: int,
    ) -> list[tuple[str, float]]:
        """Live top-k from the graph's first ``count`` labels (over-fetching
        to make up for tombstones; doubling if filtering left too few)."""
        want = min(k, max(0, count - dead))
        fetch = min(count, math.ceil(k * count / max(1, count - dead)) + _FETCH_SLACK)
        saved_threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self._search_threads)  # per-thread in libgomp
        try:
            while True:
                params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
                # A beam wider than the graph buys nothing; cap caller input.
                params.efSearch = min(count, max(ef_search, fetch, self._default_ef))
                with ann.rw.read():
                    sims, labels = ann.index.search(qn[None, :], fetch, params=params)
                # Labels >= count were added after our snapshot; the exact
                # tail scan already covers them.
                ok = (labels[0] >= 0) & (labels[0] < count)
                sims = sims[0][ok]
                seqs = labels_seq[labels[0][ok]]
                with self._lock:
                    rows = self._rows_for_seqs_locked(seqs)
                    found = [(self._keys[r], float(s)) for r, s in zip(rows, sims) if r >= 0]
                if len(found) >= want or fetch >= count:
                    return found
                fetch = min(count, 2 * fetch)
        finally:
            faiss.omp_set_num_threads(saved_threads)

    def _ann_filtered(
        self, ann: _Ann, count: int, labels: np.ndarray, labels_seq: np.ndarray,
        qn: np.ndarray, k: int, ef_search: int,
    ) -> list[tuple[str, float]]:
        """Live top-k among graph ``labels`` (all ``< count``, alive when
        chosen): HNSW with a bitmap selector, the beam widened by how
        selective the filter is (a narrow filter leaves few members per hop)."""
        bits = np.zeros(count, dtype=bool)
        bits[labels] = True
        packed = np.packbits(bits, bitorder="little")
        sel = faiss.IDSelectorBitmap(count, faiss.swig_ptr(packed))
        widen = min(_FILTER_MAX_WIDEN, count / max(1, len(labels)))
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.sel = sel
        base = max(ef_search, k + _FETCH_SLACK, self._default_ef)
        params.efSearch = int(min(count, max(base, base * widen)))
        fetch = min(len(labels), k + _FETCH_SLACK)
        saved_threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self._search_threads)
        try:
            with ann.rw.read():
                sims, found = ann.index.search(qn[None, :], fetch, params=params)
        finally:
            faiss.omp_set_num_threads(saved_threads)
        ok = (found[0] >= 0) & (found[0] < count)
        seqs = labels_seq[found[0][ok]]
        with self._lock:
            rows = self._rows_for_seqs_locked(seqs)
            return [(self._keys[r], float(sc)) for r, sc in zip(rows, sims[0][ok]) if r >= 0]

    def get(self, key: str) -> np.ndarray | None:
        """A copy of the original (un-normalised) vector, or None."""
        with self._lock:
            row = self._row_of.get(key)
            if row is None:
                return None
            c, off = divmod(row, _CHUNK_ROWS)
            return self._orig[c][off].copy()

    def __len__(self) -> int:
        return self._live

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._row_of

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(key, original vector copy)`` as of this call; writers may proceed meanwhile."""
        with self._lock:
            n, chunks, keys = self._n, self._orig, self._keys
            rows = np.flatnonzero(self._alive[:n])

        def generate() -> Iterator[tuple[str, np.ndarray]]:
            for row in rows:
                c, off = divmod(int(row), _CHUNK_ROWS)
                yield keys[row], chunks[c][off].copy()

        return generate()

    def clear(self) -> None:
        """Drop every vector and the graph; in-flight index builds are discarded."""
        with self._cv:
            self._reset_locked()
            self._cv.notify_all()

    @property
    def indexed(self) -> int:
        """Live vectors covered by the HNSW graph (== len(self) when caught up)."""
        with self._lock:
            ann = self._ann
            return 0 if ann is None else ann.count - ann.dead

    def stats(self) -> dict[str, int]:
        """Counters for monitoring: live, rows, hnsw_total, hnsw_dead, pending."""
        with self._lock:
            ann = self._ann
            pending = self._n
            if ann is not None:
                pending -= int(np.searchsorted(self._seq[: self._n], ann.watermark))
            total, dead = (0, 0) if ann is None else (ann.count, ann.dead)
            return {"live": self._live, "rows": self._n, "hnsw_total": total,
                    "hnsw_dead": dead, "pending": pending}

    def build_pending(self, limit: int | None = None) -> int:
        """Bring the graph up to date now (build, rebuild, catch up).

        With ``limit``, stops after about that many incremental rows (to leave
        a trailing tail on purpose); a first build or a rebuild always covers
        its whole snapshot.  Returns the number of vectors inserted into HNSW.
        Safe alongside the background thread (steps are serialised).
        """
        added = 0
        saved_threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self._index_threads)
        try:
            while limit is None or added < limit:
                budget = self._batch if limit is None else min(self._batch, limit - added)
                with self._maint_lock:
                    step = self._step(auto=False, budget=budget)
                if step is None:
                    break
                added += step
        finally:
            faiss.omp_set_num_threads(saved_threads)
        return added

    def close(self) -> None:
        """Stop the background thread (waits for the current batch); idempotent."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=60)
            if thread.is_alive():
                logger.warning("vector index maintainer did not stop within 60 s")

    # ----------------------------------------------------------- maintainer

    def _work_locked(self, auto: bool) -> str | None:
        """What the maintainer should do next: 'build', 'rebuild', 'extend' or None."""
        ann = self._ann
        if ann is None:
            threshold = self._ann_start if auto else 0
            return "build" if self._live > threshold else None
        if ann.dead > _REBUILD_FRACTION * ann.count:
            return "rebuild"
        if self._n and self._seq[self._n - 1] >= ann.watermark:
            return "extend"
        return None

    def _step(self, auto: bool, budget: int) -> int | None:
        """One unit of maintenance (caller holds ``_maint_lock``); returns rows
        inserted, or None if there was nothing to do or it was aborted."""
        with self._lock:
            work = self._work_locked(auto)
            if work is None:
                return None
            epoch, n, chunks = self._epoch, self._n, self._norm
            if work == "extend":
                ann = self._ann
                assert ann is not None  # "extend" is only chosen when a graph exists
                start = int(np.searchsorted(self._seq[:n], ann.watermark))
                stop = min(n, start + budget)
                rows = start + np.flatnonzero(self._alive[start:stop])
                seqs = self._seq[rows]
                watermark = int(self._seq[stop - 1]) + 1
            else:
                rows = np.flatnonzero(self._alive[:n])
                seqs = self._seq[rows]
                watermark = self._next_seq
        if work == "extend":
            assert ann is not None
            return self._extend(ann, epoch, chunks, rows, seqs, watermark)
        return self._build(epoch, chunks, rows, seqs, watermark, work, auto)

    def _extend(self, ann: _Ann, epoch: int, chunks: list[np.ndarray], rows: np.ndarray,
                seqs: np.ndarray, watermark: int) -> int:
        vecs = _gather(chunks, rows, self.dim)
        if len(vecs):
            with ann.rw.write():
                ann.index.add(vecs)
        ann.stage_labels(seqs)
        with self._lock:
            if self._epoch != epoch or self._ann is not ann:
                return 0
            ann.count += len(seqs)
            ann.watermark = watermark
            # Rows tombstoned while we inserted were above the old watermark,
            # so _kill_row_locked did not count them against the graph.
            ann.dead += int((self._rows_for_seqs_locked(seqs) < 0).sum())
        return len(seqs)

    def _build(self, epoch: int, chunks: list[np.ndarray], rows: np.ndarray,
               seqs: np.ndarray, watermark: int, why: str, auto: bool) -> int | None:
        """Build a fresh graph of a snapshot without blocking searches, then swap it in."""
        ann = None
        if len(rows):
            ann = _Ann(self.dim, self._m, self._ef_construction)
            for lo in range(0, len(rows), _BUILD_BATCH):
                if (auto and self._stop) or self._epoch != epoch:
                    return None
                ann.index.add(_gather(chunks, rows[lo : lo + _BUILD_BATCH], self.dim))
            ann.stage_labels(seqs)
            ann.count = len(seqs)
            ann.watermark = watermark
        with self._lock:
            if self._epoch != epoch:
                return None
            if ann is not None:
                ann.dead = int((self._rows_for_seqs_locked(seqs) < 0).sum())
            self._ann = ann
        logger.info("vector index: HNSW %s done, %d vectors", why, len(rows))
        return len(rows)

    def _run(self) -> None:
        faiss.omp_set_num_threads(self._index_threads)  # this thread only
        try:
            # Indexing trails the writes: let acknowledgements win the CPU (nice +10, this thread only).
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        while True:
            with self._cv:
                while not self._stop and self._work_locked(auto=True) is None:
                    self._cv.wait()
                if self._stop:
                    return
            try:
                t0 = time.monotonic()
                with self._maint_lock:
                    self._step(auto=True, budget=self._batch)
                took = time.monotonic() - t0
                if self._index_yield and time.monotonic() - self._last_upsert < _BUSY_WINDOW_S:
                    with self._cv:  # writes are flowing: give them the CPU for a while
                        if not self._stop:
                            self._cv.wait(timeout=took * self._index_yield)
            except Exception:  # keep the thread alive; search stays exact-correct meanwhile
                logger.exception("vector index maintainer step failed; retrying in 1 s")
                with self._cv:
                    self._cv.wait(timeout=1.0)
