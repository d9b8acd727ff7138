"""A simulated node's data plane, behind the real ``NodePort`` interface.

What survives a crash (the "disk"): the log up to the durable LSN and the term
history (the real ``TermHistory`` logic, minus its file). Everything else is
the process and is lost: role, streams, the commit bookkeeping (a real
``SyncCommit``), pending writes.

Modelled after ``ReplicationManager`` / ``LeaderStreams`` / ``FollowerLoop``:
- a leader streams records before they are durable on it (``LeaderStreams.unflushed``:
  the real one waits until they are in its log file; here they go at once, and a crash
  loses everything not durable, as losing the machine would), and counts a replica's
  position from its hello (``connect``) and its acknowledgements (``ack``);
- a write is acknowledged only once it is durable here, ``SyncCommit.try_commit``
  admits it, and the HA loop's fence passes, in that order;
- a follower's hello carries its last LSN, the term there and the highest term
  it has seen; the leader answers with records, "cut after LSN N" (its term
  history finds the branch point) or a snapshot;
- a demoted or restarted node refuses reads until a leader accepted its history.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sutra_cluster.failover.port import NodeState
from sutra_cluster.replication.commit import SyncCommit
from sutra_cluster.replication.leader import divergence
from sutra_cluster.roles import CommitMode, Role
from sutra_cluster.storage.terms import TermHistory
from tests.sim.streams import Stream
from tests.sim.world import DROP, REJECT

if TYPE_CHECKING:
    from tests.sim.cluster import SimCluster

Record = tuple[int, int]  # (term, write id); write id 0 is a term record
HEARTBEAT_S = 0.1
CONNECT_TIMEOUT_S = 2.0  # a connection into a dropping link fails after this long
JOINING = "joining the cluster: history not yet checked against the leader"
REJOINING = "former leader rejoining: history not yet checked against the new leader"


class _Nowhere:
    """A directory with no term file in it (and no way to write one)."""

    def __truediv__(self, name: str) -> _Nowhere:
        return self

    def exists(self) -> bool:
        return False


class SimTerms(TermHistory):
    """The real term history (``term_at``, ``branch_point``, ``begin``, ``truncate``)
    kept in memory: simulated disks are not files, so saving is a no-op."""

    def __init__(self) -> None:
        super().__init__(_Nowhere())  # type: ignore[arg-type]

    def _save(self) -> None:
        pass


def addr(node_id: str) -> str:
    return f"{node_id}:50051"


def node_of(address: str) -> str:
    return address.rpartition(":")[0]


@dataclass
class Follow:
    """One FollowerLoop: follows ``target`` until stopped, reconnecting with backoff."""

    target: str
    expected_term: int = 0  # the term etcd's leader key names (0: not known)
    stream: Stream | None = None
    state: str = "connecting"
    leader_last: int = 0
    caught_up_at: float = 0.0
    backoff: float = 0.05
    stopped: bool = False
    hello_lsn: int = 0


@dataclass
class Pending:
    lsn: int
    wid: int
    deadline: float


@dataclass
class Hello:
    node_id: str
    last_lsn: int
    last_term: int
    highest_term: int


class SimNode:
    """One node: implements ``sutra_cluster.failover.port.NodePort``."""

    def __init__(self, c: SimCluster, node_id: str, sync_factory: Callable[..., SyncCommit]) -> None:
        self.c = c
        self.id = node_id
        self.address = addr(node_id)
        self.sync_factory = sync_factory
        self.log: list[Record] = []
        self.durable = 0
        self.terms = SimTerms()
        self.slow_disk = False
        self.alive = True
        self.exposed = 0  # reads were served up to this LSN (checker: strict replica reads)
        self._fresh_process()

    def _fresh_process(self) -> None:
        cfg = self.c.cfg
        self.role = Role.REPLICA
        self.lead_term = 0
        self.read_fence: str | None = JOINING
        self.validated_by = ""
        self.fence: Callable[[], None] | None = None
        self.sync = self.sync_factory(CommitMode(cfg.commit_mode), cfg.sync_replicas, managed=True,
                                      fallback=cfg.sync_fallback)
        self.pending: list[Pending] = []
        self.writes_paused = False
        self.flushing = False
        self.disk_gen = 0
        self.follower: Follow | None = None
        self.out: dict[str, Stream] = {}
        # A replica's commit news (ReplicationManager.visible_limit): the highest commit LSN any leader
        # told this process, on records or heartbeats. Lost with the process.
        self.replica_commit = 0

    # ---- life ----------------------------------------------------------------------
    def crash(self) -> None:
        """Lose the process and everything not durable."""
        self.alive = False
        if len(self.log) > self.durable:
            lost = self.log[self.durable:]
            others = [n for n in self.c.nodes.values() if n is not self]
            if any(a == b for n in others for a, b in zip(n.log[self.durable:], lost)):
                self.c.stats.lost_tail_held += 1  # a replica holds, at the same LSN, a record this crash lost
            self.log = self.log[: self.durable]
        self.terms.truncate(self.durable)
        self.exposed = min(self.exposed, self.durable)
        self._fresh_process()

    def restart(self) -> None:
        self.alive = True
        self._fresh_process()

    # ---- NodePort ------------------------------------------------------------------
    def state(self) -> NodeState:
        f = self.follower
        lag = 0.0
        if f is not None and f.leader_last > self.durable:
            lag = (self.c.sched.now - f.caught_up_at) * 1000.0
        return NodeState(role=self.role, term=self.terms.highest, durable_lsn=self.durable,
                         last_term=self.terms.last_term, healthy=True,
                         streaming=f is not None and f.state == "streaming", lag_ms=lag, inflight=len(self.pending))

    def lead(self, term: int) -> int:
        if term < self.terms.highest:
            raise ValueError(f"term {term} is older than term {self.terms.highest} already seen")
        self._stop_following()
        for s in list(self.out.values()):
            self.c.wire.reset(s, (s.follower,))
        self.out.clear()
        self.terms.begin(term, len(self.log) + 1)
        self.log.append((term, 0))
        self.durable = len(self.log)  # begin_term waits for the term record to be durable
        lsn = self.durable
        self.sync.lead(lsn)
        self.role = Role.LEADER
        self.lead_term = term
        self.read_fence = None
        self.validated_by = self.id
        self.c.check.on_lead(self, term, lsn)
        return lsn

    def step_down(self, reason: str) -> None:
        was = self.role == Role.LEADER
        self.role = Role.REPLICA
        if was:
            self.read_fence = REJOINING
            self.validated_by = ""
        self._fail_pending()
        for s in list(self.out.values()):
            self.c.wire.reset(s, (s.follower,))
        self.out.clear()

    def follow(self, address: str, term: int = 0) -> None:
        if self.role == Role.LEADER:
            self.step_down(f"following {address}")
        target = node_of(address)
        f = self.follower
        if f is not None and f.target == target and f.expected_term == term and not f.stopped:
            return
        self._stop_following()
        self.follower = Follow(target, term, caught_up_at=self.c.sched.now)
        self._connect(self.follower)

    def freeze(self) -> None:
        self._stop_following()

    def set_fence(self, fence: object) -> None:
        self.fence = fence  # type: ignore[assignment]

    def set_wake(self, wake: object) -> None:
        pass  # the simulator ticks every node on its own schedule

    def sync_plan(self, now: float, grace: dict[str, int]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return self.sync.plan(now, self.c.stall_s, grace)

    def sync_members(self) -> tuple[str, ...] | None:
        return self.sync.members

    def sync_count(self, members: tuple[str, ...]) -> None:
        self.sync.count_all(members)
        self._try_acks()

    def sync_shrink(self, keep: tuple[str, ...]) -> None:
        self.sync.shrink(keep)

    def sync_adopt(self, published: tuple[str, ...]) -> None:
        self.sync.adopt(published)
        self._try_acks()

    def sync_floor(self) -> int | None:
        return self.sync.floor()

    def replica_flushed(self, node_id: str) -> int | None:
        s = self.out.get(node_id)
        if s is None or not s.open or s.pos is None or not s.pos.connected:
            return None
        return s.pos.flushed

    def pause_writes(self, why: str) -> None:
        self.writes_paused = True

    def resume_writes(self) -> None:
        self.writes_paused = False

    def last_lsn(self) -> int:
        return len(self.log)

    # ---- the disk --------------------------------------------------------------------
    def _disk_delay(self) -> float:
        rng = self.c.sched.rng
        return rng.uniform(0.05, 0.4) if self.slow_disk else rng.uniform(0.0002, 0.002)

    def _flush(self) -> None:
        """Group commit: one fsync in flight covers everything appended before it."""
        if self.flushing or self.durable >= len(self.log):
            return
        self.flushing = True
        self.c.sched.after(self._disk_delay(), self._flushed, len(self.log), self.disk_gen, node=self.id)

    def _flushed(self, upto: int, gen: int) -> None:
        self.flushing = False
        if gen == self.disk_gen and upto > self.durable:
            self.durable = min(upto, len(self.log))
            if self.role == Role.LEADER:
                for s in list(self.out.values()):
                    self._feed(s)
                self._try_acks()
            else:
                self._ack_leader()
        self._flush()

    # ---- writes (leader) ------------------------------------------------------------
    def client_write(self, wid: int) -> None:
        if self.role != Role.LEADER or self.writes_paused:
            return
        self.log.append((self.lead_term, wid))
        self.pending.append(Pending(len(self.log), wid, self.c.sched.now + self.c.cfg.sync_timeout_ms / 1000.0))
        self._flush()
        for s in list(self.out.values()):  # streamed before it is durable here
            self._feed(s)

    def _fail_pending(self) -> None:
        self.pending.clear()

    def _try_acks(self) -> None:
        now = self.c.sched.now
        while self.pending:
            p = self.pending[0]
            if self.role != Role.LEADER:
                self._fail_pending()
                return
            if p.lsn > self.durable:
                return
            if not self.sync.try_commit(p.lsn):
                if now < p.deadline:
                    return
                self.pending.pop(0)  # SUTRA_SYNC_TIMEOUT_MS: durable here, NOT acknowledged
                continue
            self.pending.pop(0)
            try:
                if self.fence is not None:
                    self.fence()
            except Exception:  # the fence refused: not acknowledged
                continue
            self.c.check.on_ack(self, p.wid, p.lsn, self.lead_term)

    # ---- leader side of streams ---------------------------------------------------------
    def timer(self) -> None:
        """Every HEARTBEAT_S: feed or heartbeat each stream; time out sync waits."""
        if self.role == Role.LEADER:
            for s in list(self.out.values()):
                if not self._feed(s):
                    self.c.wire.send(s.down, self.c.nodes[s.follower].on_heartbeat, s, self.durable,
                                     self.commit_news())
            self._try_acks()
        self.c.sched.after(HEARTBEAT_S, self.timer, node=self.id)

    def _feed(self, s: Stream) -> bool:
        if not s.open:
            return False
        if self.role != Role.LEADER or self.terms.highest != s.term:
            self.out.pop(s.follower, None)
            self.c.wire.reset(s, (s.follower,))
            return False
        limit = len(self.log)  # what is logged, durable or not
        if s.sent >= limit:
            return False
        entries = self.log[s.sent: limit]
        self.c.wire.send(s.down, self.c.nodes[s.follower].on_records, s, s.sent + 1, entries, self.commit_news())
        s.sent = limit
        return True


    def commit_news(self) -> int:
        """The commit LSN a message to a replica carries (LeaderStreams._commit_for): in sync mode
        what the sync set flushed (else what is visible already), else 0."""
        if self.c.rules.mode != "sync":
            return 0
        return self.sync.commit_lsn(self.durable, self.exposed)

    def visible_limit(self) -> int:
        """The highest LSN this node's reads may show now (ReplicationManager.visible_limit)."""
        if self.c.rules.mode != "sync":
            return self.durable
        if self.role == Role.LEADER:
            return self.sync.commit_lsn(self.durable, self.exposed)
        if self.c.rules.replica_shows == "durable":
            return self.durable
        return min(self.durable, self.replica_commit)

    def on_hello(self, s: Stream, h: Hello) -> None:
        if not s.open:
            return
        if h.highest_term > self.terms.highest:
            # Managed mode: etcd, not a peer's word, says who leads; refuse this stream only.
            self._reject(s, "stale leader")
            return
        if self.role != Role.LEADER:
            self._reject(s, "not the leader")
            return
        s.term = self.terms.highest
        branch = self._divergence(h)
        if branch is not None:
            cut, snapshot = branch
            follower = self.c.nodes[s.follower]
            if snapshot:
                self.c.wire.send(s.down, follower.on_snapshot, s, self.log[: self.durable], s.term)
            else:
                self.c.wire.send(s.down, follower.on_diverged, s, cut)
            s.open = False  # the leader ends the call after this message
            return
        self.c.check.on_accept(self, self.c.nodes[s.follower], h.last_lsn)
        old = self.out.get(s.follower)
        if old is not None and old is not s:
            if old.pos is not None:
                self.sync.disconnect(old.pos)
            self.c.wire.reset(old, ())
        # Counted from what this leader itself sent, never from the hello's claim.
        s.pos = self.sync.connect(s.follower, 0, self.c.sched.now)
        s.sent = min(h.last_lsn, len(self.log))
        self.out[s.follower] = s
        if not self._feed(s):
            self.c.wire.send(s.down, self.c.nodes[s.follower].on_heartbeat, s, self.durable, self.commit_news())

    def _divergence(self, h: Hello) -> tuple[int, bool] | None:
        """The real ``divergence`` rule: None when the follower's log is a prefix of
        ours, else (the LSN to cut after, False) or (0, True) for a snapshot. No
        checkpoint cuts a simulated WAL, so every branch point is still in it."""
        d = divergence(self.terms, len(self.log), h.node_id, h.last_lsn, h.last_term)
        if d is None:
            return None
        _, branch = d
        return (branch, False) if branch is not None and branch >= 0 else (0, True)

    def _reject(self, s: Stream, why: str) -> None:
        s.open = False
        self.c.wire.send(s.down, self.c.nodes[s.follower].on_rejected, s, why)

    def on_ack(self, s: Stream, flushed: int) -> None:
        if not s.open or s.pos is None or self.role != Role.LEADER or self.out.get(s.follower) is not s:
            return
        self.sync.ack(s.pos, min(flushed, s.sent), self.c.sched.now)
        self._try_acks()

    def stream_closed(self, s: Stream) -> None:
        if s.leader == self.id:
            if s.pos is not None:
                self.sync.disconnect(s.pos)
            if self.out.get(s.follower) is s:
                del self.out[s.follower]
            return
        f = self.follower
        if f is not None and f.stream is s:
            f.stream = None
            f.state = "disconnected"
            self._retry(f, 0.05)

    # ---- follower side ------------------------------------------------------------------
    def _stop_following(self) -> None:
        f = self.follower
        if f is None:
            return
        f.stopped = True
        f.state = "stopped"
        if f.stream is not None:
            self.c.wire.reset(f.stream, (f.stream.leader,))
        self.follower = None

    def _retry(self, f: Follow, wait: float) -> None:
        self.c.sched.after(wait, self._connect, f, node=self.id)

    def _connect(self, f: Follow) -> None:
        if f.stopped or f is not self.follower or f.stream is not None:
            return
        if self.flushing:
            # The follower thread is inside an fsync: the next hello waits for it,
            # so a hello's last LSN is always durable here.
            self._retry(f, 0.001)
            return
        target = self.c.nodes.get(f.target)
        link = self.c.net.link(self.id, f.target)
        if target is None or not target.alive or link == REJECT:
            self.c.sched.after(self.c.net.delay(), self._failed, f, f.backoff, node=self.id)
            f.backoff = min(f.backoff * 2, 1.0)
            return
        if link == DROP:
            self.c.sched.after(CONNECT_TIMEOUT_S, self._failed, f, f.backoff, node=self.id)
            f.backoff = min(f.backoff * 2, 1.0)
            return
        s = self.c.wire.open(f.target, self.id, 0)
        f.stream = s
        f.state = "connected" if not f.state.startswith("rejected") else f.state
        last = len(self.log)
        f.hello_lsn = last
        h = Hello(self.id, last, self.terms.term_at(last) if last else 0, self.terms.highest)
        self.c.wire.send(s.up, target.on_hello, s, h)

    def _failed(self, f: Follow, wait: float) -> None:
        if f is self.follower and not f.stopped:
            f.state = "disconnected"
            self._retry(f, wait)

    def _current(self, s: Stream) -> Follow | None:
        f = self.follower
        return f if f is not None and f.stream is s else None

    def _accept_term(self, f: Follow, s: Stream) -> bool:
        """The checks every leader message passes first (FollowerLoop._handle)."""
        if s.term < self.terms.highest or (f.expected_term and s.term != f.expected_term):
            f.state = "rejected-stale-leader"
            f.stream = None
            self.c.wire.reset(s, (s.leader,))
            self._retry(f, 1.0)
            return False
        self.terms.observe(s.term)
        if self.read_fence:
            self.read_fence = None
            self.validated_by = s.leader
        return True

    def on_records(self, s: Stream, first: int, entries: list[Record], commit: int) -> None:
        f = self._current(s)
        if f is None or not s.open or not self._accept_term(f, s):
            return
        if first != len(self.log) + 1:
            raise AssertionError(f"{self.id}: records from LSN {first} after a log ending at {len(self.log)}")
        for term, wid in entries:
            if term > s.term:
                raise AssertionError(f"{self.id}: a record of term {term} in a stream of term {s.term}")
            if term != self.terms.last_term:
                self.terms.begin(term, len(self.log) + 1)
            self.log.append((term, wid))
        self.replica_commit = max(self.replica_commit, commit)
        f.state = "streaming"
        f.backoff = 0.05
        self._flush()
        if self.durable >= f.leader_last:
            f.caught_up_at = self.c.sched.now

    def on_heartbeat(self, s: Stream, leader_durable: int, commit: int) -> None:
        f = self._current(s)
        if f is None or not s.open or not self._accept_term(f, s):
            return
        f.leader_last = leader_durable
        self.replica_commit = max(self.replica_commit, commit)
        f.state = "streaming"
        f.backoff = 0.05
        if self.durable >= f.leader_last:
            f.caught_up_at = self.c.sched.now
        self._ack_leader()

    def _ack_leader(self) -> None:
        f = self.follower
        if f is not None and f.stream is not None and f.stream.open and f.state == "streaming":
            s = f.stream
            self.c.wire.send(s.up, self.c.nodes[s.leader].on_ack, s, self.durable)

    def on_diverged(self, s: Stream, after: int) -> None:
        f = self.follower
        if f is None or f.stream is not s:
            return
        self.c.check.on_cut(self, after, self.log[after:], "diverged")
        self.log = self.log[:after]
        self.durable = min(self.durable, after)
        self.terms.truncate(after)
        self.disk_gen += 1
        self.exposed = min(self.exposed, after)
        f.stream = None
        self._retry(f, 0.05)

    def on_snapshot(self, s: Stream, records: list[Record], term: int) -> None:
        f = self.follower
        if f is None or f.stream is not s:
            return
        same = 0
        while same < min(len(records), len(self.log)) and records[same] == self.log[same]:
            same += 1
        self.c.check.on_cut(self, same, self.log[same:], "snapshot")
        self.log = list(records)
        self.durable = len(self.log)
        self.terms.reset(max(1, term), len(self.log))
        self.disk_gen += 1
        self.exposed = min(self.exposed, same)
        f.stream = None
        self._retry(f, 0.05)

    def on_rejected(self, s: Stream, why: str) -> None:
        f = self.follower
        if f is None or f.stream is not s:
            return
        f.stream = None
        f.state = "rejected-stale-leader" if why == "stale leader" else "rejected"
        self._retry(f, 1.0)

    # ---- reads ------------------------------------------------------------------------
    def serves_reads(self) -> bool:
        return self.alive and self.read_fence is None

