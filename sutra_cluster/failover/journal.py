"""What the HA loop tells operators through etcd, written off the loop's thread:
the shard's leadership history (``sutra-cluster history``) and this member's
registration (address, version, last seen), which outlives the process so that
``sutra-cluster status`` can show a dead member as down.

Why a thread: a leader's tick has a fixed budget of etcd calls
(config.LEADER_TICK_ETCD_CALLS bounds the gap between two lease renewals);
these writes are for people, and must never delay a renewal or a promotion.
The queue is bounded and a full queue drops the entry (with a warning): the
history is a best-effort record, the leader key and the term are the truth.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

from sutra_cluster.failover.coordinator import CoordinatorUnavailable
from sutra_cluster.failover.keys import HistoryEntry, Registration, history_key, registry_key

log = logging.getLogger(__name__)

REGISTER_EVERY_S = 10.0  # "last seen" granularity of a live member
_CAS_TRIES = 5  # concurrent appends (two nodes of a shard at a failover) retry this often


class PlainKeys(Protocol):
    """The plain-key calls of EtcdCoordinator the journal needs."""

    def get(self, key: str) -> str | None: ...
    def create(self, key: str, value: str) -> tuple[bool, str]: ...
    def compare_and_put(self, key: str, expected: str, value: str) -> bool: ...
    def put(self, key: str, value: str) -> None: ...


class Journal:
    def __init__(self, store: PlainKeys, cluster: str, shard: int, node_id: str, address: str, version: str, *,
                 wall: Callable[[], float] = time.time, register_every_s: float = REGISTER_EVERY_S) -> None:
        self.store, self.node_id, self.address, self.version = store, node_id, address, version
        self.history_key = history_key(cluster, shard)
        self.registry_key = registry_key(cluster, shard, node_id)
        self.wall = wall
        self.register_every_s = register_every_s
        self._last_reg: tuple[str, int] = ("", -1)
        self._last_reg_at = -1e18
        self._q: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=256)
        self._thread = threading.Thread(target=self._run, name="ha-journal", daemon=True)
        self._thread.start()

    # ---- called from the HA loop (never blocks) ---------------------------------
    def leadership(self, event: str, term: int, lsn: int, reason: str) -> None:
        entry = HistoryEntry(self.wall(), event, self.node_id, term, lsn, reason)
        self._put(lambda: self._append(entry))

    def seen(self, role: str, term: int) -> None:
        """Refresh the registration when the role or term changed, or every REGISTER_EVERY_S."""
        now = self.wall()
        if (role, term) == self._last_reg and now - self._last_reg_at < self.register_every_s:
            return
        self._last_reg, self._last_reg_at = (role, term), now
        reg = Registration(self.node_id, self.address, self.version, now, role, term)
        self._put(lambda: self.store.put(self.registry_key, reg.encode()))

    def _put(self, job: Callable[[], None]) -> None:
        try:
            self._q.put_nowait(job)
        except queue.Full:
            log.warning("HA journal queue full: a history or registration write was dropped")

    # ---- the writer thread ------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            try:
                job()
            except CoordinatorUnavailable as exc:
                log.warning("could not write to the leadership history / registry: %s", exc)
            except Exception:  # a journal bug must not end the journal
                log.exception("HA journal write failed")

    def _append(self, entry: HistoryEntry) -> None:
        for _ in range(_CAS_TRIES):
            raw = self.store.get(self.history_key)
            if raw is None:
                created, _ = self.store.create(self.history_key, HistoryEntry.encode_list([entry]))
                if created:
                    return
                continue
            try:
                entries = HistoryEntry.decode_list(raw)
            except (ValueError, TypeError):
                log.warning("leadership history at %s is not readable; starting it again", self.history_key)
                entries = []
            if self.store.compare_and_put(self.history_key, raw, HistoryEntry.encode_list([*entries, entry])):
                return
        log.warning("leadership history: gave up appending %r after %d contended tries", entry.event, _CAS_TRIES)

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (bounded by ``timeout``), then stop."""
        try:
            self._q.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout=timeout)
