"""The HA loop: every SUTRA_LOOP_WAIT_MS, publish this node's state, read one
snapshot of the shard, ask ``decide`` for one action, apply it, and log the
action's sentence (INFO when it changes, DEBUG every tick).

The loop is thin on purpose: every choice is made in ``decide`` (pure, tested
branch by branch); the loop gathers inputs (the node through ``NodePort``,
etcd through ``Coordinator``, a clock and a connection probe, all injectable so
the HA simulator can drive the real loop) and applies the action.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sutra_cluster.config import Config
from sutra_cluster.errors import Unavailable
from sutra_cluster.failover import cluster_id
from sutra_cluster.failover.coordinator import (
    ClusterSnapshot,
    Coordinator,
    CoordinatorUnavailable,
    LeaderKey,
    MemberInfo,
    SyncState,
)
from sutra_cluster.failover.decide import (
    ABANDON,
    ACQUIRE,
    DEMOTE,
    FOLLOW,
    FREEZE,
    HANDOVER,
    RELEASE,
    RENEW,
    REVOKE,
    Action,
    Local,
    Settings,
    decide,
    decide_unreachable,
    first_sync_set,
)
from sutra_cluster.failover.journal import Journal
from sutra_cluster.failover.port import NodePort, NodeState
from sutra_cluster.roles import CommitMode, Role
from sutra_cluster.storage.identity import ClusterIdentity, ForeignCluster

log = logging.getLogger(__name__)

HANDOVER_TIMEOUT_S = 5.0


def port_refuses(address: str, timeout: float = 0.2) -> bool:
    """True when a connection to ``address`` is refused. That is a signal, not a
    proof: a firewall or proxy can refuse for a live process (see decide)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


@dataclass
class _Handover:
    target: str
    started: float
    lsn: int = 0  # every acknowledged write is at or below it (0: writes still draining)


class HaLoop:
    def __init__(self, port: NodePort, coord: Coordinator, cfg: Config, *,
                 clock: Callable[[], float] = time.monotonic,
                 probe: Callable[[str], bool] = port_refuses, journal: Journal | None = None,
                 identity: ClusterIdentity | None = None) -> None:
        """``journal`` (optional) records leadership changes and this member's
        registration in etcd for operators; it never delays a tick.
        ``identity`` (optional): this node's cluster id, confirmed against etcd's
        before the first tick; a node of another cluster never takes part."""
        self.node = port
        self.journal = journal
        self.identity = identity
        self.identity_problem = ""  # why this node does not take part, while it does not
        self.coord = coord
        self.cfg = cfg
        self.clock = clock
        self.probe = probe
        mode = CommitMode(cfg.commit_mode)
        self.settings = Settings(mode, cfg.max_lag_on_failover, startup_grace_s=2.0 * cfg.lease_ttl_s,
                                 fast_revoke=mode == CommitMode.SYNC and not cfg.sync_fallback,
                                 handover_timeout_s=HANDOVER_TIMEOUT_S)
        # Refusals in a row before the holder counts as refusing. In sync mode one is
        # enough: revoking there is safe even for a live leader (see decide), so the
        # second probe would only cost a tick of every crash failover.
        self._strikes = 1 if self.settings.fast_revoke else 2
        self.started = clock()
        self.key: LeaderKey | None = None
        self.lease_deadline = 0.0
        self.frozen_term = 0
        self.refused = 0
        self.last_reason = ""
        self.last_action: Action | None = None
        self.handover: _Handover | None = None
        self._seen_leader: LeaderKey | None = None  # the last leader key seen: named in the next acquire's history
        # Sync-set members chosen at election, not yet streaming: kept for a grace period.
        self._sync_grace: dict[str, int] = {}
        self._sync_grace_until = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ha-loop", daemon=True)
        port.set_fence(self.fence)
        port.set_wake(self.wake)

    # ---- fencing ---------------------------------------------------------------
    def fence(self) -> None:
        """Called before every acknowledgement: refuse once the lease could have
        expired (minus the safety margin), whatever the loop thread is doing."""
        if self.clock() >= self.lease_deadline:
            raise Unavailable("leadership could not be confirmed (lease not renewed in time); "
                              "the write was not acknowledged")

    def _extend_lease(self, t0: float) -> None:
        """The key was renewed (or taken) by a call that started at ``t0``: etcd
        counts the TTL from a moment after that, so ``t0`` is the safe base."""
        self.lease_deadline = t0 + self.cfg.lease_ttl_s - self.cfg.fence_margin_ms / 1000.0

    # ---- the loop ----------------------------------------------------------------
    def start(self) -> HaLoop:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def _confirm_identity(self) -> bool:
        """Wait until etcd and this node's data agree on the cluster's id (False:
        stopped first). Until then the node publishes nothing and stays fenced."""
        assert self.identity is not None
        while not self._stop.is_set():
            try:
                cluster_id.confirm(self.coord, self.identity)  # type: ignore[arg-type]
                self.identity_problem = ""
                return True
            except ForeignCluster as exc:
                self.identity_problem = str(exc)
                log.error("not taking part in cluster %s: %s", self.cfg.cluster_name, exc)
                self._stop.wait(5.0)
            except CoordinatorUnavailable as exc:
                self.identity_problem = f"etcd unreachable: {exc}"
                self._stop.wait(self.cfg.loop_wait_ms / 1000.0)
        return False

    def _run(self) -> None:
        wait = self.cfg.loop_wait_ms / 1000.0
        if self.identity is not None and not self._confirm_identity():
            return
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.tick()
            except Exception:  # one bad tick must not end failover for this node
                log.exception("HA loop tick failed")
            self._wake.wait(max(0.0, wait - (time.monotonic() - t0)))
            self._wake.clear()

    def _member(self, st: NodeState) -> MemberInfo:
        return MemberInfo(
            node_id=self.cfg.node_id, address=self.cfg.address, role=st.role, term=st.term,
            flushed_lsn=st.durable_lsn, last_term=st.last_term, frozen_term=self.frozen_term,
            healthy=st.healthy, preferred=self.cfg.role == Role.LEADER,
        )

    def _local(self, st: NodeState, snap: ClusterSnapshot | None) -> Local:
        key = snap.leader if snap is not None else None
        if key is not None and key.node_id != self.cfg.node_id and not st.streaming:
            self.refused = self.refused + 1 if self.probe(key.address) else 0
        else:
            self.refused = 0
        h = self.handover
        target_flushed = -1
        if h is not None:
            flushed = self.node.replica_flushed(h.target)
            target_flushed = -1 if flushed is None else flushed
            if not h.lsn and st.inflight == 0:
                h.lsn = self.node.last_lsn()
        return Local(
            node_id=self.cfg.node_id, address=self.cfg.address, role=st.role, term=st.term,
            flushed_lsn=st.durable_lsn, last_term=st.last_term, frozen_term=self.frozen_term,
            lease_ok=self.clock() < self.lease_deadline, leader_refused=self.refused >= self._strikes, lag_ms=st.lag_ms,
            uptime_s=self.clock() - self.started, healthy=st.healthy,
            handover_target=h.target if h is not None else "", handover_lsn=h.lsn if h is not None else 0,
            target_flushed=target_flushed, handover_elapsed_s=self.clock() - h.started if h is not None else 0.0,
        )

    def tick(self) -> Action:
        st = self.node.state()
        if self.key is not None:
            # Renew first, at the start of the tick: then two renewals are at most
            # one tick apart, however slow the tick's other etcd calls are, and
            # config.timing_problems can bound that gap (LEADER_TICK_ETCD_CALLS).
            self._renew_key()
        try:
            self.coord.publish_member(self._member(st))
            snap = self.coord.snapshot()
        except CoordinatorUnavailable as exc:
            action = decide_unreachable(self._local(st, None), str(exc))
            self._log(action)
            self._apply(action, None)
            self.last_action = action
            return action
        action = decide(snap, self._local(st, snap), self.settings)
        self._log(action)
        try:
            self._apply(action, snap)
        except CoordinatorUnavailable as exc:
            log.warning("etcd unreachable while applying %r: %s", action.kind, exc)
        self.last_action = action
        if snap.leader is not None:
            self._seen_leader = snap.leader
        if self.journal is not None:
            self.journal.seen(st.role, st.term)
        return action

    def _note(self, event: str, term: int, reason: str) -> None:
        """One leadership change into the shard's history (off this thread)."""
        if self.journal is not None:
            self.journal.leadership(event, term, self.node.last_lsn(), reason)

    def _log(self, action: Action) -> None:
        # The sentence changes with lag on every tick; log kinds at INFO, sentences at DEBUG.
        if self.last_action is None or action.kind != self.last_action.kind or action.target != self.last_action.target:
            log.info("%s", action.reason)
        else:
            log.debug("%s", action.reason)
        self.last_reason = action.reason

    # ---- actions ---------------------------------------------------------------
    def _apply(self, action: Action, snap: ClusterSnapshot | None) -> None:
        kind = action.kind
        if kind == DEMOTE:
            key = self.key
            self._demote(action.reason)
            if key is not None:
                self._note("demote", key.term, action.reason)
            if action.release and key is not None and snap is not None and snap.leader == key:
                self.coord.release(key)  # still ours: hand it on now, nobody waits out the lease
            return
        if snap is None:
            return
        if kind == RENEW:
            self._renew(snap)
        elif kind == HANDOVER:
            self.node.pause_writes("switchover to " + action.target)
            self.handover = _Handover(action.target, self.clock())
            self._note("handover", self.key.term if self.key is not None else 0, action.reason)
            self._renew(snap)
        elif kind == RELEASE:
            self._release_to(action.target, snap)
        elif kind == ABANDON:
            log.error("%s", action.reason)
            self._note("abandon", self.key.term if self.key is not None else 0, action.reason)
            self._end_handover()
            self.coord.clear_switchover()
            self._renew(snap)
        elif kind == ACQUIRE:
            self._acquire(action, snap)
        elif kind == FOLLOW:
            self.frozen_term = 0
            self.node.follow(action.target, snap.leader.term if snap.leader is not None else 0)
        elif kind == FREEZE:
            self.node.freeze()
            self.frozen_term = snap.term
            self.coord.publish_member(self._member(self.node.state()))
            self.wake()
        elif kind == REVOKE and snap.leader is not None:
            self.coord.revoke(snap.leader)
            self.refused = 0
            self.wake()

    def _renew_key(self) -> None:
        assert self.key is not None
        t0 = self.clock()
        try:
            if self.coord.renew(self.key):
                self._extend_lease(t0)
            else:
                log.error("lost the leader key at term %d", self.key.term)
                self.lease_deadline = 0.0  # decide() demotes this very tick
        except CoordinatorUnavailable as exc:
            log.warning("could not renew the leader key: %s", exc)

    def _renew(self, snap: ClusterSnapshot) -> None:
        """Keep leading: the key was renewed at the start of this tick."""
        assert self.key is not None
        if snap.switchover_to == self.cfg.node_id:
            self.coord.clear_switchover()
        if self.settings.commit_mode == CommitMode.SYNC:
            self._maintain_sync_set(snap, grow_only=snap.paused)

    def _maintain_sync_set(self, snap: ClusterSnapshot, grow_only: bool = False) -> None:
        """``grow_only`` (maintenance mode): no member leaves the set, but an
        unfilled one (empty right after an election, say) still gains caught-up
        replicas; otherwise a paused shard whose leader dies could never elect
        again, even after resume (no sync-set member alive)."""
        assert self.key is not None
        now = self.clock()
        grace = self._sync_grace if now < self._sync_grace_until else {}
        keep, wanted = self.node.sync_plan(now, grace)
        current = self.node.sync_members() or ()
        published = snap.sync.members if snap.sync is not None and snap.sync.term == self.key.term else None
        if set(wanted) == set(current) and published == wanted:
            return
        if grow_only and not set(current) | set(published or ()) <= set(wanted):
            return
        # Members that leave stop counting before the new set is published; new
        # ones count only once it is (so the counted set is always published).
        self.node.sync_shrink(keep)
        if self.coord.set_sync(self.key, self._sync_state(self.key.term, wanted)):
            self.node.sync_adopt(wanted)
            log.info("sync set at term %d is now %s", self.key.term, list(wanted) or "empty")

    def _sync_state(self, term: int, members: tuple[str, ...]) -> SyncState:
        """The set to publish; one without members carries the floor (read after the
        members that leave stopped counting), so that a replica holding this term's
        history up to it may take over if this node dies before a replica joins."""
        return SyncState(self.cfg.node_id, term, members, None if members else self.node.sync_floor())

    def _acquire(self, action: Action, snap: ClusterSnapshot) -> None:
        t0 = self.clock()
        st = self.node.state()
        me = self._local(st, snap)
        initial = first_sync_set(snap, me, self.cfg.sync_replicas)
        want = LeaderKey(self.cfg.node_id, self.cfg.address, action.term)
        stored = self.coord.acquire(want, snap.term)
        if stored is None:
            log.info("lost the election for term %d", action.term)
            return
        try:
            self._extend_lease(t0)
            self.node.lead(action.term)
            self.key = stored
            self.frozen_term = 0
            if snap.switchover_to == self.cfg.node_id:
                self.coord.clear_switchover()
            if self.settings.commit_mode == CommitMode.SYNC:
                # Published first, counted after: a set that etcd does not hold
                # never acknowledges a write.
                self._sync_grace = {m: snap.members[m].flushed_lsn for m in initial}
                self._sync_grace_until = self.clock() + 2 * self.cfg.lease_ttl_s
                if self.coord.set_sync(stored, self._sync_state(action.term, initial)):
                    self.node.sync_count(initial)
            self._note("acquire", action.term, self._acquire_reason(action, snap))
        except Exception:
            log.exception("promotion to term %d failed; releasing the leader key", action.term)
            self.coord.revoke(stored)
            self._demote(f"promotion to term {action.term} failed")
            raise

    def _acquire_reason(self, action: Action, snap: ClusterSnapshot) -> str:
        prev = self._seen_leader
        if snap.switchover_to == self.cfg.node_id:
            why = "switchover requested to this node"
        elif prev is None:
            why = "no leader key"
        elif prev.node_id == self.cfg.node_id:
            why = f"this node's own key from term {prev.term} was gone"
        else:
            why = f"{prev.node_id} (term {prev.term}) no longer held the leader key (released, or its lease expired)"
        return f"{action.reason}; {why}"

    def _demote(self, reason: str) -> None:
        self.key = None
        self.lease_deadline = 0.0
        self._end_handover()
        self.node.step_down(reason)

    def _end_handover(self) -> None:
        if self.handover is not None:
            self.handover = None
            self.node.resume_writes()

    def _release_to(self, target: str, snap: ClusterSnapshot) -> None:
        """The target holds every acknowledged write: make it the sync set (so it
        may take over in sync mode), release the key and follow it."""
        key = self.key
        assert key is not None
        if self.settings.commit_mode == CommitMode.SYNC:
            self.node.sync_shrink(())
            if self.coord.set_sync(key, SyncState(self.cfg.node_id, key.term, (target,))):
                self.node.sync_adopt((target,))
        self._demote(f"switchover to {target}")
        self.coord.release(key)
        self._note("release", key.term, f"switchover: released the leader key at term {key.term} to {target}")
        member = snap.members.get(target)
        if member is not None:
            self.node.follow(member.address, 0)
        log.info("switchover: released the leader key; following %s", target)

    def stop(self, release: bool = True) -> None:
        """Stop the loop; a leader releases its key so a replica takes over at once."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if release and self.key is not None:
            key = self.key
            self._demote("stopping")
            try:
                self.coord.release(key)
                log.info("released the leader key at term %d", key.term)
                self._note("release", key.term, f"stopping: released the leader key at term {key.term}")
            except CoordinatorUnavailable as exc:
                log.warning("could not release the leader key (%s); it expires with its lease", exc)
        if self.journal is not None:
            self.journal.close()
        self.coord.close()
