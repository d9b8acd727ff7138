"""Cosine-similarity vector index over concept embeddings.

Design (why it looks like this):

* One copy of each vector, L2-normalised on write (the norm kept beside it so
  the original comes back to within float rounding).  New vectors land in a
  *flat store* of fixed-size row chunks: appending is a memcpy, so reconciler
  writes never wait on graph construction.  Rows are append-only, ordered by
  a sequence number; updates and removals tombstone the old row and the store
  compacts (order kept) past 25 % tombstones.  Rows below the published count
  are never rewritten, so searches and checkpoints read snapshots outside the
  lock (flatstore.View).
* An *HNSW* graph (faiss ``IndexHNSWFlat``, inner product on normalised
  vectors, ann.py) trails the flat store: a maintainer thread inserts rows at
  or past the graph's sequence *watermark* in small batches, so slow graph
  insertion is never on a request path.  Once the graph holds a chunk's rows
  the chunk is freed: the graph's storage is then their only copy.  HNSW
  cannot delete: dead entries are filtered at search time (over-fetch) and
  past 20 % dead the graph is rebuilt off to the side and swapped in
  (maintainer.py).
* ``search`` is exact up to ``exact_limit`` vectors or while no graph exists;
  beyond, it merges HNSW hits for the covered prefix with an exact scan of the
  uncovered tail, so a fresh vector is findable at once, whatever the lag.
  A filtered search (``allowed``) scans few allowed rows exactly, else walks
  the graph with a bitmap selector (filtered.py).

Thread-safety: all public methods may be called from any thread.  One lock
guards the flat store; the graph has its own reader/writer lock because faiss
forbids searching an index while ``add`` runs on it (and may move its storage).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path

import faiss
import numpy as np

from sutra_cluster.storage.ann import Ann, default_beam
from sutra_cluster.storage.annfile import GraphCapture, GraphStorage, LoadedGraph, flat_storage, keys_hash
from sutra_cluster.storage.filtered import ann_filtered
from sutra_cluster.storage.flatstore import CHUNK_ROWS, View, gather, ranked, top_k
from sutra_cluster.storage.maintainer import DEFAULT_MAX_TAIL, DEFAULT_QUIET_S, Maintainer
from sutra_cluster.storage.quant import PQ_BEAM_MAX, ChunkAllocator, check_modes, rescore_fetch, search_params
from sutra_cluster.storage.vecform import normalise, original

logger = logging.getLogger(__name__)

# At 20K x 768-d, M=32, efConstruction 64 built 1.5-3x faster than 100-200 for
# the same recall; at 100K, built as the maintainer does (in batches as vectors
# arrive), its graph capped recall@10 at 0.975 whatever the beam (ef 1024),
# while 128 gave 0.98 at ef 128 and 0.9995 at 192 (96: 0.985 at 192).
DEFAULT_EF_CONSTRUCTION = 128
# recall@10 at 20K x 768-d clustered data: 0.985-1.0 at ef 64, 0.995-1.0 at 96
# (~4K qps per thread).  Gaussian data needs ef ~1000 for 0.95: see tests.
# The base of the default beam: it widens with the graph (ann.default_beam).
DEFAULT_EF_SEARCH = 96

_COMPACT_FRACTION = 0.25  # compact the flat store past this tombstone share
_COMPACT_MIN_DEAD = 1024  # ...but never for a handful of rows
_FETCH_SLACK = 16  # extra HNSW hits requested beyond the tombstone estimate
# A filter this narrow or narrower is searched exactly over its own rows:
# 4096 x 768-d rows is a ~12 MB gather + matmul, a few ms, and always exact.
_FILTER_EXACT_ROWS = 4096
class VectorIndex(Maintainer):
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
        index_quiet: float = DEFAULT_QUIET_S,
        index_max_tail: int = DEFAULT_MAX_TAIL,
        filter_exact_limit: int = _FILTER_EXACT_ROWS,
        storage: str = "memory",
        quantization: str = "none",
        map_dir: Path | None = None,
    ) -> None:
        """Create an empty index.

        ``index_batch`` bounds how long one HNSW insert holds the graph's
        write lock, i.e. how long a search may wait while the graph catches
        up (measured at 768-d, 30K rows: p99 ~25-35 ms at 64, ~60-85 ms at
        256; idle p99 < 1 ms).  Insert throughput barely depends on it.
        ``search_threads``/``index_threads`` are faiss OpenMP threads per
        search call and for the maintainer: one query gains nothing from
        more (faiss parallelises across queries), and on a small box the
        maintainer should leave cores to request threads while writes flow
        (``index_threads``); once they are quiet it uses every core this
        process may run on (its thread is at nice +10, so requests still win).
        ``index_yield``: while vectors keep arriving, the maintainer rests
        ``index_yield`` times as long as each step took (1.0: at most half a
        core), so writes and replication keep the CPU; search stays correct
        meanwhile by scanning the unindexed tail exactly. 0 disables it.
        ``index_quiet``/``index_max_tail``: the thread starts no graph work
        until no vector arrived for ``index_quiet`` seconds, unless more than
        ``index_max_tail`` rows are unindexed (maintainer.py, Pacing).
        ``filter_exact_limit``: a filtered search allowing at most this many
        vectors scans them exactly instead of walking the graph.
        ``storage``/``quantization``: SUTRA_VECTOR_STORAGE and
        SUTRA_QUANTIZATION (quant.py; ValueError naming the setting when not
        supported); ``map_dir`` holds the ``mmap`` chunks.
        """
        if dim <= 0 or exact_limit < 0 or hnsw_m <= 0 or index_batch <= 0:
            raise ValueError("dim, hnsw_m and index_batch must be positive, exact_limit >= 0")
        check_modes(storage, quantization)
        self.dim = dim
        self.storage, self.quantization = storage, quantization
        self._keep = quantization != "none"  # the graph holds codes: the full vectors stay in the chunks
        self._alloc = ChunkAllocator(storage, map_dir)
        self.exact_limit = exact_limit
        self.filter_exact_limit = max(0, filter_exact_limit)
        self._m = hnsw_m
        self._ef_construction = ef_construction
        self._default_ef = max(1, default_ef_search)
        self._batch = index_batch
        self._search_threads = max(1, search_threads)
        self._index_threads = max(1, index_threads)
        # While no write arrived for index_quiet, the maintainer builds with every core it may use.
        self._quiet_threads = max(self._index_threads, len(os.sched_getaffinity(0)))
        self._index_yield = max(0.0, index_yield)
        self._quiet, self._max_tail = max(0.0, index_quiet), max(0, index_max_tail)
        self._last_upsert = 0.0
        # Start indexing before exact_limit so the graph is (nearly) ready
        # when search switches to it; below the limit it costs only CPU.
        self._ann_start = exact_limit // 2

        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._maint_lock = threading.Lock()  # one maintainer step at a time
        self._reset_locked()
        self._stop = False
        self._held = 0  # >0: the background thread starts no work (a checkpoint is loading)
        self._trim_due = True  # give freed heap back to the OS when next idle
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="vector-index-hnsw", daemon=True)
            self._thread.start()

    # ----------------------------------------------------------- flat store

    def _reset_locked(self) -> None:
        self._chunks: list[np.ndarray | None] = []  # None: freed, the graph holds those rows
        self._seq = np.empty(0, dtype=np.int64)
        self._alive = np.empty(0, dtype=bool)
        self._norms = np.empty(0, dtype=np.float64)  # original = normalised row * norm
        self._keys: list[str] = []
        self._row_of: dict[str, int] = {}
        self._n = 0  # rows used, live or dead
        self._live = 0
        self._next_seq = 0
        self._covered = 0  # rows below this are in the graph (or dead): read them there
        self._ann: Ann | None = None
        self._reserved: GraphStorage | None = None  # a stored graph's storage the load writes into
        self._epoch = getattr(self, "_epoch", 0) + 1  # invalidates in-flight builds
        # Bumped by every change that renumbers rows (a reset, a compaction, a graph
        # adopted): a background compaction's copy of an older numbering is dropped.
        self._layout = getattr(self, "_layout", 0) + 1

    def _check_vectors(self, keys: list[str], vectors: np.ndarray,
                       norms: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Return (normalised float32 copy, float64 norms) or raise ValueError.

        With ``norms`` the vectors are taken as already normalised (a stored
        form read back, kept bit-for-bit so a reload changes nothing)."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim or x.shape[0] != len(keys):
            raise ValueError(f"vectors must have shape ({len(keys)}, {self.dim}), got {x.shape}")
        if not set(map(type, keys)) <= {str}:  # one C-level pass (a load checks a million keys)
            for key in keys:
                if not isinstance(key, str):
                    raise TypeError(f"keys must be str, got {type(key).__name__}")
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            raise ValueError(f"vector for {keys[int(np.argmin(finite))]!r} has NaN/inf")
        if norms is not None:
            given = np.asarray(norms, dtype=np.float64).reshape(-1)
            if given.shape != (len(keys),) or not (given > 0).all() or not np.isfinite(given).all():
                raise ValueError(f"norms must be {len(keys)} positive finite values")
            return np.ascontiguousarray(x), given
        normed, lengths = normalise(x)
        if not (lengths > 0).all():
            bad = keys[int(np.argmin(lengths > 0))]
            raise ValueError(f"vector for {bad!r} is zero; cosine similarity is undefined")
        return normed, lengths

    def _kill_row_locked(self, row: int) -> None:
        # Rows no longer map one to one onto the stored graph's labels (and a
        # compaction must not write into its storage): stop loading into it.
        self._reserved = None
        self._alive[row] = False
        self._live -= 1
        ann = self._ann
        # A live row below the watermark is in the graph: rows never revive,
        # so it was live when indexed.
        if ann is not None and self._seq[row] < ann.watermark:
            ann.dead += 1

    def _append_locked(self, keys: list[str], vecs: np.ndarray | None, norms: np.ndarray,
                       shared: bool = False) -> None:
        """Append rows; ``vecs`` None appends rows the graph already covers
        (compaction), whose chunk slots stay unfilled.  ``shared``: ``vecs``
        is a read-only file mapping nothing rewrites (``upsert``'s ``mapped``):
        a whole chunk of it starting a new chunk is kept as that chunk.  It is
        never written to (rows below the count never are; the next append
        starts a new chunk), and a start under ``mmap`` then copies no vector
        into a fresh mapping (at 1M x 768-d that copy, 3 GB of page faults on
        new file pages, was over a third of the start)."""
        n, m = self._n, len(keys)
        if n + m > len(self._seq):
            cap = max(n + m, 2 * len(self._seq), 1024)
            self._seq = np.concatenate([self._seq[:n], np.empty(cap - n, dtype=np.int64)])
            self._alive = np.concatenate([self._alive[:n], np.zeros(cap - n, dtype=bool)])
            self._norms = np.concatenate([self._norms[:n], np.empty(cap - n, dtype=np.float64)])
        if vecs is not None:
            if shared and not vecs.flags.writeable and self._reserved is None and n % CHUNK_ROWS == 0 \
                    and len(self._chunks) * CHUNK_ROWS == n:
                whole = m - m % CHUNK_ROWS
                for lo in range(0, whole, CHUNK_ROWS):
                    self._chunks.append(vecs[lo : lo + CHUNK_ROWS])  # a view: it keeps the mapping alive
                if whole:
                    self._append_rows_locked(keys[:whole], norms[:whole])
                    keys, vecs, norms = keys[whole:], vecs[whole:], norms[whole:]
                    n, m = self._n, len(keys)
            while len(self._chunks) * CHUNK_ROWS < n + m:
                slots = None if self._reserved is None else self._reserved.chunk(len(self._chunks))
                self._chunks.append(self._alloc.chunk(CHUNK_ROWS, self.dim) if slots is None else slots)
            row = n
            while row < n + m:
                c, off = divmod(row, CHUNK_ROWS)
                take = min(n + m - row, CHUNK_ROWS - off)
                chunk = self._chunks[c]
                if chunk is None:  # a freed chunk the covered prefix ends in
                    chunk = self._chunks[c] = self._alloc.chunk(CHUNK_ROWS, self.dim)
                chunk[off : off + take] = vecs[row - n : row - n + take]
                row += take
        self._append_rows_locked(keys, norms)

    def _append_rows_locked(self, keys: list[str], norms: np.ndarray) -> None:
        """The bookkeeping of an append whose vectors are in place: sequence
        numbers, liveness, norms, keys."""
        n, m = self._n, len(keys)
        self._seq[n : n + m] = np.arange(self._next_seq, self._next_seq + m)
        self._alive[n : n + m] = True
        self._norms[n : n + m] = norms
        self._next_seq += m
        self._keys.extend(keys)
        self._row_of.update(zip(keys, range(n, n + m)))
        self._n += m
        self._live += m

    def _compaction_due_locked(self) -> bool:
        """A quarter of the rows (and at least _COMPACT_MIN_DEAD) are tombstones."""
        dead = self._n - self._live
        return dead >= _COMPACT_MIN_DEAD and dead >= _COMPACT_FRACTION * self._n

    def _maybe_compact_locked(self) -> None:
        """Drop tombstoned rows once they are due. With a maintainer thread running,
        it compacts (``_compact_step``: the copy without the lock, so searches and
        the apply do not wait O(rows) behind it); without one, here and now."""
        if not self._compaction_due_locked():
            return
        thread = self._thread
        if thread is not None and thread.is_alive() and not self._stop:
            self._cv.notify_all()
            return
        self._compact_locked()

    def _compact_locked(self) -> None:
        """Drop tombstoned rows (order kept, so the watermark stays valid).

        O(rows) under the lock: the fallback of ``_compact_step``, and the way
        an index without a maintainer thread compacts. New chunk/list objects
        are built, so views held by concurrent searches remain valid; covered
        rows copy no vector.
        """
        dead = self._n - self._live
        keep = np.flatnonzero(self._alive[: self._n])
        covered = int(np.searchsorted(keep, self._covered))
        split = 0 if self._keep else covered  # rows below split take no chunk copy
        chunks, keys = self._chunks, [self._keys[i] for i in keep]
        seq, norms = self._seq[keep], self._norms[keep]
        self._chunks = []
        self._seq = np.empty(0, dtype=np.int64)
        self._alive = np.empty(0, dtype=bool)
        self._norms = np.empty(0, dtype=np.float64)
        self._keys, self._row_of, self._n, self._live = [], {}, 0, 0
        next_seq = self._next_seq
        self._append_locked(keys[:split], None, norms[:split])
        self._chunks = [None for _ in range(split // CHUNK_ROWS)]
        for lo in range(split, len(keep), CHUNK_ROWS):
            rows = keep[lo : lo + CHUNK_ROWS]
            self._append_locked(keys[lo : lo + CHUNK_ROWS], gather(chunks, rows, self.dim), norms[lo : lo + CHUNK_ROWS])
        self._seq[: self._n] = seq
        self._next_seq = next_seq
        self._covered = covered
        self._layout += 1
        logger.debug("compacted vector store: %d dead rows dropped, %d kept", dead, self._n)

    def _compaction_pending(self) -> bool:
        with self._lock:
            return self._compaction_due_locked()

    def _compact_step(self) -> bool:
        """Compact the flat store as ``_compact_locked`` does, but copy the live
        rows into new chunks with the lock released (caller holds ``_maint_lock``,
        so no graph step moves the covered rows meanwhile). Writes go on during
        the copy: rows appended meanwhile are copied after it, again without the
        lock, until at most a chunk's worth is left, which the install copies;
        rows tombstoned meanwhile stay tombstones in the new layout. So the lock
        is held for a snapshot of the row arrays and an install, not for the
        copy. Returns False, having changed nothing, when a reset or another
        renumbering came in between or a row appended meanwhile lies in a freed
        chunk; the caller then compacts under the lock."""
        with self._lock:
            if not self._compaction_due_locked():
                return True
            layout, n0, covered0 = self._layout, self._n, self._covered
            alive0 = self._alive[:n0].copy()
            chunks0, keys0 = list(self._chunks), self._keys[:n0]
            seq0, norms0 = self._seq[:n0].copy(), self._norms[:n0].copy()
        keep = np.flatnonzero(alive0)
        total = len(keep)
        split = 0 if self._keep else int(np.searchsorted(keep, covered0))  # covered: read from the graph
        chunks: list[np.ndarray | None] = [None] * (split // CHUNK_ROWS)
        self._copy_rows(chunks, chunks0, keep[split:], split, pace=True)  # rows below split in its chunk: unfilled
        keys = [keys0[i] for i in keep]
        row_of = dict(zip(keys, range(total)))
        upto = n0  # rows appended since the snapshot are copied up to here
        while True:
            with self._lock:
                n1 = self._n
                if self._layout != layout or self._freed_locked(upto, n1):
                    return False
                if n1 - upto <= CHUNK_ROWS:
                    self._copy_rows(chunks, self._chunks, np.arange(upto, n1), total + upto - n0)
                    self._install_compaction_locked(chunks, keep, keys, row_of, seq0, norms0, n0)
                    break
                src = list(self._chunks)
            self._copy_rows(chunks, src, np.arange(upto, n1), total + upto - n0, pace=True)
            upto = n1
        logger.debug("compacted vector store: %d dead rows dropped, %d kept", n0 - total, total + n1 - n0)
        return True

    def _freed_locked(self, lo: int, hi: int) -> bool:
        """Any of rows [lo, hi) lies in a freed chunk."""
        return hi > lo and any(self._chunks[c] is None for c in range(lo // CHUNK_ROWS, (hi - 1) // CHUNK_ROWS + 1))

    def _copy_rows(self, dst: list[np.ndarray | None], src: list[np.ndarray | None], rows: np.ndarray,
                   at: int, pace: bool = False) -> None:
        """Copy ``rows`` of the chunks ``src`` to rows ``at``... of the chunks
        ``dst``, allocating its chunks as they are reached. ``pace`` (without the
        lock): while writes flow, rest ``index_yield`` times as long as each
        chunk took, as graph work does, so the copy leaves them the CPU."""
        row, end = at, at + len(rows)
        while row < end:
            t0 = time.monotonic()
            c, off = divmod(row, CHUNK_ROWS)
            take = min(end - row, CHUNK_ROWS - off)
            while len(dst) <= c:
                dst.append(self._alloc.chunk(CHUNK_ROWS, self.dim))
            chunk = dst[c]
            assert chunk is not None
            chunk[off : off + take] = gather(src, rows[row - at : row - at + take], self.dim)
            row += take
            if pace and self._writes_flowing():
                time.sleep((time.monotonic() - t0) * self._index_yield)

    def _install_compaction_locked(self, chunks: list[np.ndarray | None], keep: np.ndarray, keys: list[str],
                                   row_of: dict[str, int], seq0: np.ndarray, norms0: np.ndarray, n0: int) -> None:
        """Make the compacted layout current: ``keep`` (the rows live at the
        snapshot of ``n0`` rows) in order, then every row appended since, with
        tombstones taken from now."""
        n1, total = self._n, len(keep)
        alive = np.concatenate([self._alive[:n0][keep], self._alive[n0:n1]])
        for j in np.flatnonzero(~alive[:total]).tolist():  # tombstoned during the copy
            del row_of[keys[j]]  # (re-added since: its new row is in the tail, set below)
        tail_keys = self._keys[n0:n1]
        for j in np.flatnonzero(alive[total:]).tolist():
            row_of[tail_keys[j]] = total + j
        covered = self._covered
        self._covered = int(np.searchsorted(keep, covered)) if covered <= n0 else total + covered - n0
        self._chunks = chunks
        self._seq = np.concatenate([seq0[keep], self._seq[n0:n1]])
        self._norms = np.concatenate([norms0[keep], self._norms[n0:n1]])
        self._alive = alive
        self._keys, self._row_of, self._n = keys + tail_keys, row_of, total + n1 - n0
        self._layout += 1
        self._free_covered_locked()

    def _free_covered_locked(self) -> None:
        """Move the covered boundary up to the graph's watermark and free the
        chunks wholly below it (a new list: views keep the old one alive)."""
        ann = self._ann
        if ann is None:
            return
        self._covered = int(np.searchsorted(self._seq[: self._n], ann.watermark))
        if self._keep:  # sq8/pq rescoring reads the full vectors from the chunks
            return
        full = min(len(self._chunks), self._covered // CHUNK_ROWS)
        if any(self._chunks[c] is not None for c in range(full)):
            freed: list[np.ndarray | None] = [None] * full
            self._chunks = freed + self._chunks[full:]

    def _rows_for_seqs_locked(self, seqs: np.ndarray) -> np.ndarray:
        """Current row of each sequence number, or -1 if dead/gone."""
        n = self._n
        if n == 0 or len(seqs) == 0:
            return np.full(len(seqs), -1, dtype=np.int64)
        pos = np.searchsorted(self._seq[:n], seqs)
        clipped = np.minimum(pos, n - 1)
        ok = (pos < n) & (self._seq[clipped] == seqs) & self._alive[clipped]
        return np.where(ok, pos, -1)

    def _view_locked(self) -> View:
        ann = self._ann
        count, labels_seq = (0, np.empty(0, dtype=np.int64)) if ann is None else (ann.count, ann.labels_seq)
        return View(self._chunks, self._keys, self._seq, self._norms, self._n, ann, self._covered, count,
                    labels_seq, self.dim, self._keep)

    # ------------------------------------------------------------ public API

    def upsert(self, keys: Sequence[str], vectors: np.ndarray, norms: np.ndarray | None = None, *,
               mapped: bool = False) -> None:
        """Insert or replace vectors; within one call the last duplicate wins.

        ``norms``: the vectors are already normalised and these are their
        original lengths (a stored form being reloaded).  ``mapped``: the
        vectors are a read-only view of a file mapping that nothing rewrites
        (storage.dat mapped by a start, checkpoint.SnapshotDecoder): under
        ``mmap`` storage, whole chunk-aligned blocks of it become chunks as
        they are, without a copy.  Validates the whole batch first (ValueError
        on shape, NaN/inf or zero vectors), so a rejected call changes nothing.
        """
        keys = list(keys)
        vecs, lengths = self._check_vectors(keys, vectors, norms)
        if not keys:
            return
        last = dict(zip(keys, range(len(keys))))  # the last duplicate wins
        if len(last) != len(keys):
            idx = np.fromiter(sorted(last.values()), dtype=np.int64, count=len(last))
            keys = [keys[i] for i in idx]
            vecs, lengths = vecs[idx], lengths[idx]
        with self._cv:
            self._last_upsert = time.monotonic()
            if not self._row_of.keys().isdisjoint(keys):  # a load's keys are all new: no Python step per key
                for key in keys:
                    row = self._row_of.get(key)
                    if row is not None:
                        self._kill_row_locked(row)
            self._append_locked(keys, vecs, lengths, shared=mapped and self._alloc.mapped)
            self._maybe_compact_locked()
            self._wake_maintainer_locked()

    def remove(self, keys: Iterable[str]) -> None:
        """Remove keys; unknown keys are ignored."""
        with self._cv:
            for key in keys:
                row = self._row_of.pop(key, None)
                if row is not None:
                    self._kill_row_locked(row)
            self._maybe_compact_locked()
            self._wake_maintainer_locked()  # may have made a rebuild due

    def _wake_maintainer_locked(self) -> None:
        """Wake the maintainer thread only when graph work is due: its idle wait
        ends on nothing else, and below the threshold (or with the graph current)
        a wake-up per write was a thread switch per write for nothing."""
        if self._work_locked(auto=True) is not None:
            self._cv.notify_all()

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
            start = self._covered if use_ann else 0
            view = self._view_locked()
            alive = self._alive[start : self._n].copy()
            dead = 0 if ann is None else ann.dead
        if k <= 0:
            return [], not use_ann
        cands: list[tuple[str, float]] = []
        if alive.any():
            rows = np.arange(start, start + len(alive))
            scores = view.range_scores(start, alive, qn)
            cands = top_k(view.keys, rows, scores, k, int(alive.sum()))
        if use_ann:
            assert ann is not None
            cands.extend(self._ann_candidates(ann, view.count, dead, view.labels_seq, qn, k, ef_search))
        return ranked(cands, k), not use_ann

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
            ann = self._ann
            use_ann = (ann is not None and ann.count > 0 and self._live > self.exact_limit
                       and len(rows) > self.filter_exact_limit)
            view = self._view_locked()
        if k <= 0 or len(rows) == 0:
            return [], not use_ann
        if not use_ann:
            return ranked(view.candidates(rows, qn, k), k), True
        assert ann is not None
        split = int(np.searchsorted(rows, view.covered))
        cands = view.candidates(rows[split:], qn, k)
        beam = self._beam(view.count)
        graph = ann_filtered(ann, view.count, view.labels(rows[:split]), qn, k, ef_search, beam,
                             self._search_threads, functools.partial(self._live_keys, qn=qn), self._fetch(k))
        if len(graph) < min(k, split):  # the beam ran dry inside the filter: be exact
            graph = view.candidates(rows[:split], qn, k)
        cands.extend(graph)
        return ranked(cands, k), False

    def _beam(self, count: int) -> int:
        """The default beam over ``count`` labels: HNSW's grows with the graph
        (ann.default_beam); pq's inverted file probes lists by it (quant.search_params),
        and its growth stops at PQ_BEAM_MAX, where it was measured."""
        beam = default_beam(self._default_ef, count)
        return min(beam, PQ_BEAM_MAX) if self.quantization == "pq" else beam

    def _fetch(self, k: int) -> int:
        """Graph hits to fetch at least: sq8/pq over-fetch to rescore exactly."""
        return rescore_fetch(self.quantization, k)

    def _live_keys(self, labels_seq: np.ndarray, labels: np.ndarray, sims: np.ndarray,
                   qn: np.ndarray | None = None) -> list[tuple[str, float]]:
        """(key, score) for graph hits whose row is still live; with sq8 the
        score is exact, from the full vector (``qn`` the query)."""
        seqs = labels_seq[labels]
        with self._lock:
            rows = self._rows_for_seqs_locked(seqs)
            if self._keep and qn is not None:
                live = np.sort(rows[rows >= 0])  # at most a few hundred rows: a small gather
                exact = gather(self._chunks, live, self.dim) @ qn
                return [(self._keys[r], float(s)) for r, s in zip(live, exact)]
            return [(self._keys[r], float(s)) for r, s in zip(rows, sims) if r >= 0]

    def _ann_candidates(
        self, ann: Ann, count: int, dead: int, labels_seq: np.ndarray,
        qn: np.ndarray, k: int, ef_search: int,
    ) -> list[tuple[str, float]]:
        """Live top-k from the graph's first ``count`` labels (over-fetching
        to make up for tombstones; doubling if filtering left too few)."""
        want = min(k, max(0, count - dead))
        fetch = min(count, max(self._fetch(k), math.ceil(k * count / max(1, count - dead)) + _FETCH_SLACK))
        saved_threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self._search_threads)  # per-thread in libgomp
        try:
            while True:
                # A beam wider than the graph buys nothing; cap caller input.
                params = search_params(ann.index, min(count, max(ef_search, fetch, self._beam(count))))
                with ann.rw.read():
                    sims, labels = ann.index.search(qn[None, :], fetch, params=params)
                # Labels >= count were added after our snapshot; the exact
                # tail scan already covers them.
                ok = (labels[0] >= 0) & (labels[0] < count)
                found = self._live_keys(labels_seq, labels[0][ok], sims[0][ok], qn)
                if len(found) >= want or fetch >= count:
                    return found
                fetch = min(count, 2 * fetch)
        finally:
            faiss.omp_set_num_threads(saved_threads)

    def get(self, key: str) -> np.ndarray | None:
        """The original vector (normalised row times its norm, so within float
        rounding of what was upserted), or None."""
        with self._lock:
            row = self._row_of.get(key)
            if row is None:
                return None
            view = self._view_locked()
        return original(view.vectors(np.array([row], dtype=np.int64))[0], float(view.norms[row]))

    def stored(self, key: str) -> tuple[np.ndarray, float] | None:
        """The stored form: (normalised float32 vector, original norm), or None."""
        with self._lock:
            row = self._row_of.get(key)
            if row is None:
                return None
            view = self._view_locked()
        return view.vectors(np.array([row], dtype=np.int64))[0], float(view.norms[row])

    def __len__(self) -> int:
        return self._live

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._row_of

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(key, original vector)`` as of this call; writers may proceed meanwhile."""
        batches = self.stored_batches()

        def generate() -> Iterator[tuple[str, np.ndarray]]:
            for keys, vecs, norms in batches:
                yield from zip(keys, (vecs.astype(np.float64) * norms[:, None]).astype(np.float32))

        return generate()

    def stored_batches(self, batch: int = 4096) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
        """The live vectors in their stored form, ``(keys, normalised, norms)``
        per batch, as of this call (a consistent snapshot; writers proceed)."""
        with self._lock:
            view = self._view_locked()
            rows = np.flatnonzero(self._alive[: self._n])

        def generate() -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
            for lo in range(0, len(rows), batch):
                part = rows[lo : lo + batch]
                yield [view.keys[r] for r in part], view.vectors(part), view.norms[part]

        return generate()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """No background graph work while inside (a checkpoint loading must not
        race a build against the stored graph it is about to adopt)."""
        with self._cv:
            self._held += 1
        try:
            yield
        finally:
            with self._cv:
                self._held -= 1
                self._cv.notify_all()

    def capture_graph(self) -> GraphCapture | None:
        """The graph as it stands, for a checkpoint (call where the caller's
        state is captured too): which labels are live, and their keys' hash in
        label order, which is the order ``stored_batches`` yields them in."""
        with self._lock:
            ann = self._ann
            if ann is None or ann.count == 0:
                return None
            rows = self._rows_for_seqs_locked(ann.labels_seq[: ann.count])
            keys = self._keys
            return GraphCapture(ann.index, ann.rw, ann.count, rows >= 0, keys_hash(keys[r] for r in rows if r >= 0),
                                self.quantization)

    def adopt_graph(self, graph: LoadedGraph) -> None:
        """Take a stored graph whose live labels are, in order, this index's
        first rows (a checkpoint just loaded, before any other change): under
        none their vectors move into the graph's storage and their chunks are
        freed; sq8/pq graphs carry their own codes and the chunks stay (they
        rescore).  Raises ValueError (nothing changed) when the graph does not fit."""
        with self._cv:
            live = int(graph.alive.sum())
            n = self._n
            if graph.quantization != self.quantization:
                raise ValueError(f"the graph is for SUTRA_QUANTIZATION={graph.quantization}, this node runs "
                                 f"SUTRA_QUANTIZATION={self.quantization}")
            if self._ann is not None or n < live or not self._alive[:n].all():
                raise ValueError(f"the vector index is not freshly loaded ({n} rows, {self._live} live, "
                                 f"graph {'present' if self._ann is not None else 'absent'})")
            if keys_hash(self._keys[:live]) != graph.keys_hash:
                raise ValueError(f"the graph's {live} live labels are not the first {live} vectors of storage.dat")
            labels = np.flatnonzero(graph.alive)
            ann = Ann(self.dim, self._m, self._ef_construction, index=graph.index)
            if not self._keep:
                # The index does not own its storage: Ann keeps it alive.
                ann.storage = graph.index.storage = flat_storage(graph, labels, self._chunks, self.dim,
                                                                 self._reserved)
            # From here the graph may add to that storage (and move it): no chunk may stay a view of
            # it, and _free_covered_locked below drops them all (they lie below the covered rows).
            self._reserved = None
            ann.stage_labels(np.arange(graph.total, dtype=np.int64))
            ann.count, ann.watermark, ann.dead = graph.total, graph.total, graph.total - live
            # Renumber: the graph's live rows take their label as sequence, the rest follow.
            self._seq[:live] = labels
            self._seq[live:n] = graph.total + np.arange(n - live)
            self._next_seq = graph.total + n - live
            self._ann = ann
            self._layout += 1
            self._free_covered_locked()
            self._cv.notify_all()
        logger.info("vector index: adopted a stored HNSW graph (%d labels, %d live, %d vectors still to index)",
                    graph.total, live, n - live)

    def reserve_graph_storage(self, reserved: GraphStorage | None) -> None:
        """Before a checkpoint load into this empty index: write the rows that
        the stored graph will cover straight into its storage (annfile.
        GraphStorage), so ``adopt_graph`` need not copy them.  Ignored unless
        the index is empty and unquantized; any removal or update of a row
        stops it (the rows no longer match the graph's labels).  None ends it
        (after the adoption, taken or refused): later rows get chunks of their own."""
        with self._cv:
            if reserved is None or (not self._keep and self._n == 0 and self._ann is None):
                self._reserved = reserved

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
        """Counters for monitoring: live, rows, hnsw_total, hnsw_dead, pending,
        and memory by part: vector_bytes (full vectors on the heap),
        mapped_vector_bytes (full vectors in the ``mmap`` file map, page cache),
        index_bytes (graph links, plus sq8 codes), metadata_bytes."""
        with self._lock:
            ann = self._ann
            pending = self._n - self._covered if ann is not None else self._n
            total, dead = (0, 0) if ann is None else (ann.count, ann.dead)
            flat = sum(c.nbytes for c in self._chunks if c is not None)
            heap, mapped = (0, flat) if self._alloc.mapped else (flat, 0)
            # Arrays plus ~64 B per key: its row-of entry (tracemalloc: 16 MB at 300K) and list slot; the key's
            # str is the concept record's id, counted with the records (GraphState.memory_estimate).
            meta = self._seq.nbytes + self._alive.nbytes + self._norms.nbytes + 64 * len(self._keys)
        graph_vecs, graph = (0, 0) if ann is None else ann.memory_bytes()
        return {"live": self._live, "rows": self._n, "hnsw_total": total, "hnsw_dead": dead,
                "pending": pending, "vector_bytes": heap + (0 if self._keep else graph_vecs),
                "index_bytes": graph + (graph_vecs if self._keep else 0), "mapped_vector_bytes": mapped,
                "metadata_bytes": meta}
