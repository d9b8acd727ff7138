"""``sutra-cluster reshard``: move a live cluster from S0 to S shards.

Targets are ordinary replication groups the operator has started first (nodes
with ``SUTRA_SHARD=n`` for each new shard number, etcd-managed, without
``SUTRA_SHARDS``); the driver moves the data and the map. Each phase is
stored in the reshard record (``reshard_state.py``) before the next begins,
so a rerun after any crash resumes where the record says:

1. **prepare**: every source and target has a leader; the map gets
   ``next_shards`` (routers start reading each shard by ownership).
2. **copy**: each target drops what it holds and does not own (an earlier,
   aborted attempt's copies); each source leader exports its moving keys at
   one applied LSN L, and the targets import them. A rerun copies again.
3. **catchup**: each source's committed records after L, cut to their moving
   parts, are forwarded to the targets until the lag is small; the forwarded
   LSN is stored, and a rerun tails from it (forwarding is idempotent: request
   ids, upserts, and deletes replayed in order).
4. **cutover**: the map is marked ``frozen`` (writes to moving keys only are
   refused, retryably); each source leader adopts it and reports F, its last
   LSN under the append lock; the tail is drained to F; then the map is
   compared-and-swapped to S shards (``leftovers`` set) and pushed to the
   leaders. That span is the write pause on moving keys. If the drain fails
   (a source failover, a deadline), the map is unfrozen and catch-up resumes.
5. **switched**: after ``--cleanup-after`` seconds (routers and clients that
   missed the watch catch up by then), each source drops the keys that moved
   away, and ``leftovers`` is cleared. Until then, routers read each shard only
   for the keys it owns, and sources refuse moved keys with ``wrong-shard``.

``abort`` (before the switch) restores the map without ``next_shards`` and
drops the targets' copies.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

import grpc

from sutra_cluster import auth, tlsutil
from sutra_cluster.credentials import cluster_secret
from sutra_cluster.errors import ConfigError
from sutra_cluster.failover.coordinator import CoordinatorUnavailable
from sutra_cluster.pb import reshard_pb2 as rpb
from sutra_cluster.pb import reshard_pb2_grpc, wal_pb2
from sutra_cluster.sharding import shardmap
from sutra_cluster.sharding.links import Channels, ShardLink, ShardUnavailable, retryable
from sutra_cluster.sharding.reshard_state import ABORTABLE, LOCK_TTL_S, DriverLock, RecordStore, ReshardRecord
from sutra_cluster.sharding.shardmap import MAX_SHARDS, ShardMap

log = logging.getLogger(__name__)
T = TypeVar("T")

CATCHUP_LAG = 64  # records: catch-up ends when a source's applied LSN is this close
CUTOVER_DEADLINE_S = 10.0  # freeze + drain; past it the map is unfrozen and catch-up resumes
PHASE_RETRY_S = 120.0  # a phase failing on unreachable leaders is retried this long
CLEANUP_AFTER_S = 5.0
COPY_INFLIGHT = 3  # export chunks being imported at once


class Refreeze(Exception):
    """The source's leadership changed during the drain: freeze its new leader."""


def _fault(point: str) -> None:
    """Crash tests: SUTRA_RESHARD_FAULT=<point> kills the driver there (exit 70)."""
    if os.environ.get("SUTRA_RESHARD_FAULT") == point:
        log.warning("fault injection: driver exits at %s", point)
        os._exit(70)


class Leaders:
    """ReshardService calls to shard leaders, following them through etcd."""

    def __init__(self, endpoints: list[str], cluster: str, env: Mapping[str, str] | None = None) -> None:
        """``env`` (default: the process environment) gives the admin tools' settings:
        the cluster secret, and SUTRA_TLS_CERT/KEY/CA for a cluster under mutual
        TLS (reshard calls are admin-plane: the certificate must have the admin role)."""
        self.endpoints, self.cluster = endpoints, cluster
        e = os.environ if env is None else env
        secret = cluster_secret(e)
        creds = tlsutil.peer_credentials(e.get("SUTRA_TLS_CERT", ""), e.get("SUTRA_TLS_KEY", ""),
                                         e.get("SUTRA_TLS_CA", ""))
        self.channels = Channels(creds, wrap=lambda ch: auth.with_identity(ch, secret, "reshard"))
        self.links: dict[int, ShardLink] = {}

    def link(self, shard: int) -> ShardLink:
        if shard not in self.links:
            self.links[shard] = ShardLink(shard, self.channels, etcd_endpoints=self.endpoints, cluster=self.cluster,
                                          timeout=30.0, write_deadline=30.0, read_deadline=30.0)
        return self.links[shard]

    def leader(self, shard: int, wait_s: float) -> str:
        return self.link(shard).find_leader(time.monotonic() + wait_s)

    def unary(self, shard: int, method: str, request: Any, deadline_s: float = 30.0) -> Any:
        return self.link(shard).call(method, request, write=True, deadline_s=deadline_s,
                                     service=reshard_pb2_grpc.ReshardServiceStub)

    def stream(self, shard: int, method: str, request: Any, wait_s: float = 30.0) -> Iterator[Any]:
        """The stream from the shard's current leader; a broken stream raises
        (the caller resumes from its own progress)."""
        link = self.link(shard)
        addr = link.leader_address or link.find_leader(time.monotonic() + wait_s)
        stub = reshard_pb2_grpc.ReshardServiceStub(self.channels.channel(addr))
        call = getattr(stub, method)(request)
        try:
            yield from call
        except grpc.RpcError as exc:
            if retryable(exc, write=True):
                link._forget(addr)
            raise
        finally:
            call.cancel()

    def close(self) -> None:
        for link in self.links.values():
            link.close()
        self.channels.close()


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, (ShardUnavailable, CoordinatorUnavailable, Refreeze, TimeoutError)):
        return True
    return isinstance(exc, grpc.RpcError) and retryable(exc, write=True)


def _etcd_retry(fn: Callable[[], T], deadline_s: float = 30.0) -> T:
    """``fn()``, retried while etcd does not answer (a busy or restarting etcd)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return fn()
        except CoordinatorUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class Driver:
    def __init__(self, endpoints: list[str], cluster: str, *, cleanup_after: float = CLEANUP_AFTER_S,
                 say: Callable[[str], None] = print) -> None:
        self.endpoints, self.cluster = endpoints, cluster
        self.cleanup_after = cleanup_after
        self.say = say
        self.store = RecordStore(endpoints, cluster)
        self.lock = DriverLock(endpoints, cluster)
        self.leaders = Leaders(endpoints, cluster)

    def close(self) -> None:
        self.leaders.close()
        self.store.close()

    # ---- etcd ----------------------------------------------------------------
    def map(self) -> ShardMap:
        m = shardmap.load_from_etcd(self.endpoints, self.cluster)
        if m is None:
            raise ConfigError(f"no shard map in etcd at {shardmap.map_key(self.cluster)}")
        return m

    def cas_map(self, new: ShardMap, expected: int) -> ShardMap:
        self.lock.check()
        if not shardmap.replace(self.endpoints, self.cluster, new, expected):
            raise ConfigError(f"the shard map changed under the driver (expected version {expected}); rerun")
        return new

    def save(self, rec: ReshardRecord) -> ReshardRecord:
        self.lock.check()
        return self.store.save(rec)

    def push(self, m: ShardMap, shards: list[int]) -> None:
        """Hand ``m`` to these shards' leaders now (they also follow etcd)."""
        for s in shards:
            try:
                self.leaders.unary(s, "Freeze", rpb.FreezeRequest(map_json=m.to_json()), deadline_s=5.0)
            except (grpc.RpcError, ShardUnavailable) as exc:
                log.warning("shard %d: map version %d not pushed (%s); it follows etcd", s, m.version, exc)

    # ---- the run -----------------------------------------------------------------
    def run(self, to: int | None) -> ReshardRecord | None:
        """Start a reshard to ``to`` shards, or resume the one under way; returns
        the final record (None when there was nothing to do)."""
        _etcd_retry(lambda: self.lock.acquire(wait_s=2 * LOCK_TTL_S + 1))
        try:
            rec = _etcd_retry(lambda: self._begin(to))
            while rec is not None and rec.active:
                rec = self._phase(rec)
            return rec
        finally:
            self.lock.release()

    def _phase(self, rec: ReshardRecord) -> ReshardRecord:
        step = getattr(self, "_" + rec.phase)
        deadline = time.monotonic() + PHASE_RETRY_S
        while True:
            try:
                return step(rec)  # type: ignore[no-any-return]
            except Exception as exc:
                if not _transient(exc) or time.monotonic() > deadline:
                    raise
                self.say(f"{rec.phase}: {type(exc).__name__}: {exc}; retrying")
                time.sleep(0.5)
                current = _etcd_retry(self.store.read)
                if current is None or current.id != rec.id:
                    raise ConfigError("the reshard record vanished or was replaced; rerun") from exc
                rec = current

    def _begin(self, to: int | None) -> ReshardRecord | None:
        rec = self.store.read()
        m = self.map()
        if rec is not None and rec.active:
            if to and to != rec.to_shards:
                raise ConfigError(f"reshard {rec.id} to {rec.to_shards} shards is under way (phase {rec.phase}): "
                                  f"rerun with --to {rec.to_shards} to finish it, or abort it first")
            self.say(f"resuming reshard {rec.id}: {rec.from_shards} -> {rec.to_shards} shards at phase {rec.phase}")
            return rec
        if not to:
            raise ConfigError("no reshard is under way: give --to S")
        if not 1 <= to <= MAX_SHARDS:
            raise ConfigError(f"--to is {to}, it must be 1..{MAX_SHARDS}")
        if m.next_shards:
            raise ConfigError(f"the shard map (version {m.version}) names a reshard to {m.next_shards} shards but no "
                              "reshard record is active; restore the map by hand")
        if to == m.shards:
            self.say(f"the cluster already has {to} shards (map version {m.version}); nothing to do")
            return None
        rec = self.save(ReshardRecord.new(m.shards, to, m.version))
        self.say(f"reshard {rec.id}: {m.shards} -> {to} shards from map version {m.version}")
        return rec

    # ---- phases --------------------------------------------------------------------
    def _prepare(self, rec: ReshardRecord) -> ReshardRecord:
        for s in sorted(set(rec.source_shards()) | set(rec.target_shards())):
            try:
                self.leaders.leader(s, 30.0)
            except ShardUnavailable as exc:
                raise ConfigError(f"shard {s} has no leader in etcd: start its nodes (SUTRA_SHARD={s}, without "
                                  "SUTRA_SHARDS) before resharding") from exc
        m = self.map()
        if m.next_shards != rec.to_shards:
            if (m.version, m.shards) != (rec.base_version, rec.from_shards):
                raise ConfigError(f"the shard map moved on (version {m.version}, {m.shards} shards) since reshard "
                                  f"{rec.id} began at version {rec.base_version}; abort it")
            m = self.cas_map(m.evolve(next_shards=rec.to_shards), m.version)
            self.push(m, rec.source_shards() + rec.target_shards())
        _fault("prepare")
        return self.save(replace(rec, phase="copy", sources={}))

    def _purge(self, shard: int, m: ShardMap) -> int:
        dropped = 0
        while True:
            r = self.leaders.unary(shard, "Purge", rpb.PurgeRequest(map_json=m.to_json()), deadline_s=60.0)
            dropped += r.dropped
            if not r.remaining:
                return dropped

    def _copy(self, rec: ReshardRecord) -> ReshardRecord:
        m = self.map()
        for t in rec.target_shards():
            n = self._purge(t, m)
            if n:
                self.say(f"copy: shard {t} dropped {n} concept(s) an earlier attempt left")
        for s in rec.source_shards():
            t0 = time.monotonic()
            lsn, n = self._export(s, m)
            rec = rec.with_progress(s, replace(rec.progress(s), copy_lsn=lsn, tailed_lsn=lsn))
            self.say(f"copy: shard {s}: {n} item(s) at LSN {lsn} in {time.monotonic() - t0:.1f} s")
            _fault("copy")
        return self.save(replace(rec, phase="catchup"))

    def _export(self, s: int, m: ShardMap) -> tuple[int, int]:
        """Copy ``s``'s moving keys; the chunks are disjoint, so COPY_INFLIGHT are imported at once."""
        lsn = items = 0
        with ThreadPoolExecutor(max_workers=COPY_INFLIGHT) as pool:
            pending: list[Future[None]] = []
            for chunk in self.leaders.stream(s, "Export", rpb.ExportRequest(map_json=m.to_json())):
                lsn = chunk.lsn
                if chunk.batch:
                    b = wal_pb2.WalBatch.FromString(chunk.batch)
                    items += len(b.concepts) + len(b.associations)
                    pending.append(pool.submit(self._import, chunk.target_shard, m, [chunk.batch], []))
                    if len(pending) >= COPY_INFLIGHT:
                        pending.pop(0).result()
            for f in pending:
                f.result()
        return lsn, items

    def _import(self, t: int, m: ShardMap, parts: list[bytes], alts: list[str]) -> None:
        """Log ``parts`` on target ``t`` in order, committed together (one call)."""
        self.leaders.unary(t, "Import", rpb.ImportRequest(map_json=m.to_json(), batches=parts, alt_request_ids=alts))

    def _tail(self, s: int, m: ShardMap, after: int, *, until: int = 0, term: int = 0,
              lag: int | None = None) -> int:
        """Forward ``s``'s records after ``after`` to the targets; returns the
        LSN read up to (``until`` reached, or within ``lag`` of its applied LSN)."""
        pos = after
        for msg in self.leaders.stream(s, "Tail", rpb.TailRequest(map_json=m.to_json(), after_lsn=after,
                                                                   until_lsn=until)):
            if term and msg.term != term:
                raise Refreeze(f"shard {s}: term {msg.term} is not the frozen leader's term {term}")
            per_target: dict[int, tuple[list[bytes], list[str]]] = {}
            for f in msg.forwards:  # in LSN order; each target's parts keep it
                parts, alts = per_target.setdefault(f.target_shard, ([], []))
                parts.append(f.batch)
                alts.append(f"{s}:{f.lsn}")
            if len(per_target) > 1:
                with ThreadPoolExecutor(max_workers=len(per_target)) as pool:
                    for fut in [pool.submit(self._import, t, m, p, a) for t, (p, a) in per_target.items()]:
                        fut.result()
            for t, (p, a) in per_target.items() if len(per_target) == 1 else ():
                self._import(t, m, p, a)
            pos = msg.read_lsn
            if until and pos >= until:
                break
            if lag is not None and msg.applied_lsn - pos <= lag:
                break
        if until and pos < until:
            raise Refreeze(f"shard {s}: the tail ended at LSN {pos} before {until}")
        return pos

    def _catchup(self, rec: ReshardRecord) -> ReshardRecord:
        m = self.map()
        srcs = rec.source_shards()
        with ThreadPoolExecutor(max_workers=len(srcs)) as pool:
            done = dict(zip(srcs, pool.map(lambda s: self._tail(s, m, rec.progress(s).tailed_lsn,
                                                                  lag=CATCHUP_LAG), srcs)))
        for s, pos in done.items():
            rec = rec.with_progress(s, replace(rec.progress(s), tailed_lsn=pos))
        _fault("catchup")
        return self.save(replace(rec, phase="cutover"))

    def _cutover(self, rec: ReshardRecord) -> ReshardRecord:
        m = self.map()
        if m.shards == rec.to_shards and not m.next_shards:  # the switch happened; the record did not say so yet
            return self.save(replace(rec, phase="switched", switched_version=m.version, switched_at=time.time()))
        srcs = rec.source_shards()
        t0 = time.monotonic()
        if not m.frozen:
            m = self.cas_map(m.evolve(frozen=True), m.version)
        _fault("frozen")
        try:
            with ThreadPoolExecutor(max_workers=len(srcs)) as pool:
                drained = dict(zip(srcs, pool.map(lambda s: self._drain(s, m, rec.progress(s).tailed_lsn, t0), srcs)))
        except Exception as exc:
            self._unfreeze(rec, f"cutover failed ({type(exc).__name__}: {exc}); writes to moving keys resumed")
            raise
        for s, pos in drained.items():
            rec = rec.with_progress(s, replace(rec.progress(s), tailed_lsn=pos))
        members = {s: a for s, a in m.members.items() if s < rec.to_shards}
        switched = self.cas_map(ShardMap(shards=rec.to_shards, version=m.version + 1, hash=m.hash,
                                         members=members, leftovers=True), m.version)
        pause = time.monotonic() - t0
        self.push(switched, srcs + rec.target_shards())
        self.say(f"cutover: map version {switched.version} has {rec.to_shards} shards; writes to moving keys "
                 f"paused {pause * 1000:.0f} ms")
        _fault("switched")
        return self.save(replace(rec, phase="switched", switched_version=switched.version, switched_at=time.time(),
                                 note=f"moving-key write pause {pause * 1000:.0f} ms"))

    def _drain(self, s: int, m: ShardMap, after: int, t0: float) -> int:
        while True:
            r = self.leaders.unary(s, "Freeze", rpb.FreezeRequest(map_json=m.to_json()), deadline_s=5.0)
            if r.map_version < m.version:
                raise Refreeze(f"shard {s} holds map version {r.map_version}, older than the frozen {m.version}")
            try:
                return self._tail(s, m, after, until=r.lsn, term=r.term)
            except (Refreeze, grpc.RpcError) as exc:
                if time.monotonic() - t0 > CUTOVER_DEADLINE_S:
                    raise TimeoutError(f"shard {s} not drained within {CUTOVER_DEADLINE_S} s: {exc}") from exc
                time.sleep(0.1)

    def _unfreeze(self, rec: ReshardRecord, why: str) -> None:
        try:
            m = self.map()
            if m.frozen:
                m = self.cas_map(m.evolve(frozen=False), m.version)
                self.push(m, rec.source_shards())
            self.say(why)
        except Exception as exc:  # noqa: BLE001 - the next run unfreezes (cutover resumes from the record)
            log.warning("could not unfreeze after a failed cutover: %s", exc)

    def _switched(self, rec: ReshardRecord) -> ReshardRecord:
        wait = rec.switched_at + self.cleanup_after - time.time()
        if wait > 0:
            self.say(f"cleanup in {wait:.1f} s (routers that missed the new map catch up meanwhile)")
            time.sleep(wait)
        m = self.map()
        for s in rec.source_shards():
            n = self._purge(s, m)
            self.say(f"cleanup: shard {s} dropped {n} concept(s) that moved away")
        _fault("cleanup")
        if m.leftovers:
            self.cas_map(m.evolve(leftovers=False), m.version)
        return self.save(replace(rec, phase="done"))

    # ---- abort ---------------------------------------------------------------------
    def abort(self) -> ReshardRecord | None:
        _etcd_retry(lambda: self.lock.acquire(wait_s=2 * LOCK_TTL_S + 1))
        try:
            rec = self.store.read()
            if rec is None or not rec.active:
                self.say("no reshard is under way")
                return rec
            if rec.phase not in ABORTABLE:
                raise ConfigError(f"reshard {rec.id} has switched the map already (phase {rec.phase}): let it "
                                  f"finish (rerun), then reshard back with --to {rec.from_shards}")
            m = self.map()
            if m.shards == rec.to_shards and not m.next_shards:  # switched; the record had not caught up
                raise ConfigError(f"reshard {rec.id} has switched the map already (version {m.version}): rerun "
                                  f"to finish it, then reshard back with --to {rec.from_shards}")
            if m.next_shards:
                m = self.cas_map(m.evolve(next_shards=0, frozen=False), m.version)
                self.push(m, rec.source_shards() + rec.target_shards())
            for t in rec.target_shards():
                n = self._purge(t, m)
                self.say(f"abort: shard {t} dropped {n} copied concept(s)")
            return self.save(replace(rec, phase="aborted"))
        finally:
            self.lock.release()


# ---- command line ------------------------------------------------------------------------
def status(endpoints: list[str], cluster: str) -> str:
    store = RecordStore(endpoints, cluster)
    try:
        rec = store.read()
    finally:
        store.close()
    m = shardmap.load_from_etcd(endpoints, cluster)
    lines = [f"map: version {m.version}, {m.shards} shards" + (f", moving to {m.next_shards}" if m.next_shards else "")
             + (" (frozen)" if m.frozen else "") + (" (leftovers)" if m.leftovers else "")
             if m is not None else "map: none"]
    if rec is None:
        lines.append("reshard: none")
    else:
        lines.append(f"reshard {rec.id}: {rec.from_shards} -> {rec.to_shards} shards, phase {rec.phase}"
                     + (f" ({rec.note})" if rec.note else ""))
        for s, p in sorted(rec.sources.items(), key=lambda kv: int(kv[0])):
            lines.append(f"  source shard {s}: copied at LSN {p.copy_lsn}, forwarded up to LSN {p.tailed_lsn}")
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    """Register ``reshard`` on the ``sutra-cluster`` command line."""
    rs = sub.add_parser("reshard", help="move a live cluster to another shard count (status, abort)",
                        description="Start (or resume) a reshard with --to S; 'status' shows it, 'abort' undoes "
                        "one that has not switched the map yet. See docs/HA.md, Resharding.")
    rs.add_argument("action", nargs="?", default="run", choices=["run", "status", "abort"])
    rs.add_argument("--to", type=int, default=0, help="the shard count to move to")
    rs.add_argument("--etcd", help="etcd host:port,... (default SUTRA_ETCD_ENDPOINTS)")
    rs.add_argument("--cluster", default=os.environ.get("SUTRA_CLUSTER_NAME", "sutra"))
    rs.add_argument("--cleanup-after", type=float, default=CLEANUP_AFTER_S,
                    help="seconds between the switch and dropping moved keys from their old shards")
    rs.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    raw = args.etcd or os.environ.get("SUTRA_ETCD_ENDPOINTS", "")
    endpoints = [e.strip() for e in raw.split(",") if e.strip()]
    if not endpoints:
        raise ConfigError("reshard needs etcd: --etcd or SUTRA_ETCD_ENDPOINTS")
    if args.action == "status":
        print(status(endpoints, args.cluster))
        return 0
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    d = Driver(endpoints, args.cluster, cleanup_after=args.cleanup_after, say=lambda s: print(s, flush=True))
    try:
        rec = d.abort() if args.action == "abort" else d.run(args.to or None)
    finally:
        d.close()
    if rec is not None:
        print(f"reshard {rec.id}: phase {rec.phase}" + (f" ({rec.note})" if rec.note else ""), flush=True)
    return 0
