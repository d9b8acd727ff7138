"""The batched write path's whole-batch forms (issue 13): validation over
columns and the apply of new concepts at once must refuse exactly what the
per-concept checks refused, with the same message, and leave exactly the state
the per-concept apply left (records, stored vector bits, fingerprints, digest),
so nodes of two versions agree during a rolling upgrade."""

from __future__ import annotations

import gc
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from sutra_cluster.api import validate as model
from sutra_cluster.errors import InvalidArgument
from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage.state import ApplyResult, GraphState, Upserts, iter_vectors
from tests.test_replica_apply import reference_fingerprint, reference_normalise

DIM = 16
LIMITS = model.Limits(DIM, 1000, 64 << 20)


def good_batch(n: int = 6, seed: int = 3) -> wal_pb2.WalBatch:
    rng = np.random.default_rng(seed)
    b = wal_pb2.WalBatch(request_id="r")
    for i in range(n):
        b.concepts.add(concept_id=f"c{i}", content=f"text {i}", strength=float(i), confidence=i / n,
                       embedding_f32=rng.standard_normal(DIM).astype("<f4").tobytes())
    return b


def per_concept_error(batch: wal_pb2.WalBatch) -> str | None:
    """What the checks said one concept at a time (the form before columns)."""
    for i, c in enumerate(batch.concepts):
        try:
            model.check_concept(c, LIMITS, f"concepts[{i}].")
        except InvalidArgument as exc:
            return str(exc)
    return None


def _set(field: str, value: Any) -> Callable[[Any], None]:
    def mutate(c: Any) -> None:
        setattr(c, field, value)
    return mutate


def _attrs(attrs: dict[str, str]) -> Callable[[Any], None]:
    return lambda c: c.attributes.update(attrs)


BAD = {
    "empty id": _set("concept_id", ""),
    "id of 257 bytes": _set("concept_id", "x" * 257),
    "id of 65 four-byte characters": _set("concept_id", "\U0001F600" * 65),
    "NUL in the id": _set("concept_id", "a\0b"),
    "empty content": _set("content", ""),
    "content past the limit": _set("content", "y" * (model.MAX_CONTENT_BYTES + 1)),
    "negative strength": _set("strength", -1.0),
    "NaN strength": _set("strength", math.nan),
    "infinite strength": _set("strength", math.inf),
    "confidence above 1": _set("confidence", 1.5),
    "negative confidence": _set("confidence", -0.25),
    "NaN confidence": _set("confidence", math.nan),
    "infinite confidence": _set("confidence", -math.inf),
    "an empty attribute key": _attrs({"": "v"}),
    "an attribute value past the limit": _attrs({"k": "v" * (model.MAX_ATTRIBUTE_VALUE_BYTES + 1)}),
    "too many attributes": _attrs({f"k{i}": "v" for i in range(model.MAX_ATTRIBUTES + 1)}),
}


@pytest.mark.parametrize("where", [0, 3, 5])
@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_concept_is_named_as_one_by_one(case: str, where: int) -> None:
    b = good_batch()
    BAD[case](b.concepts[where])
    want = per_concept_error(b)
    assert want is not None and want.startswith(f"concepts[{where}].")
    with pytest.raises(InvalidArgument) as info:
        model.check_batch(b, LIMITS)
    assert str(info.value) == want


def test_the_first_of_two_bad_concepts_is_named() -> None:
    b = good_batch()
    b.concepts[4].concept_id = ""
    b.concepts[2].confidence = 2.0
    with pytest.raises(InvalidArgument, match=r"^concepts\[2\]\.confidence is 2\.0"):
        model.check_batch(b, LIMITS)


def test_edge_values_pass_as_one_by_one() -> None:
    b = good_batch()
    b.concepts[0].concept_id = "\u00e9" * 128  # 256 bytes: at the limit
    b.concepts[1].strength = -0.0
    b.concepts[2].confidence = 0.0
    b.concepts[3].confidence = 1.0
    b.concepts[4].attributes["k"] = "v"
    b.concepts[5].strength = 3.0e38
    assert per_concept_error(b) is None
    assert model.check_batch(b, LIMITS) is False


def test_a_bad_vector_is_still_named_after_the_concept_checks() -> None:
    b = good_batch()
    b.concepts[1].embedding_f32 = np.zeros(DIM, "<f4").tobytes()
    with pytest.raises(InvalidArgument, match="concepts embedding #1 is all zeros"):
        model.check_batch(b, LIMITS)
    b.concepts[3].content = ""
    with pytest.raises(InvalidArgument, match=r"^concepts\[3\]\.content is empty"):
        model.check_batch(b, LIMITS)


# ---- apply -----------------------------------------------------------------
def per_concept_apply(state: GraphState, batch: wal_pb2.WalBatch, vec: ApplyResult,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(GraphState, "_apply_new", lambda *a: False)
        state.apply_batch(batch, vec)


def bits(vec: ApplyResult) -> list[tuple[str, bytes, float]]:
    return [(k, m[i].tobytes(), float(n[i])) for keys, m, n in iter_vectors(vec.upserts, DIM)
            for i, k in enumerate(keys)]


def stamped(b: wal_pb2.WalBatch, ts: int) -> wal_pb2.WalBatch:
    b.timestamp_us = ts
    return b


def test_new_concepts_at_once_leave_the_state_one_by_one_left(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = stamped(good_batch(40), 5), stamped(good_batch(40, seed=4), 6)
    for c in second.concepts:
        c.concept_id += "-2"
    fast, slow = GraphState(), GraphState()
    fv, sv = ApplyResult({}, set()), ApplyResult({}, set())
    for b in (first, second):  # the second lands beside a block already there
        fast.apply_batch(b, fv)
        per_concept_apply(slow, b, sv, monkeypatch)
    assert fast.concepts == slow.concepts and fast.digest() == slow.digest()
    assert bits(fv) == bits(sv)
    x = np.frombuffer(b"".join(c.embedding_f32 for c in first.concepts), "<f4").reshape(40, DIM)
    want, lengths = reference_normalise(x)
    for i in range(40):
        c = fast.concepts[f"c{i}"]
        assert c.created_us == c.updated_us == 5 and c.attributes == {} and not gc.is_tracked(c)
        assert c.vector is not None and not isinstance(c.vector, bytes) and not gc.is_tracked(c.vector)
        assert c.vector.fingerprint == reference_fingerprint(want[i].tobytes(), float(lengths[i]))


def test_one_batch_is_handed_to_the_index_as_one_block() -> None:
    b = stamped(good_batch(30), 5)
    state, vec = GraphState(), ApplyResult({}, set())
    state.apply_batch(b, vec)
    assert isinstance(vec.upserts, Upserts) and vec.upserts.block is not None
    [(keys, mat, norms)] = list(iter_vectors(vec.upserts, DIM))
    want, lengths = reference_normalise(np.frombuffer(b"".join(c.embedding_f32 for c in b.concepts), "<f4")
                                        .reshape(30, DIM))
    assert keys == [f"c{i}" for i in range(30)]
    assert np.array_equal(mat.view(np.uint32), want.view(np.uint32)) and np.array_equal(norms, lengths)
    assert mat.shape == (30, DIM) and mat.flags.c_contiguous


@pytest.mark.parametrize("later", ["delete", "update", "update without vector", "repeat in batch",
                                   "edges and a delete in the block's own batch"])
def test_what_the_per_concept_path_must_take(later: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Updates, repeated ids, concepts without vectors or with attributes, and
    a delete after the block in the same apply: the same state either way."""
    first = stamped(good_batch(12), 5)
    nxt = stamped(good_batch(3, seed=9), 6)
    if later == "delete":
        nxt = stamped(wal_pb2.WalBatch(delete_concept_ids=["c4"]), 6)
    elif later == "update without vector":
        nxt.concepts[1].ClearField("embedding_f32")
        nxt.concepts[2].attributes["k"] = "v"
    elif later == "edges and a delete in the block's own batch":
        first.associations.add(source_id="c1", target_id="c2", assoc_type=1, confidence=0.5)
        first.associations.add(source_id="c3", target_id="c1", assoc_type=0, confidence=0.5)
        first.delete_concept_ids.append("c1")
        for c in nxt.concepts:
            c.concept_id = f"n{c.concept_id}"
    elif later == "repeat in batch":
        for c in nxt.concepts:
            c.concept_id = f"n{c.concept_id}"
        nxt.concepts[2].concept_id = nxt.concepts[0].concept_id
    fast, slow = GraphState(), GraphState()
    fv, sv = ApplyResult({}, set()), ApplyResult({}, set())
    for b in (first, nxt):
        fast.apply_batch(b, fv)
        per_concept_apply(slow, b, sv, monkeypatch)
    assert fast.concepts == slow.concepts and fast.digest() == slow.digest()
    assert bits(fv) == bits(sv) and fv.removes == sv.removes
    assert fv.upserts.block is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("change", ["set", "pop", "del", "update", "setdefault", "clear", "popitem"])
def test_any_change_to_the_upserts_drops_the_block(change: str) -> None:
    up = Upserts()
    rows, norms = np.ones((2, DIM), np.float32), np.ones(2)
    up.add_block(["a", "b"], rows, norms)
    assert up.block is not None
    {"set": lambda: up.__setitem__("a", (rows[0], 2.0)), "pop": lambda: up.pop("a"), "del": lambda: up.__delitem__("a"),
     "update": lambda: up.update({"c": (rows[0], 1.0)}), "setdefault": lambda: up.setdefault("c", (rows[0], 1.0)),
     "clear": up.clear, "popitem": up.popitem}[change]()
    assert up.block is None


def test_vectors_given_by_validation_are_taken_only_for_their_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    b = stamped(good_batch(20), 5)
    mat = np.frombuffer(b"".join(c.embedding_f32 for c in b.concepts), "<f4").reshape(20, DIM)
    other = wal_pb2.WalBatch()
    other.CopyFrom(b)  # equal, but not the object the vectors were given for
    state, vec = GraphState(), ApplyResult({}, set())
    state.give_vectors(other, np.ones_like(mat))
    state.give_vectors(b, mat)
    state.apply_batch(b, vec)
    assert id(b) not in state.given and id(other) in state.given
    ref, rv = GraphState(), ApplyResult({}, set())
    per_concept_apply(ref, b, rv, monkeypatch)
    assert state.concepts == ref.concepts and bits(vec) == bits(rv)


def single_writes(n: int, seed: int, first_ts: int, prefix: str = "s") -> list[wal_pb2.WalBatch]:
    """``n`` logged single writes: one concept each, each batch with its own timestamp."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        b = wal_pb2.WalBatch(request_id=f"{prefix}-r{i}", timestamp_us=first_ts + i)
        b.concepts.add(concept_id=f"{prefix}{i}", content=f"text {i}", strength=float(i % 3), confidence=0.5,
                       embedding_f32=rng.standard_normal(DIM).astype("<f4").tobytes())
        out.append(b)
    return out


def test_a_run_of_single_writes_is_one_block_and_the_state_one_by_one_leaves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    batches = single_writes(30, seed=6, first_ts=100)
    fast, slow = GraphState(), GraphState()
    fv, sv = ApplyResult({}, set()), ApplyResult({}, set())
    fast.apply_batches(batches, fv)
    for b in batches:
        per_concept_apply(slow, b, sv, monkeypatch)
    assert fast.concepts == slow.concepts and fast.digest() == slow.digest()
    assert bits(fv) == bits(sv)
    block = fv.upserts.block  # type: ignore[attr-defined]
    assert block is not None and block[0] == [f"s{i}" for i in range(30)]  # one block for the index
    # Each record keeps its own batch's time, as one by one.
    assert [(fast.concepts[f"s{i}"].created_us, fast.concepts[f"s{i}"].updated_us) for i in range(30)] == \
        [(100 + i, 100 + i) for i in range(30)]
    assert not any(gc.is_tracked(c) or gc.is_tracked(c.vector) for c in fast.concepts.values())


@pytest.mark.parametrize("case", ["repeat in the run", "already held", "without a vector", "with attributes",
                                  "edges between", "delete between, then created again", "vectors given"])
def test_a_run_that_is_not_all_new_leaves_the_state_one_by_one_leaves(case: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    held = single_writes(3, seed=1, first_ts=10, prefix="h")
    run = single_writes(12, seed=7, first_ts=100)
    if case == "repeat in the run":
        run[7].concepts[0].concept_id = "s2"  # an update of a concept the run created
    elif case == "already held":
        run[5].concepts[0].concept_id = "h1"
    elif case == "without a vector":
        run[4].concepts[0].ClearField("embedding_f32")
    elif case == "with attributes":
        run[9].concepts[0].attributes["k"] = "v"
    elif case == "edges between":
        edges = stamped(wal_pb2.WalBatch(), 150)
        edges.associations.add(source_id="s1", target_id="s2", assoc_type=1, confidence=0.5)
        run.insert(6, edges)
    elif case == "delete between, then created again":
        run.insert(6, stamped(wal_pb2.WalBatch(delete_concept_ids=["h0", "s3"]), 150))
        run[9].concepts[0].concept_id = "s3"
        run[10].concepts[0].concept_id = "h0"
    fast, slow = GraphState(), GraphState()
    fv, sv = ApplyResult({}, set()), ApplyResult({}, set())
    if case == "vectors given":
        for b in run[::3]:  # as the leader hands validation's matrix on, for some batches of a run
            fast.give_vectors(b, np.frombuffer(b.concepts[0].embedding_f32, "<f4").reshape(1, DIM))
    fast.apply_batches(held, fv)
    fast.apply_batches(run, fv)
    for b in held + run:
        per_concept_apply(slow, b, sv, monkeypatch)
    assert fast.concepts == slow.concepts and fast.digest() == slow.digest()
    assert bits(fv) == bits(sv) and fv.removes == sv.removes and fast.edges == slow.edges
    assert fast.by_attr == slow.by_attr and not fast.given
    for cid, c in fast.concepts.items():  # out of the collector exactly where one by one leaves them
        assert gc.is_tracked(c) == gc.is_tracked(slow.concepts[cid]), cid


def test_leader_apply_and_recovery_reach_one_digest(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The leader applies what it validated (columns, handed-over vectors);
    a restart replays the WAL's bytes, here one concept at a time as an older
    node does: both must hold the same state."""
    import dataclasses

    from sutra_cluster.api.storage_service import StorageServicer, parse_raw_batch
    from sutra_cluster.config import Config
    from sutra_cluster.pb import storage_pb2 as pb
    from sutra_cluster.storage.engine import Engine

    cfg = dataclasses.replace(Config(), storage_path=str(tmp_path / "d"), vector_dimension=DIM,
                              ann_threshold=10**9, reconcile_interval_ms=10**6)
    rng = np.random.default_rng(5)
    new = pb.LearnBatchRequest(request_id="new")
    for i in range(50):
        new.concepts.add(concept_id=f"c{i}", content=f"t{i}", strength=1.0, confidence=0.5,
                         embedding_f32=rng.standard_normal(DIM).astype("<f4").tobytes())
    mixed = pb.LearnBatchRequest(request_id="mixed")
    mixed.concepts.add(concept_id="c1", content="updated", embedding=rng.standard_normal(DIM).tolist())
    mixed.concepts.add(concept_id="c2", content="no vector now", attributes={"k": "v"})
    mixed.concepts.add(concept_id="n1", content="new", embedding_f32=rng.standard_normal(DIM).astype("<f4").tobytes())
    mixed.associations.add(source_id="c3", target_id="c4", assoc_type=2, confidence=0.5)
    gone = pb.LearnBatchRequest(request_id="gone", delete_concept_ids=["c5"])
    eng = Engine(cfg)
    try:
        eng.lead("here")
        svc = StorageServicer(eng)
        for req in (new, mixed, gone):
            svc._log_batch(parse_raw_batch(req.SerializeToString()))
            eng.reconcile_once()
        _, digest, concepts, edges = eng.digest()
        assert (concepts, edges) == (50, 1) and not eng.state.given
    finally:
        eng.close()
    monkeypatch.setattr(GraphState, "_apply_new", lambda *a: False)
    again = Engine(cfg)
    try:
        assert again.digest()[1:] == (digest, concepts, edges)
    finally:
        again.close()


def test_single_writes_applied_together_and_replayed_reach_one_digest(tmp_path: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Single writes logged by a leader and applied by one reconcile (one run),
    a restart replaying them (runs of up to 1,024 records), and a replay one
    concept at a time all hold one state."""
    import dataclasses

    from sutra_cluster.config import Config
    from sutra_cluster.storage.engine import Engine

    cfg = dataclasses.replace(Config(), storage_path=str(tmp_path / "d"), vector_dimension=DIM,
                              ann_threshold=10**9, reconcile_interval_ms=10**6)
    eng = Engine(cfg)
    try:
        eng.lead("here")
        for b in single_writes(40, seed=8, first_ts=0):
            b.ClearField("timestamp_us")  # the leader stamps each write as it logs it
            eng.submit(b)
        assert eng.reconcile_once() == 40
        held = eng.digest()[1:]
        assert held[1] == 40
    finally:
        eng.close()
    again = Engine(cfg)
    try:
        assert again.digest()[1:] == held
    finally:
        again.close()
    monkeypatch.setattr(GraphState, "_apply_new", lambda *a: False)
    one_by_one = Engine(cfg)
    try:
        assert one_by_one.digest()[1:] == held
    finally:
        one_by_one.close()


def reference_check_vectors(field: str, mat: np.ndarray) -> str | None:
    """validate._check_vectors as first written (a pass over every value first)."""
    finite = np.isfinite(mat).all(axis=1)
    if not finite.all():
        return f"{field} #{int(np.argmin(finite))} contains NaN or infinite values"
    norms = np.einsum("ij,ij->i", mat, mat)
    if (norms == 0).any():
        return f"{field} #{int(np.argmin(norms))} is all zeros; cosine similarity needs a non-zero vector"
    return None


@pytest.mark.parametrize("rows", [
    {}, {1: math.nan}, {0: math.inf}, {3: -math.inf}, {2: 1e30}, {2: 1e-30}, {4: 0.0}, {1: 0.0, 3: math.nan},
    {1: 1e30, 2: math.inf}, {0: 1e-30, 4: 1e30},
])
def test_vector_checks_refuse_as_the_first_form(rows: dict[int, float]) -> None:
    mat = np.random.default_rng(2).standard_normal((5, DIM)).astype("<f4")
    for row, value in rows.items():
        if value in (0.0, 1e-30, 1e30):
            mat[row] = value  # the whole row: zero, underflowing to a zero sum, overflowing to infinity
        else:
            mat[row, 3] = value
    _refuses_as_first_form("concepts embedding", mat)
    for row in mat:  # one row (a single write) takes its own path: a matrix-vector product
        _refuses_as_first_form("embedding", row.reshape(1, DIM))


def test_one_row_whose_squares_overflow_is_judged_without_a_warning() -> None:
    """Finite values whose squares overflow float32 are accepted, as the first
    form accepted them, and the one-row product's overflow warning stays out of
    the node's log."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model._check_vectors("embedding", np.full((1, DIM), 1e30, dtype="<f4"))
        model._check_vectors("embedding", np.full((3, DIM), 1e30, dtype="<f4"))
    assert [str(w.message) for w in seen] == []


def _refuses_as_first_form(field: str, mat: np.ndarray) -> None:
    want = reference_check_vectors(field, mat)
    if want is None:
        model._check_vectors(field, mat)
    else:
        with pytest.raises(InvalidArgument) as info:
            model._check_vectors(field, mat)
        assert str(info.value) == want
