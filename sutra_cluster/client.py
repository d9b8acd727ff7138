"""Python client for Sutra Cluster.

Vectors go over the wire as contiguous float32 bytes (numpy in, numpy out).
``UNAVAILABLE`` is retried with tenacity until the call's deadline; every
other error is raised at once as ``grpc.RpcError``. Writes return their
``sequence``; pass it to a read as ``sequence=`` for read-your-writes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc
from sutra_cluster.retry import Retry, classify


@dataclass
class Concept:
    concept_id: str
    content: str
    embedding: np.ndarray | None = None
    strength: float = 1.0
    confidence: float = 1.0
    attributes: Mapping[str, str] = field(default_factory=dict)

    def to_pb(self) -> pb.LearnConceptRequest:
        return pb.LearnConceptRequest(
            concept_id=self.concept_id, content=self.content, strength=self.strength,
            confidence=self.confidence, attributes=dict(self.attributes),
            embedding_f32=_f32(self.embedding) if self.embedding is not None else b"",
        )


@dataclass
class Association:
    source_id: str
    target_id: str
    assoc_type: int = 0
    confidence: float = 1.0

    def to_pb(self) -> pb.LearnAssociationRequest:
        return pb.LearnAssociationRequest(
            source_id=self.source_id, target_id=self.target_id, assoc_type=self.assoc_type,
            confidence=self.confidence,
        )


# Calls whose DEADLINE_EXCEEDED means "not visible yet" rather than "the node hung".
READ_METHODS = frozenset({"QueryConcept", "GetNeighbors", "GetNeighborsBatch", "FindPath", "VectorSearch", "GetDigest"})


def _f32(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def _retryable(exc: BaseException) -> bool:
    # One node: retry it when it is down, stopping or electing (UNAVAILABLE,
    # CANCELLED); every write carries a request id, so a retry applies once.
    return isinstance(exc, grpc.RpcError) and exc.code() in (  # type: ignore[attr-defined]
        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


class SutraClient:
    """A connection to one node (or a router). Thread-safe."""

    def __init__(self, address: str, *, timeout: float = 30.0, retry_deadline: float = 10.0,
                 credentials: grpc.ChannelCredentials | None = None, max_message_bytes: int = 128 << 20) -> None:
        # Short reconnect backoff: a node that comes back (say, after a failover
        # back to it) is reached at once, not after gRPC's default of up to 2 min.
        opts = [("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
                ("grpc.max_reconnect_backoff_ms", 500)]
        self.channel = (grpc.secure_channel(address, credentials, options=opts) if credentials
                        else grpc.insecure_channel(address, options=opts))
        self.stub = storage_pb2_grpc.StorageServiceStub(self.channel)
        self.timeout = timeout
        self.retry_deadline = retry_deadline

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SutraClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any, retry: bool = True) -> Any:
        fn = getattr(self.stub, method)
        if not retry:
            return fn(request, timeout=self.timeout)
        for attempt in Retrying(
            retry=retry_if_exception(_retryable), stop=stop_after_delay(self.retry_deadline),
            wait=wait_exponential(multiplier=0.05, max=1.0), reraise=True,
        ):
            with attempt:
                return fn(request, timeout=self.timeout)
        raise AssertionError("unreachable")

    # ---- writes ----------------------------------------------------------
    def learn_concept(self, concept_id: str, content: str, embedding: np.ndarray | None = None, *,
                      strength: float = 1.0, confidence: float = 1.0,
                      attributes: Mapping[str, str] | None = None, request_id: str = "") -> int:
        req = Concept(concept_id, content, embedding, strength, confidence, attributes or {}).to_pb()
        req.request_id = request_id or uuid.uuid4().hex
        return int(self._call("LearnConcept", req).sequence)

    def learn_association(self, source_id: str, target_id: str, assoc_type: int = 0,
                          confidence: float = 1.0, request_id: str = "") -> int:
        req = Association(source_id, target_id, assoc_type, confidence).to_pb()
        req.request_id = request_id or uuid.uuid4().hex
        return int(self._call("LearnAssociation", req).sequence)

    def delete_concept(self, concept_id: str) -> int:
        req = pb.DeleteConceptRequest(concept_id=concept_id, request_id=uuid.uuid4().hex)
        return int(self._call("DeleteConcept", req).sequence)

    @staticmethod
    def batch_request(concepts: Sequence[Concept] = (), associations: Sequence[Association] = (),
                      deletes: Sequence[str] = ()) -> pb.LearnBatchRequest:
        return pb.LearnBatchRequest(
            concepts=[c.to_pb() for c in concepts], associations=[a.to_pb() for a in associations],
            delete_concept_ids=list(deletes), request_id=uuid.uuid4().hex,
        )

    def learn_batch(self, concepts: Sequence[Concept] = (), associations: Sequence[Association] = (),
                    deletes: Sequence[str] = ()) -> int:
        """Write atomically: after a crash all of it or none of it is there."""
        return int(self._call("LearnBatch", self.batch_request(concepts, associations, deletes)).sequence)

    def bulk_load(self, batches: Iterable[pb.LearnBatchRequest]) -> pb.LearnStreamResponse:
        """Stream batches in one call (not retried: a stream is not replayable)."""
        return self.stub.LearnStream(iter(batches), timeout=None)

    # ---- reads -----------------------------------------------------------
    def query_concept(self, concept_id: str, sequence: int = 0,
                      include_embedding: bool = False) -> pb.QueryConceptResponse | None:
        r = self._call("QueryConcept", pb.QueryConceptRequest(
            concept_id=concept_id, sequence=sequence, include_embedding=include_embedding))
        return r if r.found else None

    def get_neighbors(self, concept_id: str, sequence: int = 0, direction: int = pb.BOTH) -> list[str]:
        r = self._call("GetNeighbors", pb.GetNeighborsRequest(
            concept_id=concept_id, sequence=sequence, direction=direction))  # type: ignore[arg-type]
        return list(r.neighbor_ids)

    def find_path(self, start_id: str, end_id: str, max_depth: int = 0, sequence: int = 0) -> list[str] | None:
        r = self._call("FindPath", pb.FindPathRequest(
            start_id=start_id, end_id=end_id, max_depth=max_depth, sequence=sequence))
        return list(r.path) if r.found else None

    def vector_search(self, query: np.ndarray, k: int = 10, ef_search: int = 0,
                      sequence: int = 0) -> list[tuple[str, float]]:
        r = self._call("VectorSearch", pb.VectorSearchRequest(
            query_f32=_f32(query), k=k, ef_search=ef_search, sequence=sequence))
        return [(x.concept_id, x.similarity) for x in r.results]

    # ---- operations ------------------------------------------------------
    def flush(self) -> pb.FlushResponse:
        return self._call("Flush", pb.FlushRequest())

    def health(self) -> pb.HealthCheckResponse:
        return self._call("HealthCheck", pb.HealthCheckRequest(), retry=False)

    def stats(self) -> pb.GetStatsResponse:
        return self._call("GetStats", pb.GetStatsRequest())

    def digest(self, sequence: int = 0) -> pb.GetDigestResponse:
        return self._call("GetDigest", pb.GetDigestRequest(sequence=sequence))


def batches_of(concepts: Iterable[Concept], size: int) -> Iterator[pb.LearnBatchRequest]:
    """Group concepts into batch requests of ``size`` for ``bulk_load``."""
    chunk: list[Concept] = []
    for c in concepts:
        chunk.append(c)
        if len(chunk) >= size:
            yield SutraClient.batch_request(chunk)
            chunk = []
    if chunk:
        yield SutraClient.batch_request(chunk)


class ClusterClient:
    """A client for an etcd-managed shard: writes go to the current leader,
    found in etcd; on UNAVAILABLE or "not the leader" it looks the leader up
    again and retries with the same request id, so a write retried across a
    failover is applied once. A watch on the leader key keeps the cached
    address fresh between calls.
    """

    def __init__(self, etcd_endpoints: Sequence[str], *, cluster: str = "sutra", shard: int = 0,
                 timeout: float = 10.0, failover_deadline: float = 15.0, watch: bool = True) -> None:
        from sutra_cluster.failover.discovery import ShardWatch

        self._shard = ShardWatch(list(etcd_endpoints), cluster, shard, name="client", timeout=2.0, watch=watch)
        self.timeout = timeout
        self.failover_deadline = failover_deadline
        self._clients: dict[str, SutraClient] = {}

    @property
    def leader_address(self) -> str:
        """The leader's address as last seen in etcd ('' when none is known)."""
        return self._shard.leader

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        self._shard.close()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _client(self, address: str) -> SutraClient:
        if address not in self._clients:
            self._clients[address] = SutraClient(address, timeout=self.timeout, retry_deadline=0.0)
        return self._clients[address]

    def find_leader(self, deadline: float) -> str:
        return self._shard.wait_leader(deadline)

    def call_leader(self, method: str, request: Any) -> Any:
        """Call ``method`` on the leader, following it across failovers until
        ``failover_deadline``; the request (and its request id) is reused."""
        import time

        deadline = time.monotonic() + self.failover_deadline
        address = self.leader_address or self.find_leader(deadline)
        while True:
            try:
                return getattr(self._client(address).stub, method)(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                write = method not in READ_METHODS
                if classify(exc, write=write) != Retry.NEW_LEADER or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
                if code == grpc.StatusCode.UNAVAILABLE:
                    # Drop the channel: a dead node's channel sits in reconnect backoff.
                    stale = self._clients.pop(address, None)
                    if stale is not None:
                        stale.close()
                self._shard.forget(address)
                address = self.find_leader(deadline)

    def learn_concept(self, concept_id: str, content: str, embedding: np.ndarray | None = None, *,
                      request_id: str = "", **kw: Any) -> int:
        req = Concept(concept_id, content, embedding, **kw).to_pb()
        req.request_id = request_id or uuid.uuid4().hex
        return int(self.call_leader("LearnConcept", req).sequence)

    def learn_batch(self, concepts: Sequence[Concept] = (), associations: Sequence[Association] = (),
                    deletes: Sequence[str] = (), request_id: str = "") -> int:
        req = SutraClient.batch_request(concepts, associations, deletes)
        if request_id:
            req.request_id = request_id
        return int(self.call_leader("LearnBatch", req).sequence)

    def query_concept(self, concept_id: str, sequence: int = 0) -> pb.QueryConceptResponse | None:
        r = self.call_leader("QueryConcept", pb.QueryConceptRequest(concept_id=concept_id, sequence=sequence))
        return r if r.found else None
