"""The coordinator: a small abstract contract over the consensus store (etcd).
The in-memory implementation for tests and the simulator is failover/memory.py.

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

from abc import ABC, abstractmethod

from sutra_cluster.failover.keys import (  # noqa: F401 - the layout's types, re-exported for the contract's users
    ClusterSnapshot,
    LeaderKey,
    MemberInfo,
    SyncState,
    parse_snapshot,
)


class CoordinatorUnavailable(Exception):
    """The consensus store could not be reached within the retry timeout."""


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
