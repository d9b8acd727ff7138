"""A node's wrong-shard check, and resharding's write fence.

A node serves exactly one shard (``SUTRA_SHARD``). It learns the shard map
from ``SUTRA_SHARDS`` (a static count, version 0) or, with etcd, from the map
at ``/<cluster>/shardmap``: read at start, then followed by a watch (and a
poll every REFRESH_S in case the watch is lost); a reshard's driver also
pushes each new map to the leaders it involves (``adopt``).

- A write, or a read by key, for a concept this shard does not own under the
  map is refused with FAILED_PRECONDITION ``wrong-shard``; with a versioned
  map the refusal carries ``sutra-map-version`` so that a router or client on
  an older map fetches the newer one and retries (``retry.classify`` says
  NEW_MAP). An edge is never stored on a shard other than its source's.
- The fence (``attach``): the engine calls ``admit`` with every batch under
  its append lock, right before logging it. So a check and the log are one
  step as far as the map is concerned: a write checked under an older map
  is checked again there, and while a reshard's cutover freezes the moving
  keys (``frozen`` in the map) a write to one of them is refused UNAVAILABLE
  ``moving`` (retry after the map moves on). Once ``Freeze`` has read the
  last LSN under the same lock, no record touching a moving key can follow it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sutra_cluster import retry
from sutra_cluster.config import Config
from sutra_cluster.errors import InvalidArgument, Unavailable, WrongShard
from sutra_cluster.sharding.hashing import HASH_NAME
from sutra_cluster.sharding.shardmap import ShardMap

log = logging.getLogger(__name__)

REFRESH_S = 5.0
_tls = threading.local()  # per gRPC worker thread: what this thread's current write was checked against


class StaleMap(WrongShard):
    """Wrong shard under a versioned map: the caller's map is older (or newer) than the node's."""

    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.trailers = ((retry.MAP_VERSION_KEY, str(version)),)


class Moving(Unavailable):
    """The key is frozen for a reshard's cutover; retry once the map has moved on."""

    reason = retry.MOVING

    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.trailers = ((retry.MAP_VERSION_KEY, str(version)),)


def _keys(batch: Any) -> list[str]:
    return ([c.concept_id for c in batch.concepts] + [a.source_id for a in batch.associations]
            + list(batch.delete_concept_ids))


class ShardGuard:
    def __init__(self, cfg: Config) -> None:
        self.shard = cfg.shard
        self.node_id = cfg.node_id
        self.map = ShardMap(shards=max(1, cfg.shards))
        self.version = 0  # 0: a static SUTRA_SHARDS count, no versioned map
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reader: Any = None
        if cfg.etcd_endpoints:
            from sutra_cluster.sharding.shardmap import MapReader

            self._reader = MapReader(cfg.etcd_endpoints, cfg.cluster_name, timeout=1.0)
            self._refresh()
            self._watch = self._reader.watch(self.adopt)
            threading.Thread(target=self._refresh_loop, name="shardmap", daemon=True).start()

    # ---- following the map -----------------------------------------------
    @property
    def shards(self) -> int:
        return self.map.shards

    def adopt(self, smap: ShardMap) -> bool:
        """Serve by ``smap`` if it is newer than the map held; returns whether it was."""
        with self._lock:
            if smap.version <= self.version:
                return False
            old, self.map, self.version = self.map, smap, smap.version
        if (old.shards, old.next_shards, old.frozen) != (smap.shards, smap.next_shards, smap.frozen):
            log.info("shard map version %d: %d shards%s%s; this node serves shard %d", smap.version, smap.shards,
                     f", moving to {smap.next_shards}" if smap.next_shards else "",
                     " (cutover: moving keys frozen)" if smap.frozen else "", self.shard)
        return True

    def _refresh(self) -> None:
        try:
            smap = self._reader.read()
        except Exception as exc:  # noqa: BLE001 - etcd unreachable or a bad map: keep the last one, retry later
            log.debug("shard map not read from etcd: %s", exc)
            return
        if smap is not None:
            self.adopt(smap)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_S):
            self._refresh()

    def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.close(self._watch)

    # ---- checks before a request is served ---------------------------------
    def _refusal(self, concept_id: str, m: ShardMap) -> WrongShard:
        owner = m.owner(concept_id)
        msg = (f"wrong shard: concept {concept_id!r} belongs to shard {owner}, and this node ({self.node_id}) "
               f"serves shard {self.shard} ({m.shards} shards, {HASH_NAME}")
        if not self.version:
            return WrongShard(msg + f"); send it to shard {owner}")
        return StaleMap(msg + f", map version {m.version}); refresh the shard map and send it to shard {owner}",
                        m.version)

    def check(self, concept_id: str) -> None:
        """Raise WrongShard (StaleMap with a versioned map) unless this shard owns ``concept_id``."""
        m = self.map
        if m.owner(concept_id) != self.shard:
            raise self._refusal(concept_id, m)
        _tls.checked = (m.version, concept_id)

    def owns(self, concept_id: str) -> bool:
        """Whether this shard owns ``concept_id`` (a router's purge of edges into a
        concept another shard owns asks this, and is then admitted as such)."""
        m = self.map
        mine = m.owner(concept_id) == self.shard
        _tls.purge = None if mine else (m.version, concept_id)
        return mine

    def check_batch(self, request: Any) -> None:
        """Every concept, every association's source and every delete of a batch."""
        m = self.map
        for cid in _keys(request):
            if m.owner(cid) != self.shard:
                raise self._refusal(cid, m)
        _tls.checked = (m.version, id(request))

    # ---- the fence, under the engine's append lock --------------------------
    def attach(self, engine: Any) -> None:
        """Install ``admit`` as the engine's last check before it logs a batch."""
        engine.admit = self.admit

    def admit(self, batch: Any) -> None:
        """Raise unless ``batch`` may be logged now. Cheap when the request was
        checked against the map still held and no cutover is under way."""
        if batch.drop_concept_ids and not getattr(_tls, "internal", False):
            raise InvalidArgument("drop_concept_ids is for resharding's own use; delete concepts with "
                                  "delete_concept_ids")
        if getattr(_tls, "internal", False):
            hook = getattr(_tls, "on_admit", None)
            if hook is not None:
                hook()  # the append lock is held: the next import part may queue behind it
            return  # an import or a purge from the reshard service: checked against its own map
        m = self.map
        if not m.frozen:
            checked = getattr(_tls, "checked", None)
            if checked is not None and checked[0] == m.version:
                single = _keys(batch)
                if checked[1] == id(batch) or (len(single) == 1 and checked[1] == single[0]):
                    return
        purge = getattr(_tls, "purge", None)
        if (purge is not None and not batch.concepts and not batch.associations
                and list(batch.delete_concept_ids) == [purge[1]]):
            if m.owner(purge[1]) != self.shard:
                return  # still another shard's concept: removing edges into it is right
            raise self._refusal(purge[1], m)  # it moved here meanwhile: the router's map is old
        for cid in [c.concept_id for c in batch.concepts] + [a.source_id for a in batch.associations]:
            if m.owner(cid) != self.shard:
                raise self._refusal(cid, m)
            if m.frozen and m.moving(cid):
                raise self._moving(cid, m)
        for cid in batch.delete_concept_ids:
            # A delete of another shard's concept is a purge of the edges into it
            # (routers send those, and a cross-shard part may carry them).
            if m.frozen and m.owner(cid) == self.shard and m.moving(cid):
                raise self._moving(cid, m)

    def _moving(self, cid: str, m: ShardMap) -> Moving:
        return Moving(f"concept {cid!r} is moving from shard {self.shard} to shard {m.next_owner(cid)} "
                      f"(reshard cutover, map version {m.version}); retry in a moment", m.version)


class internal_writes:  # noqa: N801 - used as a context manager, like a function
    """Writes the reshard service logs itself (imports, purges) on this thread:
    ``admit`` lets them pass (the service checks them against the reshard's map),
    calling ``on_admit`` (under the append lock, right before the record is logged)."""

    def __init__(self, on_admit: Callable[[], None] | None = None) -> None:
        self.on_admit = on_admit

    def __enter__(self) -> None:
        _tls.internal = True
        _tls.on_admit = self.on_admit

    def __exit__(self, *exc: object) -> None:
        _tls.internal = False
        _tls.on_admit = None
