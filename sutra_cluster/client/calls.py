"""Request building and answer parsing shared by the sync and asyncio clients:
each public method of either client is one ``Call`` made here and run by the
client's own transport, so both clients send the same requests and return
the same dataclasses."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sutra_cluster.client.types import (
    Association,
    BulkLoadResult,
    Concept,
    Digest,
    Filter,
    FlushResult,
    Health,
    Neighbor,
    Page,
    SearchHit,
    Stats,
    direction_of,
    f32,
    fields_pb,
    filter_pb,
)
from sutra_cluster.pb import storage_pb2 as pb

PREFERENCES = {"leader": pb.READ_LEADER, "replica": pb.READ_REPLICA}
# Calls whose DEADLINE_EXCEEDED means "not visible yet" rather than "the node hung".
READ_METHODS = frozenset({"QueryConcept", "GetNeighbors", "GetNeighborsBatch", "FindPath", "VectorSearch", "GetDigest",
                          "GetConcepts", "ScrollConcepts", "CountConcepts"})


@dataclass(frozen=True)
class Call:
    method: str
    request: Any
    parse: Callable[[Any], Any]

    @property
    def write(self) -> bool:
        return self.method not in READ_METHODS and self.method not in ("HealthCheck", "GetStats")


def preference(name: str | None) -> int:
    if name not in PREFERENCES:
        raise ValueError(f"read_preference is {name!r}, it must be one of {', '.join(PREFERENCES)}")
    return PREFERENCES[name]


def batch_request(concepts: Sequence[Concept] = (), associations: Sequence[Association] = (),
                  deletes: Sequence[str] = (), request_id: str = "") -> pb.LearnBatchRequest:
    return pb.LearnBatchRequest(
        concepts=[c.to_pb() for c in concepts], associations=[a.to_pb() for a in associations],
        delete_concept_ids=list(deletes), request_id=request_id or uuid.uuid4().hex,
    )


def _concept_or_none(m: pb.QueryConceptResponse) -> Concept | None:
    return Concept.from_pb(m) if m.found else None


class Calls:
    """The read-your-writes token and the request builders.

    The token maps shard -> the highest LSN acknowledged to this client on that
    shard, from the ``shard_sequences`` of write answers (a router's or the
    routing client's). Reads carry it, so each shard they ask waits until this
    client's own writes are visible there, from a leader or a replica alike."""

    def __init__(self, read_preference: str = "leader") -> None:
        self.read_preference = preference(read_preference)
        self._token: dict[int, int] = {}
        self._token_lock = threading.Lock()

    # ---- token -----------------------------------------------------------
    def token(self) -> dict[int, int]:
        """Read-your-writes token: shard -> highest LSN this client saw acknowledged.
        Pass it as ``token=`` to another client's reads to read these writes there."""
        with self._token_lock:
            return dict(self._token)

    def _seen(self, response: Any) -> None:
        seqs = getattr(response, "shard_sequences", None)
        if not seqs:
            return
        with self._token_lock:
            for e in seqs:
                if e.sequence > self._token.get(e.shard, 0):
                    self._token[e.shard] = e.sequence

    def _read(self, req: Any, sequence: int, token: Mapping[int, int] | None, read_preference: str | None,
              allow_partial: bool | None = None) -> Any:
        tok = self.token()
        for s, q in (token or {}).items():
            tok[s] = max(tok.get(s, 0), q)
        if sequence:
            req.sequence = sequence
        req.shard_sequences.extend(pb.ShardSequence(shard=s, sequence=q) for s, q in sorted(tok.items()))
        req.read_preference = self.read_preference if read_preference is None else preference(read_preference)
        if allow_partial:
            req.allow_partial = True
        return req

    # ---- writes ----------------------------------------------------------
    def _learn_concept(self, concept_id: str, content: str, embedding: Any, strength: float, confidence: float,
                       attributes: Mapping[str, str] | None, request_id: str) -> Call:
        emb = None if embedding is None else np.asarray(embedding)
        req = Concept(concept_id, content, emb, strength, confidence, attributes or {}).to_pb()
        req.request_id = request_id or uuid.uuid4().hex
        return Call("LearnConcept", req, lambda r: int(r.sequence))

    def _learn_association(self, source_id: str, target_id: str, assoc_type: int | str, confidence: float,
                           request_id: str) -> Call:
        req = Association(source_id, target_id, assoc_type, confidence).to_pb()
        req.request_id = request_id or uuid.uuid4().hex
        return Call("LearnAssociation", req, lambda r: int(r.sequence))

    def _delete_concept(self, concept_id: str, request_id: str) -> Call:
        req = pb.DeleteConceptRequest(concept_id=concept_id, request_id=request_id or uuid.uuid4().hex)
        return Call("DeleteConcept", req, lambda r: int(r.sequence))

    def _learn_batch(self, concepts: Sequence[Concept], associations: Sequence[Association], deletes: Sequence[str],
                     request_id: str) -> Call:
        return Call("LearnBatch", batch_request(concepts, associations, deletes, request_id), lambda r: int(r.sequence))

    # ---- reads -----------------------------------------------------------
    def _query_concept(self, concept_id: str, include_embedding: bool, sequence: int,
                       token: Mapping[int, int] | None, read_preference: str | None) -> Call:
        req = self._read(pb.QueryConceptRequest(concept_id=concept_id, include_embedding=include_embedding),
                         sequence, token, read_preference)
        return Call("QueryConcept", req, _concept_or_none)

    def _get_concepts(self, concept_ids: Iterable[str], include_embedding: bool, sequence: int,
                      token: Mapping[int, int] | None, read_preference: str | None, allow_partial: bool) -> Call:
        req = self._read(pb.GetConceptsRequest(concept_ids=list(concept_ids), include_embedding=include_embedding),
                         sequence, token, read_preference, allow_partial)
        return Call("GetConcepts", req, lambda r: [_concept_or_none(c) for c in r.concepts])

    def _scroll(self, filter: Filter | None, limit: int, after_id: str, include_embedding: bool, sequence: int,
                token: Mapping[int, int] | None, read_preference: str | None, allow_partial: bool) -> Call:
        req = self._read(pb.ScrollConceptsRequest(after_id=after_id, limit=limit, filter=filter_pb(filter),
                                                  include_embedding=include_embedding),
                         sequence, token, read_preference, allow_partial)
        return Call("ScrollConcepts", req, lambda r: Page([Concept.from_pb(c) for c in r.concepts], r.next_after_id,
                                                          list(r.missing_shards)))

    def _count(self, filter: Filter | None, sequence: int, token: Mapping[int, int] | None,
               read_preference: str | None, allow_partial: bool) -> Call:
        req = self._read(pb.CountConceptsRequest(filter=filter_pb(filter)), sequence, token, read_preference,
                         allow_partial)
        return Call("CountConcepts", req, lambda r: int(r.count))

    def _neighbors(self, concept_id: str, direction: int | str, sequence: int, token: Mapping[int, int] | None,
                   read_preference: str | None, allow_partial: bool, ids: bool) -> Call:
        req = self._read(pb.GetNeighborsRequest(concept_id=concept_id, direction=direction_of(direction)),  # type: ignore[arg-type]
                         sequence, token, read_preference, allow_partial)
        if ids:
            return Call("GetNeighbors", req, lambda r: list(r.neighbor_ids))
        return Call("GetNeighbors", req, lambda r: [Neighbor(n.concept_id, n.assoc_type, n.confidence, n.outgoing)
                                                    for n in r.neighbors])

    def _neighbors_batch(self, concept_ids: Iterable[str], direction: int | str, sequence: int,
                         token: Mapping[int, int] | None, read_preference: str | None, allow_partial: bool) -> Call:
        req = self._read(pb.GetNeighborsBatchRequest(concept_ids=list(concept_ids), direction=direction_of(direction),  # type: ignore[arg-type]
                                                     ids_only=True), sequence, token, read_preference, allow_partial)
        return Call("GetNeighborsBatch", req, lambda r: [list(x.neighbor_ids) for x in r.results])

    def _find_path(self, start_id: str, end_id: str, max_depth: int, sequence: int, token: Mapping[int, int] | None,
                   read_preference: str | None, allow_partial: bool) -> Call:
        req = self._read(pb.FindPathRequest(start_id=start_id, end_id=end_id, max_depth=max_depth),
                         sequence, token, read_preference, allow_partial)
        return Call("FindPath", req, lambda r: list(r.path) if r.found else None)

    def _vector_search(self, query: Any, k: int, ef_search: int, filter: Filter | None,
                       score_threshold: float | None, with_fields: bool | Collection[str], sequence: int,
                       token: Mapping[int, int] | None, read_preference: str | None, allow_partial: bool) -> Call:
        req = pb.VectorSearchRequest(query_f32=f32(query), k=k, ef_search=ef_search, filter=filter_pb(filter),
                                     with_fields=fields_pb(with_fields))
        if score_threshold is not None:
            req.score_threshold = score_threshold
        self._read(req, sequence, token, read_preference, allow_partial)

        def parse(r: pb.VectorSearchResponse) -> list[SearchHit]:
            return [SearchHit(x.concept_id, x.similarity, Concept.from_pb(x.concept) if x.HasField("concept") else None)
                    for x in r.results]

        return Call("VectorSearch", req, parse)

    # ---- operations ------------------------------------------------------
    @staticmethod
    def _flush() -> Call:
        return Call("Flush", pb.FlushRequest(), lambda r: FlushResult(r.success, r.checkpoint_lsn, r.wal_bytes))

    @staticmethod
    def _health() -> Call:
        return Call("HealthCheck", pb.HealthCheckRequest(), Health.from_pb)

    @staticmethod
    def _stats() -> Call:
        return Call("GetStats", pb.GetStatsRequest(), Stats.from_pb)

    @staticmethod
    def _digest(sequence: int, version: int = 0) -> Call:
        return Call("GetDigest", pb.GetDigestRequest(sequence=sequence, digest_version=version),
                    lambda r: Digest(r.lsn, r.digest, r.concepts, r.edges, r.digest_version or 1))

    @staticmethod
    def _bulk_result(r: pb.LearnStreamResponse) -> BulkLoadResult:
        return BulkLoadResult(r.sequence, r.batches, r.concepts, r.associations,
                              {e.shard: e.sequence for e in r.shard_sequences})
