"""Leader side of WAL streaming: feeds each replica's StreamWal call from memory
(or from WAL files when it is behind), tracks the written/flushed/applied LSNs
replicas report, and holds sync-mode writes until enough replicas flushed them.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from sutra_cluster.config import Config
from sutra_cluster.errors import Unavailable
from sutra_cluster.pb import replication_pb2 as rpb
from sutra_cluster.storage.engine import Engine

log = logging.getLogger(__name__)

HEARTBEAT_S = 0.1
MAX_MESSAGE_BYTES = 4 << 20
RECENTLY_SEEN_S = 300.0


@dataclass
class Follower:
    node_id: str
    address: str
    state: str = "catchup"
    written: int = 0
    flushed: int = 0
    applied: int = 0
    sent: int = 0
    connected: bool = True
    last_seen: float = field(default_factory=time.monotonic)
    stream_id: int = 0


class LeaderStreams:
    def __init__(self, engine: Engine, cfg: Config) -> None:
        self.engine = engine
        self.cfg = cfg
        self.followers: dict[str, Follower] = {}
        self._acks = threading.Condition()
        self._data = threading.Condition()
        self._streams = 0
        self.closing = False
        # None: any connected replica counts for sync commits (manual clusters).
        # A tuple: only these (the sync set published in etcd) count.
        self.sync_ids: tuple[str, ...] | None = None
        self.max_committed = 0
        self.on_stale: list = []  # callbacks(term) when a follower proves this leader stale
        engine.durable_listeners.append(self._on_durable)

    def _on_durable(self, lsn: int) -> None:
        with self._data:
            self._data.notify_all()

    # ---- streaming -------------------------------------------------------
    def _divergence(self, hello: rpb.Hello) -> tuple[str, int | None] | None:
        """None when the follower's log is a prefix of ours; else (reason, the
        LSN to truncate after, or None when only a snapshot can help)."""
        eng = self.engine
        if hello.last_lsn == 0:
            return None
        mine = eng.terms.term_at(hello.last_lsn) if hello.last_lsn <= eng.wal.last_lsn else -1
        if mine == hello.last_term:
            return None
        branch = eng.terms.branch_point(hello.last_lsn, hello.last_term)
        if mine == -1 and branch is not None and branch == hello.last_lsn:
            branch = eng.wal.last_lsn if eng.terms.term_at(eng.wal.last_lsn) == hello.last_term else None
        reason = (f"history diverged: follower {hello.node_id} ends at LSN {hello.last_lsn} of term "
                  f"{hello.last_term}; this leader has {'no such LSN' if mine == -1 else f'term {mine} there'}")
        if mine == 0:
            reason = f"leader's history does not reach back to LSN {hello.last_lsn}"
        return reason, branch

    def stream(self, requests: Iterator[rpb.FollowerMessage], context: grpc.ServicerContext) -> Iterator[rpb.LeaderMessage]:
        eng = self.engine
        first = next(requests, None)
        if first is None or first.WhichOneof("kind") != "hello":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "StreamWal must start with a hello")
        assert first is not None  # abort raised otherwise
        hello = first.hello
        if hello.highest_term > eng.term:
            log.error("follower %s has seen term %d, newer than mine (%d): this leader is stale",
                      hello.node_id, hello.highest_term, eng.term)
            for fn in self.on_stale:
                fn(hello.highest_term)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"stale leader: term {eng.term} is older than term {hello.highest_term} the follower has seen")
        if eng.role != "leader":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"{self.cfg.node_id} is not the leader (leader: {eng.leader_address or 'unknown'})")
        term = eng.term
        head: dict[str, Any] = {"term": term, "leader_id": self.cfg.node_id, "leader_address": self.cfg.address}
        diverged = self._divergence(hello)
        if diverged is not None:
            reason, branch = diverged
            if branch is not None and branch >= eng.wal.first_lsn - 1:
                log.warning("follower %s must cut its log after LSN %d: %s", hello.node_id, branch, reason)
                yield rpb.LeaderMessage(**head, diverged=rpb.Diverged(truncate_after=branch, reason=reason))
            else:
                log.warning("follower %s needs a snapshot: %s", hello.node_id, reason)
                yield rpb.LeaderMessage(**head, need_snapshot=rpb.NeedSnapshot(reason=reason))
            return
        with self._acks:
            self._streams += 1
            f = Follower(hello.node_id, hello.address, written=hello.last_lsn, flushed=hello.last_lsn,
                         sent=hello.last_lsn, stream_id=self._streams)
            self.followers[hello.node_id] = f
        threading.Thread(target=self._read_acks, args=(requests, f), daemon=True,
                         name=f"acks-{hello.node_id}").start()
        log.info("streaming to %s (%s) from LSN %d", f.node_id, f.address, hello.last_lsn)
        try:
            yield from self._feed(f, term, head, context)
        finally:
            with self._acks:
                if self.followers.get(f.node_id) is f:
                    f.connected, f.state = False, "disconnected"
                self._acks.notify_all()

    def _feed(self, f: Follower, term: int, head: dict, context: grpc.ServicerContext) -> Iterator[rpb.LeaderMessage]:
        eng = self.engine
        pos = f.sent
        disk: Iterator | None = None
        last_send = last_hb = time.monotonic()
        if pos + 1 < eng.wal.first_lsn:
            # The WAL was cut past what this replica has (a new, empty replica of a
            # checkpointed leader, or one gone too long): it starts from a snapshot,
            # whether or not the in-memory tail happens to reach back that far.
            reason = f"needs LSN {pos + 1}, the oldest this leader's WAL keeps is {eng.wal.first_lsn}"
            yield rpb.LeaderMessage(**head, need_snapshot=rpb.NeedSnapshot(reason=reason))
            return
        while context.is_active() and f.connected and eng.role == "leader" and eng.term == term and not self.closing:
            entries: list[Any] | None = eng.read_after(pos, MAX_MESSAGE_BYTES)
            if entries is None:
                if disk is None:
                    if pos + 1 < eng.wal.first_lsn:
                        reason = f"needs LSN {pos + 1}, the oldest this leader keeps is {eng.wal.first_lsn}"
                        yield rpb.LeaderMessage(**head, need_snapshot=rpb.NeedSnapshot(reason=reason))
                        return
                    disk = iter(eng.wal.records(pos))
                entries = []
                size = 0
                for rec in disk:
                    entries.append(rec)
                    size += len(rec.payload)
                    if size >= MAX_MESSAGE_BYTES or len(entries) >= 4096:
                        break
                if not entries:
                    disk = None
            else:
                disk = None
            if entries:
                f.state = "streaming" if disk is None else "catchup"
                yield rpb.LeaderMessage(**head, records=rpb.Records(entries=[
                    rpb.WalEntry(lsn=e.lsn, term=e.term, rtype=e.rtype, payload=e.payload) for e in entries]))
                pos = f.sent = entries[-1].lsn
                last_send = time.monotonic()
                if last_send - last_hb >= HEARTBEAT_S:
                    # Under load too: the replica learns the leader's LSN from heartbeats
                    # only, and its own lag (metrics, status) would otherwise read 0.
                    yield self._heartbeat(head)
                    last_hb = last_send = time.monotonic()
                continue
            # Nothing left to send: the replica has everything that is durable here
            # (an idle leader's replicas are streaming, not forever in catch-up).
            f.state = "streaming"
            with self._data:
                self._data.wait_for(functools.partial(self._more_to_send, f, pos), HEARTBEAT_S / 2)
            if time.monotonic() - last_send >= HEARTBEAT_S:
                yield self._heartbeat(head)
                last_hb = last_send = time.monotonic()

    def _heartbeat(self, head: dict) -> rpb.LeaderMessage:
        return rpb.LeaderMessage(**head, heartbeat=rpb.Heartbeat(
            last_lsn=self.engine.wal.durable_lsn, commit_lsn=self.commit_lsn(), timestamp_us=time.time_ns() // 1000))

    def _more_to_send(self, f: Follower, sent: int) -> bool:
        return self.engine.wal.durable_lsn > sent or not f.connected

    def _read_acks(self, requests: Iterator[rpb.FollowerMessage], f: Follower) -> None:
        try:
            for msg in requests:
                if msg.WhichOneof("kind") != "ack":
                    continue
                with self._acks:
                    f.written, f.flushed, f.applied = msg.ack.written_lsn, msg.ack.flushed_lsn, msg.ack.applied_lsn
                    f.last_seen = time.monotonic()
                    self._acks.notify_all()
        except grpc.RpcError:
            pass  # the stream ended; the feeding side notices through the context
        finally:
            with self._acks:
                f.connected = False
                self._acks.notify_all()
            with self._data:
                self._data.notify_all()

    def close(self, grace: float) -> None:
        """End every stream once in-flight writes are done (or ``grace`` passed),
        so sync-mode writes in flight still get their replicas' acknowledgements."""
        deadline = time.monotonic() + grace
        while self.engine.inflight and time.monotonic() < deadline:
            time.sleep(0.01)
        self.closing = True
        with self._data:
            self._data.notify_all()

    # ---- commit ------------------------------------------------------------
    def connected(self) -> list[Follower]:
        return [f for f in self.followers.values() if f.connected]

    def _counted(self) -> list[Follower]:
        ids = self.sync_ids
        return [f for f in self.followers.values() if f.connected and (ids is None or f.node_id in ids)]

    def _flushed_at_least(self, lsn: int) -> int:
        return sum(1 for f in self._counted() if f.flushed >= lsn)

    def _degraded(self) -> bool:
        return self.cfg.sync_fallback and len(self.connected()) < self.cfg.sync_replicas

    def commit_lsn(self) -> int:
        """Highest LSN that is committed: durable here and, in sync mode, flushed
        by SUTRA_SYNC_REPLICAS replicas."""
        durable = self.engine.wal.durable_lsn
        if self.cfg.commit_mode != "sync" or self._degraded():
            return durable
        flushed = sorted((f.flushed for f in self._counted()), reverse=True)
        n = self.cfg.sync_replicas
        return min(durable, flushed[n - 1]) if len(flushed) >= n else self.engine.applied_lsn

    def wait_commit(self, lsn: int) -> None:
        """The sync-mode commit gate. Raises Unavailable, and the write is then
        not acknowledged, when too few replicas flush it in time."""
        if self.cfg.commit_mode != "sync" or self._degraded():
            self.max_committed = max(self.max_committed, lsn)
            return
        n = self.cfg.sync_replicas
        timeout = self.cfg.sync_timeout_ms / 1000.0
        with self._acks:
            ok = self._acks.wait_for(
                lambda: self._flushed_at_least(lsn) >= n or self.engine.role != "leader" or self._degraded(),
                timeout,
            )
            got = self._flushed_at_least(lsn)
        if self.engine.role != "leader":
            raise Unavailable(f"leadership lost before LSN {lsn} was replicated; the write was not acknowledged")
        if ok or got >= n:
            self.max_committed = max(self.max_committed, lsn)
            return
        raise Unavailable(
            f"sync commit: {got} of {n} required replicas acknowledged LSN {lsn} within "
            f"{self.cfg.sync_timeout_ms} ms ({len(self.connected())} connected); the write is durable on "
            "the leader but was NOT acknowledged: retry it"
        )

    def retain_floor(self) -> int | None:
        """Lowest flushed LSN of replicas connected or seen recently: the WAL they
        still need (the engine bounds this by SUTRA_WAL_KEEP_BYTES)."""
        now = time.monotonic()
        needed = [f.flushed for f in self.followers.values() if f.connected or now - f.last_seen < RECENTLY_SEEN_S]
        return min(needed) if needed else None

    # ---- status --------------------------------------------------------------
    def lag(self, f: Follower) -> tuple[int, float]:
        """(bytes, seconds) a replica's flushed position is behind this leader."""
        eng = self.engine
        if f.flushed >= eng.wal.durable_lsn:
            return 0, 0.0
        now = time.monotonic()
        pos = eng.recent.position(f.flushed)
        if pos is None:
            pos = eng.recent.oldest()
        if pos is None:
            return 0, 0.0
        return max(0, eng.recent.total - pos[0]), max(0.0, now - pos[1])

    def status(self) -> list[rpb.ReplicaStatus]:
        out = []
        now = time.monotonic()
        sync_ids = self.sync_set()
        for f in sorted(self.followers.values(), key=lambda x: x.node_id):
            lag_b, lag_s = self.lag(f)
            out.append(rpb.ReplicaStatus(
                node_id=f.node_id, address=f.address, state=f.state if f.connected else "disconnected",
                written_lsn=f.written, flushed_lsn=f.flushed, applied_lsn=f.applied, lag_bytes=lag_b,
                lag_ms=lag_s * 1000.0, sync=f.node_id in sync_ids, last_seen_seconds_ago=now - f.last_seen,
            ))
        return out

    def sync_set(self) -> set[str]:
        """Replicas whose acknowledgements currently commit sync writes."""
        if self.cfg.commit_mode != "sync":
            return set()
        if self.sync_ids is not None:
            return set(self.sync_ids)
        best = sorted(self.connected(), key=lambda f: (-f.flushed, f.node_id))
        return {f.node_id for f in best[: self.cfg.sync_replicas]}
