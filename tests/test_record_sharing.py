"""Concept records share what repeats (issue 12, memory per concept): one empty
attributes dict for every record without attributes, one float or int object per
distinct strength, confidence and time of a block or batch. Sharing must change
no value, and giving one concept attributes must give them to no other."""

from __future__ import annotations

import numpy as np

from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage import columns
from sutra_cluster.storage.columns import NO_ATTRIBUTES, interned, shared_values
from sutra_cluster.storage.state import ApplyResult, GraphState

DIM = 4


def _batch(ts: int, concepts: list[tuple[str, float, float, dict[str, str]]]) -> wal_pb2.WalBatch:
    b = wal_pb2.WalBatch(request_id=f"r{ts}", timestamp_us=ts)
    rng = np.random.default_rng(ts)
    for cid, strength, confidence, attrs in concepts:
        c = b.concepts.add(concept_id=cid, content=f"text {cid}", strength=strength, confidence=confidence,
                           embedding_f32=rng.standard_normal(DIM).astype("<f4").tobytes())
        c.attributes.update(attrs)
    return b


def test_shared_values_keep_every_value_and_share_the_repeated_ones() -> None:
    values = np.array([1.0, 0.5, 1.0, 0.25, 0.5, 1.0])
    got = shared_values(values)
    assert got == values.tolist() and all(type(v) is float for v in got)
    assert got[0] is got[2] is got[5] and got[1] is got[4] and got[0] is not got[1]
    times = np.array([1_700_000_000_000_001, 1_700_000_000_000_001, 1_700_000_000_000_002], dtype="<i8")
    t = shared_values(times)
    assert t == times.tolist() and t[0] is t[1] and type(t[0]) is int
    distinct = np.array([3.0, 1.0, 2.0])
    assert shared_values(distinct) == [3.0, 1.0, 2.0]  # order kept when nothing repeats
    assert shared_values(np.array([], dtype=np.float64)) == []
    made = [float(x) for x in ("0.5", "0.5", "2")]
    got2 = interned(made)
    assert got2 == [0.5, 0.5, 2.0] and got2[0] is got2[1]


def test_a_columns_block_without_attributes_shares_one_empty_dict_and_its_repeated_numbers() -> None:
    n = 5
    rows = np.eye(n, DIM, dtype=np.float32)
    payload = columns.pack([f"c{i}" for i in range(n)], [f"t{i}" for i in range(n)], [1.0, 1.0, 0.5, 1.0, 0.5],
                           [0.75] * n, [7] * n, [1_700_000_000_000_000 + i % 2 for i in range(n)],
                           [{} for _ in range(n)], rows, np.ones(n), [1, 2, 3, 4, 5])
    block = columns.unpack(payload, DIM)
    assert all(a is NO_ATTRIBUTES for a in block.attributes) and NO_ATTRIBUTES == {}
    assert block.strength == [1.0, 1.0, 0.5, 1.0, 0.5] and block.strength[0] is block.strength[3]
    assert block.confidence == [0.75] * n and block.confidence[0] is block.confidence[4]
    assert block.updated_us == [1_700_000_000_000_000 + i % 2 for i in range(n)]
    assert block.updated_us[0] is block.updated_us[2]


def test_giving_one_concept_attributes_gives_them_to_no_other() -> None:
    """Written without attributes (both the whole-batch path and the per-concept one), then one
    of them updated with attributes: the others still have none, the filter index finds only it,
    and the shared empty dict is still empty."""
    state = GraphState()
    vec = ApplyResult({}, set())
    state.apply_batch(_batch(1, [("a", 1.0, 0.5, {}), ("b", 1.0, 0.5, {})]), vec)  # whole-batch path
    second = _batch(2, [("c", 1.0, 0.5, {}), ("d", 2.0, 0.5, {"k": "x"}), ("e", 1.0, 0.5, {})])
    second.concepts[2].ClearField("embedding_f32")  # a concept without a vector: the per-concept path
    state.apply_batch(second, vec)
    a, b, c = (state.concepts[k] for k in "abc")
    assert a.attributes is b.attributes is c.attributes is NO_ATTRIBUTES
    assert a.strength is b.strength and a.confidence is b.confidence  # one batch: one object per value
    state.apply_batch(_batch(3, [("a", 1.0, 0.5, {"k": "v"})]), vec)
    assert state.concepts["a"].attributes == {"k": "v"}
    assert state.concepts["b"].attributes == state.concepts["c"].attributes == {} and NO_ATTRIBUTES == {}
    assert state.matching({"k": {"v"}}) == {"a"} and state.matching({"k": {"x"}}) == {"d"}
    state.apply_batch(_batch(4, [("a", 1.0, 0.5, {})]), vec)  # and taken away again
    assert state.concepts["a"].attributes == {} and state.matching({"k": {"v"}}) == set()
    assert state.concepts["d"].attributes == {"k": "x"} and NO_ATTRIBUTES == {}


def test_the_memory_estimate_is_within_a_quarter_of_what_the_records_take() -> None:
    """GetStats' metadata part counts the concept records, associations and attribute index from
    a sample (GraphState.memory_estimate): against what tracemalloc sees them take, with a mix of
    attributes, content lengths and associations, the estimate is within 25 %."""
    import gc
    import tracemalloc

    n = 12_000
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        state = GraphState()
        for lo in range(0, n, 1000):
            b = _batch(lo + 1, [(f"concept-{i}", 1.0 + i % 7, 0.5, {"kind": f"k{i % 50}", "src": f"doc-{i}"}
                                 if i % 3 == 0 else {}) for i in range(lo, lo + 1000)])
            for i in range(lo, lo + 1000):
                b.concepts[i - lo].content = "x" * (i % 200)
                b.associations.add(source_id=f"concept-{i}", target_id=f"concept-{(i * 7) % n}", assoc_type=i % 3,
                                   confidence=0.5)
            vec = ApplyResult({}, set())
            state.apply_batch(b, vec)
            del b, vec
        gc.collect()
        taken = tracemalloc.get_traced_memory()[0] - base
        estimate = state.memory_estimate()
    finally:
        tracemalloc.stop()
    assert len(state.concepts) == n and state.edges == n
    assert 0.75 * taken < estimate < 1.25 * taken, (estimate, taken)
