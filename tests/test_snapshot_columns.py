"""storage.dat version 2 (columns frames, docs/wal_format.md section 12): golden
bytes, a round trip that keeps every field and the stored vectors bit for bit,
version 1 files still loading, one named test per kind of damage, and a real
node restarting from a version 2 checkpoint."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import grpc
import numpy as np
import pytest

from sutra_cluster.config import Config
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc as pbg
from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage import checkpoint as ckpt
from sutra_cluster.storage import columns
from sutra_cluster.storage.engine import Engine
from sutra_cluster.storage.state import ApplyResult, Concept, GraphState, iter_vectors
from sutra_cluster.storage.vectors import VectorIndex
from tests.helpers import NodeProcess, wait_for
from tests.mutators import flip_bit

DIM = 8
HEADER = wal_pb2.SnapshotHeader(lsn=7, term=2, concepts=2, edges=1, vector_dimension=2, node_id="n1")
# c1 has the vector [3, 4] (stored: [0.6, 0.8], norm 5) and an attribute; c2 has no vector.
CONCEPTS = {"c1": Concept("hi", 1.0, 0.5, {"k": "v"}, struct.pack("<2f", 3.0, 4.0), 1, 2),
            "c2": Concept("", 0.25, 1.0, {}, None, 3, 4)}
EDGES = [("c1", "c2", 1, 0.5)]
GOLDEN = (
    "53555452414441540200000000000000"  # magic, version 2, reserved
    "0e000000722d7e250100000000000000" "080710021802200128023a026e31"  # header frame
    "6a000000bc030c760400000000000000"  # columns frame: c1, with its vector
    "01000000020000000100000000000000"  # 1 concept, dim 2, 1 attribute pair, reserved
    "9a99193fcdcc4c3f" "0000000000001440" "0bd0b33d78ef3e3e"  # [0.6, 0.8], norm 5.0, fingerprint
    "0000803f" "0000003f" "0100000000000000" "0200000000000000" "01000000"  # strength, confidence, times, 1 attr
    "0200000000000000" "0200000000000000" "01000000000000000200000000000000"  # id, content, attribute ends
    "6331" "6869" "6b76"  # "c1", "hi", "k" "v"
    "3e000000ac5a4ab20400000000000000"  # columns frame: c2, no vector
    "01000000000000000000000000000000" "0000803e" "0000803f" "0300000000000000" "0400000000000000" "00000000"
    "0200000000000000" "0000000000000000" "6332"
    "11000000f254938d0200000000000000" "120f0a026331120263321801250000003f"  # edges, as in version 1
    "0e000000722d7e250300000000000000" "080710021802200128023a026e31"  # end frame
)
COLUMNS_1, COLUMNS_2, EDGE_FRAME, END_FRAME, SIZE = 46, 168, 246, 279, 309


def _decode(data: bytes) -> tuple[wal_pb2.SnapshotHeader, list[ckpt.Chunk]]:
    dec = ckpt.SnapshotDecoder(io.BytesIO(data), "mem")
    return dec.header, list(dec)


def _damage(data: bytes) -> ckpt.SnapshotError:
    with pytest.raises(ckpt.SnapshotError) as ei:
        _decode(data)
    return ei.value


def _load(data: bytes, dim: int = 2, reuse: bool = False) -> GraphState:
    """What a start does with a snapshot: state plus a vector index."""
    store = VectorIndex(dim, background=False)
    state = GraphState(store)
    for chunk in ckpt.SnapshotDecoder(io.BytesIO(data), "mem", reuse_buffer=reuse):
        vec = ApplyResult({}, set())
        state.load_chunk(chunk, vec)
        for keys, mat, norms in [*vec.blocks, *iter_vectors(vec.upserts, store.dim)]:
            store.upsert(keys, mat, norms)
    return state


def _with_columns(payload: bytes, header: wal_pb2.SnapshotHeader = HEADER) -> bytes:
    """A file of this build's version whose one columns frame holds ``payload`` (CRC correct)."""
    head = header.SerializeToString()
    return (ckpt.FILE_HEADER.pack(ckpt.MAGIC, ckpt.VERSION, 0) + ckpt._frame(ckpt.KIND_HEADER, head)
            + ckpt._frame(ckpt.KIND_COLUMNS, payload) + ckpt._frame(ckpt.KIND_END, head))


# --------------------------------------------------------------------------- format


def test_golden_bytes_pin_the_columns_format() -> None:
    data = b"".join(ckpt.encode_snapshot(HEADER, CONCEPTS, EDGES, version=2))  # version 3: test_fingerprint_files
    assert data.hex() == GOLDEN and len(data) == SIZE
    assert data[8:12] == struct.pack("<I", 2)
    for at, kind in ((COLUMNS_1, 4), (COLUMNS_2, 4), (EDGE_FRAME, 2), (END_FRAME, 3)):
        assert data[at + 8] == kind


def test_golden_file_decodes_every_field() -> None:
    header, (c1, c2, edges) = _decode(bytes.fromhex(GOLDEN))
    assert header == HEADER
    assert isinstance(c1, columns.ColumnChunk) and isinstance(c2, columns.ColumnChunk)
    assert (c1.ids, c1.contents, c1.strength, c1.confidence, c1.created_us, c1.updated_us, c1.attributes) == (
        ["c1"], ["hi"], [1.0], [0.5], [1], [2], [{"k": "v"}])
    assert c1.vectors is not None and c1.vectors.tolist() == [[np.float32(0.6), np.float32(0.8)]]
    assert c1.norms is not None and c1.norms.tolist() == [5.0]
    assert (c2.ids, c2.contents, c2.vectors, c2.norms, c2.fingerprints) == (["c2"], [""], None, None, None)
    assert isinstance(edges, wal_pb2.SnapshotChunk) and len(edges.concepts) == 0
    (e,) = edges.edges
    assert (e.source_id, e.target_id, e.assoc_type, e.confidence) == ("c1", "c2", 1, 0.5)


def _state(n: int) -> tuple[GraphState, VectorIndex]:
    """A state with vectors, vectorless concepts, attributes, non-ASCII text and edges."""
    store = VectorIndex(DIM, background=False)
    state = GraphState(store)
    rng = np.random.default_rng(3)
    batch = wal_pb2.WalBatch(timestamp_us=1_000)
    for i in range(n):
        emb = rng.standard_normal(DIM).astype("<f4").tobytes() if i % 5 else b""
        attrs = {"colour": ("red", "blue")[i % 2], "n": str(i)} if i % 3 == 0 else {}
        batch.concepts.append(pb.LearnConceptRequest(concept_id=f"c{i}" if i % 7 else f"ç-{i}-ü",
                                                     content=f"concept {i} ✓" * (i % 4), strength=i / n,
                                                     confidence=0.5, attributes=attrs, embedding_f32=emb))
    for i in range(0, n - 1, 2):
        batch.associations.append(pb.LearnAssociationRequest(source_id=f"c{i + 1}", target_id=f"c{i + 2}",
                                                             assoc_type=i % 5, confidence=0.75))
    vec = ApplyResult({}, set())
    state.apply_batch(batch, vec)
    for keys, mat, norms in iter_vectors(vec.upserts, DIM):
        store.upsert(keys, mat, norms)
    return state, store


@pytest.mark.parametrize(("version", "reuse"), [(1, False), (2, False), (2, True)])
def test_round_trip_keeps_every_field_and_the_stored_vectors_bit_for_bit(version: int, reuse: bool) -> None:
    """Version 2 is written by default; a version 1 file (older nodes) loads to the same state; so
    does reading every columns frame into one reused buffer (as a start does)."""
    state, store = _state(9000)  # more than one columns frame (4,096 concepts each)
    concepts, edges = state.capture()
    header = wal_pb2.SnapshotHeader(lsn=3, term=1, concepts=len(concepts), edges=len(edges), vector_dimension=DIM)
    data = b"".join(ckpt.encode_snapshot(header, concepts, edges, store.stored_batches(ckpt.CHUNK_CONCEPTS),
                                         version=version))
    assert data[8:12] == struct.pack("<I", version)
    loaded = _load(data, DIM, reuse)
    assert loaded.digest() == state.digest()
    assert loaded.concepts == {k: c._replace(vector=loaded.concepts[k].vector) for k, c in state.concepts.items()}
    assert loaded.by_attr == state.by_attr and loaded.edges == state.edges == 4500
    assert loaded.store is not None and len(loaded.store) == len(store) == 7200
    for key in ("c1", "c4", "ç-14-ü", "c8999"):
        got, want = loaded.store.stored(key), store.stored(key)
        assert got is not None and want is not None
        assert got[0].tobytes() == want[0].tobytes() and got[1] == want[1]


def test_version_2_without_a_vector_index_normalises_originals_like_the_apply_path() -> None:
    loaded = _load(b"".join(ckpt.encode_snapshot(HEADER, CONCEPTS, EDGES)))
    v1 = _load(b"".join(ckpt.encode_snapshot(HEADER, CONCEPTS, EDGES, version=1)))  # originals, normalised on load
    assert loaded.digest() == v1.digest()
    assert loaded.concepts["c1"].embedding == v1.concepts["c1"].embedding


# --------------------------------------------------------------------------- damage


@pytest.mark.parametrize("cut", range(SIZE))
@pytest.mark.parametrize("reuse", [False, True])
def test_truncated_file_is_damage(cut: int, reuse: bool) -> None:
    with pytest.raises(ckpt.SnapshotError) as ei:
        list(ckpt.SnapshotDecoder(io.BytesIO(bytes.fromhex(GOLDEN)[:cut]), "mem", reuse_buffer=reuse))
    assert ei.value.reason.startswith("truncated"), ei.value.reason
    if COLUMNS_1 + 16 < cut < COLUMNS_2 or COLUMNS_2 + 16 < cut < EDGE_FRAME:  # inside a columns payload
        assert (ei.value.offset, ei.value.reason) == (COLUMNS_1 + 16 if cut < COLUMNS_2 else COLUMNS_2 + 16,
                                                      "truncated frame")


@pytest.mark.parametrize("at", [COLUMNS_1 + 16, COLUMNS_1 + 16 + 20, COLUMNS_2 + 40, EDGE_FRAME + 20])
def test_flipped_payload_byte_is_a_checksum_mismatch(tmp_path: Path, at: int) -> None:
    path = tmp_path / ckpt.STORAGE_FILE
    path.write_bytes(bytes.fromhex(GOLDEN))
    flip_bit(path, at, 0x04)
    err = _damage(path.read_bytes())
    assert err.reason == "checksum mismatch" and err.offset in (COLUMNS_1, COLUMNS_2, EDGE_FRAME)


def test_columns_frame_in_a_version_1_file_is_damage() -> None:
    data = bytearray(bytes.fromhex(GOLDEN))
    data[8] = 1
    err = _damage(bytes(data))
    assert (err.offset, err.reason) == (COLUMNS_1, "bad frame header (length 106, kind 4)")


def test_unknown_version_is_refused_with_the_versions_read() -> None:
    data = bytearray(bytes.fromhex(GOLDEN))
    data[8] = 4
    err = _damage(bytes(data))
    assert (err.offset, err.reason) == (0, "snapshot version 4 is not readable by this build (it reads versions 1, 2, 3)")


GOOD = columns.pack(["a", "b"], ["x", "yy"], [1.0, 1.0], [1.0, 1.0], [1, 2], [1, 2], [{}, {"k": "v"}],
                    np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32), np.array([2.0, 3.0]), [11, 12])


def _patched(offset: int, fmt: str, value: object) -> bytes:
    data = bytearray(GOOD)
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


# Offsets in GOOD: head 0..15, vectors 16..31, norms 32..47, fingerprints 48..63,
# strengths 64, confidences 72, created 80, updated 96, attribute counts 112,
# id ends 120, content ends 136, attribute ends 152, then the blobs.
MALFORMED = {
    "dimension_differs_from_header": (_patched(4, "<I", 3), "columns block holds 3-dimension vectors, the snapshot "
                                      "header says 2"),
    "reserved_word_set": (_patched(12, "<I", 9), "columns block: reserved word is 9, not 0"),
    "zero_norm": (_patched(40, "<d", 0.0), "columns block: a vector's norm is not a positive finite number"),
    "attribute_count_disagrees": (_patched(116, "<I", 2), "columns block: attribute counts add up to 2, the head "
                                  "says 1"),
    "offsets_decrease": (_patched(136, "<Q", 5), "columns block: the contents offsets decrease"),
    "string_runs_past_the_end": (_patched(128, "<Q", 999), "columns block: the ids run past its end (999 bytes at 168)"),
    "trailing_bytes": (GOOD + b"\0", "columns block: 1 bytes after its last column"),
    "ends_inside_a_column": (GOOD[:60], "columns block ends inside its fingerprints (60 bytes)"),
    "shorter_than_its_head": (GOOD[:10], "columns block of 10 bytes is shorter than its 16-byte head"),
    "not_utf8": (GOOD[:168] + b"\xff" + GOOD[169:], "columns block: the ids are not UTF-8 (invalid start byte)"),
}


def test_well_formed_block_decodes() -> None:
    (block,) = _decode(_with_columns(GOOD))[1]
    assert isinstance(block, columns.ColumnChunk)
    assert (block.ids, block.contents, block.attributes, block.fingerprints) == (
        ["a", "b"], ["x", "yy"], [{}, {"k": "v"}], [11, 12])


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_columns_block_is_damage(case: str) -> None:
    """A block whose CRC is right but whose columns are not (a writer's bug) is refused, naming the part."""
    payload, reason = MALFORMED[case]
    err = _damage(_with_columns(payload))
    assert (err.offset, err.reason) == (16 + 30, reason)


def test_old_format_checkpoint_loads_in_an_engine(tmp_path: Path) -> None:
    """A data directory whose storage.dat is version 1 (written by an older node) starts."""
    cfg = Config(storage_path=str(tmp_path), vector_dimension=DIM, reconcile_interval_ms=1, node_id="v1",
                 memory_threshold=1 << 30)
    engine = Engine(cfg)
    engine.lead("single-node")
    try:
        rng = np.random.default_rng(8)
        batch = wal_pb2.WalBatch()
        for i in range(300):
            batch.concepts.append(pb.LearnConceptRequest(concept_id=f"c{i}", content=f"t{i}", attributes={"a": "1"},
                                                         embedding_f32=rng.standard_normal(DIM).astype("<f4").tobytes()))
        engine.wait_visible(engine.submit(batch))
        digest = engine.digest()[1]
        with engine._lock:
            concepts, edges = engine.state.capture()
            vectors = engine.vectors.stored_batches()
            header = wal_pb2.SnapshotHeader(lsn=engine.applied_lsn, term=1, concepts=len(concepts), edges=0,
                                            vector_dimension=DIM)
        ckpt.write_checkpoint(tmp_path, ckpt.encode_snapshot(header, concepts, edges, vectors, version=1))
    finally:
        engine.close()
    assert (tmp_path / ckpt.STORAGE_FILE).read_bytes()[8:12] == struct.pack("<I", 1)
    again = Engine(cfg)
    try:
        assert again.digest()[1] == digest and len(again.vectors) == 300
    finally:
        again.close()


# --------------------------------------------------------------------------- a real node


def test_node_restarts_from_a_version_2_checkpoint(tmp_path: Path) -> None:
    """Flush, SIGTERM, start: every concept, attribute, edge and vector comes back
    from the columns checkpoint (the WAL it replaces was dropped by the Flush)."""
    node = NodeProcess(tmp_path / "data", env={"VECTOR_DIMENSION": str(DIM)})
    rng = np.random.default_rng(21)
    vectors = rng.standard_normal((2000, DIM)).astype(np.float32)

    def snapshot_of(stub: pbg.StorageServiceStub, ids: list[str]) -> list[pb.QueryConceptResponse]:
        return [stub.QueryConcept(pb.QueryConceptRequest(concept_id=cid, include_embedding=True), timeout=10)
                for cid in ids]

    sample = ["c0", "c1", "c777", "c1998", "c1999", "plain"]
    try:
        node.start()
        stub = pbg.StorageServiceStub(grpc.insecure_channel(node.address))
        for lo in range(0, 2000, 500):
            stub.LearnBatch(pb.LearnBatchRequest(
                concepts=[pb.LearnConceptRequest(concept_id=f"c{i}", content=f"concept {i} ✓", strength=0.5,
                                                 confidence=0.25, attributes={"shard": str(i % 3)},
                                                 embedding_f32=vectors[i].tobytes()) for i in range(lo, lo + 500)],
                associations=[pb.LearnAssociationRequest(source_id=f"c{i}", target_id=f"c{i + 1}", assoc_type=2,
                                                         confidence=0.5) for i in range(lo, lo + 499)]), timeout=60)
        stub.LearnConcept(pb.LearnConceptRequest(concept_id="plain", content="no vector"), timeout=10)
        wait_for(lambda: stub.GetStats(pb.GetStatsRequest(), timeout=10).concepts == 2001, 60, "all visible")
        before = snapshot_of(stub, sample)
        stub.Flush(pb.FlushRequest(), timeout=120)
        node.stop()
        stored = (tmp_path / "data" / ckpt.STORAGE_FILE).read_bytes()
        assert stored[:12] == ckpt.FILE_HEADER.pack(ckpt.MAGIC, ckpt.VERSION, 0)[:12]
        header_length, _, kind = ckpt.FRAME.unpack_from(stored, 16)
        assert kind == ckpt.KIND_HEADER and ckpt.FRAME.unpack_from(stored, 32 + header_length)[2] == ckpt.KIND_COLUMNS
        node.start()
        stub = pbg.StorageServiceStub(grpc.insecure_channel(node.address))
        assert stub.GetStats(pb.GetStatsRequest(), timeout=10).concepts == 2001
        assert snapshot_of(stub, sample) == before
        assert before[2].attributes["shard"] == "0" and before[5].has_embedding is False
        got = stub.GetNeighbors(pb.GetNeighborsRequest(concept_id="c777"), timeout=10)
        assert {n.concept_id for n in got.neighbors} == {"c776", "c778"}
        hit = stub.VectorSearch(pb.VectorSearchRequest(query_f32=vectors[1234].tobytes(), k=1), timeout=10)
        assert hit.results[0].concept_id == "c1234" and hit.results[0].similarity == pytest.approx(1.0, abs=1e-5)
    finally:
        node.stop()


def test_doc_columns_example_is_the_golden_block() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "wal_format.md").read_text(encoding="utf-8")
    section = text[text.index("### Columns frame (version 2)") :]
    example = section.split("```")[3]
    block = "".join("".join(line.split("   ")[0].split()) for line in example.strip().splitlines())
    assert block == GOLDEN[2 * (COLUMNS_1 + 16) : 2 * COLUMNS_2]
