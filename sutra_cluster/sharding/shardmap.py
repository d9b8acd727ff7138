"""The shard map: how many shards, which hash, which members, at which version.

In etcd it is one JSON value at ``/<cluster>/shardmap``::

    {"version": 1, "shards": 2, "hash": "jump-blake2b64",
     "members": {"0": ["10.0.0.1:50051", ...], "1": [...]}}

With etcd, ``members`` is only a seed list (it may be empty): each shard's live
members and leader are the per-shard keys under ``/<cluster>/shards/<n>/``
that the nodes publish themselves. Without etcd, ``SUTRA_SHARD_MAP`` holds the
same JSON, or the short form ``0=host:port,host:port;1=host:port,...`` (shard
count = number of shards listed, version 1), and ``members`` is then the whole
truth: the leader is whichever member says so.

``version`` orders maps: every change is a new map with a higher version,
compared-and-swapped (``replace``), and every router, client and node follows
the highest version it has seen. A reshard (``sharding/reshard.py``) adds
three optional fields while it runs:

- ``next_shards``: the shard count being moved to. Keys whose owner differs
  between ``shards`` and ``next_shards`` are *moving*: still served by their
  old shard, copied to their new one, invisible there to routers' reads.
- ``frozen``: cutover; writes to moving keys are refused (retryably) on their
  old shard until the map switches.
- ``leftovers``: after the switch, until the old shards have dropped what
  moved away: routers keep reading each shard only for the keys it owns.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sutra_cluster.errors import ConfigError
from sutra_cluster.failover.keys import cluster_prefix, map_key  # noqa: F401 - map_key: callers import it from here
from sutra_cluster.sharding.hashing import HASH_NAME, shard_for

MAX_SHARDS = 4096
log = logging.getLogger(__name__)




@dataclass(frozen=True)
class ShardMap:
    shards: int
    version: int = 1
    hash: str = HASH_NAME
    members: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    next_shards: int = 0  # a reshard to this count is under way (0: none)
    frozen: bool = False  # the reshard's cutover: moving keys take no writes
    leftovers: bool = False  # old shards may still hold keys that moved away

    def __post_init__(self) -> None:
        problems = []
        if self.next_shards and not 1 <= self.next_shards <= MAX_SHARDS:
            problems.append(f"next_shards is {self.next_shards}, it must be 1..{MAX_SHARDS}")
        if self.frozen and not self.next_shards:
            problems.append("frozen is set without next_shards")
        if not 1 <= self.shards <= MAX_SHARDS:
            problems.append(f"shards is {self.shards}, it must be 1..{MAX_SHARDS}")
        if self.version < 1:
            problems.append(f"version is {self.version}, it must be >= 1")
        if self.hash != HASH_NAME:
            problems.append(f"hash is {self.hash!r}; this version knows only {HASH_NAME!r}")
        for s in self.members:
            if not 0 <= s < self.shards:
                problems.append(f"members names shard {s}, but there are {self.shards} shards (0..{self.shards - 1})")
        if problems:
            raise ConfigError("invalid shard map: " + "; ".join(problems))

    def owner(self, concept_id: str) -> int:
        return shard_for(concept_id, self.shards)

    def members_of(self, shard: int) -> tuple[str, ...]:
        return tuple(self.members.get(shard, ()))

    def next_owner(self, concept_id: str) -> int:
        """The owner once the reshard under way is done (the owner when none is)."""
        return shard_for(concept_id, self.next_shards or self.shards)

    def moving(self, concept_id: str) -> bool:
        return bool(self.next_shards) and self.owner(concept_id) != self.next_owner(concept_id)

    @property
    def mixed(self) -> bool:
        """Some shard may hold keys it does not own (copies being made, or leftovers):
        fan-out reads keep from each shard only what it owns."""
        return bool(self.next_shards) or self.leftovers

    def evolve(self, **changes: object) -> ShardMap:
        """This map with ``changes`` and the next version."""
        d = {"shards": self.shards, "hash": self.hash, "members": self.members, "next_shards": self.next_shards,
             "frozen": self.frozen, "leftovers": self.leftovers}
        d.update(changes)
        return ShardMap(version=self.version + 1, **d)  # type: ignore[arg-type]

    def to_json(self) -> str:
        d: dict[str, object] = {
            "version": self.version, "shards": self.shards, "hash": self.hash,
            "members": {str(s): list(m) for s, m in sorted(self.members.items())},
        }
        # Only when set, so a map without a reshard reads as before.
        if self.next_shards:
            d["next_shards"] = self.next_shards
        if self.frozen:
            d["frozen"] = True
        if self.leftovers:
            d["leftovers"] = True
        return json.dumps(d, sort_keys=True)

    @staticmethod
    def from_json(raw: str | bytes) -> ShardMap:
        try:
            d = json.loads(raw)
            members = {int(s): tuple(str(a) for a in addrs) for s, addrs in (d.get("members") or {}).items()}
            return ShardMap(shards=int(d["shards"]), version=int(d.get("version", 1)),
                            hash=str(d.get("hash", HASH_NAME)), members=members,
                            next_shards=int(d.get("next_shards", 0)), frozen=bool(d.get("frozen", False)),
                            leftovers=bool(d.get("leftovers", False)))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"invalid shard map {raw!r}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def parse(text: str) -> ShardMap:
        """JSON, or the short form ``0=host:port,host:port;1=host:port``."""
        text = text.strip()
        if text.startswith("{"):
            return ShardMap.from_json(text)
        members: dict[int, tuple[str, ...]] = {}
        for part in text.split(";"):
            part = part.strip()
            if not part:
                continue
            shard, sep, addrs = part.partition("=")
            if not sep or not shard.strip().isdigit():
                raise ConfigError(f"invalid shard map entry {part!r}: expected <shard>=host:port,host:port")
            s = int(shard)
            if s in members:
                raise ConfigError(f"invalid shard map: shard {s} is listed twice")
            members[s] = tuple(_check_address(a.strip()) for a in addrs.split(",") if a.strip())
            if not members[s]:
                raise ConfigError(f"invalid shard map: shard {s} has no members")
        if not members:
            raise ConfigError("invalid shard map: empty")
        n = max(members) + 1
        if sorted(members) != list(range(n)):
            raise ConfigError(f"invalid shard map: shards must be numbered 0..{n - 1} without gaps, got {sorted(members)}")
        return ShardMap(shards=n, members=members)


def _check_address(a: str) -> str:
    host, sep, port = a.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"invalid shard map: {a!r} is not host:port")
    return a


def _etcd(endpoints: Sequence[str], cluster: str, timeout: float):  # type: ignore[no-untyped-def]
    from sutra_cluster.failover.etcd import EtcdCoordinator

    return EtcdCoordinator(list(endpoints), cluster_prefix(cluster), "shardmap", timeout=timeout)


class MapReader:
    """Reads the map from etcd over one connection, for processes that poll it."""

    def __init__(self, endpoints: Sequence[str], cluster: str, timeout: float = 2.0) -> None:
        self.key = map_key(cluster)
        self._coord = _etcd(endpoints, cluster, timeout)

    def read(self) -> ShardMap | None:
        """The stored map, or None when there is none. Raises
        CoordinatorUnavailable when etcd cannot be reached."""
        value = self._coord.get(self.key)
        return None if value is None else ShardMap.from_json(value)

    def watch(self, on_map: Callable[[ShardMap], object]) -> object | None:
        """Call ``on_map`` with every new map stored (a bad value is logged and
        skipped); returns the watch handle, or None when etcd could not be
        reached (callers poll ``read`` as well, so a lost watch only slows them)."""
        def got(value: str | None) -> None:
            if value is None:
                return
            try:
                on_map(ShardMap.from_json(value))
            except ConfigError as exc:
                log.warning("ignoring a shard map from etcd: %s", exc)

        try:
            return self._coord.watch(self.key, got)
        except Exception as exc:  # noqa: BLE001 - CoordinatorUnavailable or the library's own errors
            log.warning("no watch on %s (%s); polling it instead", self.key, exc)
            return None

    def close(self, handle: object | None = None) -> None:
        if handle is not None:
            self._coord.cancel_watch(handle)
        self._coord.close()


def load_from_etcd(endpoints: Sequence[str], cluster: str, timeout: float = 2.0) -> ShardMap | None:
    """The map stored in etcd, or None when there is none.
    Raises CoordinatorUnavailable when etcd cannot be reached."""
    reader = MapReader(endpoints, cluster, timeout)
    try:
        return reader.read()
    finally:
        reader.close()


def publish(endpoints: Sequence[str], cluster: str, smap: ShardMap, timeout: float = 2.0) -> ShardMap:
    """Store ``smap`` unless a map is there already; returns the stored map.

    A map is never silently replaced: to change it, publish a higher version
    with ``replace(expected_version=...)``."""
    coord = _etcd(endpoints, cluster, timeout)
    key = map_key(cluster)
    try:
        _, stored = coord.create(key, smap.to_json())
        return ShardMap.from_json(stored)
    finally:
        coord.close()


def replace(endpoints: Sequence[str], cluster: str, smap: ShardMap, expected_version: int,
            timeout: float = 2.0) -> bool:
    """Compare-and-swap the map: only if the stored one has ``expected_version``
    and ``smap.version`` is higher. Every step of a reshard goes through here."""
    if smap.version <= expected_version:
        raise ConfigError(f"a new shard map needs a version above {expected_version}, got {smap.version}")
    coord = _etcd(endpoints, cluster, timeout)
    key = map_key(cluster)
    try:
        cur = coord.get(key)
        if cur is None or ShardMap.from_json(cur).version != expected_version:
            return False
        return coord.compare_and_put(key, cur, smap.to_json())
    finally:
        coord.close()


def from_env(env: Mapping[str, str]) -> ShardMap | None:
    """``SUTRA_SHARD_MAP`` (static map), or None."""
    raw = env.get("SUTRA_SHARD_MAP", "").strip()
    return ShardMap.parse(raw) if raw else None
