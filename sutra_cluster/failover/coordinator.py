"""The coordinator: a small abstract contract over the consensus store (etcd),
and an in-memory implementation with leases and revisions for pure tests.

Contract (every implementation):
- Raise ``CoordinatorUnavailable`` when the store cannot be reached in time.
- Return ``False`` when a lease or compare-and-swap was lost.
- Take leadership with one transaction: the leader key must not exist
  (create_revision == 0) and the term key must still hold the expected term;
  it puts the leader key bound to a lease and the new term together.
- Renew by comparing the leader key's value (still ours) and refreshing the lease.
- Release with a compare-and-delete, and revoke the lease.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field


class CoordinatorUnavailable(Exception):
    """The consensus store could not be reached within the retry timeout."""


@dataclass(frozen=True)
class LeaderKey:
    node_id: str
    address: str
    term: int
    lease: int = 0

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

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
        return json.dumps(asdict(self), sort_keys=True)

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


class Coordinator(ABC):
    """Per-shard view of the consensus store for one node."""

    @abstractmethod
    def snapshot(self) -> ClusterSnapshot: ...

    @abstractmethod
    def publish_member(self, info: MemberInfo) -> None: ...

    @abstractmethod
    def acquire(self, key: LeaderKey, expected_term: int) -> LeaderKey | None:
        """Take the leader key at ``key.term`` (== expected_term + 1); returns the
        key as stored (with its lease id), or None when another node won."""

    @abstractmethod
    def renew(self, key: LeaderKey) -> bool: ...

    @abstractmethod
    def release(self, key: LeaderKey) -> bool: ...

    @abstractmethod
    def revoke(self, key: LeaderKey) -> bool:
        """Revoke a (dead) leader's lease, if the key still holds exactly ``key``."""

    @abstractmethod
    def set_sync(self, leader: LeaderKey, sync: SyncState) -> bool: ...

    @abstractmethod
    def request_switchover(self, target: str) -> None: ...

    @abstractmethod
    def clear_switchover(self) -> None: ...

    def close(self) -> None:
        """Release connections and the member lease."""


class MemoryStore:
    """An in-memory key-value store with leases and revisions, shared by the
    MemoryCoordinators of a test's nodes. ``now`` is injectable for tests."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kv: dict[str, tuple[str, int, int]] = {}  # key -> (value, create_revision, lease)
        self.leases: dict[int, float] = {}  # lease id -> expiry time
        self.ttls: dict[int, float] = {}
        self.revision = 0
        self.next_lease = 100
        self.now = time.monotonic
        self.down = False

    def check(self) -> None:
        if self.down:
            raise CoordinatorUnavailable("memory store is down")
        now = self.now()
        for lease, expiry in list(self.leases.items()):
            if expiry <= now:
                self._revoke(lease)

    def _revoke(self, lease: int) -> None:
        self.leases.pop(lease, None)
        for k in [k for k, v in self.kv.items() if v[2] == lease]:
            del self.kv[k]
            self.revision += 1

    def grant(self, ttl: float) -> int:
        self.next_lease += 1
        self.leases[self.next_lease] = self.now() + ttl
        self.ttls[self.next_lease] = ttl
        return self.next_lease

    def put(self, key: str, value: str, lease: int = 0) -> None:
        self.revision += 1
        old = self.kv.get(key)
        self.kv[key] = (value, old[1] if old else self.revision, lease)


class MemoryCoordinator(Coordinator):
    def __init__(self, store: MemoryStore, prefix: str, node_id: str, ttl: float = 2.0, member_ttl: float = 4.0) -> None:
        self.s, self.p, self.node_id, self.ttl, self.member_ttl = store, prefix, node_id, ttl, member_ttl
        self.member_lease = 0

    def snapshot(self) -> ClusterSnapshot:
        with self.s.lock:
            self.s.check()
            kv = {k: v[0] for k, v in self.s.kv.items() if k.startswith(self.p)}
            return parse_snapshot(self.p, kv, self.s.revision)

    def publish_member(self, info: MemberInfo) -> None:
        with self.s.lock:
            self.s.check()
            if self.member_lease not in self.s.leases:
                self.member_lease = self.s.grant(self.member_ttl)
            self.s.leases[self.member_lease] = self.s.now() + self.member_ttl
            self.s.put(f"{self.p}members/{info.node_id}", info.encode(), self.member_lease)

    def acquire(self, key: LeaderKey, expected_term: int) -> LeaderKey | None:
        with self.s.lock:
            self.s.check()
            term = int(self.s.kv.get(self.p + "term", ("0", 0, 0))[0])
            if self.p + "leader" in self.s.kv or term != expected_term:
                return None
            lease = self.s.grant(self.ttl)
            stored = LeaderKey(key.node_id, key.address, key.term, lease)
            self.s.put(self.p + "leader", stored.encode(), lease)
            self.s.put(self.p + "term", str(key.term))
            return stored

    def renew(self, key: LeaderKey) -> bool:
        with self.s.lock:
            self.s.check()
            cur = self.s.kv.get(self.p + "leader")
            if cur is None or cur[0] != key.encode() or key.lease not in self.s.leases:
                return False
            self.s.leases[key.lease] = self.s.now() + self.ttl
            return True

    def release(self, key: LeaderKey) -> bool:
        return self.revoke(key)

    def revoke(self, key: LeaderKey) -> bool:
        with self.s.lock:
            self.s.check()
            cur = self.s.kv.get(self.p + "leader")
            if cur is None or cur[0] != key.encode():
                return False
            self.s._revoke(key.lease)
            return True

    def set_sync(self, leader: LeaderKey, sync: SyncState) -> bool:
        with self.s.lock:
            self.s.check()
            cur = self.s.kv.get(self.p + "leader")
            if cur is None or cur[0] != leader.encode():
                return False
            self.s.put(self.p + "sync", sync.encode())
            return True

    def request_switchover(self, target: str) -> None:
        with self.s.lock:
            self.s.check()
            self.s.put(self.p + "switchover", target)

    def clear_switchover(self) -> None:
        with self.s.lock:
            self.s.check()
            if self.s.kv.pop(self.p + "switchover", None) is not None:
                self.s.revision += 1


def parse_snapshot(prefix: str, kv: dict[str, str], revision: int) -> ClusterSnapshot:
    """Build a snapshot from a prefix read (shared by every implementation)."""
    leader = LeaderKey.decode(kv[prefix + "leader"]) if prefix + "leader" in kv else None
    members = {}
    for k, v in kv.items():
        if k.startswith(prefix + "members/"):
            m = MemberInfo.decode(v)
            members[m.node_id] = m
    sync = SyncState.decode(kv[prefix + "sync"]) if prefix + "sync" in kv else None
    return ClusterSnapshot(
        leader=leader, term=int(kv.get(prefix + "term", "0")), members=members, sync=sync,
        switchover_to=kv.get(prefix + "switchover", ""), revision=revision,
    )
