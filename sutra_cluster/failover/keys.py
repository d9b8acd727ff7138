"""The etcd key layout of a cluster, in one place, and the values stored there.

    /<cluster>/shardmap                          the versioned shard map (sharding/shardmap.py)
    /<cluster>/shards/<shard>/leader             LeaderKey, bound to the leader's lease
    /<cluster>/shards/<shard>/term               the last term handed out (taken with the leader key)
    /<cluster>/shards/<shard>/sync               SyncState: the sync set (Patroni's /sync)
    /<cluster>/shards/<shard>/members/<node id>  MemberInfo, bound to the member's own lease
    /<cluster>/shards/<shard>/switchover         a requested switchover target (node id)

Every module that reads or writes these keys takes the names from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

LEADER = "leader"
TERM = "term"
SYNC = "sync"
MEMBERS = "members/"
SWITCHOVER = "switchover"


def _encode(value: object) -> str:
    """json.dumps(asdict(value), sort_keys=True) without asdict's deep copy:
    members publish every tick (a third of the HA simulator's time went there)."""
    return json.dumps({f.name: getattr(value, f.name) for f in fields(value)}, sort_keys=True)  # type: ignore[arg-type]


def cluster_prefix(cluster: str) -> str:
    return f"/{cluster}/"


def shard_prefix(cluster: str, shard: int) -> str:
    return f"/{cluster}/shards/{shard}/"


def map_key(cluster: str) -> str:
    return f"/{cluster}/shardmap"


@dataclass(frozen=True)
class LeaderKey:
    node_id: str
    address: str
    term: int
    lease: int = 0

    def encode(self) -> str:
        return _encode(self)

    @staticmethod
    def decode(raw: str | bytes) -> LeaderKey:
        return LeaderKey(**json.loads(raw))


@dataclass(frozen=True)
class MemberInfo:
    """What a node publishes about itself every tick (under its own lease)."""

    node_id: str
    address: str
    role: str
    term: int
    flushed_lsn: int
    last_term: int
    # The term at which this node saw no leader and stopped streaming (0: not frozen).
    frozen_term: int = 0
    healthy: bool = True
    # SUTRA_NODE_ROLE=leader: wins ties, so a new cluster starts with the configured leader.
    preferred: bool = False

    def encode(self) -> str:
        return _encode(self)

    @staticmethod
    def decode(raw: str | bytes) -> MemberInfo:
        return MemberInfo(**json.loads(raw))


@dataclass(frozen=True)
class SyncState:
    """Patroni's /sync key: the replicas whose acknowledgements commit sync writes."""

    leader: str
    term: int
    members: tuple[str, ...]

    def encode(self) -> str:
        return json.dumps({"leader": self.leader, "term": self.term, "members": list(self.members)})

    @staticmethod
    def decode(raw: str | bytes) -> SyncState:
        d = json.loads(raw)
        return SyncState(d["leader"], int(d["term"]), tuple(d["members"]))


@dataclass(frozen=True)
class ClusterSnapshot:
    """One consistent read of a shard's keys."""

    leader: LeaderKey | None
    term: int
    members: dict[str, MemberInfo] = field(default_factory=dict)
    sync: SyncState | None = None
    switchover_to: str = ""
    revision: int = 0


def parse_snapshot(prefix: str, kv: dict[str, str], revision: int) -> ClusterSnapshot:
    """Build a snapshot from a prefix read (shared by every implementation)."""
    leader = LeaderKey.decode(kv[prefix + LEADER]) if prefix + LEADER in kv else None
    members = {}
    for k, v in kv.items():
        if k.startswith(prefix + MEMBERS):
            m = MemberInfo.decode(v)
            members[m.node_id] = m
    sync = SyncState.decode(kv[prefix + SYNC]) if prefix + SYNC in kv else None
    return ClusterSnapshot(
        leader=leader, term=int(kv.get(prefix + TERM, "0")), members=members, sync=sync,
        switchover_to=kv.get(prefix + SWITCHOVER, ""), revision=revision,
    )
