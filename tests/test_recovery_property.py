"""Property: random writes, deletes and checkpoints, then a crash at a random
point (the data directory as it stands on disk, plus a torn unacknowledged
record); what recovers equals a plain-dict model of the acknowledged operations."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sutra_cluster.config import Config
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage.engine import Engine

DIM = 4
IDS = [f"c{i}" for i in range(8)]

op = st.one_of(
    st.tuples(st.just("concept"), st.sampled_from(IDS), st.text(min_size=1, max_size=12),
              st.booleans(), st.integers(1, 1000)),
    st.tuples(st.just("assoc"), st.sampled_from(IDS), st.sampled_from(IDS), st.integers(0, 4)),
    st.tuples(st.just("delete"), st.sampled_from(IDS)),
    st.tuples(st.just("checkpoint"),),
)


def apply_model(model: dict, edges: dict, o: tuple) -> None:
    if o[0] == "concept":
        _, cid, text, with_vec, seed = o
        model[cid] = (text, seed if with_vec else None)
    elif o[0] == "assoc":
        _, s, d, t = o
        edges[(s, d, t)] = 0.5
    elif o[0] == "delete":
        cid = o[1]
        model.pop(cid, None)
        for k in [k for k in edges if cid in (k[0], k[1])]:
            del edges[k]


def vector(seed: int) -> bytes:
    return (np.random.default_rng(seed).random(DIM, dtype=np.float32) + 0.1).astype("<f4").tobytes()


def run(engine: Engine, o: tuple) -> None:
    if o[0] == "checkpoint":
        engine.checkpoint()
        return
    b = wal_pb2.WalBatch()
    if o[0] == "concept":
        _, cid, text, with_vec, seed = o
        b.concepts.append(pb.LearnConceptRequest(concept_id=cid, content=text, confidence=0.5,
                                                 embedding_f32=vector(seed) if with_vec else b""))
    elif o[0] == "assoc":
        b.associations.append(pb.LearnAssociationRequest(source_id=o[1], target_id=o[2], assoc_type=o[3],
                                                         confidence=0.5))
    else:
        b.delete_concept_ids.append(o[1])
    engine.submit(b)


def cfg(path: Path) -> Config:
    return Config(storage_path=str(path), vector_dimension=DIM, reconcile_interval_ms=1,
                  memory_threshold=1 << 30, node_id="prop")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=40), crash_at=st.integers(0, 40), torn=st.binary(max_size=64))
def test_recovery_equals_model(ops: list[tuple], crash_at: int, torn: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        live, crashed = Path(tmp) / "live", Path(tmp) / "crashed"
        engine = Engine(cfg(live))
        engine.lead("single-node")  # no replication: this engine takes writes itself
        model: dict = {}
        edges: dict = {}
        try:
            for i, o in enumerate(ops):
                if i == crash_at:
                    break
                run(engine, o)
                apply_model(model, edges, o)
            # The crash: what is on disk now, plus a half-written record nobody acknowledged.
            engine.wal.sync()
            shutil.copytree(live, crashed)
            with open(crashed / "wal.log", "ab") as f:
                f.write(torn)
        finally:
            engine.close()
        recovered = Engine(cfg(crashed))
        try:
            got = {cid: (c.content, c.embedding or None) for cid, c in recovered.state.concepts.items()}
            want = {cid: (text, vector(seed) if seed is not None else None) for cid, (text, seed) in model.items()}
            assert {cid: text for cid, (text, _) in got.items()} == {cid: text for cid, (text, _) in want.items()}
            for cid, (_, vec) in want.items():  # one normalised copy is kept: originals come back within rounding
                assert (got[cid][1] is None) == (vec is None), cid
                if vec is not None:
                    np.testing.assert_allclose(np.frombuffer(got[cid][1], "<f4"), np.frombuffer(vec, "<f4"), rtol=1e-6)
            got_edges = {(s, d, t) for s, outs in recovered.state.out.items() for (d, t) in outs}
            assert got_edges == set(edges)
            assert recovered.state.edges == len(edges)
            assert len(recovered.vectors) == sum(1 for _, v in want.values() if v is not None)
        finally:
            recovered.close()
