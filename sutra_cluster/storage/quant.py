"""Vector storage modes and quantization for VectorIndex (issue 12, "Beyond RAM").

``SUTRA_VECTOR_STORAGE``:

* ``memory``: the flat store's row chunks are heap arrays.
* ``mmap``: the page cache, not the heap, holds the vectors.  A start maps
  storage.dat read-only and keeps each whole 4,096-row vector block of it
  (CRC-checked in place) as a chunk, a view of the file: no copy, and clean
  pages the kernel may drop and read back.  The mapping lives as long as its
  chunks, also after later checkpoints have rotated that storage.dat out of
  the directory (its blocks stay allocated until then: at most one copy of the
  vectors, as the map files below always held).  Every other chunk (a partial
  last block, the WAL tail, later writes, compactions) is a shared mapping of
  a file under ``<data>/vectors.map`` that is unlinked as soon as it is
  mapped.  Those files are derived state only: filled from storage.dat + the
  WAL and never read back (stray files a crash left behind are deleted at
  start), so they can never be trusted stale.

``SUTRA_QUANTIZATION``:

* ``none``: the graph is faiss ``IndexHNSWFlat``; once it covers a chunk its
  float32 storage is the only copy of those vectors.
* ``sq8``: the graph is ``IndexHNSWSQ`` (8 bits per dimension, trained per
  dimension on the vectors the graph is first built from), a quarter of the
  float bytes.  The full normalised vectors stay in the flat store (heap or
  map), the graph's hits are over-fetched and rescored exactly from them.
* ``pq``: the "graph" is faiss ``IndexIVFPQ``: an inverted file of coarse
  centroids with each vector's residual product-quantized into dim/8 bytes
  (plus an 8-byte id), 1/32 of the float bytes at 768-d.  Not HNSW-PQ:
  faiss' ``IndexHNSWPQ`` links its graph by code-to-code distances, and on the
  clustered test data its recall@10 stayed at 0.43-0.93 even with rescoring
  (ef 64-512), while IVF-PQ over residuals with rescoring reached 0.99-1.0
  (20K x 768-d, 256 lists, 16-32 probed).  Like ``sq8`` the full vectors stay
  in the flat store and max(PQ_RESCORE_MIN, RESCORE_FACTOR * k) hits are
  rescored exactly.  The lists and codebooks are trained once, on the vectors
  the index is first built from (a rebuild past 20 % dead retrains them).

``mmap`` needs ``sq8`` or ``pq``: faiss' flat graph copies every vector into
its own heap storage, so a map beside it would save nothing.
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
# PQ's code distances are coarser than sq8's: at 20K x 768-d, 256 lists and 32
# probed, rescoring 64 hits gave recall@10 0.972, 128 gave 0.995, 256 gave 1.0.
# At 1M (128 lists trained on the first 5,000 vectors, 32 probed at the default
# beam) 128 gave 0.925, 256 0.982, 512 0.997: the more codes a probe scans, the
# more of them outrank a true neighbour by code distance.  Rescoring 256 rows
# reads 0.75 MB of full vectors, small beside the ~24 MB of codes scanned.
PQ_RESCORE_MIN = 256
# The default beam stops growing here for pq (a caller's ef_search still widens it): at 1M its
# 128 lists were probed 32 at a time (1,024 // 32), which gave recall@10 0.976; HNSW's beam
# grows on (ann.default_beam) and would have tripled pq's probes, unmeasured.
PQ_BEAM_MAX = 1024
TRAIN_ROWS = 65_536  # sq8/pq train on at most this many rows
PQ_MAX_LISTS = 4096
PQ_POINTS_PER_LIST = 39  # faiss' k-means wants >= 39 training points per centroid


def check_modes(storage: str, quantization: str) -> None:
    """Raise ValueError naming the setting and what is supported."""
    problem = vector_mode_problem(storage, quantization)
    if problem is not None:
        raise ValueError(problem)


def vector_modes(cfg: Config) -> dict[str, Any]:
    """VectorIndex's storage/quantization arguments for a node's settings."""
    return {"storage": cfg.vector_storage, "quantization": cfg.quantization,
            "map_dir": Path(cfg.storage_path) / MAP_DIR}


def rescore_fetch(quantization: str, k: int) -> int:
    """Hits to fetch and rescore from the full vectors (0: scores are exact already)."""
    if quantization == "none":
        return 0
    return max(PQ_RESCORE_MIN if quantization == "pq" else RESCORE_MIN, RESCORE_FACTOR * k)


def pq_subquantizers(dim: int) -> int:
    """PQ sub-vectors: the largest divisor of ``dim`` up to dim/8 (8 dimensions,
    one byte each: 96 bytes a vector at 768-d), at least 1."""
    best = 1
    for m in range(1, max(1, dim // 8) + 1):
        if dim % m == 0:
            best = m
    return best


def pq_lists(rows: int) -> int:
    """Inverted lists for an IVF-PQ trained on ``rows`` vectors: a power of two
    near 4 sqrt(rows), with enough training points per list, in 1..PQ_MAX_LISTS."""
    want = min(rows // PQ_POINTS_PER_LIST, int(4 * rows ** 0.5), PQ_MAX_LISTS)
    return 1 << max(0, int(want).bit_length() - 1) if want >= 1 else 1


class UntrainedPQ:
    """Stands in for an IVF-PQ index until ``trained`` sees the sample that
    fixes its list count (faiss fixes nlist at construction)."""

    is_trained = False
    ntotal = 0

    def __init__(self, dim: int) -> None:
        self.d = dim


def new_pq(dim: int, rows: int) -> Any:
    """An untrained IVF-PQ index (L2 on normalised vectors: the same order as
    cosine; scores are rescored exactly anyway) sized for ``rows`` training rows."""
    quantizer = faiss.IndexFlatL2(dim)  # the wrapper keeps it alive with the index
    # 8 bits (256 centroids a sub-vector) once there are enough rows to train them.
    nbits = max(1, min(8, int(rows).bit_length() - 1))
    index: Any = faiss.IndexIVFPQ(quantizer, dim, pq_lists(rows), pq_subquantizers(dim), nbits, faiss.METRIC_L2)
    return index


def new_hnsw(dim: int, m: int, ef_construction: int, quantization: str) -> Any:
    """An empty index for the quantization mode: HNSW over inner product for
    none/sq8, an ``UntrainedPQ`` for pq (sq8 and pq must be trained before
    their first add: ``trained``)."""
    if quantization == "pq":
        return UntrainedPQ(dim)
    if quantization == "sq8":
        qt: Any = faiss.ScalarQuantizer.QT_8bit  # an int enum; the stubs say ScalarQuantizer
        index: Any = faiss.IndexHNSWSQ(dim, qt, m, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    return index


def trained(index: Any, sample: np.ndarray) -> Any:
    """``index`` trained on ``sample`` (returned as is when flat or trained;
    for pq a new IVF-PQ index sized for the sample)."""
    if index.is_trained:
        return index
    sample = np.ascontiguousarray(sample[:TRAIN_ROWS])
    if isinstance(index, UntrainedPQ):
        index = new_pq(index.d, len(sample))
    index.train(sample)
    return index


def quantization_of(index: Any) -> str:
    """Which SUTRA_QUANTIZATION built ``index`` ("none", "sq8", "pq")."""
    if isinstance(index, (faiss.IndexIVFPQ, UntrainedPQ)):
        return "pq"
    return "none" if isinstance(index, faiss.IndexHNSWFlat) else "sq8"


def search_params(index: Any, ef: int, sel: Any = None) -> Any:
    """faiss search parameters for a beam of ``ef``: efSearch for HNSW; for
    IVF-PQ the lists probed: an eighth of them (recall@10 0.99 at 20K, 0.978
    at 100K with rescoring), more only for a beam past 32 x that (a caller's
    ef_search: the default beam's growth is HNSW's, a fixed share of lists
    already finds the same share of neighbours as the index grows).  With a
    selector ``sel`` (a filter), ``ef`` is already widened by 1/selectivity
    and probes follow it 4x as fast, ef / 8: a 1 % filter at 20K probing a
    quarter of the lists found 0.947 of its top 10, all of them 1.0."""
    params: Any
    if isinstance(index, faiss.IndexIVFPQ):
        params = faiss.SearchParametersIVF()
        params.nprobe = int(min(index.nlist, max(1, index.nlist // 8, ef // (8 if sel is not None else 32))))
    else:
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.efSearch = int(ef)
    if sel is not None:
        params.sel = sel
    return params


def index_memory(index: Any, dim: int) -> tuple[int, int]:
    """(vector or code bytes, structure bytes) faiss holds for ``index``: HNSW
    links, or IVF-PQ's ids (8 bytes a vector) and centroids."""
    n = int(index.ntotal)
    if isinstance(index, UntrainedPQ):
        return 0, 0
    if isinstance(index, faiss.IndexIVFPQ):
        centroids = index.nlist * dim * 4 + dim * (1 << index.pq.nbits) * 4
        return n * int(index.code_size), n * 8 + centroids
    hnsw = index.hnsw
    links = hnsw.neighbors.size() * 4 + hnsw.offsets.size() * 8 + hnsw.levels.size() * 4
    return n * (4 * dim if isinstance(index, faiss.IndexHNSWFlat) else dim), links


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
