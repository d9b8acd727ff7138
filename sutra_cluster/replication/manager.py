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

from sutra_cluster import tlsutil
from sutra_cluster.config import Config
from sutra_cluster.errors import FailedPrecondition
from sutra_cluster.pb import replication_pb2 as rpb
from sutra_cluster.replication.follower import FollowerLoop
from sutra_cluster.replication.leader import LeaderStreams
from sutra_cluster.storage.engine import Engine

log = logging.getLogger(__name__)


class ReplicationManager:
    def __init__(self, engine: Engine, cfg: Config) -> None:
        self.engine = engine
        self.cfg = cfg
        self.leader = LeaderStreams(engine, cfg)
        self.leader.on_stale.append(self._stale)
        self.follower: FollowerLoop | None = None
        self._lock = threading.RLock()
        self.managed = bool(cfg.etcd_endpoints)
        # Set by the HA loop in managed mode: raises when the lease may have expired.
        self.fence: Callable[[], None] | None = None
        engine.retain_floor = self._retain_floor

    def start(self) -> None:
        if self.managed:
            # The HA loop decides; until a leader's stream has validated this
            # node's history, it serves no reads (it may hold a divergent tail).
            self.engine.role = "replica"
            self.engine.read_fence = "joining the cluster: history not yet checked against the leader"
        elif self.cfg.role == "leader":
            self._become_leader()
        else:
            self.follow(self.cfg.leader)

    def _commit(self, lsn: int) -> None:
        self.leader.wait_commit(lsn)
        if self.fence is not None:
            self.fence()

    def _become_leader(self) -> None:
        eng = self.engine
        eng.leader_address = self.cfg.address
        eng.commit_gate = self._commit
        eng.visible_limit = self.leader.commit_lsn if self.cfg.commit_mode == "sync" else None
        eng.read_fence = None
        eng.role = "leader"

    def promote_to(self, term: int, managed: bool = False) -> int:
        """Lead at ``term`` (from the HA loop, which took it from etcd)."""
        with self._lock:
            eng = self.engine
            if self.follower is not None:
                self.follower.stop()
                self.follower = None
            self.leader.sync_ids = () if managed and self.cfg.commit_mode == "sync" else None
            lsn = eng.begin_term(term)
            self._become_leader()
            log.warning("promoted self: leader at term %d from LSN %d", term, lsn)
            return lsn

    def demote(self) -> None:
        """Stop taking writes at once; the HA loop decides whom to follow next."""
        with self._lock:
            eng = self.engine
            was_leader = eng.role == "leader"
            eng.role = "replica"
            eng.commit_gate = None
            eng.visible_limit = None
            eng.leader_address = ""
            if was_leader:
                eng.read_fence = "former leader rejoining: history not yet checked against the new leader"
                log.warning("demoted at term %d", eng.term)

    def freeze(self) -> None:
        """Stop streaming (an election is under way); keep serving reads."""
        with self._lock:
            if self.follower is not None:
                self.follower.stop()
                self.follower = None

    def promote(self, min_lsn: int = 0) -> tuple[int, int]:
        """Make this node the leader in a new, higher term; returns (term, lsn of
        the term record). Followers of an older term are rejected from then on."""
        with self._lock:
            eng = self.engine
            if eng.role == "leader":
                return eng.term, eng.wal.last_lsn
            if min_lsn and eng.wal.durable_lsn < min_lsn:
                raise FailedPrecondition(f"{self.cfg.node_id} has LSN {eng.wal.durable_lsn}, below the required {min_lsn}")
            if self.follower is not None:
                self.follower.stop()
                self.follower = None
            term = eng.term + 1
            lsn = eng.begin_term(term)
            self._become_leader()
            log.warning("promoted self: leader at term %d from LSN %d", term, lsn)
            return term, lsn

    def follow(self, leader_address: str) -> None:
        """Become (or stay) a replica of ``leader_address``."""
        with self._lock:
            eng = self.engine
            if eng.role == "leader":
                self.demote()
            eng.role = "replica"
            eng.commit_gate = None
            eng.visible_limit = None
            eng.leader_address = leader_address
            if self.follower is not None:
                if self.follower.leader_address == leader_address and self.follower.alive:
                    return
                self.follower.stop()
            self.follower = FollowerLoop(eng, self.cfg, leader_address, tlsutil.channel_factory(self.cfg)).start()
            log.info("following %s (term %d)", leader_address, eng.term)

    def _stale(self, term: int) -> None:
        """A follower has seen a newer term: stop taking writes at once."""
        with self._lock:
            if self.engine.role == "leader":
                log.error("stepping down: term %d has been seen, this node leads term %d", term, self.engine.term)
                self.engine.terms.observe(term)
                self.engine.role = "replica"
                self.engine.leader_address = ""
                self.engine.commit_gate = None

    def _retain_floor(self, backup_lsn: int) -> int:
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

    def stop(self) -> None:
        with self._lock:
            if self.follower is not None:
                self.follower.stop()
                self.follower = None

    def status(self) -> rpb.ReplicationStatus:
        eng = self.engine
        out = rpb.ReplicationStatus(
            node_id=self.cfg.node_id, role=eng.role, term=eng.term, last_lsn=eng.wal.last_lsn,
            durable_lsn=eng.wal.durable_lsn, applied_lsn=eng.applied_lsn, commit_mode=self.cfg.commit_mode,
            leader_address=eng.leader_address,
        )
        if eng.role == "leader":
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
        info = GaugeMetricFamily("sutra_node_info", "Always 1; labels name this node, its shard and role",
                                 labels=["node_id", "shard", "role"])
        info.add_metric([self.m.cfg.node_id, str(self.m.cfg.shard), self.m.engine.role], 1)
        m = self.m
        if m.engine.role == "leader":
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
