from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReadPreference(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    READ_LEADER: _ClassVar[ReadPreference]
    READ_REPLICA: _ClassVar[ReadPreference]

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BOTH: _ClassVar[Direction]
    OUTGOING: _ClassVar[Direction]
    INCOMING: _ClassVar[Direction]
READ_LEADER: ReadPreference
READ_REPLICA: ReadPreference
BOTH: Direction
OUTGOING: Direction
INCOMING: Direction

class ShardSequence(_message.Message):
    __slots__ = ("shard", "sequence")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    shard: int
    sequence: int
    def __init__(self, shard: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("sequence", "shard_sequences")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SHARD_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    shard_sequences: _containers.RepeatedCompositeFieldContainer[ShardSequence]
    def __init__(self, sequence: _Optional[int] = ..., shard_sequences: _Optional[_Iterable[_Union[ShardSequence, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("sequence", "shard_sequences")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SHARD_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    shard_sequences: _containers.RepeatedCompositeFieldContainer[ShardSequence]
    def __init__(self, sequence: _Optional[int] = ..., shard_sequences: _Optional[_Iterable[_Union[ShardSequence, _Mapping]]] = ...) -> None: ...

class DeleteConceptRequest(_message.Message):
    __slots__ = ("concept_id", "request_id", "purge_foreign")
    CONCEPT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PURGE_FOREIGN_FIELD_NUMBER: _ClassVar[int]
    concept_id: str
    request_id: str
    purge_foreign: bool
    def __init__(self, concept_id: _Optional[str] = ..., request_id: _Optional[str] = ..., purge_foreign: _Optional[bool] = ...) -> None: ...

class DeleteConceptResponse(_message.Message):
    __slots__ = ("sequence", "shard_sequences")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SHARD_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    shard_sequences: _containers.RepeatedCompositeFieldContainer[ShardSequence]
    def __init__(self, sequence: _Optional[int] = ..., shard_sequences: _Optional[_Iterable[_Union[ShardSequence, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("sequence", "concepts", "associations", "deletes", "shard_sequences")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    ASSOCIATIONS_FIELD_NUMBER: _ClassVar[int]
    DELETES_FIELD_NUMBER: _ClassVar[int]
    SHARD_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    concepts: int
    associations: int
    deletes: int
    shard_sequences: _containers.RepeatedCompositeFieldContainer[ShardSequence]
    def __init__(self, sequence: _Optional[int] = ..., concepts: _Optional[int] = ..., associations: _Optional[int] = ..., deletes: _Optional[int] = ..., shard_sequences: _Optional[_Iterable[_Union[ShardSequence, _Mapping]]] = ...) -> None: ...

class LearnStreamResponse(_message.Message):
    __slots__ = ("sequence", "batches", "concepts", "associations", "shard_sequences")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    ASSOCIATIONS_FIELD_NUMBER: _ClassVar[int]
    SHARD_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    batches: int
    concepts: int
    associations: int
    shard_sequences: _containers.RepeatedCompositeFieldContainer[ShardSequence]
    def __init__(self, sequence: _Optional[int] = ..., batches: _Optional[int] = ..., concepts: _Optional[int] = ..., associations: _Optional[int] = ..., shard_sequences: _Optional[_Iterable[_Union[ShardSequence, _Mapping]]] = ...) -> None: ...

class QueryConceptRequest(_message.Message):
    __slots__ = ("concept_id", "sequence", "include_embedding", "shard_sequences", "read_preference")
    CONCEPT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    SHARD_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    READ_PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    concept_id: str
    sequence: int
    include_embedding: bool
    shard_sequences: _containers.RepeatedCompositeFieldContainer[ShardSequence]
    read_preference: ReadPreference
    def __init__(self, concept_id: _Optional[str] = ..., sequence: _Optional[int] = ..., include_embedding: _Optional[bool] = ..., shard_sequences: _Optional[_Iterable[_Union[ShardSequence, _Mapping]]] = ..., read_preference: _Optional[_Union[ReadPreference, str]] = ...) -> None: ...

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
    __slots__ = ("concept_id", "sequence", "direction", "shard_sequences", "read_preference", "allow_partial")
    CONCEPT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    SHARD_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    READ_PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    concept_id: str
    sequence: int
    direction: Direction
    shard_sequences: _containers.RepeatedCompositeFieldContainer[ShardSequence]
    read_preference: ReadPreference
    allow_partial: bool
    def __init__(self, concept_id: _Optional[str] = ..., sequence: _Optional[int] = ..., direction: _Optional[_Union[Direction, str]] = ..., shard_sequences: _Optional[_Iterable[_Union[ShardSequence, _Mapping]]] = ..., read_preference: _Optional[_Union[ReadPreference, str]] = ..., allow_partial: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("neighbor_ids", "neighbors", "missing_shards")
    NEIGHBOR_IDS_FIELD_NUMBER: _ClassVar[int]
    NEIGHBORS_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    neighbor_ids: _containers.RepeatedScalarFieldContainer[str]
    neighbors: _containers.RepeatedCompositeFieldContainer[Neighbor]
    missing_shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, neighbor_ids: _Optional[_Iterable[str]] = ..., neighbors: _Optional[_Iterable[_Union[Neighbor, _Mapping]]] = ..., missing_shards: _Optional[_Iterable[int]] = ...) -> None: ...

class GetNeighborsBatchRequest(_message.Message):
    __slots__ = ("concept_ids", "sequence", "direction", "ids_only", "shard_sequences", "read_preference", "allow_partial")
    CONCEPT_IDS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_ONLY_FIELD_NUMBER: _ClassVar[int]
    SHARD_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    READ_PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    concept_ids: _containers.RepeatedScalarFieldContainer[str]
    sequence: int
    direction: Direction
    ids_only: bool
    shard_sequences: _containers.RepeatedCompositeFieldContainer[ShardSequence]
    read_preference: ReadPreference
    allow_partial: bool
    def __init__(self, concept_ids: _Optional[_Iterable[str]] = ..., sequence: _Optional[int] = ..., direction: _Optional[_Union[Direction, str]] = ..., ids_only: _Optional[bool] = ..., shard_sequences: _Optional[_Iterable[_Union[ShardSequence, _Mapping]]] = ..., read_preference: _Optional[_Union[ReadPreference, str]] = ..., allow_partial: _Optional[bool] = ...) -> None: ...

class GetNeighborsBatchResponse(_message.Message):
    __slots__ = ("results", "missing_shards")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[GetNeighborsResponse]
    missing_shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, results: _Optional[_Iterable[_Union[GetNeighborsResponse, _Mapping]]] = ..., missing_shards: _Optional[_Iterable[int]] = ...) -> None: ...

class FindPathRequest(_message.Message):
    __slots__ = ("start_id", "end_id", "max_depth", "sequence", "shard_sequences", "read_preference", "allow_partial")
    START_ID_FIELD_NUMBER: _ClassVar[int]
    END_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SHARD_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    READ_PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    start_id: str
    end_id: str
    max_depth: int
    sequence: int
    shard_sequences: _containers.RepeatedCompositeFieldContainer[ShardSequence]
    read_preference: ReadPreference
    allow_partial: bool
    def __init__(self, start_id: _Optional[str] = ..., end_id: _Optional[str] = ..., max_depth: _Optional[int] = ..., sequence: _Optional[int] = ..., shard_sequences: _Optional[_Iterable[_Union[ShardSequence, _Mapping]]] = ..., read_preference: _Optional[_Union[ReadPreference, str]] = ..., allow_partial: _Optional[bool] = ...) -> None: ...

class FindPathResponse(_message.Message):
    __slots__ = ("found", "path", "missing_shards")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    found: bool
    path: _containers.RepeatedScalarFieldContainer[str]
    missing_shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, found: _Optional[bool] = ..., path: _Optional[_Iterable[str]] = ..., missing_shards: _Optional[_Iterable[int]] = ...) -> None: ...

class VectorSearchRequest(_message.Message):
    __slots__ = ("query_vector", "k", "ef_search", "query_f32", "sequence", "shard_sequences", "read_preference", "allow_partial", "filter", "score_threshold", "with_fields")
    QUERY_VECTOR_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    QUERY_F32_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SHARD_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    READ_PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    WITH_FIELDS_FIELD_NUMBER: _ClassVar[int]
    query_vector: _containers.RepeatedScalarFieldContainer[float]
    k: int
    ef_search: int
    query_f32: bytes
    sequence: int
    shard_sequences: _containers.RepeatedCompositeFieldContainer[ShardSequence]
    read_preference: ReadPreference
    allow_partial: bool
    filter: _containers.RepeatedCompositeFieldContainer[AttributeFilter]
    score_threshold: float
    with_fields: ConceptFields
    def __init__(self, query_vector: _Optional[_Iterable[float]] = ..., k: _Optional[int] = ..., ef_search: _Optional[int] = ..., query_f32: _Optional[bytes] = ..., sequence: _Optional[int] = ..., shard_sequences: _Optional[_Iterable[_Union[ShardSequence, _Mapping]]] = ..., read_preference: _Optional[_Union[ReadPreference, str]] = ..., allow_partial: _Optional[bool] = ..., filter: _Optional[_Iterable[_Union[AttributeFilter, _Mapping]]] = ..., score_threshold: _Optional[float] = ..., with_fields: _Optional[_Union[ConceptFields, _Mapping]] = ...) -> None: ...

class AttributeFilter(_message.Message):
    __slots__ = ("key", "values")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    key: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class ConceptFields(_message.Message):
    __slots__ = ("content", "attributes", "embedding")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    content: bool
    attributes: bool
    embedding: bool
    def __init__(self, content: _Optional[bool] = ..., attributes: _Optional[bool] = ..., embedding: _Optional[bool] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("concept_id", "similarity", "concept")
    CONCEPT_ID_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    CONCEPT_FIELD_NUMBER: _ClassVar[int]
    concept_id: str
    similarity: float
    concept: QueryConceptResponse
    def __init__(self, concept_id: _Optional[str] = ..., similarity: _Optional[float] = ..., concept: _Optional[_Union[QueryConceptResponse, _Mapping]] = ...) -> None: ...

class VectorSearchResponse(_message.Message):
    __slots__ = ("results", "exact", "missing_shards")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    exact: bool
    missing_shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ..., exact: _Optional[bool] = ..., missing_shards: _Optional[_Iterable[int]] = ...) -> None: ...

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
    __slots__ = ("healthy", "status", "uptime_seconds", "role", "node_id", "shard", "shards")
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    healthy: bool
    status: str
    uptime_seconds: int
    role: str
    node_id: str
    shard: int
    shards: _containers.RepeatedCompositeFieldContainer[HealthCheckResponse]
    def __init__(self, healthy: _Optional[bool] = ..., status: _Optional[str] = ..., uptime_seconds: _Optional[int] = ..., role: _Optional[str] = ..., node_id: _Optional[str] = ..., shard: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[HealthCheckResponse, _Mapping]]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("concepts", "edges", "written", "dropped", "pending", "reconciliations", "uptime_seconds", "vectors", "last_lsn", "durable_lsn", "applied_lsn", "checkpoint_lsn", "role", "term", "node_id", "wal_bytes", "flushes", "leader", "shard", "shards", "shard_count", "missing_shards", "shard_map_version", "vector_dimension", "vector_memory_bytes", "index_memory_bytes", "metadata_memory_bytes", "vector_index_ready", "vector_index_source")
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
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    SHARD_MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    VECTOR_DIMENSION_FIELD_NUMBER: _ClassVar[int]
    VECTOR_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    INDEX_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    METADATA_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    VECTOR_INDEX_READY_FIELD_NUMBER: _ClassVar[int]
    VECTOR_INDEX_SOURCE_FIELD_NUMBER: _ClassVar[int]
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
    shards: _containers.RepeatedCompositeFieldContainer[GetStatsResponse]
    shard_count: int
    missing_shards: _containers.RepeatedScalarFieldContainer[int]
    shard_map_version: int
    vector_dimension: int
    vector_memory_bytes: int
    index_memory_bytes: int
    metadata_memory_bytes: int
    vector_index_ready: bool
    vector_index_source: str
    def __init__(self, concepts: _Optional[int] = ..., edges: _Optional[int] = ..., written: _Optional[int] = ..., dropped: _Optional[int] = ..., pending: _Optional[int] = ..., reconciliations: _Optional[int] = ..., uptime_seconds: _Optional[int] = ..., vectors: _Optional[int] = ..., last_lsn: _Optional[int] = ..., durable_lsn: _Optional[int] = ..., applied_lsn: _Optional[int] = ..., checkpoint_lsn: _Optional[int] = ..., role: _Optional[str] = ..., term: _Optional[int] = ..., node_id: _Optional[str] = ..., wal_bytes: _Optional[int] = ..., flushes: _Optional[int] = ..., leader: _Optional[str] = ..., shard: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[GetStatsResponse, _Mapping]]] = ..., shard_count: _Optional[int] = ..., missing_shards: _Optional[_Iterable[int]] = ..., shard_map_version: _Optional[int] = ..., vector_dimension: _Optional[int] = ..., vector_memory_bytes: _Optional[int] = ..., index_memory_bytes: _Optional[int] = ..., metadata_memory_bytes: _Optional[int] = ..., vector_index_ready: _Optional[bool] = ..., vector_index_source: _Optional[str] = ...) -> None: ...

class GetDigestRequest(_message.Message):
    __slots__ = ("sequence", "digest_version")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    digest_version: int
    def __init__(self, sequence: _Optional[int] = ..., digest_version: _Optional[int] = ...) -> None: ...

class GetDigestResponse(_message.Message):
    __slots__ = ("lsn", "digest", "concepts", "edges", "digest_version")
    LSN_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    digest: str
    concepts: int
    edges: int
    digest_version: int
    def __init__(self, lsn: _Optional[int] = ..., digest: _Optional[str] = ..., concepts: _Optional[int] = ..., edges: _Optional[int] = ..., digest_version: _Optional[int] = ...) -> None: ...

class GetConceptsRequest(_message.Message):
    __slots__ = ("concept_ids", "sequence", "include_embedding", "shard_sequences", "read_preference", "allow_partial")
    CONCEPT_IDS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    SHARD_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    READ_PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    concept_ids: _containers.RepeatedScalarFieldContainer[str]
    sequence: int
    include_embedding: bool
    shard_sequences: _containers.RepeatedCompositeFieldContainer[ShardSequence]
    read_preference: ReadPreference
    allow_partial: bool
    def __init__(self, concept_ids: _Optional[_Iterable[str]] = ..., sequence: _Optional[int] = ..., include_embedding: _Optional[bool] = ..., shard_sequences: _Optional[_Iterable[_Union[ShardSequence, _Mapping]]] = ..., read_preference: _Optional[_Union[ReadPreference, str]] = ..., allow_partial: _Optional[bool] = ...) -> None: ...

class GetConceptsResponse(_message.Message):
    __slots__ = ("concepts", "missing_shards")
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    concepts: _containers.RepeatedCompositeFieldContainer[QueryConceptResponse]
    missing_shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, concepts: _Optional[_Iterable[_Union[QueryConceptResponse, _Mapping]]] = ..., missing_shards: _Optional[_Iterable[int]] = ...) -> None: ...

class ScrollConceptsRequest(_message.Message):
    __slots__ = ("after_id", "limit", "filter", "include_embedding", "sequence", "shard_sequences", "read_preference", "allow_partial")
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SHARD_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    READ_PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    after_id: str
    limit: int
    filter: _containers.RepeatedCompositeFieldContainer[AttributeFilter]
    include_embedding: bool
    sequence: int
    shard_sequences: _containers.RepeatedCompositeFieldContainer[ShardSequence]
    read_preference: ReadPreference
    allow_partial: bool
    def __init__(self, after_id: _Optional[str] = ..., limit: _Optional[int] = ..., filter: _Optional[_Iterable[_Union[AttributeFilter, _Mapping]]] = ..., include_embedding: _Optional[bool] = ..., sequence: _Optional[int] = ..., shard_sequences: _Optional[_Iterable[_Union[ShardSequence, _Mapping]]] = ..., read_preference: _Optional[_Union[ReadPreference, str]] = ..., allow_partial: _Optional[bool] = ...) -> None: ...

class ScrollConceptsResponse(_message.Message):
    __slots__ = ("concepts", "next_after_id", "missing_shards")
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    concepts: _containers.RepeatedCompositeFieldContainer[QueryConceptResponse]
    next_after_id: str
    missing_shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, concepts: _Optional[_Iterable[_Union[QueryConceptResponse, _Mapping]]] = ..., next_after_id: _Optional[str] = ..., missing_shards: _Optional[_Iterable[int]] = ...) -> None: ...

class CountConceptsRequest(_message.Message):
    __slots__ = ("filter", "sequence", "shard_sequences", "read_preference", "allow_partial")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SHARD_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    READ_PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    filter: _containers.RepeatedCompositeFieldContainer[AttributeFilter]
    sequence: int
    shard_sequences: _containers.RepeatedCompositeFieldContainer[ShardSequence]
    read_preference: ReadPreference
    allow_partial: bool
    def __init__(self, filter: _Optional[_Iterable[_Union[AttributeFilter, _Mapping]]] = ..., sequence: _Optional[int] = ..., shard_sequences: _Optional[_Iterable[_Union[ShardSequence, _Mapping]]] = ..., read_preference: _Optional[_Union[ReadPreference, str]] = ..., allow_partial: _Optional[bool] = ...) -> None: ...

class CountConceptsResponse(_message.Message):
    __slots__ = ("count", "missing_shards")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    count: int
    missing_shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, count: _Optional[int] = ..., missing_shards: _Optional[_Iterable[int]] = ...) -> None: ...
