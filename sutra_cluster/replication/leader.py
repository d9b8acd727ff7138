"""Leader side of WAL streaming: feeds each replica's StreamWal call from memory
(or from WAL files when it is behind), tracks the written/flushed/applied LSNs
replicas report, and holds sync-mode writes until enough replicas flushed them.
"""

from __future__ import annotations

import bisect
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from sutra_cluster import retry
from sutra_cluster.config import Config
from sutra_cluster.errors import Unavailable
from sutra_cluster.pb import replication_pb2 as rpb
from sutra_cluster.replication.commit import ReplicaPosition, SyncCommit
from sutra_cluster.roles import MAX_TERM, CommitMode, Role
from sutra_cluster.storage import lagtrace
from sutra_cluster.storage.engine import Engine
from sutra_cluster.storage.identity import ClusterIdentity
from sutra_cluster.storage.terms import TermHistory
from sutra_cluster.storage.wal_waiters import Waiters

log = logging.getLogger(__name__)

HEARTBEAT_S = 0.1
MAX_MESSAGE_BYTES = 4 << 20
RECENTLY_SEEN_S = 300.0
MAX_FOLLOWERS = 64  # remembered streams, connected or recently gone
COMMIT_NEWS_S = 0.01  # under load, a moved commit LSN reaches replicas at most this often
DURABLE_TIMES_KEPT = 8192  # recent fsync groups whose time lag is measured from


@dataclass
class Follower:
    """One replica's stream, as this leader sees it."""

    node_id: str
    address: str
    pos: ReplicaPosition
    state: str = "catchup"
    written: int = 0
    applied: int = 0
    sent: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    stream_id: int = 0
    acked: bool = False  # acknowledged anything: a replica, not just a hello
    joinable: bool = False  # the HA loop was told it can fill a short sync set
    commit_sent: int = 0  # the commit LSN this replica was last told (it limits what it shows)

    @property
    def flushed(self) -> int:
        return self.pos.flushed

    @property
    def connected(self) -> bool:
        return self.pos.connected


def divergence(terms: TermHistory, leader_last: int, node_id: str, last_lsn: int,
               last_term: int) -> tuple[str, int | None] | None:
    """Whether a follower whose log ends at (``last_lsn``, ``last_term``) holds a
    prefix of this leader's history (``terms``, log ending at ``leader_last``).

    None when it does; else (why, the LSN it must cut its log after, or None when
    only a snapshot can help: the leader's history does not know that term)."""
    if last_lsn == 0:
        return None
    mine = terms.term_at(last_lsn) if last_lsn <= leader_last else -1
    if mine == last_term:
        return None
    branch = terms.branch_point(last_lsn, last_term)
    if mine == -1 and branch is not None and branch == last_lsn:
        # The follower is ahead of this leader in a term both know: it keeps
        # what this leader has, if this leader's last record is of that term.
        branch = leader_last if terms.term_at(leader_last) == last_term else None
    reason = (f"history diverged: follower {node_id} ends at LSN {last_lsn} of term "
              f"{last_term}; this leader has {'no such LSN' if mine == -1 else f'term {mine} there'}")
    if mine == 0:
        reason = f"leader's history does not reach back to LSN {last_lsn}"
    return reason, branch


def records_message(head: dict[str, Any], entries: list[Any], commit_lsn: int) -> rpb.LeaderMessage:
    """A records message, built in place: the same bytes as nesting
    ``LeaderMessage(records=Records(entries=[WalEntry(...)]))``, which copies each
    submessage into its parent and cost 8.5 ms of CPU per 3.3 MB record here
    (against 0.1 ms in place): most of what a feeder spent per batched record."""
    msg = rpb.LeaderMessage(**head)
    records = msg.records
    add = records.entries.add
    for e in entries:
        add(lsn=e.lsn, term=e.term, rtype=e.rtype, payload=e.payload)
    records.commit_lsn = commit_lsn
    return msg


class LeaderStreams:
    """Feeds replicas and decides what may be acknowledged. Commit bookkeeping is
    ``SyncCommit`` (pure), always used under ``self._acks``."""

    def __init__(self, engine: Engine, cfg: Config, *, managed: bool, identity: ClusterIdentity) -> None:
        self.engine = engine
        self.cfg = cfg
        self.managed = managed
        self.identity = identity
        self.followers: dict[str, Follower] = {}
        self._acks = threading.Condition()
        # Writers waiting for sync replicas, woken one by one (only those whose
        # LSN the acknowledgements committed): with many writers in flight,
        # notify_all woke every one of them at every acknowledgement.
        self._committing = Waiters()
        self._data = threading.Condition()
        self._streams = 0
        self.closing = False
        self.commit = SyncCommit(CommitMode(cfg.commit_mode), cfg.sync_replicas, managed=managed,
                                 fallback=cfg.sync_fallback)
        self.on_stale: list = []  # callbacks(term) when a follower proves this leader stale
        # Called when a replica outside a short sync set has caught up with every
        # acknowledged write: the HA loop publishes it now instead of a tick later
        # (right after an election, writes wait for exactly that).
        self.on_joinable: Callable[[], None] | None = None
        # (last LSN of a group, when it became durable here), oldest first.
        self._durable_at: deque[tuple[int, float]] = deque(maxlen=DURABLE_TIMES_KEPT)
        engine.durable_listeners.append(self._on_durable)
        # Managed, a leader streams each group once it is written to its log file,
        # so the replicas' receive, append and fsync overlap its own fsync. Such a
        # record is lost on this node only with its machine (or a failed fsync,
        # which is fatal), and a node that comes back leads only in a new term, so
        # a replica holding the lost tail is cut back like any divergent tail
        # (``divergence``) or, promoted, keeps it. Nothing counts it as committed
        # before it is durable here too (``SyncCommit.commit_lsn``, the writer's own
        # wait). Without etcd a restarted leader keeps its term, and could write
        # other records at those LSNs in the same term: it streams durable records.
        self.unflushed = managed
        if self.unflushed:
            engine.written_listeners.append(self._wake_feeders)

    def _on_durable(self, lsn: int) -> None:
        # Lag is counted from when a record became durable here (PostgreSQL's
        # flush_lag does the same); a replica that flushed it sooner has no lag.
        times = self._durable_at
        if times and times[-1][0] >= lsn:
            times.clear()  # the log was cut back and LSNs are reused: older times no longer apply
        times.append((lsn, time.monotonic()))
        if not self.unflushed:  # else the feeders were woken when the group was written
            self._wake_feeders()

    def _wake_feeders(self, lsn: int = 0) -> None:
        """Every feeder looks again for records to send (or finds its stream gone)."""
        with self._data:
            self._data.notify_all()

    def _send_limit(self) -> int:
        """The highest LSN a replica may be sent."""
        wal = self.engine.wal
        return wal.written_lsn if self.unflushed else wal.durable_lsn

    def wake_commits(self) -> None:
        """Wake writes waiting for replicas (the role changed: they fail now)."""
        with self._acks:
            self._wake_committed(everyone=True)

    def _wake_committed(self, everyone: bool = False) -> None:
        """(``_acks`` held) Wake the writers whose LSN may be acknowledged now, or
        (``everyone``: the term or role changed) all of them. Each re-checks
        ``try_commit`` itself: this only chooses whom to wake."""
        if not self._committing:
            return
        upto = None if everyone else self.commit.committable()
        if upto is None:
            self._committing.wake(0, False, everyone=True)
        elif upto > 0:
            self._committing.wake(upto, False)

    def begin_term(self, from_lsn: int) -> None:
        """A new term starts at ``from_lsn``: forget the old term's streams and
        treat everything up to it as possibly acknowledged (see SyncCommit.lead)."""
        with self._acks:
            self.commit.lead(from_lsn)
            for f in self.followers.values():
                f.pos.connected = False
            self.followers.clear()
            self._wake_committed(everyone=True)

    # ---- streaming -------------------------------------------------------
    def _divergence(self, hello: rpb.Hello) -> tuple[str, int | None] | None:
        return divergence(self.engine.terms, self.engine.wal.last_lsn, hello.node_id, hello.last_lsn, hello.last_term)

    def _check_hello(self, hello: rpb.Hello, context: grpc.ServicerContext) -> None:
        """A hello's numbers are claims: bound them before anything acts on them."""
        eng = self.engine
        if not hello.node_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hello.node_id is empty")
        if hello.node_id == self.cfg.node_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"hello.node_id {hello.node_id!r} is this leader's own id")
        for name in ("highest_term", "last_term"):
            if getattr(hello, name) > MAX_TERM:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"hello.{name} is {getattr(hello, name)}, above the largest allowed term {MAX_TERM}")
        if hello.highest_term > eng.term:
            if self.managed:
                # etcd, not a peer's word, says who leads: the HA loop steps down
                # when the leader key says so. Refuse this stream only.
                log.warning("follower %s claims term %d, newer than mine (%d); refusing its stream "
                            "(etcd decides leadership)", hello.node_id, hello.highest_term, eng.term)
            else:
                log.error("follower %s has seen term %d, newer than mine (%d): this leader is stale",
                          hello.node_id, hello.highest_term, eng.term)
                for fn in self.on_stale:
                    fn(hello.highest_term)
            context.set_trailing_metadata(((retry.REASON_KEY, retry.STALE_LEADER),))
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"stale leader: term {eng.term} is older than term {hello.highest_term} the follower has seen")
        if eng.role != Role.LEADER:
            context.set_trailing_metadata(((retry.REASON_KEY, retry.NOT_LEADER),))
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"{self.cfg.node_id} is not the leader (leader: {eng.leader_address or 'unknown'})")

    def check_cluster(self, peer: str, name: str, value: str, context: grpc.ServicerContext) -> None:
        """Refuse a peer of another cluster (FAILED_PRECONDITION, reason foreign-cluster)
        before anything else: it must never be fed, counted or sent a snapshot."""
        why = self.identity.refusal(peer, name, value)
        if why is not None:
            log.error("refused %s", why)
            context.set_trailing_metadata(((retry.REASON_KEY, retry.FOREIGN_CLUSTER),))
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"refused: {why}")

    def stream(self, requests: Iterator[rpb.FollowerMessage], context: grpc.ServicerContext,
               peer_name: str = "") -> Iterator[rpb.LeaderMessage]:
        """Feed one replica. ``peer_name``: the node name the caller authenticated
        as (mutual TLS), which its hello must carry; empty when the transport
        names no node (shared secret, loopback)."""
        eng = self.engine
        first = next(requests, None)
        if first is None or first.WhichOneof("kind") != "hello":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "StreamWal must start with a hello")
        assert first is not None  # abort raised otherwise
        hello = first.hello
        if peer_name and hello.node_id != peer_name:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"hello.node_id {hello.node_id!r} is not the authenticated node {peer_name!r}")
        self.check_cluster(f"follower {hello.node_id!r} ({hello.address or 'no address'})", hello.cluster_name,
                           hello.cluster_uuid, context)
        self._check_hello(hello, context)
        term = eng.term
        head: dict[str, Any] = {"term": term, "leader_id": self.cfg.node_id, "leader_address": self.cfg.address,
                                "cluster_uuid": self.identity.uuid}
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
            # A replica is counted from what this leader has itself sent it, never
            # from the LSN its hello claims: acknowledgements above ``sent`` are cut.
            start = min(hello.last_lsn, self._send_limit())
            pos = self.commit.connect(hello.node_id, 0, time.monotonic())
            f = Follower(hello.node_id, hello.address, pos, written=start, sent=start, stream_id=self._streams)
            old = self.followers.get(hello.node_id)
            if old is not None:
                self.commit.disconnect(old.pos)
            self.followers[hello.node_id] = f
            self._prune()
        threading.Thread(target=self._read_acks, args=(requests, f), daemon=True,
                         name=f"acks-{hello.node_id}").start()
        log.info("streaming to %s (%s) from LSN %d", f.node_id, f.address, start)
        try:
            yield from self._feed(f, term, head, context)
        finally:
            with self._acks:
                if self.followers.get(f.node_id) is f:
                    f.state = "disconnected"
                self.commit.disconnect(f.pos)
                self._wake_committed()  # with SUTRA_SYNC_FALLBACK, fewer replicas may commit

    def _prune(self) -> None:
        """Forget disconnected followers not seen for RECENTLY_SEEN_S, and beyond
        MAX_FOLLOWERS the oldest disconnected ones (hellos are cheap to send; the
        state and metric series they leave must stay bounded)."""
        now = time.monotonic()
        gone = sorted((f for f in self.followers.values() if not f.connected), key=lambda f: f.last_seen)
        for f in gone:
            if now - f.last_seen >= RECENTLY_SEEN_S or len(self.followers) > MAX_FOLLOWERS:
                del self.followers[f.node_id]
                self.commit.forget(f.node_id, f.pos)

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
        while context.is_active() and f.connected and eng.role == Role.LEADER and eng.term == term and not self.closing:
            entries: list[Any] | None = eng.read_after(pos, MAX_MESSAGE_BYTES, upto=self._send_limit())
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
                # In sync mode a replica shows only what the leader committed: every
                # records message carries the commit LSN, so a stream of writes tells
                # it without a heartbeat (and an acknowledgement of it) per write.
                msg = records_message(head, entries, self._commit_for(f))
                # Set before the message leaves: its acknowledgement may come back
                # before this generator runs again, and acks above ``sent`` are cut.
                with self._acks:
                    pos = f.sent = entries[-1].lsn
                if lagtrace.ON:
                    lagtrace.mark(f"sent:{f.node_id}", pos)
                yield msg
                last_send = time.monotonic()
                if last_send - last_hb >= HEARTBEAT_S or (
                        last_send - last_hb >= COMMIT_NEWS_S and self._commit_news(f)):
                    # Under load too: the replica learns the leader's LSN (and, in sync
                    # mode, what it may show) from heartbeats only.
                    yield self._heartbeat(head, f)
                    last_hb = last_send = time.monotonic()
                continue
            # Nothing left to send: the replica has everything that is durable here
            # (an idle leader's replicas are streaming, not forever in catch-up).
            f.state = "streaming"
            with self._data:
                self._data.wait_for(functools.partial(self._more_to_send, f, pos), self._idle_wait(f, pos, last_send))
            if time.monotonic() - last_send >= HEARTBEAT_S or (
                    time.monotonic() - last_send >= COMMIT_NEWS_S and self._commit_news(f)):
                yield self._heartbeat(head, f)
                last_hb = last_send = time.monotonic()

    def _heartbeat(self, head: dict, f: Follower) -> rpb.LeaderMessage:
        commit = self.commit_lsn()
        f.commit_sent = max(f.commit_sent, commit)
        return rpb.LeaderMessage(**head, heartbeat=rpb.Heartbeat(
            last_lsn=self.engine.wal.durable_lsn, commit_lsn=commit, timestamp_us=time.time_ns() // 1000))

    def _commit_for(self, f: Follower) -> int:
        """The commit LSN a records message to ``f`` carries (sync mode; else 0)."""
        if self.commit.mode != CommitMode.SYNC:
            return 0
        commit = self.commit_lsn()
        f.commit_sent = max(f.commit_sent, commit)
        return commit

    def _idle_wait(self, f: Follower, sent: int, last_send: float) -> float:
        """How long an idle feeder waits for new records. Acknowledgements do not
        wake it (that was a heartbeat and an acknowledgement more per write): while
        ``f`` was sent records whose commit it was not told, the feeder looks again
        COMMIT_NEWS_S after its last message, so a replica shows a committed write
        at most about COMMIT_NEWS_S later even when no further write carries it."""
        if self.commit.mode == CommitMode.SYNC and f.commit_sent < sent:
            left = last_send + COMMIT_NEWS_S - time.monotonic()
            return left if left > 0 else COMMIT_NEWS_S  # a commit still awaited: look every COMMIT_NEWS_S
        return HEARTBEAT_S / 2

    def _commit_news(self, f: Follower) -> bool:
        """In sync mode: the commit LSN moved past what ``f`` was last told."""
        return self.commit.mode == CommitMode.SYNC and self.commit_lsn() > f.commit_sent

    def _more_to_send(self, f: Follower, sent: int) -> bool:
        return self._send_limit() > sent or not f.connected

    def _read_acks(self, requests: Iterator[rpb.FollowerMessage], f: Follower) -> None:
        try:
            for msg in requests:
                if msg.WhichOneof("kind") != "ack":
                    continue
                if lagtrace.ON:
                    lagtrace.mark(f"ack:{f.node_id}", msg.ack.flushed_lsn)
                with self._acks:
                    # Never count an LSN this stream has not been sent.
                    f.written = min(msg.ack.written_lsn, f.sent)
                    f.applied = min(msg.ack.applied_lsn, f.sent)
                    f.last_seen = time.monotonic()
                    f.acked = True
                    self.commit.ack(f.pos, min(msg.ack.flushed_lsn, f.sent), f.last_seen)
                    self._wake_committed()
                    joinable = self._newly_joinable(f)
                if joinable and self.on_joinable is not None:
                    self.on_joinable()
        except grpc.RpcError:
            pass  # the stream ended; the feeding side notices through the context
        finally:
            with self._acks:
                self.commit.disconnect(f.pos)
                self._wake_committed()
            self._wake_feeders()

    def _newly_joinable(self, f: Follower) -> bool:
        """True once per stream, when ``f`` could fill a short sync set."""
        c = self.commit
        if f.joinable or c.members is None or len(c.members) >= c.required or f.node_id in c.members:
            return False
        if f.pos.flushed < c.committed:
            return False
        f.joinable = True
        return True

    def close(self, grace: float) -> None:
        """End every stream once in-flight writes are done (or ``grace`` passed),
        so sync-mode writes in flight still get their replicas' acknowledgements."""
        deadline = time.monotonic() + grace
        while self.engine.inflight and time.monotonic() < deadline:
            time.sleep(0.01)
        self.closing = True
        self._wake_feeders()

    # ---- commit ------------------------------------------------------------
    def connected(self) -> list[Follower]:
        return [f for f in self.followers.values() if f.connected]

    def commit_lsn(self) -> int:
        """Highest LSN that is committed: durable here and, in sync mode, flushed
        by SUTRA_SYNC_REPLICAS counted replicas."""
        with self._acks:
            return self.commit.commit_lsn(self.engine.wal.durable_lsn, self.engine.applied_lsn)

    def wait_commit(self, lsn: int) -> None:
        """The commit gate. Raises Unavailable, and the write is then not
        acknowledged, when too few replicas flush it in time or leadership ends."""
        if self.commit.mode == CommitMode.ASYNC:
            # Nothing to wait for, and ``committed`` matters only to the sync-set
            # rules: skip the condition every writer would otherwise contend on.
            self.commit.try_commit(lsn)
            if self.engine.role != Role.LEADER:
                raise Unavailable(f"leadership lost before LSN {lsn} was acknowledged; the write was not acknowledged")
            return
        deadline = time.monotonic() + self.cfg.sync_timeout_ms / 1000.0
        with self._acks:
            while True:
                ok = self.engine.role != Role.LEADER or self.commit.try_commit(lsn)
                left = deadline - time.monotonic()
                if ok or left <= 0:
                    break
                self._committing.sleep(self._acks, lsn, False, left)
            got = self.commit.acknowledged(lsn)
            n = self.commit.required
            connected = len(self.commit.connected())
        if self.engine.role != Role.LEADER:
            raise Unavailable(f"leadership lost before LSN {lsn} was replicated; the write was not acknowledged")
        if ok:
            return
        raise Unavailable(
            f"sync commit: {got} of {n} required replicas acknowledged LSN {lsn} within "
            f"{self.cfg.sync_timeout_ms} ms ({connected} connected); the write is durable on "
            "the leader but was NOT acknowledged: retry it"
        )

    # ---- the sync set (called by the HA loop through the node port) --------------
    def sync_plan(self, now: float, stall_s: float, grace: dict[str, int]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        with self._acks:
            return self.commit.plan(now, stall_s, grace)

    def sync_shrink(self, keep: tuple[str, ...]) -> None:
        with self._acks:
            self.commit.shrink(keep)

    def sync_adopt(self, published: tuple[str, ...]) -> None:
        with self._acks:
            self.commit.adopt(published)
            self._wake_committed()

    def sync_floor(self) -> int | None:
        """SyncCommit.floor, read under the lock that commits take (a commit that
        counted a member just shrunk away has finished before it is read)."""
        with self._acks:
            return self.commit.floor()

    def sync_count_all(self, members: tuple[str, ...]) -> None:
        with self._acks:
            self.commit.count_all(members)
            self._wake_committed()

    def retain_floor(self) -> int | None:
        """Lowest flushed LSN of replicas connected or seen recently: the WAL they
        still need (the engine bounds this by SUTRA_WAL_KEEP_BYTES)."""
        now = time.monotonic()
        # A stream that never acknowledged anything (a hello, then gone) keeps no WAL.
        needed = [f.flushed for f in self.followers.values()
                  if f.connected or (f.acked and now - f.last_seen < RECENTLY_SEEN_S)]
        return min(needed) if needed else None

    # ---- status --------------------------------------------------------------
    def lag(self, f: Follower) -> tuple[int, float]:
        """(bytes, seconds) a replica's flushed position is behind this leader: the
        bytes logged here after it, and how long the first record it lacks has
        been durable here (from its append when that is no longer remembered)."""
        eng = self.engine
        if f.flushed >= eng.wal.durable_lsn:
            return 0, 0.0
        now = time.monotonic()
        pos = eng.recent.position(f.flushed)
        if pos is None:
            pos = eng.recent.oldest()
        if pos is None:
            return 0, 0.0
        since = pos[1]
        groups = list(self._durable_at)  # appended to by the WAL's flushing thread
        i = bisect.bisect_right(groups, (f.flushed, float("inf")))
        if 0 < i < len(groups) or (i == 0 and groups and groups[0][0] == f.flushed + 1):
            since = max(since, groups[i][1])
        elif groups and i == len(groups):
            since = now  # durable a moment ago: its listeners are being told right now
        return max(0, eng.recent.total - pos[0]), max(0.0, now - since)

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
        if self.commit.mode != CommitMode.SYNC:
            return set()
        if self.commit.members is not None:
            return set(self.commit.members)
        best = sorted(self.connected(), key=lambda f: (-f.flushed, f.node_id))
        return {f.node_id for f in best[: self.cfg.sync_replicas]}
