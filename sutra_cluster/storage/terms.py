"""The term history of a node, like PostgreSQL's timeline history: which term
wrote which LSNs, and the highest term this node has ever seen.

Persisted in ``terms.json`` (written to a temporary file, fsynced, renamed, and
the directory fsynced) before any record of a new term is acknowledged, so a
restarted replica still rejects leaders older than the newest it followed.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from sutra_cluster.roles import MAX_TERM
from sutra_cluster.storage.fsio import replace_durably, write_file_synced

FILE = "terms.json"


class TermHistory:
    """Thread-safe: the follower thread, gRPC workers and the HA loop all touch
    it, and every change is saved before the caller goes on."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE
        self._lock = threading.RLock()
        self.highest = 1
        # (term, first LSN written in that term), ascending.
        self.history: list[tuple[int, int]] = [(1, 1)]
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self.highest = int(data["highest"])
                self.history = [(int(t), int(lsn)) for t, lsn in data["history"]]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{self.path}: not a valid term history ({exc}); "
                                 "restore it from a backup or re-seed this node from its leader") from exc
            if self.highest > MAX_TERM:
                raise ValueError(f"{self.path}: term {self.highest} is above the largest allowed term {MAX_TERM}")

    @property
    def last_term(self) -> int:
        return self.history[-1][0] if self.history else 0

    def term_at(self, lsn: int) -> int:
        """Term of the record at ``lsn``; 0 when the history does not reach back that far."""
        found = 0
        for term, first in self.history:
            if first <= lsn:
                found = term
            else:
                break
        return found

    def observe(self, term: int) -> bool:
        """Remember a term seen from a leader or etcd; True if it was new.
        Raises ValueError for a term above MAX_TERM (nothing is saved)."""
        if term > MAX_TERM:
            raise ValueError(f"term {term} is above the largest allowed term {MAX_TERM}")
        with self._lock:
            if term <= self.highest:
                return False
            self.highest = term
            self._save()
            return True

    def begin(self, term: int, first_lsn: int) -> None:
        """Record that ``term`` writes from ``first_lsn`` on (drops later entries)."""
        if term > MAX_TERM:
            raise ValueError(f"term {term} is above the largest allowed term {MAX_TERM}")
        with self._lock:
            if self.history and self.history[-1][0] == term:
                return
            self.history = [(t, f) for t, f in self.history if f < first_lsn] + [(term, first_lsn)]
            self.highest = max(self.highest, term)
            self._save()

    def branch_point(self, lsn: int, term: int) -> int | None:
        """Last LSN a follower whose log ends at (``lsn``, ``term``) shares with this
        history, or None when this history does not know ``term`` at all."""
        ends = None
        for i, (t, first) in enumerate(self.history):
            if t == term:
                ends = self.history[i + 1][1] - 1 if i + 1 < len(self.history) else None
                if first > lsn:
                    return None
                break
        else:
            return None
        return lsn if ends is None else min(lsn, ends)

    def truncate(self, lsn: int) -> None:
        """Forget history after ``lsn`` (a divergent tail was cut)."""
        with self._lock:
            kept = [(t, f) for t, f in self.history if f <= lsn]
            if kept != self.history:
                self.history = kept or [(1, 1)]
                self._save()

    def reset(self, term: int, lsn: int) -> None:
        """After installing a snapshot taken at ``lsn`` in ``term``."""
        with self._lock:
            self.history = [(term, lsn)]
            self.highest = max(self.highest, term)
            self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        write_file_synced(tmp, json.dumps({"highest": self.highest, "history": self.history}).encode())
        replace_durably(tmp, self.path)
