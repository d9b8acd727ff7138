"""Role and commit mode: parsed once from the environment, compared as enums
everywhere after that. Bottom of the import graph (imports nothing)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# Terms are persisted and sent as uint64 by peers; anything at or above this is
# refused before it is saved, so one hostile or corrupt number cannot make
# term + 1 overflow the wire type and brick the shard.
MAX_TERM = (1 << 63) - 1


class Role(StrEnum):
    LEADER = "leader"
    REPLICA = "replica"


class CommitMode(StrEnum):
    ASYNC = "async"  # acknowledge after the local fsync
    SYNC = "sync"  # acknowledge after SUTRA_SYNC_REPLICAS replicas flushed the record


@dataclass(frozen=True)
class NodeState:
    """What the loop reads about its node, once per tick."""

    role: Role
    term: int  # the highest term this node has seen
    durable_lsn: int  # flushed to this node's disk
    last_term: int  # the term of its last record
    healthy: bool = True  # False after a storage failure: it must not lead
    streaming: bool = False  # as a replica: a leader accepted its hello and feeds it
    lag_ms: float = 0.0  # as a replica: how far behind what the leader last reported
    inflight: int = 0  # writes logged but not yet answered
