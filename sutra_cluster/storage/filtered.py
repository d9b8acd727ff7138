"""Filtered HNSW search: the graph walked with a bitmap selector over the
labels a filter allows, the beam widened by how selective the filter is (for
pq's IVF index the beam is the lists probed: quant.search_params)."""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np

from sutra_cluster.storage.ann import Ann
from sutra_cluster.storage.quant import search_params

FETCH_SLACK = 16  # extra hits requested beyond k
MAX_WIDEN = 32  # the filtered beam grows with 1/selectivity up to this factor

LiveKeys = Callable[[np.ndarray, np.ndarray, np.ndarray], list[tuple[str, float]]]


def ann_filtered(
    ann: Ann, count: int, labels: np.ndarray, qn: np.ndarray, k: int, ef_search: int, default_ef: int,
    threads: int, live_keys: LiveKeys, fetch_min: int = 0,
) -> list[tuple[str, float]]:
    """Live top-k among graph ``labels`` (all ``< count``, alive when chosen).

    A narrow filter leaves few members per hop, so the beam (efSearch) is
    widened by count / len(labels), capped at MAX_WIDEN. ``live_keys(labels_seq,
    hit labels, scores)`` maps hits to keys, dropping rows superseded meanwhile.
    ``fetch_min``: fetch at least this many hits (sq8/pq rescore them exactly).
    The caller falls back to an exact scan when this finds fewer than it should.
    """
    if len(labels) == 0:
        return []
    bits = np.zeros(count, dtype=bool)
    bits[labels] = True
    packed = np.packbits(bits, bitorder="little")
    sel = faiss.IDSelectorBitmap(count, faiss.swig_ptr(packed))
    widen = min(MAX_WIDEN, count / len(labels))
    fetch = min(len(labels), max(fetch_min, k + FETCH_SLACK))
    base = max(ef_search, fetch, default_ef)
    params = search_params(ann.index, int(min(count, max(base, base * widen))), sel)
    labels_seq = ann.labels_seq
    saved_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        with ann.rw.read():
            sims, found = ann.index.search(qn[None, :], fetch, params=params)
    finally:
        faiss.omp_set_num_threads(saved_threads)
    ok = (found[0] >= 0) & (found[0] < count)
    return live_keys(labels_seq, found[0][ok], sims[0][ok])
