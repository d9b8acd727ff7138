"""The in-memory tail of the WAL (records as they are logged, newest last), so that replicas that keep up are fed
from memory (no re-reading of WAL files) and lag can be told in bytes and time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sutra_cluster.storage import lagtrace
from sutra_cluster.storage.untrack import untrack

RECORD_OVERHEAD = 32  # WAL record header bytes, counted in byte positions


@dataclass(frozen=True, slots=True)
class Entry:
    lsn: int
    term: int
    rtype: int
    payload: bytes
    at: float  # time.monotonic() when appended
    end: int  # cumulative log bytes up to and including this record


class WalTail:
    """Contiguous recent records, at most ``max_bytes`` of payload. Thread-safe."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._items: list[Entry] = []
        self._head = 0
        self._bytes = 0
        self.total = 0  # cumulative bytes ever appended: the byte position of the log end

    def append(self, lsn: int, term: int, rtype: int, payload: bytes) -> None:
        with self._lock:
            if len(self._items) > self._head and self._items[-1].lsn + 1 != lsn:
                self._clear()
            self.total += len(payload) + RECORD_OVERHEAD
            entry = Entry(lsn, term, rtype, payload, time.monotonic(), self.total)
            untrack(entry)  # numbers and bytes, no cycle: up to 64 MB of them stay out of collections
            self._items.append(entry)
            self._bytes += len(payload) + RECORD_OVERHEAD
            while self._bytes > self.max_bytes and self._head < len(self._items) - 1:
                self._bytes -= len(self._items[self._head].payload) + RECORD_OVERHEAD
                self._head += 1
            # Drop the references behind the head once they are a quarter of the list (amortised O(1)). The old
            # rule waited for 4,096 of them: with 3 MB bulk batches that kept every payload, ~5x the
            # budget at 100K concepts and all of them at 1M (issue 12's heap after a bulk load).
            if self._head * 4 > len(self._items):
                del self._items[: self._head]
                self._head = 0
        if lagtrace.ON:
            lagtrace.mark("tail", lsn)

    def _clear(self) -> None:
        self._items, self._head, self._bytes = [], 0, 0

    def clear(self) -> None:
        with self._lock:
            self._clear()

    def after(self, lsn: int, upto: int, max_bytes: int, max_count: int) -> list[Entry] | None:
        """Records lsn+1..upto (bounded), or None if lsn+1 is older than what is kept."""
        with self._lock:
            if len(self._items) <= self._head:
                return None
            first = self._items[self._head].lsn
            if lsn + 1 < first:
                return None
            start = self._head + (lsn + 1 - first)
            out: list[Entry] = []
            size = 0
            for e in self._items[start : start + max_count]:
                if e.lsn > upto:
                    break
                out.append(e)
                size += len(e.payload)
                if size >= max_bytes:
                    break
            return out

    def position(self, lsn: int) -> tuple[int, float] | None:
        """(byte position after ``lsn``, when ``lsn+1`` was appended) if kept."""
        with self._lock:
            if len(self._items) <= self._head:
                return None
            first = self._items[self._head].lsn
            i = self._head + (lsn + 1 - first)
            if lsn + 1 < first or i >= len(self._items):
                return None
            nxt = self._items[i]
            return nxt.end - len(nxt.payload) - RECORD_OVERHEAD, nxt.at

    def oldest(self) -> tuple[int, float] | None:
        """(byte position before the oldest kept record, its time)."""
        with self._lock:
            if len(self._items) <= self._head:
                return None
            e = self._items[self._head]
            return e.end - len(e.payload) - RECORD_OVERHEAD, e.at
