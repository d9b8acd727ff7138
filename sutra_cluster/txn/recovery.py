"""A node's resolver: finishes the parts prepared here whose coordinator went
quiet, from the durable decision, without any client retry.

Every RESOLVE_INTERVAL_S, on a leader only, each part prepared more than
PROBE_S ago has its decision key in etcd read; a decision found is applied (a
router died after deciding, or a commit record was lost in a crash). When there
is none and the part is older than SUTRA_TXN_TIMEOUT_MS, an abort is *created*
there first (presumed abort, made durable, so a router that wakes up later
cannot commit it), then applied as the stored decision says. A replica holds the same
parts (they are WAL records) and resolves them the moment it leads.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping

from sutra_cluster.errors import ConfigError, SutraError
from sutra_cluster.failover.coordinator import CoordinatorUnavailable
from sutra_cluster.roles import Role
from sutra_cluster.storage.engine import Engine
from sutra_cluster.txn.decision import DecisionStore

log = logging.getLogger(__name__)

RESOLVE_INTERVAL_S = 0.25
WARN_EVERY_S = 5.0
PROBE_S = 0.5  # a part in doubt this long is looked up (a decision may be waiting); aborted only after the timeout
DEFAULT_TIMEOUT_MS = 5000


def timeout_ms(env: Mapping[str, str] | None = None) -> int:
    """SUTRA_TXN_TIMEOUT_MS: how long a part may stay prepared before it is resolved here (100..600000)."""
    env = os.environ if env is None else env
    raw = env.get("SUTRA_TXN_TIMEOUT_MS", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_MS
    if not raw.isdigit() or not 100 <= int(raw) <= 600_000:
        raise ConfigError(f"SUTRA_TXN_TIMEOUT_MS={raw!r}: expected milliseconds, 100..600000")
    return int(raw)


class Resolver:
    """Resolves this node's in-doubt parts. ``start``/``stop``; ``tick`` is one pass (tests call it)."""

    def __init__(self, engine: Engine, store: DecisionStore, timeout_s: float) -> None:
        self.engine = engine
        self.store = store
        self.timeout_s = timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: dict[str, float] = {}  # txn id -> when its last "not resolved" line was logged

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="txn-resolver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.store.close()

    def _run(self) -> None:
        while not self._stop.wait(RESOLVE_INTERVAL_S):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - a bug here must not stop recovery for good
                log.exception("transaction resolver failed; retrying")

    def tick(self) -> list[str]:
        """One pass; returns one sentence per part resolved."""
        eng = self.engine
        if eng.role != Role.LEADER or not eng.txns.open:
            return []
        now = time.monotonic()
        done = []
        for p in eng.txns.snapshot():
            if now - p.since < PROBE_S:
                continue
            try:
                d = self.store.get(p.txn_id)
                if d is None:
                    if now - p.since < self.timeout_s:
                        continue  # the coordinator may still decide
                    d = self.store.decide(p.txn_id, False, p.shards)
                lsn = eng.decide_txn(p.txn_id, d.commit, f"resolved by {eng.cfg.node_id} after "
                                     f"{now - p.since:.1f} s in doubt")
            except (CoordinatorUnavailable, SutraError) as exc:
                if now - self._warned.get(p.txn_id, -WARN_EVERY_S) >= WARN_EVERY_S:  # not every tick
                    self._warned[p.txn_id] = now
                    log.warning("transaction %s in doubt for %.1f s, not resolved yet: %s", p.txn_id, now - p.since,
                                exc)
                continue
            self._warned.pop(p.txn_id, None)
            what = (f"transaction {p.txn_id} {'committed' if d.commit else 'aborted'} at LSN {lsn} after "
                    f"{now - p.since:.1f} s in doubt (decision by {d.by})")
            log.warning("%s", what)
            done.append(what)
        return done
