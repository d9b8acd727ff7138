"""The durable decision of a cross-shard transaction: one etcd key.

    /<cluster>/txns/<txn id>   {"commit": true|false, "shards": [0, 1], "by": "<who>", "at_us": ...}

The key is only ever *created* (a transaction on ``create_revision == 0``), never
overwritten: the router creates it with ``commit: true`` after every part is
prepared, and a recoverer creates it with ``commit: false`` when a part has been
in doubt too long (presumed abort made durable). Whichever comes first wins,
and both sides act on the value stored, so a late commit can never race an
abort. Creating the key is the transaction's commit point.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def txns_prefix(cluster: str) -> str:
    return f"/{cluster}/txns/"


def txn_id_for(request_id: str, attempt: int = 0) -> str:
    """A transaction id derived from the batch's request id, so a retry of the
    same batch (through any router) finds the same transaction; ``attempt`` n > 0
    after n earlier attempts were aborted."""
    h = hashlib.blake2b(request_id.encode(), digest_size=12).hexdigest()
    return f"t-{h}" if attempt == 0 else f"t-{h}.{attempt}"


@dataclass(frozen=True)
class Decision:
    commit: bool
    shards: tuple[int, ...]
    by: str
    at_us: int

    def encode(self) -> str:
        return json.dumps({"commit": self.commit, "shards": list(self.shards), "by": self.by, "at_us": self.at_us},
                          sort_keys=True)

    @staticmethod
    def decode(raw: str) -> Decision:
        d = json.loads(raw)
        return Decision(bool(d["commit"]), tuple(int(s) for s in d.get("shards", ())), str(d.get("by", "")),
                        int(d.get("at_us", 0)))


class DecisionStore:
    """Reads and creates decision keys. Raises CoordinatorUnavailable
    (failover.coordinator) when etcd cannot be reached."""

    def __init__(self, endpoints: Sequence[str], cluster: str, who: str, timeout: float = 2.0,
                 security: Any = None) -> None:
        from sutra_cluster.failover.etcd import EtcdCoordinator

        self.prefix = txns_prefix(cluster)
        self.who = who
        self._etcd = EtcdCoordinator(list(endpoints), self.prefix, f"txn-{who}", timeout=timeout, security=security)

    def get(self, txn_id: str) -> Decision | None:
        raw = self._etcd.get(self.prefix + txn_id)
        return None if raw is None else Decision.decode(raw)

    def decide(self, txn_id: str, commit: bool, shards: Sequence[int]) -> Decision:
        """Create the decision unless one exists; returns the decision stored now
        (which may be the opposite of ``commit``: the first creator won)."""
        mine = Decision(commit, tuple(sorted(shards)), self.who, time.time_ns() // 1000)
        _, stored = self._etcd.create(self.prefix + txn_id, mine.encode())
        return Decision.decode(stored)

    def close(self) -> None:
        self._etcd.close()
