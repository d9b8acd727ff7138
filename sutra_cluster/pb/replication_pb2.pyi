from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("node_id", "address", "last_lsn", "last_term", "highest_term", "cluster_name", "cluster_uuid")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LAST_LSN_FIELD_NUMBER: _ClassVar[int]
    LAST_TERM_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_TERM_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_UUID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    last_lsn: int
    last_term: int
    highest_term: int
    cluster_name: str
    cluster_uuid: str
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., last_lsn: _Optional[int] = ..., last_term: _Optional[int] = ..., highest_term: _Optional[int] = ..., cluster_name: _Optional[str] = ..., cluster_uuid: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("written_lsn", "flushed_lsn", "applied_lsn")
    WRITTEN_LSN_FIELD_NUMBER: _ClassVar[int]
    FLUSHED_LSN_FIELD_NUMBER: _ClassVar[int]
    APPLIED_LSN_FIELD_NUMBER: _ClassVar[int]
    written_lsn: int
    flushed_lsn: int
    applied_lsn: int
    def __init__(self, written_lsn: _Optional[int] = ..., flushed_lsn: _Optional[int] = ..., applied_lsn: _Optional[int] = ...) -> None: ...

class FollowerMessage(_message.Message):
    __slots__ = ("hello", "ack")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    ack: Ack
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ...) -> None: ...

class WalEntry(_message.Message):
    __slots__ = ("lsn", "term", "rtype", "payload")
    LSN_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    RTYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    term: int
    rtype: int
    payload: bytes
    def __init__(self, lsn: _Optional[int] = ..., term: _Optional[int] = ..., rtype: _Optional[int] = ..., payload: _Optional[bytes] = ...) -> None: ...

class Records(_message.Message):
    __slots__ = ("entries", "commit_lsn")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    COMMIT_LSN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[WalEntry]
    commit_lsn: int
    def __init__(self, entries: _Optional[_Iterable[_Union[WalEntry, _Mapping]]] = ..., commit_lsn: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("last_lsn", "commit_lsn", "timestamp_us")
    LAST_LSN_FIELD_NUMBER: _ClassVar[int]
    COMMIT_LSN_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    last_lsn: int
    commit_lsn: int
    timestamp_us: int
    def __init__(self, last_lsn: _Optional[int] = ..., commit_lsn: _Optional[int] = ..., timestamp_us: _Optional[int] = ...) -> None: ...

class NeedSnapshot(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Diverged(_message.Message):
    __slots__ = ("truncate_after", "reason")
    TRUNCATE_AFTER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    truncate_after: int
    reason: str
    def __init__(self, truncate_after: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class LeaderMessage(_message.Message):
    __slots__ = ("term", "leader_id", "leader_address", "records", "heartbeat", "need_snapshot", "diverged", "cluster_uuid")
    TERM_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    NEED_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DIVERGED_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_UUID_FIELD_NUMBER: _ClassVar[int]
    term: int
    leader_id: str
    leader_address: str
    records: Records
    heartbeat: Heartbeat
    need_snapshot: NeedSnapshot
    diverged: Diverged
    cluster_uuid: str
    def __init__(self, term: _Optional[int] = ..., leader_id: _Optional[str] = ..., leader_address: _Optional[str] = ..., records: _Optional[_Union[Records, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., need_snapshot: _Optional[_Union[NeedSnapshot, _Mapping]] = ..., diverged: _Optional[_Union[Diverged, _Mapping]] = ..., cluster_uuid: _Optional[str] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("node_id", "cluster_name", "cluster_uuid")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_UUID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    cluster_name: str
    cluster_uuid: str
    def __init__(self, node_id: _Optional[str] = ..., cluster_name: _Optional[str] = ..., cluster_uuid: _Optional[str] = ...) -> None: ...

class SnapshotBlock(_message.Message):
    __slots__ = ("data", "lsn", "term")
    DATA_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    lsn: int
    term: int
    def __init__(self, data: _Optional[bytes] = ..., lsn: _Optional[int] = ..., term: _Optional[int] = ...) -> None: ...

class ReplicationStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("node_id", "address", "state", "written_lsn", "flushed_lsn", "applied_lsn", "lag_bytes", "lag_ms", "sync", "last_seen_seconds_ago")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_LSN_FIELD_NUMBER: _ClassVar[int]
    FLUSHED_LSN_FIELD_NUMBER: _ClassVar[int]
    APPLIED_LSN_FIELD_NUMBER: _ClassVar[int]
    LAG_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAG_MS_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_SECONDS_AGO_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    state: str
    written_lsn: int
    flushed_lsn: int
    applied_lsn: int
    lag_bytes: int
    lag_ms: float
    sync: bool
    last_seen_seconds_ago: float
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., written_lsn: _Optional[int] = ..., flushed_lsn: _Optional[int] = ..., applied_lsn: _Optional[int] = ..., lag_bytes: _Optional[int] = ..., lag_ms: _Optional[float] = ..., sync: _Optional[bool] = ..., last_seen_seconds_ago: _Optional[float] = ...) -> None: ...

class ReplicationStatus(_message.Message):
    __slots__ = ("node_id", "role", "term", "last_lsn", "durable_lsn", "applied_lsn", "commit_lsn", "commit_mode", "leader_address", "replicas", "follow_state", "version")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LAST_LSN_FIELD_NUMBER: _ClassVar[int]
    DURABLE_LSN_FIELD_NUMBER: _ClassVar[int]
    APPLIED_LSN_FIELD_NUMBER: _ClassVar[int]
    COMMIT_LSN_FIELD_NUMBER: _ClassVar[int]
    COMMIT_MODE_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_STATE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: str
    term: int
    last_lsn: int
    durable_lsn: int
    applied_lsn: int
    commit_lsn: int
    commit_mode: str
    leader_address: str
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    follow_state: str
    version: str
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[str] = ..., term: _Optional[int] = ..., last_lsn: _Optional[int] = ..., durable_lsn: _Optional[int] = ..., applied_lsn: _Optional[int] = ..., commit_lsn: _Optional[int] = ..., commit_mode: _Optional[str] = ..., leader_address: _Optional[str] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ..., follow_state: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("min_lsn",)
    MIN_LSN_FIELD_NUMBER: _ClassVar[int]
    min_lsn: int
    def __init__(self, min_lsn: _Optional[int] = ...) -> None: ...

class PromoteResponse(_message.Message):
    __slots__ = ("term", "lsn")
    TERM_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    term: int
    lsn: int
    def __init__(self, term: _Optional[int] = ..., lsn: _Optional[int] = ...) -> None: ...

class FollowRequest(_message.Message):
    __slots__ = ("leader_address",)
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    leader_address: str
    def __init__(self, leader_address: _Optional[str] = ...) -> None: ...

class FollowResponse(_message.Message):
    __slots__ = ("term",)
    TERM_FIELD_NUMBER: _ClassVar[int]
    term: int
    def __init__(self, term: _Optional[int] = ...) -> None: ...

class ReinitRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReinitResponse(_message.Message):
    __slots__ = ("lsn", "term", "bytes", "seconds", "leader_address")
    LSN_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    term: int
    bytes: int
    seconds: float
    leader_address: str
    def __init__(self, lsn: _Optional[int] = ..., term: _Optional[int] = ..., bytes: _Optional[int] = ..., seconds: _Optional[float] = ..., leader_address: _Optional[str] = ...) -> None: ...
