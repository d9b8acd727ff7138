"""The vector fingerprint, version 2 (storage/vecform.py): an independent
pure-Python reference, pinned values (so a numpy or code change that alters a
single bit of them fails here, not as a cluster whose nodes disagree), the
bit flips it must catch, and the batch, single-row and apply paths agreeing."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage import vecform
from sutra_cluster.storage.state import ApplyResult, GraphState, stored_forms
from sutra_cluster.storage.vecform import fingerprint, fingerprint_v1, fingerprints, fingerprints_v1, normalise

_M = (1 << 64) - 1


def _mix(z: int) -> int:
    z ^= z >> 30
    z = z * 0xBF58476D1CE4E5B9 & _M
    z ^= z >> 27
    z = z * 0x94D049BB133111EB & _M
    return z ^ (z >> 31)


def reference_fingerprint(stored: bytes, norm: float) -> int:
    """Version 2 as storage/vecform.py's comment defines it, one word at a time in Python integers."""
    dim = len(stored) // 4
    words = struct.unpack(f"<{dim}I", stored)
    h = sum(u * (_mix((0x5375747261465032 + (m + 1) * 0x9E3779B97F4A7C15) & _M) | 1)
            for m, u in enumerate(words)) & _M
    (bits,) = struct.unpack("<Q", struct.pack("<d", norm))
    return _mix(h ^ _mix((bits + dim * 0x9E3779B97F4A7C15) & _M)) or 1


def _rows(n: int, dim: int, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return normalise(rng.standard_normal((n, dim)).astype("<f4"))


@pytest.mark.parametrize("dim", [1, 2, 3, 8, 767, 768])
def test_batch_equals_the_reference_across_blocks_and_odd_dimensions(dim: int) -> None:
    rows, norms = _rows(600, dim)  # past two blocks of vecform._FP_ROWS
    got = fingerprints(rows, norms)
    assert got.dtype == np.uint64 and got.shape == (600,)
    for i in (0, 1, 255, 256, 257, 511, 512, 599):
        assert int(got[i]) == reference_fingerprint(rows[i].tobytes(), float(norms[i])), i


# Pinned: [0.6, 0.8] with length 5 (storage.dat's golden concept), and 768
# words 0, 1, 2, ... as float32 bits with length 1.5.
PINNED_SMALL = 0xC146284859C6CA09
PINNED_768 = 0x8A6E388EC2AA2B5B


def test_pinned_values() -> None:
    small = np.array([[0.6, 0.8]], dtype="<f4")
    words = np.arange(768, dtype="<u4").view("<f4").reshape(1, 768)
    assert int(fingerprints(small, np.array([5.0]))[0]) == PINNED_SMALL
    assert int(fingerprints(words, np.array([1.5]))[0]) == PINNED_768
    assert reference_fingerprint(small.tobytes(), 5.0) == PINNED_SMALL
    assert reference_fingerprint(words.tobytes(), 1.5) == PINNED_768


def test_constants_are_fixed_and_odd() -> None:
    assert (vecform.SEED, vecform.GAMMA, vecform.FINGERPRINT_VERSION) == (0x5375747261465032, 0x9E3779B97F4A7C15, 2)
    even, odd = vecform._word_constants(4096)
    c = np.empty(4096, dtype=np.uint64)
    c[0::2], c[1::2] = even, odd + (even << np.uint64(32))
    assert np.all(c & np.uint64(1) == 1)
    # No two agree, up to sign, in their low 33 bits: so two flipped bits in a row
    # of up to 4,096 dimensions never cancel (test below for a small row).
    low = (c & np.uint64((1 << 33) - 1)).astype(np.int64)
    both = np.concatenate([low, (-low) & ((1 << 33) - 1)])
    assert len(np.unique(both)) == len(both)


def _flip(row: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """One copy of ``row`` per bit index in ``bits`` (or per pair, for a 2-d array), those bits flipped."""
    words = np.repeat(row.view("<u4")[None, :], len(bits), axis=0)
    for col in np.atleast_2d(bits.T):
        np.bitwise_xor.at(words, (np.arange(len(bits)), col // 32), (np.uint32(1) << (col % 32)).astype(np.uint32))
    return words.view("<f4")


def test_every_single_and_double_bit_flip_in_a_row_changes_it() -> None:
    rows, norms = _rows(1, 16)
    base = int(fingerprints(rows, norms)[0])
    singles = np.arange(16 * 32)
    got = fingerprints(_flip(rows[0], singles), np.repeat(norms, len(singles)))
    assert base not in got.tolist()
    i, j = np.triu_indices(16 * 32, k=1)
    pairs = np.stack([i, j], axis=1)
    got = fingerprints(_flip(rows[0], pairs), np.repeat(norms, len(pairs)))
    assert len(pairs) == 130_816 and base not in got.tolist()


def test_every_single_bit_flip_of_the_length_changes_it() -> None:
    rows, norms = _rows(1, 768)
    bits = np.array([norms[0]]).view("<u8") ^ (np.uint64(1) << np.arange(64, dtype=np.uint64))
    got = fingerprints(np.repeat(rows, 64, axis=0), bits.view("<f8"))
    assert int(fingerprints(rows, norms)[0]) not in got.tolist() and len(set(got.tolist())) == 64


@pytest.mark.parametrize("dim", [1, 7, 768])
def test_single_row_forms_equal_the_batch(dim: int) -> None:
    rows, norms = _rows(20, dim)
    want = fingerprints(rows, norms).tolist()
    for row, n, w in zip(rows, norms.tolist(), want):
        assert fingerprint(row, n) == fingerprint(row.tobytes(), n) == fingerprint(memoryview(row.tobytes()), n) == w
    strided = np.asfortranarray(rows)  # not C-contiguous: copied, same bits
    assert fingerprints(strided, norms).tolist() == want


def test_version_1_is_still_blake2b() -> None:
    rows, norms = _rows(5, 768)
    want = [int.from_bytes(hashlib.blake2b(r.tobytes() + struct.pack("<d", n), digest_size=8).digest(), "little")
            for r, n in zip(rows, norms.tolist())]
    assert fingerprints_v1(rows, norms).tolist() == want
    assert [fingerprint_v1(r, n) for r, n in zip(rows, norms.tolist())] == want


def test_apply_paths_agree_with_the_batch_function() -> None:
    """The bulk path (_apply_new), the per-concept path and stored_forms give the same fingerprints."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((40, 32)).astype("<f4")
    want = fingerprints(*normalise(x)).tolist()
    bulk, mixed = GraphState(), GraphState()
    batch = wal_pb2.WalBatch(timestamp_us=5)
    for i, v in enumerate(x):
        batch.concepts.append(pb.LearnConceptRequest(concept_id=f"c{i}", embedding_f32=v.tobytes()))
    bulk.apply_batch(batch, ApplyResult({}, set()))
    batch.concepts[3].attributes["k"] = "v"  # an attribute: not the bulk case, each concept on its own
    mixed.apply_batch(batch, ApplyResult({}, set()))
    for state in (bulk, mixed):
        got = [state.concepts[f"c{i}"].vector.fingerprint for i in range(40)]  # type: ignore[union-attr]
        assert got == want
    assert [fp for _, _, fp in stored_forms([v.tobytes() for v in x])] == want
