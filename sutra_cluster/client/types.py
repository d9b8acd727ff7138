"""What the client takes and returns: plain dataclasses, embeddings as numpy
float32 arrays (never protobuf messages or raw bytes).

The same ``Concept`` goes in (``learn_concept``, ``learn_batch``) and comes
back out (``get``, ``get_concepts``, ``scroll``, search hits with fields).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sutra_cluster.pb import storage_pb2 as pb

ASSOC_TYPES = {"semantic": 0, "causal": 1, "temporal": 2, "hierarchical": 3, "compositional": 4}
DIRECTIONS = {"both": pb.BOTH, "outgoing": pb.OUTGOING, "incoming": pb.INCOMING}

#: An attribute filter: ``{key: value}`` for equality, ``{key: [v1, v2]}`` for
#: set membership; keys are ANDed (``{"lang": "en", "tier": ["a", "b"]}``).
Filter = Mapping[str, str | Collection[str]]


def f32(vec: Any) -> bytes:
    """Little-endian float32 bytes of a vector (the wire's fast path)."""
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def vector(raw: bytes) -> np.ndarray | None:
    """A read-only float32 array over the wire's bytes, or None when empty."""
    return np.frombuffer(raw, dtype="<f4") if raw else None


@dataclass
class Concept:
    """A concept: what ``learn_concept`` stores and what reads return.

    ``embedding`` is a float32 numpy array (None when the concept has none, or
    the read did not ask for it: see ``has_embedding``). ``created_at_us`` and
    ``updated_at_us`` are set on concepts read back (microseconds since the
    epoch, the time the leader logged the write)."""

    concept_id: str
    content: str = ""
    embedding: np.ndarray | None = None
    strength: float = 1.0
    confidence: float = 1.0
    attributes: Mapping[str, str] = field(default_factory=dict)
    created_at_us: int = 0
    updated_at_us: int = 0
    has_embedding: bool = False

    def to_pb(self) -> pb.LearnConceptRequest:
        return pb.LearnConceptRequest(
            concept_id=self.concept_id, content=self.content, strength=self.strength,
            confidence=self.confidence, attributes=dict(self.attributes),
            embedding_f32=f32(self.embedding) if self.embedding is not None else b"",
        )

    @classmethod
    def from_pb(cls, m: pb.QueryConceptResponse) -> Concept:
        return cls(concept_id=m.concept_id, content=m.content, embedding=vector(m.embedding_f32),
                   strength=m.strength, confidence=m.confidence, attributes=dict(m.attributes),
                   created_at_us=m.created_at_us, updated_at_us=m.updated_at_us,
                   has_embedding=m.has_embedding or bool(m.embedding_f32))


@dataclass
class Association:
    """A typed edge, stored with its source concept. ``assoc_type``: 0 semantic,
    1 causal, 2 temporal, 3 hierarchical, 4 compositional (or the name)."""

    source_id: str
    target_id: str
    assoc_type: int | str = 0
    confidence: float = 1.0

    def to_pb(self) -> pb.LearnAssociationRequest:
        t = self.assoc_type
        if isinstance(t, str):
            if t not in ASSOC_TYPES:
                raise ValueError(f"assoc_type is {t!r}, it must be one of {', '.join(ASSOC_TYPES)}")
            t = ASSOC_TYPES[t]
        return pb.LearnAssociationRequest(source_id=self.source_id, target_id=self.target_id, assoc_type=t,
                                          confidence=self.confidence)


@dataclass
class SearchHit:
    """One vector-search result. ``concept`` holds the fields asked for with
    ``with_fields`` (None otherwise). Unpacks as ``(concept_id, similarity)``,
    the tuple earlier versions returned."""

    concept_id: str
    similarity: float
    concept: Concept | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.concept_id, self.similarity))

    def __getitem__(self, i: int) -> Any:
        return (self.concept_id, self.similarity)[i]

    def __len__(self) -> int:
        return 2


@dataclass(frozen=True)
class Neighbor:
    concept_id: str
    assoc_type: int
    confidence: float
    outgoing: bool


@dataclass
class Page:
    """One page of ``scroll``: pass ``next_after_id`` as ``after_id`` for the
    next; it is '' on the last page. ``missing_shards``: shards that did not
    answer (only with ``allow_partial``)."""

    concepts: list[Concept]
    next_after_id: str
    missing_shards: list[int] = field(default_factory=list)


@dataclass
class BulkLoadResult:
    sequence: int
    batches: int
    concepts: int
    associations: int
    shard_sequences: dict[int, int] = field(default_factory=dict)


@dataclass
class FlushResult:
    success: bool
    checkpoint_lsn: int
    wal_bytes: int


@dataclass
class Digest:
    """A state digest: equal digests of one ``version`` mean equal data; digests of
    two versions (nodes of two builds) do not compare: ask for the older version."""

    lsn: int
    digest: str
    concepts: int
    edges: int
    version: int = 1


@dataclass
class Health:
    """A node's (or router's) health; through a router or a routing client
    ``shards`` has one entry per shard."""

    healthy: bool
    status: str
    uptime_seconds: int = 0
    role: str = ""
    node_id: str = ""
    shard: int = 0
    shards: list[Health] = field(default_factory=list)

    @classmethod
    def from_pb(cls, m: pb.HealthCheckResponse) -> Health:
        return cls(healthy=m.healthy, status=m.status, uptime_seconds=m.uptime_seconds, role=m.role,
                   node_id=m.node_id, shard=m.shard, shards=[cls.from_pb(s) for s in m.shards])


@dataclass
class Stats:
    """GetStats as a dataclass (the guide's fields first). Through a router or a
    routing client the counters are totals and ``shards`` holds each shard's
    leader's own stats."""

    concepts: int = 0
    edges: int = 0
    written: int = 0
    dropped: int = 0
    pending: int = 0
    reconciliations: int = 0
    uptime_seconds: int = 0
    vectors: int = 0
    last_lsn: int = 0
    durable_lsn: int = 0
    applied_lsn: int = 0
    checkpoint_lsn: int = 0
    role: str = ""
    term: int = 0
    node_id: str = ""
    wal_bytes: int = 0
    flushes: int = 0
    leader: str = ""
    shard: int = 0
    shard_count: int = 0
    missing_shards: list[int] = field(default_factory=list)
    shard_map_version: int = 0
    vector_dimension: int = 0
    shards: list[Stats] = field(default_factory=list)

    @classmethod
    def from_pb(cls, m: pb.GetStatsResponse) -> Stats:
        kw: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            if name == "shards":
                kw[name] = [cls.from_pb(s) for s in m.shards]
            elif name == "missing_shards":
                kw[name] = list(m.missing_shards)
            else:
                kw[name] = getattr(m, name)
        return cls(**kw)


def filter_pb(where: Filter | None) -> list[pb.AttributeFilter]:
    """``{key: value | [values]}`` as the request's AttributeFilter list."""
    out = []
    for key, values in (where or {}).items():
        vals = [values] if isinstance(values, str) else list(values)
        out.append(pb.AttributeFilter(key=key, values=vals))
    return out


def fields_pb(with_fields: bool | Collection[str]) -> pb.ConceptFields:
    """``True``: content and attributes; or any of "content", "attributes", "embedding"."""
    if with_fields is True:
        return pb.ConceptFields(content=True, attributes=True)
    if not with_fields:
        return pb.ConceptFields()
    names = {"content", "attributes", "embedding"}
    bad = set(with_fields) - names  # type: ignore[arg-type]
    if bad:
        raise ValueError(f"with_fields has {sorted(bad)}, it may name {sorted(names)}")
    return pb.ConceptFields(**{n: True for n in with_fields})  # type: ignore[union-attr]


def direction_of(direction: int | str) -> int:
    if isinstance(direction, str):
        if direction.lower() not in DIRECTIONS:
            raise ValueError(f"direction is {direction!r}, it must be one of {', '.join(DIRECTIONS)}")
        return DIRECTIONS[direction.lower()]
    return direction
