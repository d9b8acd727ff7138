"""The apply path every node runs (leader, replica, recovery): its cheaper
forms must give the very bits the earlier code gave, or nodes of two versions
(a rolling upgrade, a snapshot from an older leader) would hold different
stored vectors and their digests would disagree."""

from __future__ import annotations

import numpy as np
import pytest

from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage.state import ApplyResult, GraphState, iter_vectors, stored_forms
from sutra_cluster.storage.vecform import fingerprint, normalise
from sutra_cluster.storage.wal_format import RT_BATCH
from tests.test_fingerprint_v2 import reference_fingerprint as reference_fingerprint_v2

DIM = 64


def reference_normalise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """vecform.normalise as first written (a new float64 matrix for the quotient)."""
    x64 = np.asarray(x, dtype=np.float32).astype(np.float64)
    lengths = np.sqrt(np.einsum("ij,ij->i", x64, x64))
    safe = np.where(lengths > 0, lengths, 1.0)
    return (x64 / safe[:, None]).astype(np.float32), lengths


def reference_fingerprint(stored: bytes, norm: float) -> int:
    """The fingerprint every node computes (version 2; an independent reference: tests/test_fingerprint_v2.py)."""
    return reference_fingerprint_v2(stored, norm)


def vectors(n: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)).astype("<f4")
    x[0] *= 1e30  # squares overflow float32: float64 inside must hold them
    x[1] *= 1e-30
    x[2] = 0.0  # a zero row keeps length 0 (callers reject it)
    x[3] = x[4] * 2  # one direction, two lengths (exact in float32): equal stored rows
    return x


def test_normalise_gives_the_bits_of_the_first_form() -> None:
    x = vectors(700)  # more rows than one block of normalise
    got, lengths = normalise(np.frombuffer(x.tobytes(), dtype="<f4").reshape(x.shape))  # read-only, as applied
    want, want_lengths = reference_normalise(x)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.array_equal(lengths, want_lengths)
    assert np.array_equal(got[3].view(np.uint32), got[4].view(np.uint32))


def test_fingerprint_of_a_row_in_place_equals_that_of_its_bytes() -> None:
    normed, lengths = reference_normalise(vectors(50))
    for row, n in zip(normed, lengths):
        want = reference_fingerprint(row.tobytes(), float(n))
        assert fingerprint(row, float(n)) == want
        assert fingerprint(row.tobytes(), float(n)) == want
        assert fingerprint(memoryview(row.tobytes()), float(n)) == want


def test_stored_forms_match_the_first_form() -> None:
    x = np.delete(vectors(40), 2, axis=0)  # no zero row: validation refuses those before they are logged
    forms = stored_forms([r.tobytes() for r in x])
    want, lengths = reference_normalise(x)
    for (row, n, fp), w, wn in zip(forms, want, lengths):
        assert np.array_equal(row.view(np.uint32), w.view(np.uint32))
        assert n == float(wn) and type(n) is float
        assert fp == reference_fingerprint(w.tobytes(), float(wn))


@pytest.mark.parametrize("n", [0, 1, 7])
def test_iter_vectors_keeps_rows_and_order(n: int) -> None:
    x = np.delete(vectors(10), 2, axis=0)[:n]
    forms = stored_forms([r.tobytes() for r in x])
    upserts = {f"k{i}": (row, norm) for i, (row, norm, _) in enumerate(forms)}
    got = list(iter_vectors(upserts, DIM))
    if not n:
        assert got == []
        return
    (keys, mat, norms), = got
    assert keys == [f"k{i}" for i in range(n)]
    assert mat.shape == (n, DIM) and mat.dtype == np.float32
    assert np.array_equal(mat, np.stack([r for r, _ in upserts.values()]))
    assert norms.tolist() == [nm for _, nm in upserts.values()]


def test_apply_batch_digest_is_that_of_the_first_form() -> None:
    """Concepts with and without vectors, an update that drops a vector, an edge
    and a delete: the state's fingerprints are those of the first form."""
    x = np.delete(vectors(20), 2, axis=0)
    b = wal_pb2.WalBatch(timestamp_us=5)
    for i, row in enumerate(x):
        b.concepts.add(concept_id=f"c{i}", content=f"t{i}", strength=1.0, confidence=0.5,
                       embedding_f32=row.tobytes(), attributes={"k": str(i % 3)} if i % 2 else {})
    b.concepts.add(concept_id="c1", content="again, no vector")
    b.associations.add(source_id="c0", target_id="c4", assoc_type=1, confidence=0.25)
    b.delete_concept_ids.append("c5")
    state, vec = GraphState(), ApplyResult({}, set())
    state.apply_batch(b, vec)
    want, lengths = reference_normalise(x)
    for i in range(len(x)):
        c = state.concepts.get(f"c{i}")
        if i == 5:
            assert c is None and "c5" in vec.removes and "c5" not in vec.upserts
        elif i == 1:
            assert c is not None and c.vector is None and "c1" in vec.removes
        else:
            assert c is not None and c.vector is not None and not isinstance(c.vector, bytes)
            assert c.vector.fingerprint == reference_fingerprint(want[i].tobytes(), float(lengths[i]))
            row, norm = vec.upserts[f"c{i}"]
            assert np.array_equal(row, want[i]) and norm == lengths[i]
    assert state.matching({"k": ["1"]}) == {"c7", "c13"}  # c1 lost its attributes
    assert state.edges == 1


def test_applied_records_are_out_of_the_cyclic_collector() -> None:
    """The collector would walk every applied concept at each full collection
    (pauses that grow with the graph): the records are untracked, and being
    acyclic they are still freed, with the vector index they point to."""
    import gc
    import weakref

    from sutra_cluster.storage.vectors import VectorIndex

    store = VectorIndex(DIM, exact_limit=10**9)
    state = GraphState(store)
    x = np.delete(vectors(6), 2, axis=0)
    b = wal_pb2.WalBatch(timestamp_us=5)
    for i, row in enumerate(x):
        b.concepts.add(concept_id=f"c{i}", content=f"t{i}", embedding_f32=row.tobytes(),
                       attributes={"k": "v"} if i % 2 else {})
    b.concepts.add(concept_id="plain", content="no vector")
    vec = ApplyResult({}, set())
    state.apply_batch(b, vec)
    for keys, mat, norms in iter_vectors(vec.upserts, DIM):
        store.upsert(keys, mat, norms)
    for cid, c in state.concepts.items():
        assert not gc.is_tracked(c), cid
        assert c.vector is None or not gc.is_tracked(c.vector), cid
    got = state.concepts["c1"]
    assert got.attributes == {"k": "v"}
    assert np.allclose(np.frombuffer(got.embedding, "<f4"), x[1], rtol=1e-5)
    store.close()
    gone = weakref.ref(store)
    del state, store, vec, got, c
    for _ in range(3):
        gc.collect()
    assert gone() is None


def test_wal_tail_entries_are_out_of_the_cyclic_collector() -> None:
    """Up to 64 MB of recent records (tens of thousands of single writes) stay
    in memory on every node: they are not walked by full collections."""
    import gc

    from sutra_cluster.storage.tail import WalTail

    tail = WalTail(max_bytes=1 << 20)
    for lsn in range(1, 100):
        tail.append(lsn, 1, 1, b"x" * 100)
    got = tail.after(0, 99, 1 << 20, 1000)
    assert got is not None and [e.lsn for e in got] == list(range(1, 100))
    assert not any(gc.is_tracked(e) for e in got)
    assert got[5].payload == b"x" * 100


def test_installed_snapshot_is_frozen_out_of_collections(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A replica bootstrapped from a snapshot holds the loaded records out of
    later full collections, as a start that loads storage.dat does."""
    import dataclasses
    import gc

    from sutra_cluster.config import Config
    from sutra_cluster.storage.engine import Engine

    def engine(name: str) -> Engine:
        cfg = dataclasses.replace(Config(), storage_path=str(tmp_path / name), vector_dimension=DIM,
                                  ann_threshold=10**9)
        return Engine(cfg)

    src = engine("src")
    try:
        b = wal_pb2.WalBatch(timestamp_us=5)
        x = np.delete(vectors(50), 2, axis=0)
        for i, row in enumerate(x):
            b.concepts.add(concept_id=f"c{i}", content=f"t{i}", embedding_f32=row.tobytes())
        src.append_replicated([(1, 1, RT_BATCH, b.SerializeToString())])  # as a leader's record
        src.reconcile_once()
        _, blocks = src.snapshot_blocks()
        snap = tmp_path / "snap.dat"
        snap.write_bytes(b"".join(blocks))
        want = src.digest()[1:]
    finally:
        src.close()
    dst = engine("dst")
    try:
        gc.unfreeze()
        assert dst.install_snapshot(snap) == 1
        assert gc.get_freeze_count() > len(x)
        assert gc.isenabled()
        assert dst.digest()[1:] == want
    finally:
        dst.close()
