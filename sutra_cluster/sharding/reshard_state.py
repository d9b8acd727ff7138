"""The durable record of a reshard, and the lock that lets one driver run it.

``/<cluster>/reshard`` holds one JSON record (``ReshardRecord``), replaced only
by compare-and-swap against the value the driver last read, so a driver that
lost its lock (or an ``abort`` that got in first) cannot overwrite a newer
state. Phases, in order (each rerun resumes at the stored one)::

    prepare -> copy -> catchup -> cutover -> switched -> done
                                        (abort before switched -> aborted)

``/<cluster>/reshard-driver`` is bound to a lease the running driver keeps
alive: a second driver refuses to start while it exists, and a killed
driver's key expires after LOCK_TTL_S, so a rerun can take over.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from sutra_cluster.errors import ConfigError
from sutra_cluster.failover.coordinator import CoordinatorUnavailable
from sutra_cluster.failover.etcd import EtcdCoordinator
from sutra_cluster.failover.keys import cluster_prefix

PHASES = ("prepare", "copy", "catchup", "cutover", "switched", "done", "aborted")
ABORTABLE = ("prepare", "copy", "catchup", "cutover")
LOCK_TTL_S = 5


def record_key(cluster: str) -> str:
    return f"/{cluster}/reshard"


def lock_key(cluster: str) -> str:
    return f"/{cluster}/reshard-driver"


@dataclass(frozen=True)
class SourceProgress:
    copy_lsn: int = 0  # the applied LSN the copy was taken at
    tailed_lsn: int = 0  # every record up to here has been forwarded to the targets


@dataclass(frozen=True)
class ReshardRecord:
    id: str
    from_shards: int
    to_shards: int
    base_version: int  # the map version the reshard started from
    phase: str = "prepare"
    sources: dict[str, SourceProgress] = field(default_factory=dict)
    switched_version: int = 0
    switched_at: float = 0.0  # wall clock of the switch (the cleanup grace counts from it)
    started_at: float = 0.0
    updated_at: float = 0.0
    note: str = ""

    @staticmethod
    def new(from_shards: int, to_shards: int, base_version: int) -> ReshardRecord:
        now = time.time()
        return ReshardRecord(uuid.uuid4().hex[:12], from_shards, to_shards, base_version, started_at=now,
                             updated_at=now)

    @property
    def active(self) -> bool:
        return self.phase not in ("done", "aborted")

    def source_shards(self) -> list[int]:
        """Shards keys move off: all old ones when growing, the removed ones when shrinking."""
        if self.to_shards > self.from_shards:
            return list(range(self.from_shards))
        return list(range(self.to_shards, self.from_shards))

    def target_shards(self) -> list[int]:
        if self.to_shards > self.from_shards:
            return list(range(self.from_shards, self.to_shards))
        return list(range(self.to_shards))

    def progress(self, shard: int) -> SourceProgress:
        return self.sources.get(str(shard), SourceProgress())

    def with_progress(self, shard: int, p: SourceProgress) -> ReshardRecord:
        return replace(self, sources={**self.sources, str(shard): p})

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def decode(raw: str) -> ReshardRecord:
        d = json.loads(raw)
        d["sources"] = {k: SourceProgress(**v) for k, v in (d.get("sources") or {}).items()}
        rec = ReshardRecord(**d)
        if rec.phase not in PHASES:
            raise ConfigError(f"reshard record {rec.id}: unknown phase {rec.phase!r}")
        return rec


class RecordStore:
    """The record in etcd, changed only by compare-and-swap."""

    def __init__(self, endpoints: Sequence[str], cluster: str, timeout: float = 2.0) -> None:
        self.key = record_key(cluster)
        self.coord = EtcdCoordinator(list(endpoints), cluster_prefix(cluster), "reshard", timeout=timeout)
        self._raw: str | None = None

    def read(self) -> ReshardRecord | None:
        self._raw = self.coord.get(self.key)
        return None if self._raw is None else ReshardRecord.decode(self._raw)

    def save(self, rec: ReshardRecord) -> ReshardRecord:
        """Store ``rec`` if the stored record is still the one last read (or
        none was); raises ConfigError when someone else changed it."""
        rec = replace(rec, updated_at=time.time())
        raw = rec.encode()
        if self._raw is None:
            ok, stored = self.coord.create(self.key, raw)
            if not ok:
                raise ConfigError(f"another reshard record appeared at {self.key}: {stored[:200]}")
        elif not self.coord.compare_and_put(self.key, self._raw, raw):
            raise ConfigError(f"the reshard record at {self.key} changed under this driver (an abort, or another "
                              "driver): rerun to see its state")
        self._raw = raw
        return rec

    def close(self) -> None:
        self.coord.close()


class DriverLock:
    """``/<cluster>/reshard-driver``, bound to a lease kept alive by a thread."""

    def __init__(self, endpoints: Sequence[str], cluster: str) -> None:
        self.key = lock_key(cluster)
        self.coord = EtcdCoordinator(list(endpoints), cluster_prefix(cluster), "reshard-driver", timeout=2.0)
        self.me = f"{socket.gethostname()}:{os.getpid()}"
        self._lease = 0
        self._stop = threading.Event()
        self.lost = threading.Event()

    def acquire(self, wait_s: float = 0.0) -> None:
        """Take the lock, waiting up to ``wait_s`` for a killed driver's key to
        expire; raises ConfigError naming the holder otherwise."""
        deadline = time.monotonic() + wait_s
        c = self.coord
        while True:
            def take() -> tuple[bool, str]:
                lease = c.client.lease(LOCK_TTL_S)
                t = c.client.transactions
                ok, resp = c.client.transaction(compare=[t.create(self.key) == 0],
                                                success=[t.put(self.key, self.me, lease=lease.id)],
                                                failure=[t.get(self.key)])
                if not ok:
                    c.client.revoke_lease(lease.id)
                    return False, resp[0][0][0].decode()
                self._lease = lease.id
                return True, self.me

            ok, holder = c._call(take)
            if ok:
                break
            if time.monotonic() > deadline:
                raise ConfigError(f"another reshard driver ({holder}) is running (etcd key {self.key}); wait for it, "
                                  f"or for its key to expire {LOCK_TTL_S} s after it died")
            time.sleep(0.5)
        threading.Thread(target=self._keep, name="reshard-lock", daemon=True).start()

    def _keep(self) -> None:
        while not self._stop.wait(LOCK_TTL_S / 3):
            try:
                alive = self.coord._call(lambda: list(self.coord.client.refresh_lease(self._lease)))
                if not alive or alive[0].TTL <= 0:
                    self.lost.set()
                    return
            except CoordinatorUnavailable:
                continue  # etcd blinked: the lease outlives a short outage

    def check(self) -> None:
        if self.lost.is_set():
            raise ConfigError(f"this driver lost its lock {self.key} (etcd unreachable longer than {LOCK_TTL_S} s): "
                              "rerun to resume")

    def release(self) -> None:
        self._stop.set()
        try:
            if self._lease:
                self.coord._call(lambda: self.coord.client.revoke_lease(self._lease))
        except CoordinatorUnavailable:
            pass  # the key expires with its lease
        self.coord.close()
