"""The node as the HA loop sees it: one read of its state per tick, and the few
transitions the loop may ask for. ``ReplicationManager`` implements it on a
real node; the HA simulator (tests/sim) and the loop's unit tests implement it
in memory. Nothing in ``failover/`` reaches past this interface into
replication or storage."""

from __future__ import annotations

from typing import Protocol

from sutra_cluster.roles import NodeState

__all__ = ["NodePort", "NodeState"]


class NodePort(Protocol):
    def state(self) -> NodeState: ...

    def lead(self, term: int) -> int:
        """Lead at ``term`` (taken in etcd): log the term record; returns its LSN."""

    def step_down(self, reason: str) -> None:
        """Stop acknowledging writes now; reads stay fenced until a leader checks our history."""

    def follow(self, address: str, term: int = 0) -> None:
        """Stream from the leader at ``address``, which etcd says holds ``term``
        (0: not known yet); a no-op when already doing exactly that."""

    def freeze(self) -> None:
        """Stop streaming (no leader): the durable LSN is final until the next follow."""

    def set_fence(self, fence: object) -> None:
        """Install the lease fence, called before every acknowledgement."""

    def set_wake(self, wake: object) -> None:
        """Install a callback the node calls when the loop should tick now rather
        than at its next period (a replica became able to join a short sync set)."""

    # ---- the sync set (leader, sync mode) ---------------------------------------
    def sync_plan(self, now: float, grace: dict[str, int]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(members to keep counting, the set to publish next); see SyncCommit.plan."""

    def sync_members(self) -> tuple[str, ...] | None: ...

    def sync_count(self, members: tuple[str, ...]) -> None:
        """Count exactly ``members`` (the first set of a term, once published)."""

    def sync_shrink(self, keep: tuple[str, ...]) -> None: ...

    def sync_adopt(self, published: tuple[str, ...]) -> None: ...

    def sync_floor(self) -> int | None:
        """SyncCommit.floor: published with a set that has no member."""

    # ---- planned handover --------------------------------------------------------
    def replica_flushed(self, node_id: str) -> int | None:
        """The flushed LSN of a connected replica, None when it is not streaming."""

    def pause_writes(self, why: str) -> None: ...

    def resume_writes(self) -> None: ...

    def last_lsn(self) -> int: ...
