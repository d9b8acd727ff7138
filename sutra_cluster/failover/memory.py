"""An in-memory consensus store with leases and revisions, and the Coordinator
over it: for the HA loop's tests and the HA simulator (tests/sim), never for a
running node. ``MemoryStore.now`` is injectable, so leases expire on a test's clock."""

from __future__ import annotations

import threading
import time

from sutra_cluster.failover.coordinator import Coordinator, CoordinatorUnavailable
from sutra_cluster.failover.keys import ClusterSnapshot, LeaderKey, MemberInfo, SyncState, parse_snapshot


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
