"""The HA decision: a pure function from one snapshot of the cluster and this
node's own state to exactly one action, with a sentence saying why.

No I/O, no clocks: the loop (``loop.py``) gathers the inputs and applies the
action, so every branch here is tested without processes or sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass

from sutra_cluster.failover.coordinator import ClusterSnapshot, MemberInfo
from sutra_cluster.replication.commit import next_sync_set
from sutra_cluster.roles import CommitMode, Role

__all__ = ["decide", "decide_unreachable", "first_sync_set", "next_sync_set", "candidate"]

# Action kinds.
RENEW = "renew"  # keep leading: renew the leader key
HANDOVER = "handover"  # planned switchover: pause writes, wait (across ticks) for the target to catch up
RELEASE = "release"  # the switchover target holds everything: release the key and follow it
ABANDON = "abandon"  # the switchover target did not catch up in time: resume writes, keep leading
ACQUIRE = "acquire"  # take the leader key at a new term, then promote
DEMOTE = "demote"  # stop taking writes now
FOLLOW = "follow"  # stream from the leader named in the key
FREEZE = "freeze"  # no leader: stop streaming and publish the final LSN
REVOKE = "revoke"  # the key's holder is provably gone (or is this node's previous life): revoke it
WAIT = "wait"  # nothing to do this tick


@dataclass(frozen=True)
class Local:
    """This node's own state, read once per tick."""

    node_id: str
    address: str
    role: str  # Role.LEADER | Role.REPLICA
    term: int
    flushed_lsn: int
    last_term: int
    frozen_term: int = 0  # the term at which it stopped streaming for an election (0: not frozen)
    lease_ok: bool = True  # as leader: renewed recently enough to keep acknowledging writes
    leader_refused: bool = False  # the key holder's port refused connections on two ticks in a row
    lag_ms: float = 0.0
    uptime_s: float = 1e9  # seconds since this node started
    healthy: bool = True  # False after a storage failure: it must not lead
    # A switchover in progress (as leader): its target, the LSN every acknowledged
    # write is at or below once in-flight writes drained (0: still draining),
    # the target's flushed LSN (-1: not streaming) and the seconds since it began.
    handover_target: str = ""
    handover_lsn: int = 0
    target_flushed: int = -1
    handover_elapsed_s: float = 0.0


@dataclass(frozen=True)
class Settings:
    commit_mode: str = CommitMode.ASYNC
    max_lag_on_failover: int = 1_000_000
    startup_grace_s: float = 4.0  # a new cluster waits this long for its configured leader
    # Revoke a leader whose port refuses connections, without waiting for its lease.
    # Safe only where the old leader cannot acknowledge a write without a replica
    # that has stopped following it: sync mode without SUTRA_SYNC_FALLBACK.
    fast_revoke: bool = False
    handover_timeout_s: float = 5.0


@dataclass(frozen=True)
class Action:
    kind: str
    reason: str
    target: str = ""  # node id (handover) or address (follow)
    term: int = 0  # the term to acquire
    release: bool = False  # DEMOTE: the leader key still names this node; release it so others need not wait


def _sync_holders(snap: ClusterSnapshot) -> set[str]:
    """Nodes that hold every acknowledged write in sync mode: the published sync
    set and the leader that published it (it wrote them). The leader counts too so
    that a set published empty (no replica caught up) cannot strand the shard
    once that leader loses its key; Patroni treats the /sync leader the same way.

    A set published empty with its floor (everything that leader acknowledged is
    at or below it, and it could acknowledge nothing more while that set stood)
    also counts every member whose log ends in that leader's term at or past the
    floor: its records of that term came from that leader after their histories
    were matched, so it holds that leader's log up to the floor, every
    acknowledged write among it. Without this a leader killed before its first
    replica joined left the shard waiting for that node to come back."""
    sync = snap.sync
    assert sync is not None
    holders = set(sync.members) | {sync.leader}
    if not sync.members and sync.floor is not None:
        holders |= {m.node_id for m in snap.members.values()
                    if m.last_term == sync.term and m.flushed_lsn >= sync.floor}
    return holders


def _unfrozen_term_leader(snap: ClusterSnapshot, m: MemberInfo) -> bool:
    """Whether ``m`` is the node that led ``snap.term`` (it published that term's
    sync set) and has not frozen for this election. Its member key may still say
    "replica" from before its promotion: a leader killed in its first moments
    never republished it, and its key lives on for its TTL. Such a node is
    treated as its key would say once refreshed (a leader): nobody waits for its
    final LSN, and it cannot win until it has frozen (a demoted leader that is
    alive does so within a tick). Every acknowledged write is on the sync set's
    other holders, so nothing acknowledged depends on it."""
    sync = snap.sync
    return (sync is not None and sync.term == snap.term and m.node_id == sync.leader
            and m.frozen_term != snap.term)


def _may_stand(snap: ClusterSnapshot, m: MemberInfo) -> bool:
    """Whether ``m`` can take part in this election: a healthy replica, and not
    a leader (by its key, or the term's own leader before it has frozen)."""
    return m.healthy and m.role != Role.LEADER and not _unfrozen_term_leader(snap, m)


def _eligible(snap: ClusterSnapshot, s: Settings) -> tuple[list[MemberInfo], str]:
    """Members that may take over, and why the others may not.

    Raft's up-to-date rule first: only members whose log ends in the newest
    term compete, so a long tail from an older term (a former leader that has
    not rejoined yet) never beats the newer history.
    """
    alive = [m for m in snap.members.values() if _may_stand(snap, m)]
    if s.commit_mode == CommitMode.SYNC and snap.sync is not None:
        sync = _sync_holders(snap)
        alive = [m for m in alive if m.node_id in sync]
        if not alive:
            return [], (f"no member of the sync set {sorted(snap.sync.members)} (nor its leader "
                        f"{snap.sync.leader}) is alive; waiting (no acknowledged write may be lost)")
    if not alive:
        return [], "no live replica to take over"
    newest = max(m.last_term for m in alive)
    alive = [m for m in alive if m.last_term == newest]
    if s.commit_mode == CommitMode.SYNC and snap.sync is not None:
        return alive, ""
    best = max(m.flushed_lsn for m in alive)
    near = [m for m in alive if best - m.flushed_lsn <= s.max_lag_on_failover]
    return near, ""


def candidate(snap: ClusterSnapshot, s: Settings) -> tuple[MemberInfo | None, str]:
    """The member that should take over: in sync mode a sync-set member, else any
    live replica; the highest flushed LSN wins, then a switchover target, then
    the configured leader, then the lowest node id. (A switchover target has
    caught up, so it wins a planned change; a leftover request never beats a
    replica holding more writes.)"""
    eligible, why = _eligible(snap, s)
    if not eligible:
        return None, why
    target = snap.switchover_to
    return sorted(eligible, key=lambda m: (-m.flushed_lsn, m.node_id != target, not m.preferred, m.node_id))[0], ""


def decide(snap: ClusterSnapshot, me: Local, s: Settings) -> Action:
    key = snap.leader
    if key is not None and key.node_id == me.node_id:
        if me.role != Role.LEADER:
            return Action(REVOKE, f"leader key (term {key.term}) names this node, which is not leading "
                                  "(a previous life or an interrupted promotion): revoking it")
        if not me.lease_ok:
            return Action(DEMOTE, f"demoted: leader key at term {key.term} not renewed in time", release=True)
        if not me.healthy:
            return Action(DEMOTE, f"demoted: storage failure on this node; giving up the leader key at term {key.term}",
                          release=True)
        action = _lead_on(snap, me, s, key.term)
        if snap.paused and action.kind == RENEW and not action.target:
            return Action(RENEW, f"{action.reason} (maintenance mode: no sync-set member is replaced)")
        return action
    if key is not None:
        if me.role == Role.LEADER:
            return Action(DEMOTE, f"demoted: leader key held by {key.node_id} at term {key.term}")
        # Only a sync-set member revokes on a refusal: the leader cannot commit
        # without it, so its refused stream means writes are stuck anyway. One
        # other node's view (its own link refused) must not unseat a leader the
        # sync set still reaches.
        sync_member = (s.commit_mode != CommitMode.SYNC or snap.sync is None or me.node_id in snap.sync.members)
        # Maintenance mode: no automatic action against the leader; its lease still
        # ends its key if it is really gone (and then nobody takes it, see below).
        if me.leader_refused and s.fast_revoke and sync_member and not snap.paused:
            return Action(REVOKE, f"leader {key.node_id} at {key.address} refuses connections: it is gone; "
                                  f"revoking its lease (term {key.term})")
        if me.leader_refused:
            return Action(FOLLOW, f"following {key.node_id} (term {key.term}): its port refuses connections; "
                                  "waiting for its lease to expire (in async mode a refusal does not prove "
                                  "it stopped acknowledging writes)", target=key.address)
        return Action(FOLLOW, f"following {key.node_id} (term {key.term}), lag {me.lag_ms:.0f} ms", target=key.address)
    # No leader key.
    if me.role == Role.LEADER:
        return Action(DEMOTE, f"demoted: the leader key is gone (term {snap.term})")
    if me.frozen_term != snap.term:
        return Action(FREEZE, f"no leader at term {snap.term}: stopped streaming at LSN {me.flushed_lsn}")
    # Only a node that may win needs to publish its final position: in sync mode
    # that is a sync-set member, so a paused or slow replica outside the set
    # (whose member key lives on for its TTL) does not hold up the election.
    voters: list[MemberInfo] = list(snap.members.values())
    if s.commit_mode == CommitMode.SYNC and snap.sync is not None:
        holders = _sync_holders(snap)
        voters = [m for m in voters if m.node_id in holders or m.node_id == me.node_id]
    waiting = sorted(m.node_id for m in voters if _may_stand(snap, m) and m.frozen_term != snap.term)
    if waiting:
        return Action(WAIT, f"no leader at term {snap.term}: waiting for {', '.join(waiting)} to publish a final LSN")
    if snap.term == 0 and me.uptime_s < s.startup_grace_s and not any(m.preferred for m in snap.members.values()):
        return Action(WAIT, "new cluster: waiting for the configured leader (SUTRA_NODE_ROLE=leader) to join")
    best, why = candidate(snap, s)
    if best is None:
        return Action(WAIT, f"no leader at term {snap.term}: {why}")
    new_term = max(snap.term, me.term) + 1
    if snap.paused and best.node_id != snap.switchover_to:
        # Patroni's pause: the shard stays without a leader until `sutra-cluster resume`;
        # only an operator's switchover (its target, released to) goes on.
        return Action(WAIT, f"no leader at term {snap.term}: maintenance mode (paused), no automatic failover; "
                            f"{best.node_id} (LSN {best.flushed_lsn}) would take over")
    if best.node_id == me.node_id:
        return Action(ACQUIRE, f"promoted self: leader key acquired at term {new_term}", term=new_term)
    return Action(WAIT, f"no leader at term {snap.term}: {best.node_id} (LSN {best.flushed_lsn}) should take over")


def _lead_on(snap: ClusterSnapshot, me: Local, s: Settings, term: int) -> Action:
    """A healthy leader holding its key: renew, or run a switchover across ticks."""
    target = snap.switchover_to
    if me.handover_target and target != me.handover_target:
        return Action(ABANDON, f"switchover to {me.handover_target} cancelled; resuming writes at term {term}")
    if not target or target == me.node_id:
        return Action(RENEW, f"renewed leader key at term {term}")
    m = snap.members.get(target)
    if m is None or not m.healthy:
        if me.handover_target:
            return Action(ABANDON, f"switchover to {target} abandoned: it is not alive; resuming writes at term {term}")
        return Action(RENEW, f"renewed leader key at term {term}; switchover target {target} is not alive")
    if not me.handover_target:
        return Action(HANDOVER, f"switchover: handing leadership at term {term} to {target}", target=target)
    if me.handover_elapsed_s >= s.handover_timeout_s:
        return Action(ABANDON, f"switchover to {target} abandoned: it did not catch up to LSN {me.handover_lsn} "
                               f"in {s.handover_timeout_s:.0f} s; resuming writes at term {term}")
    if me.handover_lsn and me.target_flushed >= me.handover_lsn:
        return Action(RELEASE, f"switchover: {target} holds LSN {me.handover_lsn}; releasing the leader key "
                               f"at term {term} and following it", target=target)
    waiting = f"LSN {me.handover_lsn}" if me.handover_lsn else "writes in flight to finish"
    return Action(RENEW, f"handing over to {target}: waiting for {waiting} "
                         f"({me.handover_elapsed_s:.1f} s of {s.handover_timeout_s:.0f})", target=target)


def decide_unreachable(me: Local, why: str) -> Action:
    """The tick's decision when etcd cannot be read: a leader whose lease may
    have expired stops at once; everyone else keeps its role and waits."""
    if me.role == Role.LEADER and not me.lease_ok:
        return Action(DEMOTE, f"demoted: etcd unreachable ({why}); cannot prove leadership")
    return Action(WAIT, f"etcd unreachable: {why} (role {me.role}, keeping it)")


def first_sync_set(snap: ClusterSnapshot, me: Local, n: int) -> tuple[str, ...]:
    """The sync set a node publishes as it takes the leader key: replicas that
    froze for this election at exactly this node's position in the same history
    hold every acknowledged write, so they may count from the first write on."""
    peers = sorted(m.node_id for m in snap.members.values()
                   if m.node_id != me.node_id and m.healthy and m.role != Role.LEADER
                   and m.frozen_term == snap.term and m.last_term == me.last_term and m.flushed_lsn >= me.flushed_lsn)
    return tuple(peers[:n])
