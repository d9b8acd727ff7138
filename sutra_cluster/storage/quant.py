"""Vector storage modes and quantization for VectorIndex (issue 12, "Beyond RAM").

``SUTRA_VECTOR_STORAGE``:

* ``memory``: the flat store's row chunks are heap arrays.
* ``mmap``: each chunk is a shared mapping of a file under ``<data>/vectors.map``
  that is unlinked as soon as it is mapped, so the page cache (which the kernel
  may write back and evict) holds the vectors, not the heap.  The map is
  derived state only: it is filled from storage.dat + the WAL at every start
  and never read back (an unlinked file cannot be; stray files a crash left
  behind are deleted at start), so it can never be trusted stale.

``SUTRA_QUANTIZATION``:

* ``none``: the graph is faiss ``IndexHNSWFlat``; once it covers a chunk its
  float32 storage is the only copy of those vectors.
* ``sq8``: the graph is ``IndexHNSWSQ`` (8 bits per dimension, trained per
  dimension on the vectors the graph is first built from), a quarter of the
  float bytes.  The full normalised vectors stay in the flat store (heap or
  map), the graph's hits are over-fetched and rescored exactly from them.

``mmap`` needs ``sq8``: faiss' flat graph copies every vector into its own
heap storage, so a map beside it would save nothing.  ``pq`` is not built.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from sutra_cluster.config import Config, vector_mode_problem

MAP_DIR = "vectors.map"
# sq8 fetches max(RESCORE_MIN, RESCORE_FACTOR * k) graph hits and rescores them
# exactly: at 20K x 768-d clustered data recall@10 is >= 0.99 with these.
RESCORE_FACTOR = 4
RESCORE_MIN = 64
TRAIN_ROWS = 65_536  # sq8 trains its per-dimension ranges on at most this many rows


def check_modes(storage: str, quantization: str) -> None:
    """Raise ValueError naming the setting and what is supported."""
    problem = vector_mode_problem(storage, quantization)
    if problem is not None:
        raise ValueError(problem)


def vector_modes(cfg: Config) -> dict[str, Any]:
    """VectorIndex's storage/quantization arguments for a node's settings."""
    return {"storage": cfg.vector_storage, "quantization": cfg.quantization,
            "map_dir": Path(cfg.storage_path) / MAP_DIR}


def new_hnsw(dim: int, m: int, ef_construction: int, quantization: str) -> Any:
    """An empty HNSW index over inner product for the quantization mode
    (sq8 must be trained before its first add: ``train_if_needed``)."""
    if quantization == "sq8":
        qt: Any = faiss.ScalarQuantizer.QT_8bit  # an int enum; the stubs say ScalarQuantizer
        index: Any = faiss.IndexHNSWSQ(dim, qt, m, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    return index


def train_if_needed(index: Any, sample: np.ndarray) -> None:
    """Train a quantizer on ``sample`` (a no-op for a flat or trained index)."""
    if not index.is_trained:
        index.train(np.ascontiguousarray(sample[:TRAIN_ROWS]))


def code_bytes(index: Any, dim: int) -> int:
    """Bytes of the vectors (or their codes) the graph's storage holds."""
    per = dim if not isinstance(index, faiss.IndexHNSWFlat) else 4 * dim
    return int(index.ntotal) * per


class ChunkAllocator:
    """Allocates the flat store's ``(rows, dim)`` float32 chunks on the heap
    or, for ``mmap``, as shared mappings of unlinked files in ``map_dir``."""

    def __init__(self, storage: str, map_dir: Path | None) -> None:
        if storage == "mmap" and map_dir is None:
            raise ValueError("SUTRA_VECTOR_STORAGE=mmap needs a data directory for its map")
        self.mapped = storage == "mmap"
        self.map_dir = map_dir
        self._serial = 0
        if self.mapped:
            assert map_dir is not None
            map_dir.mkdir(parents=True, exist_ok=True)
            for stray in map_dir.iterdir():  # left by a crash between create and unlink: never reused
                stray.unlink(missing_ok=True)

    def chunk(self, rows: int, dim: int) -> np.ndarray:
        if not self.mapped:
            return np.empty((rows, dim), dtype=np.float32)
        assert self.map_dir is not None
        nbytes = rows * dim * 4
        self._serial += 1
        path = self.map_dir / f"chunk-{os.getpid()}-{self._serial}.f32"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, nbytes)
            mapped = mmap.mmap(fd, nbytes)  # the mapping keeps the file alive once unlinked
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)
        # The array holds the mmap: dropping the chunk unmaps it and frees the file's blocks.
        return np.frombuffer(mapped, dtype=np.float32).reshape(rows, dim)
