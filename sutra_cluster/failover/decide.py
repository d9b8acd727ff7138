"""The HA decision: a pure function from one snapshot of the cluster and this
node's own state to exactly one action, with a sentence saying why.

No I/O, no clocks: the loop (``loop.py``) gathers the inputs and applies the
action, so every branch here is tested without processes or sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass

from sutra_cluster.failover.coordinator import ClusterSnapshot, MemberInfo

# Action kinds.
RENEW = "renew"  # keep leading: renew the leader key
HANDOVER = "handover"  # planned switchover: stop writes, let the target catch up, release the key
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
    role: str  # "leader" | "replica"
    term: int
    flushed_lsn: int
    last_term: int
    frozen_term: int = 0  # the term at which it stopped streaming for an election (0: not frozen)
    lease_ok: bool = True  # as leader: renewed recently enough to keep acknowledging writes
    leader_refused: bool = False  # the key holder's port refused connections (twice): it is dead
    lag_ms: float = 0.0
    uptime_s: float = 1e9  # seconds since this node started
    healthy: bool = True  # False after a storage failure: it must not lead


@dataclass(frozen=True)
class Settings:
    commit_mode: str = "async"
    max_lag_on_failover: int = 1_000_000
    startup_grace_s: float = 4.0  # a new cluster waits this long for its configured leader


@dataclass(frozen=True)
class Action:
    kind: str
    reason: str
    target: str = ""  # node id (handover) or address (follow)
    term: int = 0  # the term to acquire


def _eligible(snap: ClusterSnapshot, s: Settings) -> tuple[list[MemberInfo], str]:
    """Members that may take over, and why the others may not.

    Raft's up-to-date rule first: only members whose log ends in the newest
    term compete, so a long tail from an older term (a former leader that has
    not rejoined yet) never beats the newer history.
    """
    alive = [m for m in snap.members.values() if m.healthy and m.role != "leader"]
    if s.commit_mode == "sync" and snap.sync is not None:
        sync = set(snap.sync.members)
        alive = [m for m in alive if m.node_id in sync]
        if not alive:
            return [], f"no member of the sync set {sorted(sync)} is alive; waiting (no acknowledged write may be lost)"
    if not alive:
        return [], "no live replica to take over"
    newest = max(m.last_term for m in alive)
    alive = [m for m in alive if m.last_term == newest]
    if s.commit_mode == "sync" and snap.sync is not None:
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
        if me.role != "leader":
            return Action(REVOKE, f"leader key (term {key.term}) names this node, which is not leading "
                                  "(a previous life or an interrupted promotion): revoking it")
        if not me.lease_ok:
            return Action(DEMOTE, f"demoted: leader key at term {key.term} not renewed in time")
        if not me.healthy:
            return Action(DEMOTE, f"demoted: storage failure on this node; giving up the leader key at term {key.term}")
        target = snap.switchover_to
        if target and target != me.node_id:
            m = snap.members.get(target)
            if m is None or not m.healthy:
                return Action(RENEW, f"renewed leader key at term {key.term}; switchover target {target} is not alive")
            return Action(HANDOVER, f"switchover: handing leadership at term {key.term} to {target}", target=target)
        return Action(RENEW, f"renewed leader key at term {key.term}")
    if key is not None:
        if me.role == "leader":
            return Action(DEMOTE, f"demoted: leader key held by {key.node_id} at term {key.term}")
        if me.leader_refused:
            return Action(REVOKE, f"leader {key.node_id} at {key.address} refuses connections: it is gone; "
                                  f"revoking its lease (term {key.term})")
        return Action(FOLLOW, f"following {key.node_id} (term {key.term}), lag {me.lag_ms:.0f} ms", target=key.address)
    # No leader key.
    if me.role == "leader":
        return Action(DEMOTE, f"demoted: the leader key is gone (term {snap.term})")
    if me.frozen_term != snap.term:
        return Action(FREEZE, f"no leader at term {snap.term}: stopped streaming at LSN {me.flushed_lsn}")
    waiting = sorted(m.node_id for m in snap.members.values()
                     if m.healthy and m.role != "leader" and m.frozen_term != snap.term)
    if waiting:
        return Action(WAIT, f"no leader at term {snap.term}: waiting for {', '.join(waiting)} to publish a final LSN")
    if snap.term == 0 and me.uptime_s < s.startup_grace_s and not any(m.preferred for m in snap.members.values()):
        return Action(WAIT, "new cluster: waiting for the configured leader (SUTRA_NODE_ROLE=leader) to join")
    best, why = candidate(snap, s)
    if best is None:
        return Action(WAIT, f"no leader at term {snap.term}: {why}")
    new_term = max(snap.term, me.term) + 1
    if best.node_id == me.node_id:
        return Action(ACQUIRE, f"promoted self: leader key acquired at term {new_term}", term=new_term)
    return Action(WAIT, f"no leader at term {snap.term}: {best.node_id} (LSN {best.flushed_lsn}) should take over")


def next_sync_set(current: tuple[str, ...], connected: dict[str, int], n: int, commit_lsn: int) -> tuple[str, ...]:
    """The sync set a leader should publish next.

    Members stay while connected. A replica joins only once it has flushed
    everything acknowledged so far (``commit_lsn``), so every member of the
    published set always holds every acknowledged write. Sorted for stability.
    """
    keep = [m for m in current if m in connected]
    if len(keep) < n:
        for node, flushed in sorted(connected.items(), key=lambda kv: (-kv[1], kv[0])):
            if node not in keep and flushed >= commit_lsn:
                keep.append(node)
            if len(keep) >= n:
                break
    return tuple(sorted(keep[:n] if len(keep) > n else keep))
