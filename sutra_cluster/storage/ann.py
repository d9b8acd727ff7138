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

BEAM_ROWS = 20_000  # up to this many labels the base beam keeps recall@10 >= 0.99 (clustered 768-d)
BEAM_EXPONENT = 0.62  # the beam grows as (labels / BEAM_ROWS) ** this
BEAM_MAX = 1024


def default_beam(base: int, count: int) -> int:
    """The beam (efSearch) a search uses unless the caller asks for a wider one,
    over a graph of ``count`` labels: ``base`` up to BEAM_ROWS, then
    ``base * (count / BEAM_ROWS) ** BEAM_EXPONENT`` rounded up to 32, at most
    BEAM_MAX (96: 192 at 50K, 288 at 100K, 544 at 300K, 1024 from ~900K).

    Why it grows: at a fixed beam, HNSW recall falls as the graph grows.  On
    the clustered 768-d data (M 32, efConstruction 128, built in batches as
    the maintainer does) recall@10 at 100K was 0.962 at ef 96, 0.980 at 128,
    0.9995 at 192; at 300K 0.950 at 192, 0.968 at 288, 0.971 at 384, 0.987
    at 512 (at 20K: >= 0.99 at 96).  Fitted on 20K-300K; 1M is not measured."""
    if count <= BEAM_ROWS:
        return base
    want = base * (count / BEAM_ROWS) ** BEAM_EXPONENT
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
