from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BOTH: _ClassVar[Direction]
    OUTGOING: _ClassVar[Direction]
    INCOMING: _ClassVar[Direction]
BOTH: Direction
OUTGOING: Direction
INCOMING: Direction

class LearnConceptRequest(_message.Message):
    __slots__ = ("concept_id", "content", "embedding", "strength", "confidence", "attributes", "embedding_f32", "request_id")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONCEPT_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_F32_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    concept_id: str
    content: str
    embedding: _containers.RepeatedScalarFieldContainer[float]
    strength: float
    confidence: float
    attributes: _containers.ScalarMap[str, str]
    embedding_f32: bytes
    request_id: str
    def __init__(self, concept_id: _Optional[str] = ..., content: _Optional[str] = ..., embedding: _Optional[_Iterable[float]] = ..., strength: _Optional[float] = ..., confidence: _Optional[float] = ..., attributes: _Optional[_Mapping[str, str]] = ..., embedding_f32: _Optional[bytes] = ..., request_id: _Optional[str] = ...) -> None: ...

class LearnConceptResponse(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class LearnAssociationRequest(_message.Message):
    __slots__ = ("source_id", "target_id", "assoc_type", "confidence", "request_id")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    ASSOC_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    target_id: str
    assoc_type: int
    confidence: float
    request_id: str
    def __init__(self, source_id: _Optional[str] = ..., target_id: _Optional[str] = ..., assoc_type: _Optional[int] = ..., confidence: _Optional[float] = ..., request_id: _Optional[str] = ...) -> None: ...

class LearnAssociationResponse(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class DeleteConceptRequest(_message.Message):
    __slots__ = ("concept_id", "request_id")
    CONCEPT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    concept_id: str
    request_id: str
    def __init__(self, concept_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteConceptResponse(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class LearnBatchRequest(_message.Message):
    __slots__ = ("concepts", "associations", "delete_concept_ids", "request_id")
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    ASSOCIATIONS_FIELD_NUMBER: _ClassVar[int]
    DELETE_CONCEPT_IDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    concepts: _containers.RepeatedCompositeFieldContainer[LearnConceptRequest]
    associations: _containers.RepeatedCompositeFieldContainer[LearnAssociationRequest]
    delete_concept_ids: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    def __init__(self, concepts: _Optional[_Iterable[_Union[LearnConceptRequest, _Mapping]]] = ..., associations: _Optional[_Iterable[_Union[LearnAssociationRequest, _Mapping]]] = ..., delete_concept_ids: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class LearnBatchResponse(_message.Message):
    __slots__ = ("sequence", "concepts", "associations", "deletes")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    ASSOCIATIONS_FIELD_NUMBER: _ClassVar[int]
    DELETES_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    concepts: int
    associations: int
    deletes: int
    def __init__(self, sequence: _Optional[int] = ..., concepts: _Optional[int] = ..., associations: _Optional[int] = ..., deletes: _Optional[int] = ...) -> None: ...

class LearnStreamResponse(_message.Message):
    __slots__ = ("sequence", "batches", "concepts", "associations")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    ASSOCIATIONS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    batches: int
    concepts: int
    associations: int
    def __init__(self, sequence: _Optional[int] = ..., batches: _Optional[int] = ..., concepts: _Optional[int] = ..., associations: _Optional[int] = ...) -> None: ...

class QueryConceptRequest(_message.Message):
    __slots__ = ("concept_id", "sequence", "include_embedding")
    CONCEPT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    concept_id: str
    sequence: int
    include_embedding: bool
    def __init__(self, concept_id: _Optional[str] = ..., sequence: _Optional[int] = ..., include_embedding: _Optional[bool] = ...) -> None: ...

class QueryConceptResponse(_message.Message):
    __slots__ = ("found", "concept_id", "content", "strength", "confidence", "attributes", "embedding_f32", "created_at_us", "updated_at_us", "has_embedding")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FOUND_FIELD_NUMBER: _ClassVar[int]
    CONCEPT_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_F32_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_US_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_US_FIELD_NUMBER: _ClassVar[int]
    HAS_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    found: bool
    concept_id: str
    content: str
    strength: float
    confidence: float
    attributes: _containers.ScalarMap[str, str]
    embedding_f32: bytes
    created_at_us: int
    updated_at_us: int
    has_embedding: bool
    def __init__(self, found: _Optional[bool] = ..., concept_id: _Optional[str] = ..., content: _Optional[str] = ..., strength: _Optional[float] = ..., confidence: _Optional[float] = ..., attributes: _Optional[_Mapping[str, str]] = ..., embedding_f32: _Optional[bytes] = ..., created_at_us: _Optional[int] = ..., updated_at_us: _Optional[int] = ..., has_embedding: _Optional[bool] = ...) -> None: ...

class GetNeighborsRequest(_message.Message):
    __slots__ = ("concept_id", "sequence", "direction")
    CONCEPT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    concept_id: str
    sequence: int
    direction: Direction
    def __init__(self, concept_id: _Optional[str] = ..., sequence: _Optional[int] = ..., direction: _Optional[_Union[Direction, str]] = ...) -> None: ...

class Neighbor(_message.Message):
    __slots__ = ("concept_id", "assoc_type", "confidence", "outgoing")
    CONCEPT_ID_FIELD_NUMBER: _ClassVar[int]
    ASSOC_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    OUTGOING_FIELD_NUMBER: _ClassVar[int]
    concept_id: str
    assoc_type: int
    confidence: float
    outgoing: bool
    def __init__(self, concept_id: _Optional[str] = ..., assoc_type: _Optional[int] = ..., confidence: _Optional[float] = ..., outgoing: _Optional[bool] = ...) -> None: ...

class GetNeighborsResponse(_message.Message):
    __slots__ = ("neighbor_ids", "neighbors")
    NEIGHBOR_IDS_FIELD_NUMBER: _ClassVar[int]
    NEIGHBORS_FIELD_NUMBER: _ClassVar[int]
    neighbor_ids: _containers.RepeatedScalarFieldContainer[str]
    neighbors: _containers.RepeatedCompositeFieldContainer[Neighbor]
    def __init__(self, neighbor_ids: _Optional[_Iterable[str]] = ..., neighbors: _Optional[_Iterable[_Union[Neighbor, _Mapping]]] = ...) -> None: ...

class FindPathRequest(_message.Message):
    __slots__ = ("start_id", "end_id", "max_depth", "sequence")
    START_ID_FIELD_NUMBER: _ClassVar[int]
    END_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    start_id: str
    end_id: str
    max_depth: int
    sequence: int
    def __init__(self, start_id: _Optional[str] = ..., end_id: _Optional[str] = ..., max_depth: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class FindPathResponse(_message.Message):
    __slots__ = ("found", "path")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    found: bool
    path: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, found: _Optional[bool] = ..., path: _Optional[_Iterable[str]] = ...) -> None: ...

class VectorSearchRequest(_message.Message):
    __slots__ = ("query_vector", "k", "ef_search", "query_f32", "sequence")
    QUERY_VECTOR_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    QUERY_F32_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    query_vector: _containers.RepeatedScalarFieldContainer[float]
    k: int
    ef_search: int
    query_f32: bytes
    sequence: int
    def __init__(self, query_vector: _Optional[_Iterable[float]] = ..., k: _Optional[int] = ..., ef_search: _Optional[int] = ..., query_f32: _Optional[bytes] = ..., sequence: _Optional[int] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("concept_id", "similarity")
    CONCEPT_ID_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    concept_id: str
    similarity: float
    def __init__(self, concept_id: _Optional[str] = ..., similarity: _Optional[float] = ...) -> None: ...

class VectorSearchResponse(_message.Message):
    __slots__ = ("results", "exact")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    exact: bool
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ..., exact: _Optional[bool] = ...) -> None: ...

class FlushRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FlushResponse(_message.Message):
    __slots__ = ("success", "checkpoint_lsn", "wal_bytes")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_LSN_FIELD_NUMBER: _ClassVar[int]
    WAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    success: bool
    checkpoint_lsn: int
    wal_bytes: int
    def __init__(self, success: _Optional[bool] = ..., checkpoint_lsn: _Optional[int] = ..., wal_bytes: _Optional[int] = ...) -> None: ...

class HealthCheckRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthCheckResponse(_message.Message):
    __slots__ = ("healthy", "status", "uptime_seconds", "role", "node_id")
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    healthy: bool
    status: str
    uptime_seconds: int
    role: str
    node_id: str
    def __init__(self, healthy: _Optional[bool] = ..., status: _Optional[str] = ..., uptime_seconds: _Optional[int] = ..., role: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("concepts", "edges", "written", "dropped", "pending", "reconciliations", "uptime_seconds", "vectors", "last_lsn", "durable_lsn", "applied_lsn", "checkpoint_lsn", "role", "term", "node_id", "wal_bytes", "flushes", "leader", "shard")
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    RECONCILIATIONS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    LAST_LSN_FIELD_NUMBER: _ClassVar[int]
    DURABLE_LSN_FIELD_NUMBER: _ClassVar[int]
    APPLIED_LSN_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_LSN_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    WAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    FLUSHES_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    concepts: int
    edges: int
    written: int
    dropped: int
    pending: int
    reconciliations: int
    uptime_seconds: int
    vectors: int
    last_lsn: int
    durable_lsn: int
    applied_lsn: int
    checkpoint_lsn: int
    role: str
    term: int
    node_id: str
    wal_bytes: int
    flushes: int
    leader: str
    shard: int
    def __init__(self, concepts: _Optional[int] = ..., edges: _Optional[int] = ..., written: _Optional[int] = ..., dropped: _Optional[int] = ..., pending: _Optional[int] = ..., reconciliations: _Optional[int] = ..., uptime_seconds: _Optional[int] = ..., vectors: _Optional[int] = ..., last_lsn: _Optional[int] = ..., durable_lsn: _Optional[int] = ..., applied_lsn: _Optional[int] = ..., checkpoint_lsn: _Optional[int] = ..., role: _Optional[str] = ..., term: _Optional[int] = ..., node_id: _Optional[str] = ..., wal_bytes: _Optional[int] = ..., flushes: _Optional[int] = ..., leader: _Optional[str] = ..., shard: _Optional[int] = ...) -> None: ...

class GetDigestRequest(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class GetDigestResponse(_message.Message):
    __slots__ = ("lsn", "digest", "concepts", "edges")
    LSN_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    digest: str
    concepts: int
    edges: int
    def __init__(self, lsn: _Optional[int] = ..., digest: _Optional[str] = ..., concepts: _Optional[int] = ..., edges: _Optional[int] = ...) -> None: ...
