"""The HNSW graph behind VectorIndex and the lock that guards it.

The graph's own storage (faiss ``IndexHNSWFlat``) is the only in-memory copy
of every vector it covers: VectorIndex frees its flat rows once the graph holds
them and reads them back from here (``rows``).  faiss may reallocate that
storage while ``add`` runs, so every read of it holds the read side of ``rw``.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np

from sutra_cluster.storage.quant import index_memory, new_hnsw

# The default beam (efSearch) per graph size: (labels, beam / base) measured on
# the clustered 768-d data (M 32, efConstruction 128) for recall@10 >= 0.98;
# log-log interpolation between them, the last slope beyond, at most BEAM_MAX.
BEAM_POINTS = ((20_000, 1.0), (300_000, 5.36), (1_000_000, 32.0))
BEAM_MAX = 4096  # the API's own limit on ef_search (api/validate.py MAX_EF_SEARCH)


def default_beam(base: int, count: int) -> int:
    """The beam (efSearch) a search uses unless the caller asks for a wider one,
    over a graph of ``count`` labels: ``base`` up to the first point (20K,
    where it keeps recall@10 >= 0.99), then ``base``
    times BEAM_POINTS' factor interpolated in log-log, rounded up to 32, at most
    BEAM_MAX (base 96: 192 at 50K, 288 at 100K, 544 at 300K, 3,072 at 1M, 4,096
    from ~1.2M).

    Why it grows: at a fixed beam, HNSW recall falls as the graph grows, and on
    the clustered 768-d data (intrinsic dimension near 768) faster than the
    textbook log n.  Recall@10 at 100K was 0.962 at ef 96, 0.980 at 128, 0.9995
    at 192; at 300K 0.950 at 192, 0.968 at 288, 0.987 at 512; at 1M, a node's
    own graph, 0.976 at 1,024, 0.979 at 2,048, 0.984 at 3,072 and 4,096 (200
    queries; a standalone build, 600 queries: 0.974 / 0.983 at 1,024 / 2,048),
    so 2,048 sat on the goal's edge and 3,072 clears it (docs/HA.md, Scale).
    Between 20K and 300K the beam grows as n^0.62, from 300K to 1M as n^1.5;
    past ~1.2M the cap holds it and recall falls below 0.98: a larger graph
    needs a better-built one (M, efConstruction), not a wider beam."""
    if count <= BEAM_POINTS[0][0]:
        return base
    (n0, f0), (n1, f1) = BEAM_POINTS[-2], BEAM_POINTS[-1]
    for (a, fa), (b, fb) in zip(BEAM_POINTS, BEAM_POINTS[1:]):
        if count <= b:
            (n0, f0), (n1, f1) = (a, fa), (b, fb)
            break
    slope = math.log(f1 / f0) / math.log(n1 / n0)
    want = base * f0 * (count / n0) ** slope
    return int(min(BEAM_MAX, max(base, 32 * math.ceil(want / 32))))


class RWLock:
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


class Ann:
    """An HNSW graph plus the map from its labels to flat-store sequence numbers.

    Invariants (fields other than ``index``/``rw`` are guarded by the owning
    VectorIndex's lock): labels ``< count`` are published; label ``i`` holds
    the normalised vector of sequence ``labels_seq[i]`` and ``labels_seq`` is
    ascending; every row with sequence ``< watermark`` that was live when
    indexed is in the graph; ``dead`` counts published labels whose row has
    since been tombstoned.
    """

    def __init__(self, dim: int, m: int, ef_construction: int, index: Any = None,
                 quantization: str = "none") -> None:
        if index is None:
            index = new_hnsw(dim, m, ef_construction, quantization)
        # faiss.IndexHNSWFlat, IndexHNSWSQ for sq8 or IndexIVFPQ for pq (whose storage
        # holds codes: rows/scores are then never asked of it).  Untyped: stubs lack .storage/.hnsw.
        self.index: Any = index
        self.dim = dim
        self.rw = RWLock()
        self.storage: Any = None  # a storage faiss does not own (an adopted graph's), kept alive here
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

    def _storage_view(self) -> np.ndarray:
        """The graph's vectors as a numpy view (caller holds ``rw``, read or write)."""
        n = self.index.ntotal
        if n == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        flat: Any = faiss.downcast_index(self.index.storage)
        return faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)

    def rows(self, labels: np.ndarray) -> np.ndarray:
        """A copy of the stored (normalised) vectors of ``labels``."""
        with self.rw.read():
            return self._storage_view()[labels]

    def scores(self, labels: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Inner products of ``q`` with the vectors of ``labels``, in batches so
        a large label set never copies all of its vectors at once."""
        out = np.empty(len(labels), dtype=np.float32)
        with self.rw.read():
            view = self._storage_view()
            for lo in range(0, len(labels), 16384):
                out[lo : lo + 16384] = view[labels[lo : lo + 16384]] @ q
        return out

    def memory_bytes(self) -> tuple[int, int]:
        """(vector or code bytes, graph bytes) held by faiss for this graph."""
        with self.rw.read():
            return index_memory(self.index, self.dim)
