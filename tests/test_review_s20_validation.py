"""Review of the batch-at-a-time validation (column checks of the concepts,
rows' sums of squares for the vectors): over seeded random batches mixing
every edge value (NaN, infinities, -0.0, denormals, 1e20 whose square
overflows float32, empty and NUL ids, long UTF-8 ids, bad attributes, float
lists and float32 bytes), a batch is accepted or refused exactly as the
per-concept, per-value checks did, with the same message and the same bytes
afterwards; and the matrix handed to the apply is the batch's own bytes."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sutra_cluster.api import validate as model
from sutra_cluster.errors import InvalidArgument
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import wal_pb2
from tests.test_leader_batch import reference_check_vectors

DIM = 8
LIMITS = model.Limits(DIM, 10_000, 64 << 20)
SPECIALS = [0.0, -0.0, 1e20, -1e20, 3e38, 1e-40, 1e-45, float("nan"), float("inf"), -float("inf"), 1.0, 1e-20,
            1e19]


def _vector(rng: random.Random) -> np.ndarray:
    k = rng.random()
    if k < 0.3:
        v = [rng.choice(SPECIALS) for _ in range(DIM)]
    elif k < 0.4:
        v = [rng.choice([0.0, -0.0]) for _ in range(DIM)]
    else:
        v = [rng.gauss(0, 1) for _ in range(DIM)]
        if rng.random() < 0.5:
            v[rng.randrange(DIM)] = rng.choice(SPECIALS)
    with np.errstate(over="ignore"):
        return np.array(v, dtype=np.float32)


def _batch(rng: random.Random) -> wal_pb2.WalBatch:
    b = wal_pb2.WalBatch(request_id="r")
    for i in range(rng.randrange(1, 5)):
        c = pb.LearnConceptRequest(
            concept_id=rng.choice([f"c{i}", f"c{i}", "", "x\0y", "é" * 70, "é" * 200]),
            content=rng.choice(["t", "t", ""]),
            strength=rng.choice([0.0, -0.0, 1.0, 1.0, -1.0, float("nan"), float("inf"), 1e30]),
            confidence=rng.choice([0.0, 1.0, 0.5, 0.5, 1.0000001, -0.0, float("nan")]))
        v = _vector(rng)
        r = rng.random()
        if r < 0.2:
            c.embedding.extend(v.tolist())
        elif r < 0.95:
            c.embedding_f32 = v.astype("<f4").tobytes()
        if rng.random() < 0.05:
            c.attributes[rng.choice(["k", ""])] = "v"
        b.concepts.append(c)
    return b


def _first_form(field: str, mat: np.ndarray) -> None:
    msg = reference_check_vectors(field, mat)
    if msg is not None:
        raise InvalidArgument(msg)


def _outcome(raw: bytes, vectors: list[np.ndarray] | None = None) -> tuple[object, ...]:
    b = wal_pb2.WalBatch.FromString(raw)
    try:
        converted = model.check_batch(b, LIMITS, vectors_out=vectors)
    except InvalidArgument as exc:
        return ("refused", str(exc))
    return ("accepted", converted, b.SerializeToString())


@pytest.mark.parametrize("seed", range(4))
def test_review_s20_batches_are_judged_as_the_per_value_checks_judged_them(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    raws = [_batch(rng).SerializeToString() for _ in range(1500)]
    now, given = [], []
    for raw in raws:
        vectors: list[np.ndarray] = []
        now.append(_outcome(raw, vectors))
        given.append(vectors)
    monkeypatch.setattr(model, "_concepts_pass", lambda concepts: False)  # one by one, as before
    monkeypatch.setattr(model, "_check_vectors", _first_form)
    before = [_outcome(raw) for raw in raws]
    assert now == before
    assert sum(o[0] == "accepted" for o in now) > 10  # the mix accepts some and refuses the rest
    for out, vectors in zip(now, given):
        if out[0] == "accepted" and vectors:
            b = wal_pb2.WalBatch.FromString(out[2])  # type: ignore[arg-type]
            assert vectors[0].tobytes() == b"".join(c.embedding_f32 for c in b.concepts)
