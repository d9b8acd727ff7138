"""The one stored form of a vector: L2-normalised float32 plus its original
length (float64).  The apply path, the vector index and the snapshot codec
all derive it here, so every node holds the same bits for the same write."""

from __future__ import annotations

import hashlib
import struct

import numpy as np

_NORM = struct.Struct("<d")
_NORM_BITS = struct.Struct("<Q")
_MASK = (1 << 64) - 1


_BLOCK_ROWS = 256  # rows normalised at a time: a 1.5 MB float64 block that stays in cache


def normalise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(normalised float32 rows, float64 lengths) of float32 rows ``x``.

    float64 inside: squares of large float32 would overflow, and exact
    rounding keeps vectors of one direction at exactly equal similarity
    (stable ties).  Zero rows come back with length 0 (the caller rejects them).

    Each row's arithmetic is independent of the others, so working through
    blocks of rows gives the same bits as one pass over the whole matrix; it
    spares a batch's float64 copy (6 MB per 1,000 768-d vectors) of fresh pages
    to fault in, which cost more than the arithmetic (tests/test_replica_apply.py)."""
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    out = np.empty(x.shape, dtype=np.float32)
    lengths = np.empty(n, dtype=np.float64)
    buf = np.empty((min(n, _BLOCK_ROWS), *x.shape[1:]), dtype=np.float64)
    for i in range(0, n, _BLOCK_ROWS):
        j = min(n, i + _BLOCK_ROWS)
        b = buf[: j - i]
        np.copyto(b, x[i:j])
        le = np.sqrt(np.einsum("ij,ij->i", b, b))
        lengths[i:j] = le
        np.divide(b, np.where(le > 0, le, 1.0)[:, None], out=b)
        np.copyto(out[i:j], b, casting="same_kind")
    return out, lengths


def original(vec: np.ndarray, norm: float) -> np.ndarray:
    """The original vector back from its stored form, within float rounding."""
    return (np.asarray(vec, dtype=np.float64) * norm).astype(np.float32)


# ---- fingerprints -------------------------------------------------------------
# A fingerprint is a non-zero 64-bit hash of one stored vector (its normalised
# float32 row and its float64 length): what the state digest covers, what
# storage.dat keeps beside each row, and what a snapshot of mapped rows is
# checked against.  Two versions exist (this comment is their definition):
#
# 1. blake2b (8-byte digest) of the row's bytes then the length's 8 bytes.
#    Held by storage.dat version 2 and covered by older builds' digests. It was
#    about a third of a leader's instructions per batched record, so it is now
#    computed only on request: digest version 1, or writing a version 2 file.
# 2. (this one) a multiply-and-sum over the row's 32-bit words, computed for a
#    whole batch at once with numpy:
#
#        h  = sum(u[m] * C[m] for m < dim)          mod 2**64
#        fp = mix(h ^ mix(bits(length) + dim * GAMMA))   (0 becomes 1)
#
#    u[m]: the row's m-th float32 as its little-endian uint32 bits; bits():
#    the float64 length's little-endian uint64 bits; mix: splitmix64's
#    finaliser (a bijection of 64-bit words); C[m] = mix(SEED + (m + 1) *
#    GAMMA) | 1, the splitmix64 sequence of seed SEED, made odd.
#
#    Any change to one 32-bit word (so any single flipped bit) changes h,
#    since C[m] is odd and the change is below 2**32; a change of the length
#    alone changes fp (mix is a bijection).  Two flipped bits in a row change
#    h too, for rows of up to 4,096 dimensions: no two of those C[m] agree,
#    up to sign, in their low 33 bits (checked by the tests).  It is a
#    checksum against damage and divergence, not a cryptographic hash: an
#    adversary can make collisions at will.  Everything is fixed
#    unsigned 64-bit arithmetic on little-endian words, so every node and
#    platform computes the same values (tests/test_fingerprint_v2.py pins them).
FINGERPRINT_VERSION = 2
SEED = 0x5375747261465032  # b"SutraFP2" read big-endian
GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
_FP_ROWS = 256  # rows hashed at a time: the shifted copy of a block stays in cache


def mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over a uint64 array (wraps mod 2**64; a bijection)."""
    z = z ^ (z >> _S30)
    z *= _M1
    z ^= z >> _S27
    z *= _M2
    return z ^ (z >> _S31)  # type: ignore[no-any-return]


_constants: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _word_constants(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(C[even], C[odd] - C[even] * 2**32) for ``dim`` words, rounded up to an
    even count: the pair the two uint64 products in ``fingerprints`` use."""
    got = _constants.get(dim)
    if got is None:
        words = dim + dim % 2
        c = mix(np.uint64(SEED) + np.arange(1, words + 1, dtype=np.uint64) * np.uint64(GAMMA)) | np.uint64(1)
        even = np.ascontiguousarray(c[0::2])
        got = _constants[dim] = (even, c[1::2] - (even << _S32))
    return got


def fingerprints(rows: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Version 2 fingerprints (uint64, never 0) of stored rows ``rows`` (n, dim)
    float32 with their float64 lengths ``norms``, in one vectorised pass.

    Each 8 bytes of a row are read as one little-endian uint64 w = lo + hi * 2**32
    (no copy), so sum(u[m] * C[m]) over the pair is w * C[even] + hi * (C[odd] -
    C[even] * 2**32): two uint64 matrix-vector products per block of rows, exact
    mod 2**64.  An odd dimension is padded with one zero word (which adds 0)."""
    x = np.ascontiguousarray(rows, dtype="<f4")
    n, dim = x.shape
    if dim % 2:
        x = np.concatenate([x, np.zeros((n, 1), dtype="<f4")], axis=1)
    w = x.view("<u8")
    even, odd = _word_constants(dim)
    h = np.empty(n, dtype=np.uint64)
    for i in range(0, n, _FP_ROWS):
        j = min(n, i + _FP_ROWS)
        block = w[i:j]
        h[i:j] = block @ even + (block >> _S32) @ odd
    tail = np.ascontiguousarray(norms, dtype="<f8").view("<u8").astype(np.uint64)
    out = mix(h ^ mix(tail + np.uint64(dim * GAMMA % (1 << 64))))
    out[out == 0] = 1
    return out


def _mix_int(z: int) -> int:
    """``mix`` of one Python int (a 64-bit word)."""
    z ^= z >> 30
    z = z * 0xBF58476D1CE4E5B9 & _MASK
    z ^= z >> 27
    z = z * 0x94D049BB133111EB & _MASK
    return z ^ (z >> 31)


def fingerprint(stored: bytes | memoryview | np.ndarray, norm: float) -> int:
    """The version 2 fingerprint of one stored vector (as ``fingerprints``, with
    the one row's arithmetic on Python ints: a few numpy calls, not a batch's).
    ``stored``: its little-endian float32 bytes, or a float32 row."""
    row = np.frombuffer(stored, dtype="<f4") if not isinstance(stored, np.ndarray) else stored
    row = np.ascontiguousarray(row, dtype="<f4").reshape(-1)
    dim = len(row)
    if dim % 2:
        row = np.concatenate([row, np.zeros(1, dtype="<f4")])
    w = row.view("<u8")
    even, odd = _word_constants(dim)
    h = (int(w @ even) + int((w >> _S32) @ odd)) & _MASK
    bits = _NORM_BITS.unpack(_NORM.pack(norm))[0]
    return _mix_int(h ^ _mix_int((bits + dim * GAMMA) & _MASK)) or 1


def fingerprint_v1(stored: bytes | memoryview | np.ndarray, norm: float) -> int:
    """The version 1 fingerprint (blake2b; what storage.dat version 2 holds and
    what older nodes' digests cover). ``stored``: float32 bytes, or a
    C-contiguous float32 row (hashed in place)."""
    h = hashlib.blake2b(stored, digest_size=8)  # type: ignore[arg-type]  # an ndarray is a buffer
    h.update(_NORM.pack(norm))
    return int.from_bytes(h.digest(), "little") or 1


def fingerprints_v1(rows: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Version 1 fingerprints of stored rows (uint64), one blake2b per row."""
    x = np.ascontiguousarray(rows, dtype="<f4")
    return np.fromiter(map(fingerprint_v1, x, np.asarray(norms, dtype=np.float64).tolist()),
                       dtype=np.uint64, count=len(x))
