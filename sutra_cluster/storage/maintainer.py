"""The HNSW maintainer of VectorIndex: the background thread that builds the
graph, extends it with new rows in small batches and rebuilds it past 20 %
dead labels, always off the request path (a mixin: it works on VectorIndex's
flat store and locks, declared below for the type checker).

Pacing (why it pauses): on the 2-core machine this was measured on, any
indexing that runs while single writes are in flight slows them 4-6x
(leader + 2 replicas), whatever its priority and wherever it runs: a nice-10
or SCHED_IDLE thread, and even a SCHED_IDLE *process* spinning on plain Python
beside each node, slowed replicated single writes as much as faiss in the
node did.  So a lower priority or a child process cannot fix it; only not
running can.  The background thread therefore starts no graph work (and
stops between batches of a build) until no vector has arrived for
``_quiet`` seconds, unless the unindexed tail has grown past ``_max_tail``
rows: searches scan that tail exactly, so the bound caps what a search costs
while writes keep the index waiting.  Past the bound it indexes as before
(resting ``_index_yield`` times its work while writes flow) until the tail
is back under it.  ``build_pending`` (explicit) never waits.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from typing import TYPE_CHECKING

import faiss
import numpy as np

from sutra_cluster.storage.ann import Ann
from sutra_cluster.storage.flatstore import View
from sutra_cluster.storage.quant import TRAIN_ROWS, trained

logger = logging.getLogger("sutra_cluster.storage.vectors")

_BUSY_WINDOW_S = 0.25  # an upsert this recent means writes are flowing
_REBUILD_FRACTION = 0.2  # rebuild the HNSW past this tombstone share
# A (re)build blocks no one's locks; it adds in batches so that it can stop, or
# pause for writes, between them.  A batch started in a lull runs on when writes
# resume: at 768-d, 64 rows took at most 143 ms here (256: 508 ms, 1024: 1.3 s)
# for the same total CPU.
_BUILD_BATCH = 64
DEFAULT_QUIET_S = 0.25  # SUTRA_INDEX_QUIET_MS: writes this recent keep the background indexing paused
# SUTRA_INDEX_MAX_TAIL: past this many unindexed rows indexing runs despite writes.  A search
# scans the tail exactly: 20,000 x 768-d rows are 61 MB, measured 12 ms at best and ~70 ms p50
# on the loaded 2-core box (docs/HA.md, Write path speed).
DEFAULT_MAX_TAIL = 20_000

try:  # glibc: hand free heap pages back to the OS (a 3 KB-per-vector churn fragments the heap)
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")
except OSError:
    _LIBC = None


def may_index(idle_for: float, quiet: float, tail: int, max_tail: int) -> bool:
    """Whether background graph work may run now: the last vector arrived at
    least ``quiet`` seconds ago, or more than ``max_tail`` rows wait outside
    the graph (so ``max_tail`` 0 never pauses, and ``quiet`` 0 never waits)."""
    return idle_for >= quiet or tail > max_tail


def release_free_heap() -> None:
    """Return free heap memory to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Loading and indexing free many short-lived vector-sized buffers; without
    this, RSS keeps them long after (measured: ~1.5 KB per concept at 20K)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class Maintainer:
    dim: int
    _lock: threading.Lock
    _cv: threading.Condition
    _maint_lock: threading.Lock
    _ann: Ann | None
    _live: int
    _n: int
    _seq: np.ndarray
    _alive: np.ndarray
    _epoch: int
    _covered: int
    _next_seq: int
    _ann_start: int
    _batch: int
    _index_threads: int
    _quiet_threads: int
    _index_yield: float
    _last_upsert: float
    _quiet_cv: threading.Condition
    _quiet: float
    _max_tail: int
    _stop: bool
    _thread: threading.Thread | None
    _held: int
    _trim_due: bool
    _m: int
    _ef_construction: int
    quantization: str

    if TYPE_CHECKING:  # the store's flat-store compaction (vectors.py), which this thread runs too
        def _compaction_due_locked(self) -> bool: ...
        def _compaction_pending(self) -> bool: ...
        def _compact_step(self) -> bool: ...
        def _compact_locked(self) -> None: ...
        def _view_locked(self) -> View: ...
        def _rows_for_seqs_locked(self, seqs: np.ndarray) -> np.ndarray: ...
        def _free_covered_locked(self) -> None: ...

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

    @property
    def index_state(self) -> str:
        """What the background thread is doing: ``"idle"`` (nothing due, or no
        thread), ``"paused"`` (graph work is due but writes are recent and the
        tail is within ``_max_tail``), ``"indexing"`` (writes are quiet), or
        ``"forced"`` (indexing while writes flow: the tail is past the bound)."""
        with self._lock:
            return self._state

    def close(self) -> None:
        """Stop the background thread (waits for the current batch); idempotent."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
            quiet_cv = getattr(self, "_quiet_cv", None)
            if quiet_cv is not None:
                quiet_cv.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=60)
            if thread.is_alive():
                logger.warning("vector index maintainer did not stop within 60 s")

    # ----------------------------------------------------------- maintainer

    _state = "idle"  # index_state; written under _lock by the background thread only
    build_threads = 0  # faiss threads of the background thread's latest graph work (0: none yet)

    def _writes_flowing(self) -> bool:
        """Background work should rest ``_index_yield`` times what it took: an upsert came
        within ``_BUSY_WINDOW_S`` (and resting is not switched off)."""
        return bool(self._index_yield) and time.monotonic() - self._last_upsert < _BUSY_WINDOW_S

    def _tail_locked(self) -> int:
        """Rows a search scans exactly: those past the published graph's prefix."""
        return self._n - self._covered

    def _wait_quiet_locked(self) -> None:
        """Block (caller holds ``_lock`` through ``_quiet_cv``) while writes are
        recent and the tail is within ``_max_tail``; returns at once when
        stopping.  Waits on its own condition, so upserts (which notify
        ``_cv``) do not wake it once per write: it re-checks when the quiet
        window would end or after ``_BUSY_WINDOW_S``, whichever is first, so
        the tail may pass the bound by that long's worth of writes before
        indexing resumes."""
        was = self._state
        while not self._stop:
            if self._compaction_due_locked():
                return  # the caller compacts first
            idle_for = time.monotonic() - self._last_upsert
            tail = self._tail_locked()
            if may_index(idle_for, self._quiet, tail, self._max_tail):
                break
            self._state = "paused"
            self._quiet_cv.wait(timeout=max(0.001, min(self._quiet - idle_for, _BUSY_WINDOW_S)))
        else:
            return
        if tail > self._max_tail and idle_for < self._quiet and was != "forced":
            logger.info("vector index: %d vectors wait outside the HNSW graph (SUTRA_INDEX_MAX_TAIL %d): "
                        "indexing while writes flow", tail, self._max_tail)
        self._state = "forced" if idle_for < self._quiet else "indexing"
        # Quiet: every core (the thread is at nice +10, so requests still win the CPU); forced
        # while writes flow: one, as before.  OpenMP's thread count is per calling thread.
        self.build_threads = self._index_threads if self._state == "forced" else self._quiet_threads
        faiss.omp_set_num_threads(self.build_threads)

    def _work_locked(self, auto: bool) -> str | None:
        """What the maintainer should do next: 'build', 'rebuild', 'extend' or None."""
        ann = self._ann
        if auto and self._held:
            return None
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
            epoch, n, view = self._epoch, self._n, self._view_locked()
            if work == "extend":
                ann = self._ann
                assert ann is not None  # "extend" is only chosen when a graph exists
                start = self._covered
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
            return self._extend(ann, epoch, view, rows, seqs, watermark)
        return self._build(epoch, view, rows, seqs, watermark, work, auto)

    def _extend(self, ann: Ann, epoch: int, view: View, rows: np.ndarray,
                seqs: np.ndarray, watermark: int) -> int:
        vecs = view.vectors(rows)
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
            self._free_covered_locked()
        return len(seqs)

    def _build(self, epoch: int, view: View, rows: np.ndarray,
               seqs: np.ndarray, watermark: int, why: str, auto: bool) -> int | None:
        """Build a fresh graph of a snapshot without blocking searches, then swap it in."""
        ann = None
        if len(rows):
            ann = Ann(self.dim, self._m, self._ef_construction, quantization=self.quantization)
            ann.index = trained(ann.index, view.vectors(rows[:TRAIN_ROWS]))  # sq8 ranges, pq lists + codebooks
            for lo in range(0, len(rows), _BUILD_BATCH):
                if auto:
                    with self._quiet_cv:
                        self._wait_quiet_locked()
                if (auto and self._stop) or self._epoch != epoch:
                    return None
                ann.index.add(view.vectors(rows[lo : lo + _BUILD_BATCH]))
            ann.stage_labels(seqs)
            ann.count = len(seqs)
            ann.watermark = watermark
        with self._lock:
            if self._epoch != epoch:
                return None
            if ann is not None:
                ann.dead = int((self._rows_for_seqs_locked(seqs) < 0).sum())
            self._ann = ann
            self._covered = 0
            self._free_covered_locked()
        logger.info("vector index: HNSW %s done, %d vectors", why, len(rows))
        return len(rows)

    def _run(self) -> None:
        faiss.omp_set_num_threads(self._index_threads)  # this thread only
        try:
            # Indexing trails the writes: let acknowledgements win the CPU (nice +10, this thread only).
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        with self._cv:
            self._quiet_cv = threading.Condition(self._lock)  # close() notifies it under the same lock
        while True:
            with self._cv:
                idle = not self._stop and self._work_locked(auto=True) is None and not self._compaction_due_locked()
                if idle:
                    self._state = "idle"
            if idle and self._trim_due:
                self._trim_due = False
                release_free_heap()
            with self._cv:
                while not self._stop and self._work_locked(auto=True) is None and not self._compaction_due_locked():
                    self._state = "idle"
                    self._cv.wait()
                if self._stop:
                    return
            if self._compaction_pending():
                # Tombstones first, whether or not writes are flowing (they are what makes them).
                try:
                    with self._maint_lock:
                        if not self._compact_step():
                            with self._lock:
                                if self._compaction_due_locked():
                                    self._compact_locked()
                    self._trim_due = True
                except Exception:  # keep the thread alive; it tries again in 1 s
                    logger.exception("vector store compaction failed")
                    with self._cv:
                        self._cv.wait(timeout=1.0)
                continue
            with self._quiet_cv:
                self._wait_quiet_locked()
                if self._stop:
                    return
            if self._compaction_pending():
                continue
            try:
                t0 = time.monotonic()
                with self._maint_lock:
                    self._step(auto=True, budget=self._batch)
                self._trim_due = True
                took = time.monotonic() - t0
                if self._writes_flowing():
                    with self._cv:  # writes are flowing: give them the CPU for a while
                        if not self._stop:
                            self._cv.wait(timeout=took * self._index_yield)
            except Exception:  # keep the thread alive; search stays exact-correct meanwhile
                logger.exception("vector index maintainer step failed; retrying in 1 s")
                with self._cv:
                    self._cv.wait(timeout=1.0)
