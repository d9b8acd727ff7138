from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExportRequest(_message.Message):
    __slots__ = ("map_json",)
    MAP_JSON_FIELD_NUMBER: _ClassVar[int]
    map_json: str
    def __init__(self, map_json: _Optional[str] = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("lsn", "target_shard", "batch", "term")
    LSN_FIELD_NUMBER: _ClassVar[int]
    TARGET_SHARD_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    target_shard: int
    batch: bytes
    term: int
    def __init__(self, lsn: _Optional[int] = ..., target_shard: _Optional[int] = ..., batch: _Optional[bytes] = ..., term: _Optional[int] = ...) -> None: ...

class TailRequest(_message.Message):
    __slots__ = ("map_json", "after_lsn", "until_lsn")
    MAP_JSON_FIELD_NUMBER: _ClassVar[int]
    AFTER_LSN_FIELD_NUMBER: _ClassVar[int]
    UNTIL_LSN_FIELD_NUMBER: _ClassVar[int]
    map_json: str
    after_lsn: int
    until_lsn: int
    def __init__(self, map_json: _Optional[str] = ..., after_lsn: _Optional[int] = ..., until_lsn: _Optional[int] = ...) -> None: ...

class Forward(_message.Message):
    __slots__ = ("target_shard", "lsn", "batch")
    TARGET_SHARD_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    target_shard: int
    lsn: int
    batch: bytes
    def __init__(self, target_shard: _Optional[int] = ..., lsn: _Optional[int] = ..., batch: _Optional[bytes] = ...) -> None: ...

class TailMessage(_message.Message):
    __slots__ = ("read_lsn", "forwards", "term", "applied_lsn")
    READ_LSN_FIELD_NUMBER: _ClassVar[int]
    FORWARDS_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    APPLIED_LSN_FIELD_NUMBER: _ClassVar[int]
    read_lsn: int
    forwards: _containers.RepeatedCompositeFieldContainer[Forward]
    term: int
    applied_lsn: int
    def __init__(self, read_lsn: _Optional[int] = ..., forwards: _Optional[_Iterable[_Union[Forward, _Mapping]]] = ..., term: _Optional[int] = ..., applied_lsn: _Optional[int] = ...) -> None: ...

class FreezeRequest(_message.Message):
    __slots__ = ("map_json",)
    MAP_JSON_FIELD_NUMBER: _ClassVar[int]
    map_json: str
    def __init__(self, map_json: _Optional[str] = ...) -> None: ...

class FreezeResponse(_message.Message):
    __slots__ = ("lsn", "term", "map_version")
    LSN_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    term: int
    map_version: int
    def __init__(self, lsn: _Optional[int] = ..., term: _Optional[int] = ..., map_version: _Optional[int] = ...) -> None: ...

class ImportRequest(_message.Message):
    __slots__ = ("map_json", "batch", "batches", "alt_request_ids")
    MAP_JSON_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    ALT_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    map_json: str
    batch: bytes
    batches: _containers.RepeatedScalarFieldContainer[bytes]
    alt_request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, map_json: _Optional[str] = ..., batch: _Optional[bytes] = ..., batches: _Optional[_Iterable[bytes]] = ..., alt_request_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ImportResponse(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class PurgeRequest(_message.Message):
    __slots__ = ("map_json", "limit")
    MAP_JSON_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    map_json: str
    limit: int
    def __init__(self, map_json: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class PurgeResponse(_message.Message):
    __slots__ = ("dropped", "remaining", "sequence")
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    dropped: int
    remaining: int
    sequence: int
    def __init__(self, dropped: _Optional[int] = ..., remaining: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...
