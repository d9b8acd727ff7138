"""The etcd key layout of a cluster, in one place, and the values stored there.

    /<cluster>/shardmap                          the versioned shard map (sharding/shardmap.py)
    /<cluster>/cluster_uuid                      the cluster's id, created once (failover/cluster_id.py)
    /<cluster>/shards/<shard>/leader             LeaderKey, bound to the leader's lease
    /<cluster>/shards/<shard>/term               the last term handed out (taken with the leader key)
    /<cluster>/shards/<shard>/sync               SyncState: the sync set (Patroni's /sync)
    /<cluster>/shards/<shard>/members/<node id>  MemberInfo, bound to the member's own lease
    /<cluster>/shards/<shard>/switchover         a requested switchover target (node id)
    /<cluster>/shards/<shard>/pause              Pause: maintenance mode, no automatic failover (sutra-cluster pause)
    /<cluster>/history/<shard>                   the last HISTORY_KEEP leadership changes (JSON list of HistoryEntry)
    /<cluster>/registry/<shard>/<node id>        Registration: a member's address, version and last-seen time,
                                                 without a lease, so a dead member is still listed (as down)

The history and registry live outside the shard prefix on purpose: every HA
tick reads the whole shard prefix, and neither is needed for a decision.

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
PAUSE = "pause"
HISTORY_KEEP = 50  # leadership changes kept per shard (the oldest drop off)


def _encode(value: object) -> str:
    """json.dumps(asdict(value), sort_keys=True) without asdict's deep copy:
    members publish every tick (a third of the HA simulator's time went there)."""
    return json.dumps({f.name: getattr(value, f.name) for f in fields(value)}, sort_keys=True)  # type: ignore[arg-type]


def cluster_prefix(cluster: str) -> str:
    return f"/{cluster}/"


def shard_prefix(cluster: str, shard: int) -> str:
    return f"/{cluster}/shards/{shard}/"


def cluster_uuid_key(cluster: str) -> str:
    return f"/{cluster}/cluster_uuid"


def map_key(cluster: str) -> str:
    return f"/{cluster}/shardmap"


def history_key(cluster: str, shard: int) -> str:
    return f"/{cluster}/history/{shard}"


def registry_prefix(cluster: str, shard: int | None = None) -> str:
    return f"/{cluster}/registry/" + ("" if shard is None else f"{shard}/")


def registry_key(cluster: str, shard: int, node_id: str) -> str:
    return f"{registry_prefix(cluster, shard)}{node_id}"


def _known(cls: type, d: dict[str, object]) -> dict[str, object]:
    """Only the fields ``cls`` knows: a value written by a newer release (one more
    field) must still decode during a rolling upgrade."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass(frozen=True)
class Pause:
    """Maintenance mode for a shard (Patroni's pause): while the key exists no node
    takes a free leader key and a leader does not change the sync set."""

    since: float  # Unix time
    by: str = ""  # who paused (user@host), for the status line
    reason: str = ""

    def encode(self) -> str:
        return _encode(self)

    @staticmethod
    def decode(raw: str | bytes) -> Pause:
        return Pause(**_known(Pause, json.loads(raw)))  # type: ignore[arg-type]


@dataclass(frozen=True)
class HistoryEntry:
    """One leadership change, as the node that made it saw it."""

    time: float  # Unix time
    event: str  # acquire | release | demote | abandon
    node_id: str
    term: int
    lsn: int
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def decode_list(raw: str | bytes | None) -> list[HistoryEntry]:
        if not raw:
            return []
        return [HistoryEntry(**_known(HistoryEntry, d)) for d in json.loads(raw)]  # type: ignore[arg-type]

    @staticmethod
    def encode_list(entries: list[HistoryEntry]) -> str:
        return json.dumps([e.as_dict() for e in entries[-HISTORY_KEEP:]], sort_keys=True)


@dataclass(frozen=True)
class Registration:
    """A member as last seen by itself (no lease: it outlives the process)."""

    node_id: str
    address: str
    version: str
    last_seen: float  # Unix time of the last refresh
    role: str = ""
    term: int = 0

    def encode(self) -> str:
        return _encode(self)

    @staticmethod
    def decode(raw: str | bytes) -> Registration:
        return Registration(**_known(Registration, json.loads(raw)))  # type: ignore[arg-type]


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
    # With no members: every write the leader acknowledged is at or below this LSN, and it can
    # acknowledge none above it until it publishes a set with a member (SyncCommit.floor). None:
    # not known (a set with members, SUTRA_SYNC_FALLBACK, or a build before this field).
    floor: int | None = None

    def encode(self) -> str:
        d: dict[str, object] = {"leader": self.leader, "term": self.term, "members": list(self.members)}
        if self.floor is not None:
            d["floor"] = self.floor
        return json.dumps(d)

    @staticmethod
    def decode(raw: str | bytes) -> SyncState:
        d = json.loads(raw)
        floor = d.get("floor")
        return SyncState(d["leader"], int(d["term"]), tuple(d["members"]), None if floor is None else int(floor))


@dataclass(frozen=True)
class ClusterSnapshot:
    """One consistent read of a shard's keys."""

    leader: LeaderKey | None
    term: int
    members: dict[str, MemberInfo] = field(default_factory=dict)
    sync: SyncState | None = None
    switchover_to: str = ""
    revision: int = 0
    pause: Pause | None = None  # maintenance mode (no automatic failover)

    @property
    def paused(self) -> bool:
        return self.pause is not None


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
        pause=parse_pause(kv.get(prefix + PAUSE)),
    )


def parse_pause(raw: str | None) -> Pause | None:
    if raw is None:
        return None
    try:
        return Pause.decode(raw)
    except (ValueError, TypeError):
        # Any value pauses: an operator's hand-written `etcdctl put .../pause x`
        # must not be ignored by the very loop it means to stop.
        return Pause(since=0.0, reason=raw[:200])
