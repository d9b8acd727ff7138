"""A node's role in its replication group, and the transitions between roles.

Nothing here assumes a role is fixed for the node's lifetime: ``promote`` and
``follow`` switch it at any time (by hand, or from the failover loop).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sutra_cluster import __version__, tlsutil
from sutra_cluster.config import Config
from sutra_cluster.errors import DeadlineExceeded, FailedPrecondition
from sutra_cluster.pb import replication_pb2 as rpb
from sutra_cluster.replication.follower import FollowerLoop
from sutra_cluster.replication.leader import LeaderStreams
from sutra_cluster.roles import MAX_TERM, CommitMode, NodeState, Role
from sutra_cluster.storage.engine import Engine
from sutra_cluster.storage.identity import ClusterIdentity

log = logging.getLogger(__name__)


JOINING = "joining the cluster: history not yet checked against the leader"
REJOINING = "former leader rejoining: history not yet checked against the new leader"


class ReplicationManager:
    """The node's replication role and its transitions.

    Every role change goes through ``lead``, ``step_down`` or ``follow``, each
    doing all of its side effects in one place. Implements the engine's
    ``ReplicationHooks`` (below it) and the HA loop's ``NodePort`` (above it).
    """

    def __init__(self, engine: Engine, cfg: Config) -> None:
        self.engine = engine
        self.cfg = cfg
        self.managed = bool(cfg.etcd_endpoints)
        self.mode = CommitMode(cfg.commit_mode)
        # Raises (the node does not start) when cluster.id is damaged or names another cluster.
        self.identity = ClusterIdentity(engine.dir, cfg.cluster_name)
        self.leader = LeaderStreams(engine, cfg, managed=self.managed, identity=self.identity)
        self.leader.on_stale.append(self._stale)
        self.follower: FollowerLoop | None = None
        self._lock = threading.RLock()
        # Set by the HA loop in managed mode: raises when the lease may have expired.
        self._fence: Callable[[], None] | None = None
        # Sync mode, as a replica: the highest commit LSN a leader reported (kept
        # while no stream runs, e.g. during an election).
        self._replica_commit = 0
        engine.attach(self)

    def start(self) -> None:
        if self.managed:
            # The HA loop decides; until a leader's stream has validated this
            # node's history, it serves no reads (it may hold a divergent tail).
            self.engine.fence_reads(JOINING)
        elif self.cfg.role == Role.LEADER:
            self.lead(None)
        else:
            self.follow(self.cfg.leader)

    # ---- the engine's ReplicationHooks ---------------------------------------------
    def wait_commit(self, lsn: int) -> None:
        self.leader.wait_commit(lsn)
        fence = self._fence
        if fence is not None:
            fence()

    def visible_limit(self) -> int | None:
        """In sync mode, reads see only committed records: on the leader its commit
        LSN, on a replica the leader's commit LSN as last reported (so a replica
        never shows a record a failover could cut). Async mode shows what is durable."""
        if self.mode != CommitMode.SYNC:
            return None
        if self.engine.role == Role.LEADER:
            return self.leader.commit_lsn()
        f = self.follower
        if f is not None:
            self._replica_commit = max(self._replica_commit, f.leader_commit)
        return self._replica_commit

    def retain_floor(self, backup_lsn: int) -> int:
        floor = backup_lsn
        needed = self.leader.retain_floor()
        if needed is not None and needed < floor:
            keep = self.engine.wal.total_bytes()
            if keep <= self.cfg.wal_keep_bytes:
                floor = needed
            else:
                log.warning("WAL is %d bytes, over SUTRA_WAL_KEEP_BYTES=%d: replicas behind LSN %d will need a snapshot",
                            keep, self.cfg.wal_keep_bytes, backup_lsn)
        return floor

    # ---- transitions ---------------------------------------------------------------
    def lead(self, term: int | None) -> int:
        """Start leading. With ``term`` (taken in etcd, or a manual promotion) a
        term record is logged first; without, the configured leader keeps its term.
        Returns the LSN the term starts at; the commit bookkeeping starts there."""
        with self._lock:
            self._stop_following()
            eng = self.engine
            # Without etcd the first leader names the cluster; with etcd the id was
            # confirmed against /<cluster>/cluster_uuid before the HA loop started.
            self.identity.ensure()
            lsn = eng.wal.last_lsn if term is None else eng.begin_term(term)
            self.leader.begin_term(lsn)
            eng.lead(self.cfg.address)
            eng.metrics.leader_changes.labels("started").inc()
            log.warning("promoted self: leader at term %d from LSN %d", eng.term, lsn)
            return lsn

    def step_down(self, reason: str, leader_address: str = "") -> None:
        """Stop acknowledging writes at once (writes waiting for replicas fail);
        reads are fenced until a leader has checked this node's history."""
        with self._lock:
            if self.engine.step_down(leader_address, fence_reads=REJOINING):
                self.engine.metrics.leader_changes.labels("stopped").inc()
                log.warning("stepped down at term %d: %s", self.engine.term, reason)
            self.leader.wake_commits()

    def follow(self, address: str, term: int = 0) -> None:
        """Become (or stay) a replica of ``address``. ``term``: the term etcd says
        that leader holds (managed mode); a stream claiming any other term is refused."""
        with self._lock:
            eng = self.engine
            if eng.role == Role.LEADER:
                self.step_down(f"following {address}", address)
            eng.follow_leader(address)
            f = self.follower
            if f is not None and f.leader_address == address and f.expected_term == term and f.alive:
                return
            self._stop_following()
            self.follower = FollowerLoop(eng, self.cfg, address, tlsutil.channel_factory(self.cfg),
                                         expected_term=term, identity=self.identity).start()
            log.info("following %s (term %d)", address, term or eng.term)

    def freeze(self) -> None:
        """Stop streaming (an election is under way); keep serving reads."""
        with self._lock:
            self._stop_following()

    def _stop_following(self) -> None:
        if self.follower is not None:
            self.follower.stop()
            self.follower = None

    def promote(self, min_lsn: int = 0) -> tuple[int, int]:
        """Manual promotion (no etcd): lead in a new, higher term; returns (term,
        lsn of the term record). Followers of an older term are rejected from then on."""
        if self.managed:
            raise FailedPrecondition("this node's leadership is managed through etcd; "
                                     "use `sutra-cluster switchover` instead of Promote")
        with self._lock:
            eng = self.engine
            if eng.role == Role.LEADER:
                return eng.term, eng.wal.last_lsn
            if min_lsn and eng.wal.durable_lsn < min_lsn:
                raise FailedPrecondition(f"{self.cfg.node_id} has LSN {eng.wal.durable_lsn}, below the required {min_lsn}")
            if eng.term >= MAX_TERM:
                raise FailedPrecondition(f"term {eng.term} is the largest allowed; this node cannot start a new one")
            lsn = self.lead(eng.term + 1)
            return eng.term, lsn

    def reinit(self, timeout: float) -> rpb.ReinitResponse:
        """The Reinit RPC: rebuild this replica from its leader's snapshot, then
        stream again. Refused on a leader and on a node that knows no leader.
        Waits up to ``timeout`` for the snapshot to be installed."""
        with self._lock:
            eng = self.engine
            if eng.role == Role.LEADER:
                raise FailedPrecondition(f"{self.cfg.node_id} is the leader (term {eng.term}); reinit rebuilds a "
                                         "replica from its leader (run `sutra-cluster switchover` first)")
            f = self.follower
            address = f.leader_address if f is not None else eng.leader_address
            if not address:
                raise FailedPrecondition(f"{self.cfg.node_id} follows no leader yet; nothing to copy from")
            term = f.expected_term if f is not None else 0
            self._stop_following()
            log.warning("reinit: rebuilding from a snapshot of %s; the old files are set aside", address)
            new = FollowerLoop(eng, self.cfg, address, tlsutil.channel_factory(self.cfg), expected_term=term,
                               identity=self.identity,
                               reinit=True)
            self.follower = new.start()
        if not new.reinit_done.wait(timeout):
            raise DeadlineExceeded(f"reinit of {self.cfg.node_id}: the snapshot from {address} was not installed within "
                              f"{timeout:.0f} s; it goes on in the background (see the node's log)")
        if new.reinit_result is None:
            raise FailedPrecondition(f"reinit of {self.cfg.node_id} failed, its old state is kept: {new.reinit_error}")
        lsn, term_, size, secs = new.reinit_result
        return rpb.ReinitResponse(lsn=lsn, term=term_, bytes=size, seconds=secs, leader_address=address)

    def follow_request(self, address: str) -> None:
        """The Follow RPC (manual clusters only)."""
        if self.managed:
            raise FailedPrecondition("this node's leader is chosen through etcd; Follow is refused "
                                     "(use `sutra-cluster switchover`)")
        self.follow(address)

    def _stale(self, term: int) -> None:
        """A follower has seen a newer term (manual clusters): stop taking writes at once."""
        with self._lock:
            self.engine.terms.observe(term)
            self.step_down(f"term {term} has been seen, this node led term {self.engine.term}")

    def stop(self) -> None:
        with self._lock:
            self._stop_following()

    # ---- the HA loop's NodePort ------------------------------------------------------
    def state(self) -> NodeState:
        eng = self.engine
        f = self.follower
        return NodeState(
            role=eng.role, term=eng.term, durable_lsn=eng.wal.durable_lsn, last_term=eng.terms.last_term,
            healthy=not eng.write_failure, streaming=f is not None and f.state == "streaming",
            lag_ms=f.lag()[1] * 1000.0 if f is not None else 0.0, inflight=eng.inflight,
        )

    def set_fence(self, fence: object) -> None:
        assert callable(fence)
        self._fence = fence

    def set_wake(self, wake: object) -> None:
        assert callable(wake)
        self.leader.on_joinable = wake

    def sync_plan(self, now: float, grace: dict[str, int]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return self.leader.sync_plan(now, self.cfg.sync_stall_ms / 1000.0, grace)

    def sync_members(self) -> tuple[str, ...] | None:
        return self.leader.commit.members

    def sync_shrink(self, keep: tuple[str, ...]) -> None:
        self.leader.sync_shrink(keep)

    def sync_adopt(self, published: tuple[str, ...]) -> None:
        self.leader.sync_adopt(published)

    def sync_floor(self) -> int | None:
        return self.leader.sync_floor()

    def sync_count(self, members: tuple[str, ...]) -> None:
        self.leader.sync_count_all(members)

    def replica_flushed(self, node_id: str) -> int | None:
        f = self.leader.followers.get(node_id)
        return f.flushed if f is not None and f.connected else None

    def pause_writes(self, why: str) -> None:
        self.engine.pause_writes(why)

    def resume_writes(self) -> None:
        self.engine.resume_writes()

    def last_lsn(self) -> int:
        return self.engine.wal.last_lsn

    # ---- status ------------------------------------------------------------------------
    def status(self) -> rpb.ReplicationStatus:
        eng = self.engine
        out = rpb.ReplicationStatus(
            node_id=self.cfg.node_id, role=eng.role, term=eng.term, last_lsn=eng.wal.last_lsn,
            durable_lsn=eng.wal.durable_lsn, applied_lsn=eng.applied_lsn, commit_mode=self.mode,
            leader_address=eng.leader_address, version=__version__,
        )
        if eng.role == Role.LEADER:
            out.commit_lsn = self.leader.commit_lsn()
            out.replicas.extend(self.leader.status())
        elif self.follower is not None:
            out.follow_state = self.follower.state
            out.commit_lsn = self.follower.leader_last
        return out


class LagCollector(Collector):
    """sutra_replication_lag_seconds/bytes, one series per replica, on every node:
    a leader reports each replica it feeds, a replica reports itself."""

    def __init__(self, manager: ReplicationManager) -> None:
        self.m = manager

    def collect(self) -> Iterator[GaugeMetricFamily]:
        secs = GaugeMetricFamily("sutra_replication_lag_seconds", "How far a replica's flushed WAL is behind the leader",
                                 labels=["replica"])
        size = GaugeMetricFamily("sutra_replication_lag_bytes", "WAL bytes a replica has not yet flushed",
                                 labels=["replica"])
        connected = GaugeMetricFamily("sutra_replicas_connected", "Replicas streaming from this leader")
        info = GaugeMetricFamily("sutra_node_info", "Always 1; labels name this node, its shard, role and version",
                                 labels=["node_id", "shard", "role", "version"])
        info.add_metric([self.m.cfg.node_id, str(self.m.cfg.shard), self.m.engine.role, __version__], 1)
        m = self.m
        if m.engine.role == Role.LEADER:
            for f in list(m.leader.followers.values()):
                b, s = m.leader.lag(f)
                secs.add_metric([f.node_id], s)
                size.add_metric([f.node_id], b)
            connected.add_metric([], len(m.leader.connected()))
        elif m.follower is not None:
            records, s = m.follower.lag()
            avg = m.engine.recent.total / max(1, m.engine.wal.durable_lsn - m.engine.checkpoint_lsn)
            secs.add_metric([m.cfg.node_id], s)
            size.add_metric([m.cfg.node_id], records * avg)
            connected.add_metric([], 0)
        yield secs
        yield size
        yield connected
        yield info
