"""annfile.flat_storage: the vectors an adopted HNSW graph searches, copied from
a freshly loaded flat store straight into faiss' buffer. Live labels get their
row's vector (rows in label order), dead labels zeros, whatever mix of both
falls in a chunk."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from sutra_cluster.storage.annfile import LoadedGraph, flat_storage
from sutra_cluster.storage.flatstore import CHUNK_ROWS, gather

DIM = 4


@pytest.mark.parametrize("dead", [[], [0], [5, CHUNK_ROWS + 1], list(range(CHUNK_ROWS - 3, CHUNK_ROWS + 3))])
def test_live_labels_get_their_rows_and_dead_ones_zeros(dead: list[int]) -> None:
    total = 2 * CHUNK_ROWS + 100
    alive = np.ones(total, dtype=bool)
    alive[dead] = False
    alive[total - 7 :] = False  # labels past the captured count
    labels = np.flatnonzero(alive)
    rng = np.random.default_rng(len(dead))
    rows = rng.standard_normal((3 * CHUNK_ROWS, DIM))
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)  # inner product = cosine
    chunks: list[np.ndarray | None] = [rows[c * CHUNK_ROWS : (c + 1) * CHUNK_ROWS] for c in range(3)]
    storage = flat_storage(LoadedGraph(None, total, alive, ""), labels, chunks, DIM)
    assert storage.ntotal == total
    got = faiss.vector_to_array(storage.codes).view(np.float32).reshape(total, DIM)
    assert np.array_equal(got[labels], gather(chunks, np.arange(len(labels)), DIM))
    assert not got[~alive].any()
    _, ids = storage.search(rows[:1], 1)  # faiss searches the same buffer: row 0 is its own best match
    assert ids[0][0] == labels[0]
