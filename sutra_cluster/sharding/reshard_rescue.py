"""Lifting a freeze its reshard driver left behind.

During a reshard's cutover the map is ``frozen``: writes to the moving keys are
refused (retryably) until the driver switches the map or unfreezes it. A driver
killed in that span used to leave those keys refusing writes until someone
reran it or ran ``reshard abort``. A shard leader now notices and lifts the
freeze itself:

- the map is frozen and the driver's lock (``/<cluster>/reshard-driver``, bound
  to a lease of ``LOCK_TTL_S``) is gone, twice ``CHECK_S`` apart at the same map
  version: the driver is dead (a live one keeps its lease alive and holds the
  lock from before it freezes until after it switches);
- the leader takes the driver lock itself, so no driver can start meanwhile,
  reads the map again and, if it is still that frozen version, compares-and-
  swaps it to the same map unfrozen (version + 1); then lets the lock go.

Why it is safe: unfreezing before the switch is what the driver itself does
when a cutover fails; the record keeps its phase, and a rerun freezes again and
drains from the start. A driver that was only paused, not dead, cannot switch
afterwards: its switch compares against the frozen version, which is gone.
Only etcd-managed nodes run it, and only while they lead and see a frozen map.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sutra_cluster.errors import ConfigError
from sutra_cluster.failover.coordinator import CoordinatorUnavailable
from sutra_cluster.sharding import shardmap
from sutra_cluster.sharding.reshard_state import DriverLock, lock_key
from sutra_cluster.sharding.shardmap import ShardMap

log = logging.getLogger(__name__)

CHECK_S = 1.0

__all__ = ["CHECK_S", "FreezeRescue"]


class FreezeRescue:
    """A thread on an etcd-managed node: lifts an orphaned freeze (see the module doc).

    ``current_map``: the map this node routes by; ``leading``: whether it leads
    its shard now. ``lock_factory`` and ``store`` are for tests."""

    def __init__(self, endpoints: list[str], cluster: str, current_map: Callable[[], ShardMap],
                 leading: Callable[[], bool], *, lock_factory: Callable[[], Any] | None = None,
                 store: Any = None) -> None:
        self.endpoints, self.cluster = endpoints, cluster
        self.current_map, self.leading = current_map, leading
        self._lock_factory = lock_factory or (lambda: DriverLock(endpoints, cluster))
        self._store = store
        self._suspect: int | None = None  # the frozen version last seen without a driver
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="freeze-rescue", daemon=True)
        self.lifted = 0  # freezes this node lifted (for tests and logs)

    def start(self) -> FreezeRescue:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self._store is not None and hasattr(self._store, "close"):
            self._store.close()

    def _coord(self) -> Any:
        if self._store is None:
            from sutra_cluster.failover.etcd import EtcdCoordinator
            from sutra_cluster.failover.keys import cluster_prefix

            self._store = EtcdCoordinator(self.endpoints, cluster_prefix(self.cluster), "freeze-rescue", timeout=2.0)
        return self._store

    def _run(self) -> None:
        while not self._stop.wait(CHECK_S):
            try:
                self.check()
            except (CoordinatorUnavailable, ConfigError) as exc:
                log.debug("orphaned-freeze check skipped: %s", exc)
            except Exception:  # noqa: BLE001 - one failed check must not end the watch
                log.exception("orphaned-freeze check failed")

    def check(self) -> bool:
        """One check; True when this call lifted a freeze."""
        m = self.current_map()
        if not m.frozen or not self.leading():
            self._suspect = None
            return False
        coord = self._coord()
        if coord.get(lock_key(self.cluster)) is not None:
            self._suspect = None  # a driver holds the lock: it is working
            return False
        stored = self._read()
        if stored is None or not stored.frozen:
            self._suspect = None
            return False
        if self._suspect != stored.version:
            self._suspect = stored.version  # seen once: look again a check later
            return False
        return self._lift(stored.version)

    def _lift(self, version: int) -> bool:
        lock = self._lock_factory()
        try:
            try:
                lock.acquire(wait_s=0.0)
            except ConfigError:
                return False  # a driver (or another leader's rescue) took the lock first
            raw = self._coord().get(shardmap.map_key(self.cluster))
            m = ShardMap.from_json(raw) if raw else None
            if raw is None or m is None or not m.frozen or m.version != version:
                return False
            unfrozen = m.evolve(frozen=False)
            # Compared against the stored text, which holds the version: a map the
            # driver (or anyone) changed since is left alone.
            if not self._coord().compare_and_put(shardmap.map_key(self.cluster), raw, unfrozen.to_json()):
                return False
            self.lifted += 1
            log.warning("reshard: map version %d was frozen and no driver holds %s (it died during the cutover): "
                        "lifted the freeze as version %d; writes to moving keys resume. Rerun `sutra-cluster "
                        "reshard --to %d` to finish the reshard, or `sutra-cluster reshard abort`",
                        version, lock_key(self.cluster), unfrozen.version, m.next_shards)
            return True
        finally:
            self._suspect = None
            lock.release()

    def _read(self) -> ShardMap | None:
        raw = self._coord().get(shardmap.map_key(self.cluster))
        return ShardMap.from_json(raw) if raw else None
