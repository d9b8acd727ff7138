"""Following the shard map through a reshard, for routers and ShardedClient.

- ``MapFollower`` holds the ShardSet of the newest map it has seen: a watch on
  ``/<cluster>/shardmap`` delivers new versions within milliseconds, and a poll
  every POLL_S catches a lost watch. An operation runs on the current set; when
  a node refuses it with ``wrong-shard`` naming a newer map version, or with
  ``moving`` (its key is frozen for a cutover), ``retry.classify`` says NEW_MAP:
  the follower fetches the newer map (or waits a moment for the cutover to
  finish) and runs the whole operation again, on the new owners. Writes keep
  their request id across these retries (ShardSet sets it in the request
  itself), so a part already applied is not applied twice.
- Reads by ownership: while a map is ``mixed`` (copies on targets, or
  leftovers on old shards before they are purged), a fan-out read keeps from
  each shard only what that shard owns under the router's map, so a concept
  and the edges stored with it are counted once, from their owner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from sutra_cluster.api.validate import MAX_K
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.retry import MOVING, Retry, classify, map_version, reason
from sutra_cluster.sharding.shardmap import MapReader, ShardMap

log = logging.getLogger(__name__)

POLL_S = 5.0
OLD_SET_GRACE_S = 30.0  # calls in flight finish on the old set before its channels close


class MapFollower:
    """The ShardSet of the newest map, and operations that follow map changes."""

    def __init__(self, smap: ShardMap, make_set: Callable[[ShardMap], Any], *, etcd_endpoints: Sequence[str] = (),
                 cluster: str = "sutra", deadline_s: float = 15.0) -> None:
        self._make = make_set
        self.deadline_s = deadline_s
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.set = make_set(smap)
        self._stop = threading.Event()
        self._reader: MapReader | None = None
        self._watch: object | None = None
        if etcd_endpoints:
            self._reader = MapReader(etcd_endpoints, cluster, timeout=2.0)
            self._watch = self._reader.watch(self.adopt)
            threading.Thread(target=self._poll, name="shardmap", daemon=True).start()

    @property
    def map(self) -> ShardMap:
        return self.set.map  # type: ignore[no-any-return]

    def adopt(self, smap: ShardMap) -> bool:
        """Route by ``smap`` from now on if it is newer; returns whether it was."""
        with self._lock:
            old = self.set
            if smap.version <= old.map.version:
                return False
            if (smap.shards, smap.members) == (old.map.shards, old.map.members) and hasattr(old, "map"):
                old.map = smap  # same shards and links: only the reshard fields changed
                self._changed.notify_all()
                log.info("shard map version %d (%d shards%s)", smap.version, smap.shards,
                         ", mixed reads filtered" if smap.mixed else "")
                return True
            self.set = self._make(smap)
            self._changed.notify_all()
        log.warning("shard map version %d -> %d (%d -> %d shards)", old.map.version, smap.version, old.map.shards,
                    smap.shards)
        t = threading.Timer(OLD_SET_GRACE_S, old.close)
        t.daemon = True
        t.start()
        return True

    def refresh(self) -> None:
        """Read the map from etcd now (a node named a newer version than ours)."""
        if self._reader is None:
            return
        try:
            smap = self._reader.read()
        except Exception as exc:  # noqa: BLE001 - etcd unreachable: the retry loop tries again
            log.debug("shard map not read: %s", exc)
            return
        if smap is not None:
            self.adopt(smap)

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            self.refresh()

    def wait_change(self, version: int, timeout: float) -> None:
        with self._lock:
            self._changed.wait_for(lambda: self.set.map.version > version, timeout)

    def run(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``set.<name>(*args)`` on the current set, again on a newer map after a
        NEW_MAP refusal, until ``deadline_s``."""
        deadline = time.monotonic() + self.deadline_s
        while True:
            current = self.set
            try:
                return getattr(current, name)(*args, **kwargs)
            except grpc.RpcError as exc:
                if classify(exc, write=True) != Retry.NEW_MAP or time.monotonic() > deadline:
                    raise
                seen = current.map.version
                if map_version(exc) > seen:
                    self.refresh()
                    if self.set.map.version <= seen:  # etcd not answering: the watch may still deliver it
                        self.wait_change(seen, 0.1)
                elif reason(exc) == MOVING:
                    self.wait_change(seen, 0.05)  # the cutover ends with a new map; never longer than its pause
                else:
                    time.sleep(0.02)  # the node is behind us on the map: it follows the same key

    def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.close(self._watch)
        self.set.close()


class FollowingSet:
    """Looks like the follower's current ShardSet; its public methods run
    through ``MapFollower.run`` (so they follow map changes), other attributes
    are the current set's."""

    _PASS = frozenset({"owner", "map", "shards", "links", "channels", "pool"})

    def __init__(self, follower: MapFollower) -> None:
        self._follower = follower

    def __getattr__(self, name: str) -> Any:
        if name == "close":
            return self._follower.close  # the watch, and the current set's channels
        value = getattr(self._follower.set, name)
        if name.startswith("_") or name in self._PASS or not callable(value):
            return value
        return lambda *a, **kw: self._follower.run(name, *a, **kw)


# ---- reads by ownership -----------------------------------------------------------
def keep_owned(smap: ShardMap, shard: int, concept_id: str, resp: pb.GetNeighborsResponse) -> pb.GetNeighborsResponse:
    """``resp`` from ``shard`` for ``concept_id``, cut to the edges ``shard``
    stores as their owner: incoming ones whose source it owns, outgoing ones
    when it owns ``concept_id``. Unchanged when the map is not mixed."""
    if not smap.mixed or not resp.neighbors:
        return resp
    home = smap.owner(concept_id) == shard
    kept = [n for n in resp.neighbors if (home if n.outgoing else smap.owner(n.concept_id) == shard)]
    if len(kept) == len(resp.neighbors):
        return resp
    out = pb.GetNeighborsResponse(neighbors=kept, missing_shards=resp.missing_shards)
    out.neighbor_ids.extend(sorted({n.concept_id for n in kept}))
    return out


def search_owned(smap: ShardMap, shard: int, k: int,
                 search: Callable[[int], pb.VectorSearchResponse]) -> pb.VectorSearchResponse:
    """``shard``'s top ``k`` among the concepts it owns: asks for more while
    some of its best hits are copies or leftovers of other shards' concepts."""
    if not smap.mixed:
        return search(k)
    ask = k
    while True:
        resp = search(ask)
        kept = [x for x in resp.results if smap.owner(x.concept_id) == shard]
        if len(kept) >= k or len(resp.results) < ask or ask >= MAX_K:
            del resp.results[:]
            resp.results.extend(kept[:k])
            return resp
        ask = min(MAX_K, 2 * ask + len(resp.results) - len(kept))
