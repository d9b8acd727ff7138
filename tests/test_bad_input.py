"""Each rejected input: INVALID_ARGUMENT, a message naming the field and the
limit, and nothing changed (the digest and the LSN are the same afterwards)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest

from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc
from tests.helpers import NodeProcess

pytestmark = pytest.mark.slow  # starts a node process

DIM = 8
MAX_BATCH = 50
MAX_MESSAGE = 16 << 20


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    base = tmp_path_factory.mktemp("bad-input")
    n = NodeProcess(base / "data", env={
        "VECTOR_DIMENSION": str(DIM), "SUTRA_MAX_BATCH": str(MAX_BATCH),
        "SUTRA_MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
    }, log_path=base / "node.log")
    try:
        n.start()
        with n.client() as c:
            c.learn_concept("seed", "a seed concept", np.ones(DIM, dtype=np.float32))
        yield n
    finally:
        n.stop()


@pytest.fixture
def stub(node: NodeProcess) -> Iterator[storage_pb2_grpc.StorageServiceStub]:
    ch = grpc.insecure_channel(node.address, options=[("grpc.max_send_message_length", 64 << 20)])
    yield storage_pb2_grpc.StorageServiceStub(ch)
    ch.close()


def vec(values: list[float] | None = None, n: int = DIM) -> bytes:
    return np.asarray(values if values is not None else [0.5] * n, dtype="<f4").tobytes()


def concept(**kw: object) -> pb.LearnConceptRequest:
    base: dict[str, object] = {"concept_id": "x", "content": "text", "confidence": 0.5}
    base.update(kw)
    return pb.LearnConceptRequest(**base)  # type: ignore[arg-type]


def rejects(stub: storage_pb2_grpc.StorageServiceStub, method: str, request: object, *needles: str) -> None:
    last = stub.GetStats(pb.GetStatsRequest()).last_lsn
    before = stub.GetDigest(pb.GetDigestRequest(sequence=last))
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(request, timeout=30)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    for needle in needles:
        assert needle in err.details(), f"{needle!r} not in {err.details()!r}"
    assert stub.GetStats(pb.GetStatsRequest()).last_lsn == last, "a rejected request was logged"
    after = stub.GetDigest(pb.GetDigestRequest(sequence=last))
    assert (after.lsn, after.digest) == (before.lsn, before.digest), "a rejected request changed the data"


CASES: dict[str, Callable[[], tuple[str, object, tuple[str, ...]]]] = {
    "vector_too_short_floats": lambda: ("LearnConcept", concept(embedding=[0.1] * 5),
                                        ("embedding has 5 values", f"VECTOR_DIMENSION is {DIM}")),
    "vector_too_long_bytes": lambda: ("LearnConcept", concept(embedding_f32=vec(n=DIM + 4)),
                                      (f"embedding has {DIM + 4} values", f"VECTOR_DIMENSION is {DIM}")),
    "vector_nan": lambda: ("LearnConcept", concept(embedding=[float("nan")] + [0.1] * (DIM - 1)),
                           ("embedding", "NaN or infinite")),
    "vector_inf_bytes": lambda: ("LearnConcept", concept(embedding_f32=vec([float("inf")] + [1.0] * (DIM - 1))),
                                 ("embedding", "NaN or infinite")),
    "vector_all_zeros": lambda: ("LearnConcept", concept(embedding_f32=vec([0.0] * DIM)), ("all zeros",)),
    "empty_id": lambda: ("LearnConcept", concept(concept_id=""), ("concept_id is empty",)),
    "oversized_id": lambda: ("LearnConcept", concept(concept_id="i" * 257),
                             ("concept_id has 257 bytes", "limit is 256")),
    "empty_content": lambda: ("LearnConcept", concept(content=""), ("content is empty",)),
    "oversized_content": lambda: ("LearnBatch", pb.LearnBatchRequest(concepts=[concept(content="c" * (10 * 1024 * 1024 + 1))]),
                                  ("content has 10485761 bytes", "limit is 10485760")),
    "confidence_out_of_range": lambda: ("LearnConcept", concept(confidence=1.5), ("confidence is 1.5", "between 0 and 1")),
    "unknown_assoc_type": lambda: ("LearnAssociation",
                                   pb.LearnAssociationRequest(source_id="a", target_id="b", assoc_type=7),
                                   ("assoc_type is 7", "0..4")),
    "k_zero": lambda: ("VectorSearch", pb.VectorSearchRequest(query_f32=vec(), k=0), ("k is 0", "1..1000")),
    "k_too_large": lambda: ("VectorSearch", pb.VectorSearchRequest(query_f32=vec(), k=1001), ("k is 1001", "1..1000")),
    "query_wrong_dimension": lambda: ("VectorSearch", pb.VectorSearchRequest(query_vector=[1.0] * 3, k=5),
                                      ("query_vector has 3 values", f"VECTOR_DIMENSION is {DIM}")),
    "max_depth_too_large": lambda: ("FindPath", pb.FindPathRequest(start_id="a", end_id="b", max_depth=21),
                                    ("max_depth is 21", "limit is 20")),
    "batch_over_limit": lambda: ("LearnBatch", pb.LearnBatchRequest(
        concepts=[concept(concept_id=f"b{i}") for i in range(MAX_BATCH + 1)]),
        (f"batch has {MAX_BATCH + 1} items", f"SUTRA_MAX_BATCH is {MAX_BATCH}")),
    "batch_with_one_bad_item": lambda: ("LearnBatch", pb.LearnBatchRequest(
        concepts=[concept(concept_id="good1"), concept(concept_id="good2", embedding_f32=vec(n=3))]),
        ("concepts[1].embedding has 3 values",)),
    "message_over_size_limit": lambda: ("LearnBatch", pb.LearnBatchRequest(
        concepts=[concept(concept_id=f"m{i}", content="m" * 1_000_000) for i in range(17)]),
        ("message has", f"SUTRA_MAX_MESSAGE_BYTES is {MAX_MESSAGE}")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rejected(stub: storage_pb2_grpc.StorageServiceStub, case: str) -> None:
    method, request, needles = CASES[case]()
    rejects(stub, method, request, *needles)


def test_good_request_after_rejections_still_works(stub: storage_pb2_grpc.StorageServiceStub) -> None:
    r = stub.LearnConcept(concept(concept_id="ok", embedding_f32=vec()))
    got = stub.QueryConcept(pb.QueryConceptRequest(concept_id="ok", sequence=r.sequence))
    assert got.found


# ---- security review 2026-12-01: H4, L1, L3, L4 and M1 ----------------------------
LONG_RID = "r" * 1025
HOSTILE_CASES: dict[str, Callable[[], tuple[str, object, tuple[str, ...]]]] = {
    "request_id_too_long_concept": lambda: ("LearnConcept", concept(concept_id="rid", request_id=LONG_RID),
                                            ("request_id has 1025 bytes", "limit is 1024")),
    "request_id_too_long_association": lambda: ("LearnAssociation", pb.LearnAssociationRequest(
        source_id="a", target_id="b", request_id=LONG_RID), ("request_id has 1025 bytes", "limit is 1024")),
    "request_id_too_long_delete": lambda: ("DeleteConcept", pb.DeleteConceptRequest(
        concept_id="seed", request_id=LONG_RID), ("request_id has 1025 bytes",)),
    "request_id_too_long_batch": lambda: ("LearnBatch", pb.LearnBatchRequest(
        concepts=[concept(concept_id="rb")], request_id=LONG_RID), ("request_id has 1025 bytes",)),
    "association_over_message_limit": lambda: ("LearnAssociation", pb.LearnAssociationRequest(
        source_id="a", target_id="b", request_id="x" * (MAX_MESSAGE + 1)),
        ("message has", f"SUTRA_MAX_MESSAGE_BYTES is {MAX_MESSAGE}")),
    "delete_over_message_limit": lambda: ("DeleteConcept", pb.DeleteConceptRequest(
        concept_id="seed", request_id="x" * (MAX_MESSAGE + 1)), ("message has", f"SUTRA_MAX_MESSAGE_BYTES is {MAX_MESSAGE}")),
    "nul_in_concept_id": lambda: ("LearnConcept", concept(concept_id="a\0b"), ("concept_id contains a NUL",)),
    "nul_in_target_id": lambda: ("LearnAssociation", pb.LearnAssociationRequest(source_id="a", target_id="b\0"),
                                 ("target_id contains a NUL",)),
    "nul_in_batch_delete": lambda: ("LearnBatch", pb.LearnBatchRequest(delete_concept_ids=["\0"]),
                                    ("delete_concept_ids[0] contains a NUL",)),
    "unknown_direction": lambda: ("GetNeighbors", pb.GetNeighborsRequest(concept_id="seed", direction=7),  # type: ignore[arg-type]
                                  ("direction is 7", "BOTH, OUTGOING, INCOMING")),
    "unknown_direction_batch": lambda: ("GetNeighborsBatch", pb.GetNeighborsBatchRequest(
        concept_ids=["seed"], direction=3), ("direction is 3",)),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CASES))
def test_hostile_input_rejected(stub: storage_pb2_grpc.StorageServiceStub, case: str) -> None:
    method, request, needles = HOSTILE_CASES[case]()
    rejects(stub, method, request, *needles)


@pytest.mark.parametrize("method,raw", [
    ("LearnConcept", b"\x0a\x02\xff\xfe\x12\x01x"),  # concept_id with invalid UTF-8
    ("QueryConcept", b"\x0a\x03\xc3\x28\x41"),
    ("LearnBatch", b"\xff\xff\xff\xff\xff"),  # not protobuf at all
    ("LearnStream", b"\x0a\x02\xff\xfe"),
])
def test_malformed_protobuf_answers_invalid_argument(node: NodeProcess, stub: storage_pb2_grpc.StorageServiceStub,
                                                     method: str, raw: bytes) -> None:
    last = stub.GetStats(pb.GetStatsRequest()).last_lsn
    before = stub.GetDigest(pb.GetDigestRequest(sequence=last)).digest
    log_size = node.log_path.stat().st_size
    with grpc.insecure_channel(node.address) as ch:
        path = f"/sutra.storage.StorageService/{method}"
        if method == "LearnStream":
            call = ch.stream_unary(path, request_serializer=None, response_deserializer=None)
            args: object = iter([raw])
        else:
            call = ch.unary_unary(path, request_serializer=None, response_deserializer=None)
            args = raw
        with pytest.raises(grpc.RpcError) as info:
            call(args, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (info.value.code(), info.value.details())
    assert f"{method}: the request is not a valid" in info.value.details(), info.value.details()
    assert stub.GetStats(pb.GetStatsRequest()).last_lsn == last
    assert stub.GetDigest(pb.GetDigestRequest(sequence=last)).digest == before
    assert "Traceback" not in node.log_path.read_bytes()[log_size:].decode(errors="replace")


def test_reused_request_id_with_another_payload_is_refused(stub: storage_pb2_grpc.StorageServiceStub) -> None:
    first = stub.LearnConcept(concept(concept_id="rid-a", content="first", request_id="rid-reuse-1")).sequence
    # A retry (same request) answers the first write's sequence and logs nothing.
    assert stub.LearnConcept(concept(concept_id="rid-a", content="first", request_id="rid-reuse-1")).sequence == first
    with pytest.raises(grpc.RpcError) as info:
        stub.LearnConcept(concept(concept_id="rid-b", content="second", request_id="rid-reuse-1"))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "rid-reuse-1" in info.value.details() and f"sequence {first}" in info.value.details()
    assert stub.GetStats(pb.GetStatsRequest()).last_lsn == first, "the refused write was logged"
    assert not stub.QueryConcept(pb.QueryConceptRequest(concept_id="rid-b", sequence=first)).found


def test_far_future_sequence_is_refused_at_once_by_a_leader(stub: storage_pb2_grpc.StorageServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.QueryConcept(pb.QueryConceptRequest(concept_id="seed", sequence=(1 << 64) - 1), timeout=1.0)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
    assert "past this leader's last LSN" in info.value.details()
