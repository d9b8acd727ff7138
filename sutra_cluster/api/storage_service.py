"""sutra.storage.StorageService: maps RPCs to the engine. Validation happens here,
before anything is logged, so a rejected request changes nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np

from sutra_cluster.api import reads, wire
from sutra_cluster.api import validate as model
from sutra_cluster.api.limits import Budget, client_of
from sutra_cluster.api.shard_guard import ShardGuard
from sutra_cluster.api.status import grpc_errors
from sutra_cluster.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, ResourceExhausted
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc, wal_pb2
from sutra_cluster.storage.engine import Engine

log = logging.getLogger(__name__)

# A LearnBatch request parsed as a WalBatch, with the bytes it arrived in.
RawBatch = tuple[wal_pb2.WalBatch, bytes]
FREE_WAIT_S = 0.05  # a read waits this long for its sequence before it needs a client slot


def parse_raw_batch(raw: bytes) -> RawBatch:
    return wal_pb2.WalBatch.FromString(raw), raw


def add_to_server(servicer: StorageServicer, server: grpc.Server) -> None:
    """Register the servicer like the generated helper does, except that
    LearnBatch and LearnStream keep their request bytes (see _log_batch) and
    malformed request bytes are answered INVALID_ARGUMENT."""
    wire.add_storage_service(servicer, server, {"LearnBatch": parse_raw_batch, "LearnStream": parse_raw_batch})


class StorageServicer(storage_pb2_grpc.StorageServiceServicer):
    def __init__(self, engine: Engine, health: Callable[[], tuple[bool, str]] | None = None,
                 waits: Budget | None = None) -> None:
        self.engine = engine
        cfg = engine.cfg
        self.limits = model.Limits(cfg.vector_dimension, cfg.max_batch, cfg.max_message_bytes)
        self.health = health or (lambda: (True, "serving"))
        self.guard = ShardGuard(engine.cfg)
        self.scan = reads.ConceptScan(engine)  # ScrollConcepts/CountConcepts
        # Reads that wait for a sequence hold a worker: they share the client
        # budget with streams (see sutra_cluster/api/limits.py).
        self.waits = waits

    # ---- writes ----------------------------------------------------------
    @grpc_errors
    def LearnConcept(self, request: pb.LearnConceptRequest, context: grpc.ServicerContext) -> pb.LearnConceptResponse:
        self._size(request)
        model.check_concept(request, self.limits)
        self.guard.check(request.concept_id)
        model.normalise_embeddings([request], self.limits.dimension, "embedding")
        batch = wal_pb2.WalBatch(request_id=request.request_id)
        batch.concepts.append(request)
        return pb.LearnConceptResponse(sequence=self.engine.submit(batch))

    @grpc_errors
    def LearnAssociation(
        self, request: pb.LearnAssociationRequest, context: grpc.ServicerContext
    ) -> pb.LearnAssociationResponse:
        self._size(request)
        model.check_association(request)
        self.guard.check(request.source_id)  # an edge lives with its source concept
        batch = wal_pb2.WalBatch(request_id=request.request_id)
        batch.associations.append(request)
        return pb.LearnAssociationResponse(sequence=self.engine.submit(batch))

    @grpc_errors
    def DeleteConcept(self, request: pb.DeleteConceptRequest, context: grpc.ServicerContext) -> pb.DeleteConceptResponse:
        self._size(request)
        model.check_id("concept_id", request.concept_id)
        if not request.purge_foreign:
            self.guard.check(request.concept_id)
        elif self.guard.owns(request.concept_id):
            raise InvalidArgument(f"purge_foreign: concept {request.concept_id!r} belongs to this shard; "
                                  "delete it without purge_foreign")
        batch = wal_pb2.WalBatch(request_id=request.request_id, delete_concept_ids=[request.concept_id])
        return pb.DeleteConceptResponse(sequence=self.engine.submit(batch))

    def _log_batch(self, request: RawBatch | pb.LearnBatchRequest) -> tuple[int, wal_pb2.WalBatch]:
        # The server parses LearnBatch straight into a WalBatch (same field
        # numbers) and keeps the bytes it came in: unless validation had to
        # convert float lists, those bytes are logged and streamed as they are.
        if isinstance(request, tuple):
            batch, raw = request
        else:
            batch, raw = wal_pb2.WalBatch.FromString(request.SerializeToString()), None
        vectors: list[np.ndarray] = []  # the checked vectors, handed to the apply
        converted = model.check_batch(batch, self.limits, None if raw is None else len(raw), vectors)
        self.guard.check_batch(batch)
        return self.engine.submit(batch, raw=None if converted else raw, vectors=vectors[0] if vectors else None), batch

    @grpc_errors
    def LearnBatch(self, request: RawBatch | pb.LearnBatchRequest, context: grpc.ServicerContext) -> pb.LearnBatchResponse:
        lsn, batch = self._log_batch(request)
        return pb.LearnBatchResponse(
            sequence=lsn, concepts=len(batch.concepts), associations=len(batch.associations),
            deletes=len(batch.delete_concept_ids),
        )

    @grpc_errors
    def LearnStream(
        self, request_iterator: Iterator[RawBatch | pb.LearnBatchRequest], context: grpc.ServicerContext
    ) -> pb.LearnStreamResponse:
        out = pb.LearnStreamResponse()
        for i, request in enumerate(request_iterator):
            try:
                out.sequence, batch = self._log_batch(request)
            except InvalidArgument as exc:
                raise InvalidArgument(
                    f"stream message {i}: {exc} (messages before it are durable up to sequence {out.sequence})"
                ) from exc
            out.batches += 1
            out.concepts += len(batch.concepts)
            out.associations += len(batch.associations)
        return out

    def _size(self, request: Any) -> None:
        """The message-size limit and the request id's, for single-item writes."""
        size = request.ByteSize()
        if size > self.limits.max_message_bytes:
            raise InvalidArgument(
                f"message has {size} bytes, SUTRA_MAX_MESSAGE_BYTES is {self.limits.max_message_bytes}"
            )
        model.check_request_id(request.request_id)

    def _wait(self, sequence: int, context: grpc.ServicerContext) -> None:
        """Wait until ``sequence`` is visible, holding a client slot while it waits.

        A leader refuses at once a sequence it never issued (past its last LSN):
        waiting could not help, and such waits used to pin every worker."""
        eng = self.engine
        if sequence <= eng.applied_lsn:
            eng.wait_visible(0)  # still refuses reads behind a read fence
            return
        last = eng.wal.last_lsn
        if eng.role == "leader" and sequence > last:
            raise FailedPrecondition(
                f"sequence {sequence} is past this leader's last LSN {last} (term {eng.term}): it was not "
                "issued here; write again, or read without sequence")
        # Most waits end within a reconcile interval: those take no slot, so a
        # burst of read-your-writes through a router is never refused.
        try:
            eng.wait_visible(sequence, timeout_s=min(FREE_WAIT_S, eng.cfg.read_wait_ms / 1000.0))
            return
        except DeadlineExceeded:
            if self.waits is None:
                raise
        with self.waits.slot(client_of(context)):
            eng.wait_visible(sequence)

    # ---- reads -----------------------------------------------------------
    @grpc_errors
    def QueryConcept(self, request: pb.QueryConceptRequest, context: grpc.ServicerContext) -> pb.QueryConceptResponse:
        model.check_id("concept_id", request.concept_id)
        self.guard.check(request.concept_id)
        self._wait(request.sequence, context)
        c = self.engine.get_concept(request.concept_id)
        if c is None:
            return pb.QueryConceptResponse(found=False, concept_id=request.concept_id)
        return pb.QueryConceptResponse(
            found=True, concept_id=request.concept_id, content=c.content, strength=c.strength,
            confidence=c.confidence, attributes=c.attributes, has_embedding=bool(c.embedding),
            embedding_f32=c.embedding if request.include_embedding else b"",
            created_at_us=c.created_us, updated_at_us=c.updated_us,
        )

    @grpc_errors
    def GetNeighbors(self, request: pb.GetNeighborsRequest, context: grpc.ServicerContext) -> pb.GetNeighborsResponse:
        model.check_id("concept_id", request.concept_id)
        model.check_direction(request.direction)
        self._wait(request.sequence, context)
        out, inc = request.direction != pb.INCOMING, request.direction != pb.OUTGOING
        self._neighbor_bound([request.concept_id], out, inc)
        found = self.engine.neighbors(request.concept_id, out, inc)
        ids = sorted({f[0] for f in found})
        return pb.GetNeighborsResponse(
            neighbor_ids=ids,
            neighbors=[pb.Neighbor(concept_id=o, assoc_type=t, confidence=c, outgoing=out) for o, t, c, out in found],
        )

    @grpc_errors
    def GetNeighborsBatch(
        self, request: pb.GetNeighborsBatchRequest, context: grpc.ServicerContext
    ) -> pb.GetNeighborsBatchResponse:
        if len(request.concept_ids) > self.limits.max_batch:
            raise InvalidArgument(f"concept_ids has {len(request.concept_ids)} ids, SUTRA_MAX_BATCH is "
                                  f"{self.limits.max_batch}")
        for i, cid in enumerate(request.concept_ids):
            model.check_id(f"concept_ids[{i}]", cid)
        model.check_direction(request.direction)
        self._wait(request.sequence, context)
        out, inc = request.direction != pb.INCOMING, request.direction != pb.OUTGOING
        self._neighbor_bound(list(request.concept_ids), out, inc)
        results = []
        for cid in request.concept_ids:
            found = self.engine.neighbors(cid, out, inc)
            r = pb.GetNeighborsResponse(neighbor_ids=sorted({f[0] for f in found}))
            if not request.ids_only:
                r.neighbors.extend(pb.Neighbor(concept_id=o, assoc_type=t, confidence=c, outgoing=og)
                                   for o, t, c, og in found)
            results.append(r)
        return pb.GetNeighborsBatchResponse(results=results)

    def _neighbor_bound(self, ids: list[str], out: bool, inc: bool) -> None:
        # Counted before anything is built: one 5 KB request naming a hub 1,000
        # times used to cost 53 s of CPU and 1.2 GB (security review H3).
        limit = self.engine.cfg.max_neighbors
        n = self.engine.neighbor_count(ids, out, inc)
        if n > limit:
            raise ResourceExhausted(f"the answer would hold {n} neighbours of {len(ids)} id(s); "
                                    f"SUTRA_MAX_NEIGHBORS is {limit}: ask for fewer ids")

    @grpc_errors
    def FindPath(self, request: pb.FindPathRequest, context: grpc.ServicerContext) -> pb.FindPathResponse:
        model.check_id("start_id", request.start_id)
        model.check_id("end_id", request.end_id)
        depth = model.path_depth(request.max_depth)
        self._wait(request.sequence, context)
        path = self.engine.find_path(request.start_id, request.end_id, depth)
        return pb.FindPathResponse(found=path is not None, path=path or [])

    @grpc_errors
    def VectorSearch(self, request: pb.VectorSearchRequest, context: grpc.ServicerContext) -> pb.VectorSearchResponse:
        model.check_k(request.k)
        model.check_ef_search(request.ef_search)
        query = model.vector_from_request("query_vector", request.query_vector, request.query_f32, self.limits.dimension)
        if query is None:
            raise InvalidArgument(f"query_vector is empty, VECTOR_DIMENSION is {self.limits.dimension}")
        where = reads.check_filter(request.filter)
        threshold = reads.check_score_threshold(request)
        self._wait(request.sequence, context)
        # The filter is applied inside the engine's search, so the k answered
        # are the k best among the matching concepts (not a filtered top k).
        if where or threshold is not None:
            hits, exact = self.engine.search(query, request.k, request.ef_search, where=where or None,
                                             score_threshold=threshold)
        else:
            hits, exact = self.engine.search(query, request.k, request.ef_search)
        results = [pb.SearchResult(concept_id=cid, similarity=s) for cid, s in hits]
        f = request.with_fields
        if f.content or f.attributes or f.embedding:
            concepts = self.engine.state.concepts
            for r in results:  # in process: no QueryConcept per hit
                r.concept.CopyFrom(reads.concept_message(r.concept_id, concepts.get(r.concept_id), content=f.content,
                                                         attributes=f.attributes, embedding=f.embedding))
        return pb.VectorSearchResponse(results=results, exact=exact)

    @grpc_errors
    def GetConcepts(self, request: pb.GetConceptsRequest, context: grpc.ServicerContext) -> pb.GetConceptsResponse:
        reads.check_ids(request.concept_ids, self.limits.max_batch)
        for cid in request.concept_ids:
            self.guard.check(cid)
        self._wait(request.sequence, context)
        self.engine.wait_txns(request.concept_ids)  # as QueryConcept: a prepared part's outcome first
        return pb.GetConceptsResponse(concepts=reads.get_many(
            self.engine.state.concepts, request.concept_ids, request.include_embedding, self.limits.max_message_bytes))

    @grpc_errors
    def ScrollConcepts(self, request: pb.ScrollConceptsRequest,
                       context: grpc.ServicerContext) -> pb.ScrollConceptsResponse:
        reads.check_after_id(request.after_id)
        limit = reads.scroll_limit(request.limit)
        where = reads.check_filter(request.filter)
        self._wait(request.sequence, context)
        self.engine.wait_txns_all()  # as VectorSearch: no transaction shown on one shard only
        page, cursor = self.scan.page(request.after_id, limit, where, request.include_embedding,
                                      self.limits.max_message_bytes)
        return pb.ScrollConceptsResponse(concepts=page, next_after_id=cursor)

    @grpc_errors
    def CountConcepts(self, request: pb.CountConceptsRequest, context: grpc.ServicerContext) -> pb.CountConceptsResponse:
        where = reads.check_filter(request.filter)
        self._wait(request.sequence, context)
        self.engine.wait_txns_all()
        return pb.CountConceptsResponse(count=self.scan.count(where))

    # ---- operations ------------------------------------------------------
    @grpc_errors
    def Flush(self, request: pb.FlushRequest, context: grpc.ServicerContext) -> pb.FlushResponse:
        lsn = self.engine.checkpoint(drain=True)
        return pb.FlushResponse(success=True, checkpoint_lsn=lsn, wal_bytes=self.engine.wal.active_bytes())

    @grpc_errors
    def HealthCheck(self, request: pb.HealthCheckRequest, context: grpc.ServicerContext) -> pb.HealthCheckResponse:
        healthy, status = self.health()
        return pb.HealthCheckResponse(
            healthy=healthy, status=status, uptime_seconds=int(self.engine.stats()["uptime_seconds"]),
            role=self.engine.role, node_id=self.engine.cfg.node_id,
        )

    @grpc_errors
    def GetStats(self, request: pb.GetStatsRequest, context: grpc.ServicerContext) -> pb.GetStatsResponse:
        return pb.GetStatsResponse(**self.engine.stats(), vector_dimension=self.limits.dimension)  # type: ignore[arg-type]

    @grpc_errors
    def GetDigest(self, request: pb.GetDigestRequest, context: grpc.ServicerContext) -> pb.GetDigestResponse:
        self._wait(request.sequence, context)
        version = request.digest_version or self.engine.state.fingerprint_version
        lsn, digest, concepts, edges = self.engine.digest(version=version)
        return pb.GetDigestResponse(lsn=lsn, digest=digest, concepts=concepts, edges=edges, digest_version=version)
