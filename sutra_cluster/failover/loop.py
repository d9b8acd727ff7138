"""The HA loop: every SUTRA_LOOP_WAIT_MS, publish this node's state, read one
snapshot of the shard, ask ``decide`` for one action, apply it, and log the
action's sentence (INFO when it changes, DEBUG every tick)."""

from __future__ import annotations

import logging
import socket
import threading
import time

from sutra_cluster.config import Config
from sutra_cluster.failover.coordinator import (
    ClusterSnapshot,
    Coordinator,
    CoordinatorUnavailable,
    LeaderKey,
    MemberInfo,
    SyncState,
)
from sutra_cluster.failover.decide import (
    ACQUIRE,
    DEMOTE,
    FOLLOW,
    FREEZE,
    HANDOVER,
    RENEW,
    REVOKE,
    Action,
    Local,
    Settings,
    decide,
    next_sync_set,
)
from sutra_cluster.replication.manager import ReplicationManager

log = logging.getLogger(__name__)

HANDOVER_TIMEOUT_S = 5.0


def port_refuses(address: str, timeout: float = 0.2) -> bool:
    """True only when nothing listens at ``address`` (connection refused): proof
    the process is gone. A hung or partitioned process gives a timeout, not this."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


class HaLoop:
    def __init__(self, manager: ReplicationManager, coord: Coordinator, cfg: Config) -> None:
        self.m = manager
        self.coord = coord
        self.cfg = cfg
        self.settings = Settings(cfg.commit_mode, cfg.max_lag_on_failover, startup_grace_s=2.0 * cfg.lease_ttl_s)
        self.started = time.monotonic()
        self.key: LeaderKey | None = None
        self.lease_deadline = 0.0
        self.frozen_term = 0
        self.refused = 0
        self.last_reason = ""
        self.last_action: Action | None = None
        # Sync-set members chosen at election, not yet streaming: kept for a grace period.
        self._sync_grace_until = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ha-loop", daemon=True)
        manager.fence = self.fence

    # ---- fencing ---------------------------------------------------------------
    def fence(self) -> None:
        """Called before every acknowledgement: refuse once the lease could have
        expired (minus the safety margin), whatever the loop thread is doing."""
        from sutra_cluster.errors import Unavailable

        if self.m.engine.role != "leader":
            raise Unavailable("this node stopped leading before the write was acknowledged; retry it")
        if time.monotonic() >= self.lease_deadline:
            raise Unavailable("leadership could not be confirmed (lease not renewed in time); "
                              "the write was not acknowledged")

    # ---- the loop ----------------------------------------------------------------
    def start(self) -> HaLoop:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        wait = self.cfg.loop_wait_ms / 1000.0
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.tick()
            except Exception:  # one bad tick must not end failover for this node
                log.exception("HA loop tick failed")
            self._wake.wait(max(0.0, wait - (time.monotonic() - t0)))
            self._wake.clear()

    def _member(self) -> MemberInfo:
        eng = self.m.engine
        return MemberInfo(
            node_id=self.cfg.node_id, address=self.cfg.address, role=eng.role, term=eng.term,
            flushed_lsn=eng.wal.durable_lsn, last_term=eng.terms.last_term, frozen_term=self.frozen_term,
            healthy=not eng.write_failure, preferred=self.cfg.role == "leader",
        )

    def _local(self, snap: ClusterSnapshot) -> Local:
        eng = self.m.engine
        refused = False
        key = snap.leader
        f = self.m.follower
        if key is not None and key.node_id != self.cfg.node_id and (f is None or f.state != "streaming"):
            self.refused = self.refused + 1 if port_refuses(key.address) else 0
            refused = self.refused >= 2
        else:
            self.refused = 0
        lag = f.lag()[1] * 1000.0 if f is not None else 0.0
        return Local(
            node_id=self.cfg.node_id, address=self.cfg.address, role=eng.role, term=eng.term,
            flushed_lsn=eng.wal.durable_lsn, last_term=eng.terms.last_term, frozen_term=self.frozen_term,
            lease_ok=time.monotonic() < self.lease_deadline, leader_refused=refused, lag_ms=lag,
            uptime_s=time.monotonic() - self.started, healthy=not eng.write_failure,
        )

    def tick(self) -> Action | None:
        try:
            self.coord.publish_member(self._member())
            snap = self.coord.snapshot()
        except CoordinatorUnavailable as exc:
            self._unreachable(exc)
            return None
        action = decide(snap, self._local(snap), self.settings)
        self._log(action)
        try:
            self._apply(action, snap)
        except CoordinatorUnavailable as exc:
            self._unreachable(exc)
        self.last_action = action
        return action

    def _log(self, action: Action) -> None:
        # The sentence changes with lag on every tick; log kinds at INFO, sentences at DEBUG.
        if self.last_action is None or action.kind != self.last_action.kind or action.target != self.last_action.target:
            log.info("%s", action.reason)
        else:
            log.debug("%s", action.reason)
        self.last_reason = action.reason

    def _unreachable(self, exc: Exception) -> None:
        eng = self.m.engine
        if eng.role == "leader" and time.monotonic() >= self.lease_deadline:
            log.error("demoted: etcd unreachable (%s); cannot prove leadership", exc)
            self._demote()
        else:
            log.warning("etcd unreachable: %s (role %s, keeping it)", exc, eng.role)

    # ---- actions ---------------------------------------------------------------
    def _apply(self, action: Action, snap: ClusterSnapshot) -> None:
        kind = action.kind
        if kind == RENEW:
            self._renew(snap)
        elif kind == HANDOVER:
            self._handover(action, snap)
        elif kind == ACQUIRE:
            self._acquire(action, snap)
        elif kind == DEMOTE:
            key = self.key
            self._demote()
            if key is not None and snap.leader == key:
                self.coord.release(key)  # still ours (e.g. storage failure): hand it on now
        elif kind == FOLLOW:
            self.frozen_term = 0
            self.m.follow(action.target)
        elif kind == FREEZE:
            self.m.freeze()
            self.frozen_term = snap.term
            self.coord.publish_member(self._member())
            self.wake()
        elif kind == REVOKE and snap.leader is not None:
            self.coord.revoke(snap.leader)
            self.refused = 0
            self.wake()

    def _renew(self, snap: ClusterSnapshot) -> None:
        assert self.key is not None
        t0 = time.monotonic()
        if not self.coord.renew(self.key):
            log.error("demoted: lost the leader key at term %d", self.key.term)
            self._demote()
            return
        self.lease_deadline = t0 + self.cfg.lease_ttl_s - self.cfg.fence_margin_ms / 1000.0
        if snap.switchover_to == self.cfg.node_id:
            self.coord.clear_switchover()
        if self.cfg.commit_mode == "sync":
            self._maintain_sync_set(snap)

    def _maintain_sync_set(self, snap: ClusterSnapshot) -> None:
        assert self.key is not None
        leader = self.m.leader
        current = leader.sync_ids or ()
        connected = {f.node_id: f.flushed for f in leader.connected()}
        if time.monotonic() < self._sync_grace_until:
            # Members chosen at election hold every acknowledged write; give them
            # time to connect before replacing them.
            for node in current:
                if node in snap.members:
                    connected.setdefault(node, snap.members[node].flushed_lsn)
        wanted = next_sync_set(current, connected, self.cfg.sync_replicas, leader.max_committed)
        published = snap.sync.members if snap.sync is not None and snap.sync.term == self.key.term else None
        if wanted == current and published == wanted:
            return
        # Stop counting members that leave before publishing; count new ones only after.
        leader.sync_ids = tuple(m for m in current if m in wanted)
        if self.coord.set_sync(self.key, SyncState(self.cfg.node_id, self.key.term, wanted)):
            leader.sync_ids = wanted
            log.info("sync set at term %d is now %s", self.key.term, list(wanted) or "empty")

    def _acquire(self, action: Action, snap: ClusterSnapshot) -> None:
        t0 = time.monotonic()
        eng = self.m.engine
        # Replicas that froze at this node's position in the same history hold
        # every acknowledged write, so they may form the first sync set at once.
        mine, my_term = eng.wal.durable_lsn, eng.terms.last_term
        peers = sorted(m.node_id for m in snap.members.values()
                       if m.node_id != self.cfg.node_id and m.healthy and m.role != "leader"
                       and m.frozen_term == snap.term and m.last_term == my_term and m.flushed_lsn >= mine)
        want = LeaderKey(self.cfg.node_id, self.cfg.address, action.term)
        stored = self.coord.acquire(want, snap.term)
        if stored is None:
            log.info("lost the election for term %d", action.term)
            return
        try:
            self.lease_deadline = t0 + self.cfg.lease_ttl_s - self.cfg.fence_margin_ms / 1000.0
            self.m.promote_to(action.term, managed=True)
            self.key = stored
            self.frozen_term = 0
            if snap.switchover_to == self.cfg.node_id:
                self.coord.clear_switchover()
            if self.cfg.commit_mode == "sync":
                initial = tuple(peers[: self.cfg.sync_replicas])
                self.m.leader.sync_ids = initial
                self._sync_grace_until = time.monotonic() + 2 * self.cfg.lease_ttl_s
                self.coord.set_sync(stored, SyncState(self.cfg.node_id, action.term, initial))
        except Exception:
            log.exception("promotion to term %d failed; releasing the leader key", action.term)
            self.coord.revoke(stored)
            self._demote()
            raise

    def _demote(self) -> None:
        self.key = None
        self.lease_deadline = 0.0
        self.m.demote()

    def _handover(self, action: Action, snap: ClusterSnapshot) -> None:
        assert self.key is not None
        target = snap.members[action.target]
        leader = self.m.leader
        eng = self.m.engine
        eng.pause_writes("switchover to " + action.target)
        try:
            # Writes already past the pause finish (or fail) first; then every
            # acknowledged write is at or below the last LSN.
            drain_until = time.monotonic() + 1.0
            while eng.inflight and time.monotonic() < drain_until:
                time.sleep(0.002)
            last = eng.wal.last_lsn
            deadline = time.monotonic() + HANDOVER_TIMEOUT_S
            next_renew = time.monotonic() + self.cfg.loop_wait_ms / 1000.0
            while True:
                f = leader.followers.get(action.target)
                if f is not None and f.connected and f.flushed >= last:
                    break
                now = time.monotonic()
                if now >= deadline:
                    log.error("switchover to %s abandoned: it did not catch up to LSN %d in %.0f s",
                              action.target, last, HANDOVER_TIMEOUT_S)
                    self.coord.clear_switchover()
                    return
                if now >= next_renew:
                    # Keep the key while waiting: an abandoned switchover must not
                    # turn into an unplanned failover.
                    if not self.coord.renew(self.key):
                        log.error("switchover to %s: lost the leader key while waiting", action.target)
                        self._demote()
                        return
                    self.lease_deadline = now + self.cfg.lease_ttl_s - self.cfg.fence_margin_ms / 1000.0
                    next_renew = now + self.cfg.loop_wait_ms / 1000.0
                with leader._acks:
                    leader._acks.wait(0.02)
            key = self.key
            if self.cfg.commit_mode == "sync":
                # The target holds everything: make it the sync set, so it may take over.
                leader.sync_ids = (action.target,)
                self.coord.set_sync(key, SyncState(self.cfg.node_id, key.term, (action.target,)))
            self._demote()
            self.coord.release(key)
            self.m.follow(target.address)
            log.info("switchover: released the leader key; following %s", action.target)
        finally:
            eng.resume_writes()

    def stop(self, release: bool = True) -> None:
        """Stop the loop; a leader releases its key so a replica takes over at once."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if release and self.key is not None:
            key = self.key
            self._demote()
            try:
                self.coord.release(key)
                log.info("released the leader key at term %d", key.term)
            except CoordinatorUnavailable as exc:
                log.warning("could not release the leader key (%s); it expires with its lease", exc)
        self.coord.close()
