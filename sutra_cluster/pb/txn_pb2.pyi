from sutra_cluster.pb import storage_pb2 as _storage_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PrepareTxnRequest(_message.Message):
    __slots__ = ("txn_id", "part", "shards")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    part: _storage_pb2.LearnBatchRequest
    shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, txn_id: _Optional[str] = ..., part: _Optional[_Union[_storage_pb2.LearnBatchRequest, _Mapping]] = ..., shards: _Optional[_Iterable[int]] = ...) -> None: ...

class PrepareTxnResponse(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class DecideTxnRequest(_message.Message):
    __slots__ = ("txn_id", "commit", "reply_when_logged")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    REPLY_WHEN_LOGGED_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    commit: bool
    reply_when_logged: bool
    def __init__(self, txn_id: _Optional[str] = ..., commit: _Optional[bool] = ..., reply_when_logged: _Optional[bool] = ...) -> None: ...

class DecideTxnResponse(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class ListTxnsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OpenTxn(_message.Message):
    __slots__ = ("txn_id", "prepare_sequence", "shards", "age_seconds", "items")
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    PREPARE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    txn_id: str
    prepare_sequence: int
    shards: _containers.RepeatedScalarFieldContainer[int]
    age_seconds: float
    items: int
    def __init__(self, txn_id: _Optional[str] = ..., prepare_sequence: _Optional[int] = ..., shards: _Optional[_Iterable[int]] = ..., age_seconds: _Optional[float] = ..., items: _Optional[int] = ...) -> None: ...

class ListTxnsResponse(_message.Message):
    __slots__ = ("open",)
    OPEN_FIELD_NUMBER: _ClassVar[int]
    open: _containers.RepeatedCompositeFieldContainer[OpenTxn]
    def __init__(self, open: _Optional[_Iterable[_Union[OpenTxn, _Mapping]]] = ...) -> None: ...
