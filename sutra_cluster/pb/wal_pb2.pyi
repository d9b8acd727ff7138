from sutra_cluster.pb import storage_pb2 as _storage_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WalBatch(_message.Message):
    __slots__ = ("concepts", "associations", "delete_concept_ids", "request_id", "txn_id", "timestamp_us", "drop_concept_ids")
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    ASSOCIATIONS_FIELD_NUMBER: _ClassVar[int]
    DELETE_CONCEPT_IDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    DROP_CONCEPT_IDS_FIELD_NUMBER: _ClassVar[int]
    concepts: _containers.RepeatedCompositeFieldContainer[_storage_pb2.LearnConceptRequest]
    associations: _containers.RepeatedCompositeFieldContainer[_storage_pb2.LearnAssociationRequest]
    delete_concept_ids: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    txn_id: str
    timestamp_us: int
    drop_concept_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, concepts: _Optional[_Iterable[_Union[_storage_pb2.LearnConceptRequest, _Mapping]]] = ..., associations: _Optional[_Iterable[_Union[_storage_pb2.LearnAssociationRequest, _Mapping]]] = ..., delete_concept_ids: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ..., txn_id: _Optional[str] = ..., timestamp_us: _Optional[int] = ..., drop_concept_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class WalPrepare(_message.Message):
    __slots__ = ("txn_id", "batch", "shards", "prepared_at_us")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    PREPARED_AT_US_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    batch: WalBatch
    shards: _containers.RepeatedScalarFieldContainer[int]
    prepared_at_us: int
    def __init__(self, txn_id: _Optional[str] = ..., batch: _Optional[_Union[WalBatch, _Mapping]] = ..., shards: _Optional[_Iterable[int]] = ..., prepared_at_us: _Optional[int] = ...) -> None: ...

class WalTxnAbort(_message.Message):
    __slots__ = ("txn_id", "reason")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    reason: str
    def __init__(self, txn_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ConceptState(_message.Message):
    __slots__ = ("concept_id", "content", "strength", "confidence", "attributes", "embedding_f32", "created_at_us", "updated_at_us", "embedding_norm")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONCEPT_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_F32_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_US_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_US_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_NORM_FIELD_NUMBER: _ClassVar[int]
    concept_id: str
    content: str
    strength: float
    confidence: float
    attributes: _containers.ScalarMap[str, str]
    embedding_f32: bytes
    created_at_us: int
    updated_at_us: int
    embedding_norm: float
    def __init__(self, concept_id: _Optional[str] = ..., content: _Optional[str] = ..., strength: _Optional[float] = ..., confidence: _Optional[float] = ..., attributes: _Optional[_Mapping[str, str]] = ..., embedding_f32: _Optional[bytes] = ..., created_at_us: _Optional[int] = ..., updated_at_us: _Optional[int] = ..., embedding_norm: _Optional[float] = ...) -> None: ...

class EdgeState(_message.Message):
    __slots__ = ("source_id", "target_id", "assoc_type", "confidence")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    ASSOC_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    target_id: str
    assoc_type: int
    confidence: float
    def __init__(self, source_id: _Optional[str] = ..., target_id: _Optional[str] = ..., assoc_type: _Optional[int] = ..., confidence: _Optional[float] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("concepts", "edges")
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    concepts: _containers.RepeatedCompositeFieldContainer[ConceptState]
    edges: _containers.RepeatedCompositeFieldContainer[EdgeState]
    def __init__(self, concepts: _Optional[_Iterable[_Union[ConceptState, _Mapping]]] = ..., edges: _Optional[_Iterable[_Union[EdgeState, _Mapping]]] = ...) -> None: ...

class SnapshotHeader(_message.Message):
    __slots__ = ("lsn", "term", "concepts", "edges", "vector_dimension", "created_at_us", "node_id")
    LSN_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    VECTOR_DIMENSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_US_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    term: int
    concepts: int
    edges: int
    vector_dimension: int
    created_at_us: int
    node_id: str
    def __init__(self, lsn: _Optional[int] = ..., term: _Optional[int] = ..., concepts: _Optional[int] = ..., edges: _Optional[int] = ..., vector_dimension: _Optional[int] = ..., created_at_us: _Optional[int] = ..., node_id: _Optional[str] = ...) -> None: ...
