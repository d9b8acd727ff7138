"""Where a shard's leader and members are: the one leader discovery that the
Python client (``ClusterClient``) and the router's shard links share.

A watch on the leader key keeps the address fresh between calls; a lookup reads
one snapshot when a caller needs it now (after an error, or with no watch).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from sutra_cluster.failover.coordinator import CoordinatorUnavailable
from sutra_cluster.failover.etcd import EtcdCoordinator
from sutra_cluster.failover.keys import LEADER, LeaderKey, shard_prefix

log = logging.getLogger(__name__)


class ShardWatch:
    """One shard's leader address (watched) and healthy members (looked up)."""

    def __init__(self, endpoints: Sequence[str], cluster: str, shard: int, *, name: str = "client",
                 timeout: float = 2.0, watch: bool = True) -> None:
        self.shard = shard
        self._coord = EtcdCoordinator(list(endpoints), shard_prefix(cluster, shard), name, timeout=timeout)
        self._lock = threading.Lock()
        self._leader = ""
        self.members: tuple[str, ...] = ()
        self.members_at = 0.0
        self._watch: object | None = None
        if watch:
            try:
                self._watch = self._coord.watch(self._coord.prefix + LEADER, self._on_leader)
            except CoordinatorUnavailable as exc:  # the watch saves lookups; lookups work without it
                log.warning("shard %d: no watch on the leader key (%s); looking it up on errors", shard, exc)

    def _on_leader(self, value: str | None) -> None:
        try:
            address = LeaderKey.decode(value).address if value else ""
        except (ValueError, TypeError):
            address = ""
        with self._lock:
            self._leader = address

    @property
    def leader(self) -> str:
        """The leader's address as last seen ('' when none is known)."""
        return self._leader

    def forget(self, address: str) -> None:
        """``address`` failed as the leader: look it up again next time."""
        with self._lock:
            if self._leader == address:
                self._leader = ""

    def lookup(self) -> str:
        """Read the shard's keys once: refresh the members, return the leader's
        address ('' when there is none, or etcd cannot be reached)."""
        try:
            snap = self._coord.snapshot()
        except CoordinatorUnavailable:
            return ""
        self.members = tuple(sorted(m.address for m in snap.members.values() if m.healthy))
        self.members_at = time.monotonic()
        address = snap.leader.address if snap.leader is not None else ""
        with self._lock:
            self._leader = address
        return address

    def wait_leader(self, deadline: float, poll: float = 0.02) -> str:
        """The leader's address, looked up until ``deadline`` (time.monotonic());
        raises TimeoutError when none appears in time."""
        while True:
            address = self._leader or self.lookup()
            if address:
                return address
            if time.monotonic() > deadline:
                raise TimeoutError(f"no leader of shard {self.shard} found in etcd before the deadline")
            time.sleep(poll)

    def close(self) -> None:
        if self._watch is not None:
            self._coord.cancel_watch(self._watch)
        self._coord.close()
