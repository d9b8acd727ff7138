"""A node's wrong-shard check.

A node serves exactly one shard (``SUTRA_SHARD``). It learns the shard count
from ``SUTRA_SHARDS`` or, when that is unset (1) and etcd is configured, from
the map at ``/<cluster>/shardmap`` (read at start and every few seconds). With
one shard there is nothing to check. A write, or a read by key, for a concept
another shard owns is refused with FAILED_PRECONDITION naming that shard, so a
client with a stale or missing map learns where to go, and an edge can never
be stored on a shard other than its source's (the cross-shard read paths rely
on that).
"""

from __future__ import annotations

import logging
import threading

from sutra_cluster.config import Config
from sutra_cluster.errors import WrongShard
from sutra_cluster.sharding.hashing import HASH_NAME, shard_for

log = logging.getLogger(__name__)

REFRESH_S = 5.0


class ShardGuard:
    def __init__(self, cfg: Config) -> None:
        self.shard = cfg.shard
        self.node_id = cfg.node_id
        self.shards = max(1, cfg.shards)
        self.version = 0
        if cfg.shards <= 1 and cfg.etcd_endpoints:
            from sutra_cluster.sharding.shardmap import MapReader

            self._reader = MapReader(cfg.etcd_endpoints, cfg.cluster_name, timeout=1.0)
            self._refresh()
            threading.Thread(target=self._refresh_loop, name="shardmap", daemon=True).start()

    def _refresh(self) -> None:
        try:
            smap = self._reader.read()
        except Exception as exc:  # noqa: BLE001 - etcd unreachable or a bad map: keep the last one, retry later
            log.debug("shard map not read from etcd: %s", exc)
            return
        if smap is not None and (smap.shards, smap.version) != (self.shards, self.version):
            log.info("shard map version %d: %d shards; this node serves shard %d", smap.version, smap.shards,
                     self.shard)
            self.shards, self.version = smap.shards, smap.version

    def _refresh_loop(self) -> None:
        stop = threading.Event()
        while not stop.wait(REFRESH_S):
            self._refresh()

    def check(self, concept_id: str) -> None:
        """Raise WrongShard unless this node's shard owns ``concept_id``."""
        if self.shards <= 1:
            return
        owner = shard_for(concept_id, self.shards)
        if owner != self.shard:
            raise WrongShard(
                f"wrong shard: concept {concept_id!r} belongs to shard {owner}, and this node "
                f"({self.node_id}) serves shard {self.shard} ({self.shards} shards, {HASH_NAME}); "
                f"send it to shard {owner}"
            )

    def owns(self, concept_id: str) -> bool:
        return self.shards <= 1 or shard_for(concept_id, self.shards) == self.shard

    def check_batch(self, request: object) -> None:
        """Every concept, every association's source and every delete of a batch."""
        if self.shards <= 1:
            return
        for c in request.concepts:  # type: ignore[attr-defined]
            self.check(c.concept_id)
        for a in request.associations:  # type: ignore[attr-defined]
            self.check(a.source_id)
        for cid in request.delete_concept_ids:  # type: ignore[attr-defined]
            self.check(cid)
