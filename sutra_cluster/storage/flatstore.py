"""Reading VectorIndex's rows: the flat chunks for the rows the graph does not
cover yet, the graph's own storage for the rows it does (one copy of each
vector).  Pure functions over a ``View`` taken under VectorIndex's lock, so a
search or a checkpoint can read without holding it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sutra_cluster.storage.ann import Ann

CHUNK_ROWS = 4096  # rows per storage chunk: growth never copies old rows
TIE_SLACK = 64  # extra equal-score rows kept so ties break by key, not row
_BATCH = 16384  # rows scored per step of a large exact scan


@dataclass(frozen=True)
class View:
    """What reading rows below ``n`` needs, valid without the lock: rows below
    ``n`` are never rewritten (compaction builds new lists and arrays), chunks
    are freed by replacing the list, and graph labels below ``count`` are fixed.

    Rows below ``covered`` are read from ``ann`` (their chunk may be freed or,
    after a compaction, never filled) unless ``kept``; other rows from ``chunks``."""

    chunks: list[np.ndarray | None]
    keys: list[str]
    seq: np.ndarray
    norms: np.ndarray
    n: int
    ann: Ann | None
    covered: int
    count: int
    labels_seq: np.ndarray
    dim: int
    kept: bool = False  # every row's chunk is kept (sq8): read all rows there, none from the graph

    @property
    def from_graph(self) -> int:
        """Rows below this are read from the graph's storage."""
        return 0 if self.kept else self.covered

    def labels(self, rows: np.ndarray) -> np.ndarray:
        """Graph labels of covered live rows."""
        return np.searchsorted(self.labels_seq[: self.count], self.seq[rows])

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Normalised vectors of ascending live ``rows``, as one C array."""
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        split = int(np.searchsorted(rows, self.from_graph))
        if split:
            assert self.ann is not None
            out[:split] = self.ann.rows(self.labels(rows[:split]))
        out[split:] = gather(self.chunks, rows[split:], self.dim)
        return out

    def scores(self, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Inner products of ``q`` with ascending live ``rows``."""
        out = np.empty(len(rows), dtype=np.float32)
        split = int(np.searchsorted(rows, self.from_graph))
        if split:
            assert self.ann is not None
            out[:split] = self.ann.scores(self.labels(rows[:split]), q)
        for lo in range(split, len(rows), _BATCH):
            hi = min(len(rows), lo + _BATCH)
            out[lo:hi] = gather(self.chunks, rows[lo:hi], self.dim) @ q
        return out

    def range_scores(self, start: int, alive: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Scores of rows ``[start, start + len(alive))``, -inf where not alive."""
        stop = start + len(alive)
        if start >= self.from_graph:  # all in chunks: scan them in place
            out = range_scores(self.chunks, start, stop, q)
            out[~alive] = -np.inf
            return out
        out = np.full(len(alive), -np.inf, dtype=np.float32)
        live = np.flatnonzero(alive)
        out[live] = self.scores(start + live, q)
        return out

    def candidates(self, rows: np.ndarray, q: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Exact top-k (plus boundary ties) over ascending live ``rows``."""
        if len(rows) == 0 or k <= 0:
            return []
        return top_k(self.keys, rows, self.scores(rows, q), k)


def top_k(keys: list[str], rows: np.ndarray, scores: np.ndarray, k: int,
          live: int | None = None) -> list[tuple[str, float]]:
    """The k best (row, score) pairs as (key, score), keeping ties at the k-th
    score; rows scored -inf are dead (``live`` of them are not, when known)."""
    if k < (len(rows) if live is None else live):
        kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
        top = np.flatnonzero(scores >= kth)
        if len(top) > k + TIE_SLACK:  # pathological mass of duplicates
            top = np.argpartition(-scores, k - 1)[:k]
    else:
        top = np.flatnonzero(scores > -np.inf)
    return [(keys[int(rows[i])], float(scores[i])) for i in top]


def range_scores(chunks: list[np.ndarray | None], start: int, stop: int, q: np.ndarray) -> np.ndarray:
    """Inner products of ``q`` with rows ``[start, stop)`` of chunked storage."""
    out = np.empty(stop - start, dtype=np.float32)
    row = start
    while row < stop:
        c, off = divmod(row, CHUNK_ROWS)
        end = min(stop, (c + 1) * CHUNK_ROWS)
        chunk = chunks[c]
        assert chunk is not None, f"row {row} is in a freed chunk"
        np.matmul(chunk[off : off + end - row], q, out=out[row - start : end - start])
        row = end
    return out


def gather(chunks: list[np.ndarray | None], rows: np.ndarray, dim: int) -> np.ndarray:
    """Copy the given (ascending) rows of chunked storage into one C array."""
    out = np.empty((len(rows), dim), dtype=np.float32)
    if len(rows) == 0:
        return out
    chunk_ids = rows // CHUNK_ROWS
    bounds = np.flatnonzero(np.diff(chunk_ids)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(rows)]):
        c = int(chunk_ids[lo])
        chunk = chunks[c]
        assert chunk is not None, f"row {int(rows[lo])} is in a freed chunk"
        out[lo:hi] = chunk[rows[lo:hi] - c * CHUNK_ROWS]
    return out


def ranked(cands: list[tuple[str, float]], k: int) -> list[tuple[str, float]]:
    """Top-k by similarity desc, key asc, with similarities clipped to [-1, 1]."""
    cands.sort(key=lambda c: (-c[1], c[0]))
    return [(key, min(1.0, max(-1.0, sim))) for key, sim in cands[:k]]
