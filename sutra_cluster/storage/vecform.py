"""The one stored form of a vector: L2-normalised float32 plus its original
length (float64).  The apply path, the vector index and the snapshot codec
all derive it here, so every node holds the same bits for the same write."""

from __future__ import annotations

import hashlib
import struct

import numpy as np

_NORM = struct.Struct("<d")


def normalise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(normalised float32 rows, float64 lengths) of float32 rows ``x``.

    float64 inside: squares of large float32 would overflow, and exact
    rounding keeps vectors of one direction at exactly equal similarity
    (stable ties).  Zero rows come back with length 0 (the caller rejects them)."""
    x64 = np.asarray(x, dtype=np.float32).astype(np.float64)
    lengths = np.sqrt(np.einsum("ij,ij->i", x64, x64))
    safe = np.where(lengths > 0, lengths, 1.0)
    # In place: a second float64 matrix of a 1,000-vector batch is 6 MB of fresh
    # pages to fault in, and cost 5x the arithmetic (same bits either way).
    np.divide(x64, safe[:, None], out=x64)
    return x64.astype(np.float32), lengths


def original(vec: np.ndarray, norm: float) -> np.ndarray:
    """The original vector back from its stored form, within float rounding."""
    return (np.asarray(vec, dtype=np.float64) * norm).astype(np.float32)


def fingerprint(stored: bytes | memoryview | np.ndarray, norm: float) -> int:
    """A non-zero 64-bit hash of a stored vector (what the state digest covers).
    ``stored``: its float32 bytes, or a C-contiguous float32 row (hashed in place)."""
    h = hashlib.blake2b(stored, digest_size=8)  # type: ignore[arg-type]  # an ndarray is a buffer
    h.update(_NORM.pack(norm))
    return int.from_bytes(h.digest(), "little") or 1
