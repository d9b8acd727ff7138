"""Writers blocked until their WAL record is durable, woken one by one.

A condition variable's notify_all woke every blocked writer at every fsync'd
group: with 32 concurrent writers and groups of about eight records, most
wake-ups (each a GIL hand-over and a context switch) found their record not
durable yet and went back to sleep. ``Waiters`` wakes exactly the writers whose
record is durable, plus, when a group is buffered and nobody is writing it,
the first writer that may write it (the group-commit hand-over).

Contract: every method is called with the owner's lock held (the WAL's
``_mu``; the leader's ``_acks`` for writers waiting for sync replicas, see
replication/leader.py); ``sleep`` releases it while blocked and holds it again
on return. A woken writer always re-checks its condition; a writer never
woken wakes by itself after WAKE_SLICE_S, so a missed wake-up costs latency,
never a hang.
"""

from __future__ import annotations

import threading
from typing import Protocol

WAKE_SLICE_S = 1.0


class Mutex(Protocol):
    """What ``sleep`` releases while blocked: a Lock, or a Condition or RLock held once."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...


class _Waiter:
    """One blocked writer: its LSN, whether it may write a group itself, and the
    lock it sleeps on (held until it is woken)."""

    __slots__ = ("flushes", "lock", "lsn")

    def __init__(self, lsn: int, flushes: bool) -> None:
        self.lsn = lsn
        self.flushes = flushes
        self.lock = threading.Lock()
        self.lock.acquire()


class Waiters:
    """Blocked writers in arrival order (under the WAL's ``_mu``)."""

    def __init__(self) -> None:
        self._waiting: list[_Waiter] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def sleep(self, mu: Mutex, lsn: int, flushes: bool, timeout: float | None) -> None:
        """Block until woken or ``timeout`` (at most WAKE_SLICE_S) passes. ``mu`` is
        held on entry and on return and released meanwhile. ``flushes``: this
        writer writes a buffered group itself when woken for it."""
        w = _Waiter(lsn, flushes)
        self._waiting.append(w)
        mu.release()
        try:
            w.lock.acquire(timeout=WAKE_SLICE_S if timeout is None else min(timeout, WAKE_SLICE_S))
        finally:
            mu.acquire()
            for i, x in enumerate(self._waiting):
                if x is w:  # timed out: nobody woke (and removed) it
                    del self._waiting[i]
                    break

    def wake(self, durable: int, hand_over: bool, everyone: bool = False) -> int:
        """Wake the writers whose LSN is at most ``durable``; with ``hand_over``
        (a group is buffered and nobody writes it) also the first writer that
        may write it; with ``everyone`` (a failure, close) all. Returns how many."""
        keep: list[_Waiter] = []
        woken = 0
        for w in self._waiting:
            if everyone or w.lsn <= durable or (hand_over and w.flushes):
                if w.lsn > durable:
                    hand_over = False
                w.lock.release()
                woken += 1
            else:
                keep.append(w)
        self._waiting = keep
        return woken
