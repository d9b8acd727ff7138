"""Columnar concept blocks: how storage.dat version 2 holds concepts
(format in docs/wal_format.md, "Columns frame").

Version 1 wrote one protobuf message per concept, and a start spent most of
its time decoding them (about 70 s for 100K concepts on a loaded machine).
A columns block holds up to a few thousand concepts as arrays: the vectors
as one float32 block that ``numpy.frombuffer`` hands to the vector index
without a per-row step, the numbers as typed arrays, and the strings as one
UTF-8 blob each with end offsets. Decoding costs one small Python step per
concept (making its record), not a message parse.

The frame around a block (length, CRC32C, kind) is checkpoint.py's; this
module only packs and unpacks the payload, and ``unpack`` checks every length
and offset so that a block that passed its CRC but is malformed (a writer's
bug) is refused with the reason, never half-loaded.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

BLOCK_HEAD = struct.Struct("<IIII")  # concepts, dim (0: none has a vector), attribute pairs, reserved 0


# Shared by every concept record without attributes. Records are never changed in place (an
# update builds a new record with its own dict), so one empty dict serves them all: one each was
# 64 B of heap per concept, 64 MB at 1M.
NO_ATTRIBUTES: dict[str, str] = {}


def shared_values(values: np.ndarray) -> list[Any]:
    """``values.tolist()`` with one Python object per distinct value: a float or a large int is
    24-32 B of heap per element, and a block's strengths, confidences and times mostly repeat
    (a batch's concepts share its time; most strengths are the default)."""
    uniq, inverse = np.unique(values, return_inverse=True)
    if len(uniq) == len(values):
        return values.tolist()  # type: ignore[no-any-return]
    return list(map(uniq.tolist().__getitem__, inverse.tolist()))


def interned(values: Iterable[Any]) -> list[Any]:
    """``list(values)`` with equal values sharing one object (what ``shared_values`` does for an
    array, for the floats a write's protobuf messages hand out one fresh object each)."""
    seen: dict[Any, Any] = {}
    return [seen.setdefault(v, v) for v in values]


class ColumnsError(ValueError):
    """A columns payload is malformed; the message says which part."""


@dataclass
class ColumnChunk:
    """One decoded block, in file order. ``vectors`` is (n, dim) float32 in
    stored form (normalised) with ``norms`` and ``fingerprints``; all three are
    None when none of the block's concepts has a vector (dim 0)."""

    ids: list[str]
    contents: list[str]
    strength: list[float]
    confidence: list[float]
    created_us: list[int]
    updated_us: list[int]
    attributes: list[dict[str, str]]
    vectors: np.ndarray | None
    norms: np.ndarray | None
    fingerprints: list[int] | None

    @property
    def concepts(self) -> list[str]:
        """The block's concept ids (so ``len(chunk.concepts)`` counts concepts for
        any chunk the snapshot decoder yields, protobuf or columns)."""
        return self.ids

    @property
    def edges(self) -> tuple[()]:
        """Columns blocks hold no edges (they stay in protobuf chunk frames)."""
        return ()


def _blob(strings: list[str]) -> tuple[bytes, np.ndarray]:
    parts = [s.encode() for s in strings]
    ends = np.cumsum(np.fromiter((len(p) for p in parts), dtype=np.uint64, count=len(parts)), dtype=np.uint64)
    return b"".join(parts), ends


def pack(
    ids: list[str], contents: list[str], strength: list[float], confidence: list[float],
    created_us: list[int], updated_us: list[int], attributes: list[dict[str, str]],
    vectors: np.ndarray | None = None, norms: np.ndarray | None = None, fingerprints: list[int] | None = None,
) -> bytes:
    """The payload of one columns frame. ``vectors`` (n, dim) in stored form
    with ``norms`` and ``fingerprints``, or all three None. Raises ValueError
    when the columns' lengths disagree."""
    n = len(ids)
    if not (len(contents) == len(strength) == len(confidence) == len(created_us) == len(updated_us)
            == len(attributes) == n):
        raise ValueError(f"columns block: the columns' lengths differ ({n} ids)")
    parts: list[bytes] = []
    dim = 0
    if vectors is not None:
        if norms is None or fingerprints is None or vectors.ndim != 2 or vectors.shape[0] != n \
                or len(norms) != n or len(fingerprints) != n or vectors.shape[1] == 0:
            raise ValueError(f"columns block: vectors {vectors.shape}, norms and fingerprints must cover {n} ids")
        dim = vectors.shape[1]
        parts += [np.ascontiguousarray(vectors, dtype="<f4").tobytes(), np.asarray(norms, dtype="<f8").tobytes(),
                  np.asarray(fingerprints, dtype="<u8").tobytes()]
    pairs = [s for a in attributes for kv in sorted(a.items()) for s in kv]
    id_blob, id_ends = _blob(ids)
    content_blob, content_ends = _blob(contents)
    attr_blob, attr_ends = _blob(pairs)
    parts += [
        np.asarray(strength, dtype="<f4").tobytes(), np.asarray(confidence, dtype="<f4").tobytes(),
        np.asarray(created_us, dtype="<i8").tobytes(), np.asarray(updated_us, dtype="<i8").tobytes(),
        np.fromiter((len(a) for a in attributes), dtype="<u4", count=n).tobytes(),
        id_ends.astype("<u8").tobytes(), content_ends.astype("<u8").tobytes(), attr_ends.astype("<u8").tobytes(),
        id_blob, content_blob, attr_blob,
    ]
    return BLOCK_HEAD.pack(n, dim, len(pairs) // 2, 0) + b"".join(parts)


class _Reader:
    """Consecutive typed arrays out of one payload, each length checked."""

    def __init__(self, payload: bytes | memoryview) -> None:
        self.buf, self.at = payload, BLOCK_HEAD.size

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if self.at + size > len(self.buf):
            raise ColumnsError(f"columns block ends inside its {what} ({len(self.buf)} bytes)")
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.at)
        self.at += size
        return out

    def strings(self, ends: np.ndarray, what: str) -> list[str]:
        if len(ends) == 0:
            return []
        if np.any(ends[1:] < ends[:-1]):
            raise ColumnsError(f"columns block: the {what} offsets decrease")
        total = int(ends[-1])
        if self.at + total > len(self.buf):
            raise ColumnsError(f"columns block: the {what} run past its end ({total} bytes at {self.at})")
        blob = bytes(self.buf[self.at : self.at + total])  # a copy: the payload may be a reused buffer
        self.at += total
        bounds = [0, *ends.tolist()]
        try:
            cuts = map(slice, bounds, bounds[1:])
            if blob.isascii():  # one decode, then str slices at the same offsets (no Python call per string)
                return list(map(blob.decode("ascii").__getitem__, cuts))
            return [blob[cut].decode() for cut in cuts]
        except UnicodeDecodeError as exc:
            raise ColumnsError(f"columns block: the {what} are not UTF-8 ({exc.reason})") from exc


def unpack(payload: bytes | memoryview, dim_expected: int) -> ColumnChunk:
    """Decode one columns payload. ``dim_expected`` (the snapshot header's
    vector_dimension; 0: any) must match the block's. Raises ColumnsError
    naming the part that is wrong; nothing is returned half-decoded."""
    if len(payload) < BLOCK_HEAD.size:
        raise ColumnsError(f"columns block of {len(payload)} bytes is shorter than its {BLOCK_HEAD.size}-byte head")
    n, dim, pairs, reserved = BLOCK_HEAD.unpack_from(payload)
    if reserved:
        raise ColumnsError(f"columns block: reserved word is {reserved}, not 0")
    if dim and dim_expected and dim != dim_expected:
        raise ColumnsError(f"columns block holds {dim}-dimension vectors, the snapshot header says {dim_expected}")
    r = _Reader(payload)
    vectors = norms = fps = None
    if dim:
        vectors = r.array("<f4", n * dim, "vectors").reshape(n, dim)
        norms = r.array("<f8", n, "norms")
        fps = r.array("<u8", n, "fingerprints")
        if not (np.isfinite(norms).all() and (norms > 0).all()):
            raise ColumnsError("columns block: a vector's norm is not a positive finite number")
    strength, confidence = r.array("<f4", n, "strengths"), r.array("<f4", n, "confidences")
    created, updated = r.array("<i8", n, "creation times"), r.array("<i8", n, "update times")
    counts = r.array("<u4", n, "attribute counts")
    if int(counts.sum(dtype=np.uint64)) != pairs:
        raise ColumnsError(f"columns block: attribute counts add up to {int(counts.sum())}, the head says {pairs}")
    id_ends, content_ends = r.array("<u8", n, "id offsets"), r.array("<u8", n, "content offsets")
    attr_ends = r.array("<u8", 2 * pairs, "attribute offsets")
    ids, contents = r.strings(id_ends, "ids"), r.strings(content_ends, "contents")
    flat = r.strings(attr_ends, "attributes")
    if r.at != len(payload):
        raise ColumnsError(f"columns block: {len(payload) - r.at} bytes after its last column")
    attributes: list[dict[str, str]] = []
    if pairs:
        at = 0
        for c in counts.tolist():
            attributes.append({flat[i]: flat[i + 1] for i in range(at, at + 2 * c, 2)} if c else NO_ATTRIBUTES)
            at += 2 * c
    else:
        attributes = [NO_ATTRIBUTES] * n
    return ColumnChunk(ids, contents, shared_values(strength.astype(np.float64)),
                       shared_values(confidence.astype(np.float64)), shared_values(created), shared_values(updated),
                       attributes, vectors, norms,
                       None if fps is None else fps.tolist())
