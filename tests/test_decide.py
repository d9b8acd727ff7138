"""The pure HA decision (issue 4): every branch of ``decide``, ``candidate`` and
``next_sync_set``, with each action's sentence asserted verbatim (house style).

No processes, no clocks, no store: a snapshot and a node's own state go in,
one action comes out. "Crash halfway through a transition" is a snapshot that
such a crash leaves behind, so it is tested here like any other branch.
"""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sutra_cluster.failover.coordinator import ClusterSnapshot, LeaderKey, MemberInfo, SyncState
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
    WAIT,
    Action,
    Local,
    Settings,
    candidate,
    decide,
    decide_unreachable,
    first_sync_set,
    next_sync_set,
)

ASYNC = Settings(commit_mode="async", max_lag_on_failover=1_000_000)
# Production's sync mode (no SUTRA_SYNC_FALLBACK) revokes a refusing leader at once.
SYNC = Settings(commit_mode="sync", max_lag_on_failover=1_000_000, fast_revoke=True)


# --------------------------------------------------------------------------- builders


def addr(node_id: str) -> str:
    return f"{node_id}:50051"


def member(node_id: str, lsn: int = 0, *, role: str = "replica", term: int = 3, frozen: int = 3,
           healthy: bool = True, preferred: bool = False) -> MemberInfo:
    """A published member; by default a healthy replica frozen for an election at term 3."""
    return MemberInfo(node_id=node_id, address=addr(node_id), role=role, term=term, flushed_lsn=lsn,
                      last_term=term, frozen_term=frozen, healthy=healthy, preferred=preferred)


def key(node_id: str, term: int = 3, lease: int = 7) -> LeaderKey:
    return LeaderKey(node_id, addr(node_id), term, lease)


def snap(*members: MemberInfo, leader: LeaderKey | None = None, term: int = 3, sync: tuple[str, ...] | None = None,
         switchover: str = "") -> ClusterSnapshot:
    return ClusterSnapshot(
        leader=leader, term=term, members={m.node_id: m for m in members},
        sync=SyncState("old", term, sync) if sync is not None else None, switchover_to=switchover, revision=42,
    )


def me(node_id: str = "n1", *, role: str = "replica", term: int = 3, lsn: int = 0, frozen: int = 3,
       lease_ok: bool = True, refused: bool = False, lag: float = 0.0, uptime: float = 1e9,
       healthy: bool = True) -> Local:
    return Local(node_id=node_id, address=addr(node_id), role=role, term=term, flushed_lsn=lsn, last_term=term,
                 frozen_term=frozen, lease_ok=lease_ok, leader_refused=refused, lag_ms=lag, uptime_s=uptime,
                 healthy=healthy)


def as_local(m: MemberInfo) -> Local:
    """What a node that published ``m`` knows about itself."""
    return Local(node_id=m.node_id, address=m.address, role=m.role, term=m.term, flushed_lsn=m.flushed_lsn,
                 last_term=m.last_term, frozen_term=m.frozen_term, healthy=m.healthy)


# --------------------------------------------------------------------------- the key names this node


def test_leader_holding_its_key_renews() -> None:
    s = snap(member("n1", 10, role="leader"), member("n2", 9), leader=key("n1", 3))
    assert decide(s, me("n1", role="leader", frozen=0), ASYNC) == Action(RENEW, "renewed leader key at term 3")


def test_leader_whose_lease_was_not_renewed_in_time_demotes() -> None:
    s = snap(member("n1", 10, role="leader"), leader=key("n1", 5), term=5)
    assert decide(s, me("n1", role="leader", term=5, lease_ok=False), ASYNC) == Action(
        DEMOTE, "demoted: leader key at term 5 not renewed in time", release=True)


def test_lease_check_comes_before_a_switchover() -> None:
    s = snap(member("n1", role="leader"), member("n2"), leader=key("n1"), switchover="n2")
    assert decide(s, me("n1", role="leader", lease_ok=False), ASYNC) == Action(
        DEMOTE, "demoted: leader key at term 3 not renewed in time", release=True)


def test_leader_with_a_storage_failure_gives_up_its_key() -> None:
    s = snap(member("n1", role="leader", healthy=False), member("n2"), leader=key("n1", 5), term=5, switchover="n2")
    assert decide(s, me("n1", role="leader", term=5, healthy=False), ASYNC) == Action(
        DEMOTE, "demoted: storage failure on this node; giving up the leader key at term 5", release=True)


def test_crash_after_acquire_before_promote_revokes_own_key() -> None:
    # The key was taken at term 4, then the process died before promote_to: it
    # restarted as a replica and finds its own name in the key.
    s = snap(member("n1", 10), member("n2", 10), leader=key("n1", 4), term=4)
    assert decide(s, me("n1", role="replica", term=3, frozen=0), ASYNC) == Action(
        REVOKE, "leader key (term 4) names this node, which is not leading "
                "(a previous life or an interrupted promotion): revoking it")


def test_restarted_leader_revokes_key_of_its_previous_life() -> None:
    s = snap(member("n2", 10), leader=key("n1", 6), term=6)
    got = decide(s, me("n1", role="replica", term=6, frozen=0, lease_ok=False), ASYNC)
    assert got.kind == REVOKE
    assert got.reason == ("leader key (term 6) names this node, which is not leading "
                          "(a previous life or an interrupted promotion): revoking it")


def test_switchover_hands_over_to_a_live_target() -> None:
    s = snap(member("n1", 10, role="leader"), member("n2", 10), leader=key("n1"), switchover="n2")
    assert decide(s, me("n1", role="leader"), ASYNC) == Action(
        HANDOVER, "switchover: handing leadership at term 3 to n2", target="n2")


def test_switchover_to_an_absent_target_keeps_leading() -> None:
    s = snap(member("n1", role="leader"), member("n2"), leader=key("n1"), switchover="n9")
    assert decide(s, me("n1", role="leader"), ASYNC) == Action(
        RENEW, "renewed leader key at term 3; switchover target n9 is not alive")


def test_switchover_to_an_unhealthy_target_keeps_leading() -> None:
    s = snap(member("n1", role="leader"), member("n2", healthy=False), leader=key("n1"), switchover="n2")
    assert decide(s, me("n1", role="leader"), ASYNC) == Action(
        RENEW, "renewed leader key at term 3; switchover target n2 is not alive")


def test_switchover_to_the_leader_itself_just_renews() -> None:
    # The new leader sees its own name until it clears the switchover key.
    s = snap(member("n1", role="leader"), member("n2"), leader=key("n1", 4), term=4, switchover="n1")
    assert decide(s, me("n1", role="leader", term=4), ASYNC) == Action(RENEW, "renewed leader key at term 4")


# --------------------------------------------------------------------------- another node holds the key


def test_replica_follows_the_key_holder() -> None:
    s = snap(member("n2", role="leader"), member("n1"), leader=key("n2", 7), term=7)
    assert decide(s, me("n1", lag=12.4, frozen=0), ASYNC) == Action(
        FOLLOW, "following n2 (term 7), lag 12 ms", target=addr("n2"))


def test_follow_clears_a_stale_freeze_and_ignores_lsn() -> None:
    s = snap(member("n2", 1, role="leader"), leader=key("n2", 4), term=4)
    assert decide(s, me("n1", lsn=999, frozen=3), ASYNC) == Action(
        FOLLOW, "following n2 (term 4), lag 0 ms", target=addr("n2"))


def test_leader_sees_key_held_by_another_and_demotes() -> None:
    s = snap(member("n1", role="leader"), member("n2", role="leader"), leader=key("n2", 8), term=8)
    assert decide(s, me("n1", role="leader", term=7), ASYNC) == Action(
        DEMOTE, "demoted: leader key held by n2 at term 8")


def test_leader_sees_key_held_by_another_demotes_even_with_a_good_lease() -> None:
    s = snap(leader=key("n2", 8), term=8)
    assert decide(s, me("n1", role="leader", term=8, lease_ok=True), SYNC).kind == DEMOTE


def test_sync_replica_revokes_a_leader_that_refuses_connections() -> None:
    # Safe in sync mode: the old leader cannot acknowledge without a sync member,
    # and the one elected froze (stopped following it) before the election.
    s = snap(member("n1"), leader=key("n2", 5), term=5, sync=("n1",))
    assert decide(s, me("n1", refused=True), SYNC) == Action(
        REVOKE, f"leader n2 at {addr('n2')} refuses connections: it is gone; revoking its lease (term 5)")


def test_async_replica_waits_out_the_lease_of_a_leader_that_refuses_connections() -> None:
    # Defect 2: a firewall can refuse for a live leader that still acknowledges
    # writes; in async mode only the lease's expiry proves it stopped.
    s = snap(member("n1"), leader=key("n2", 5), term=5)
    assert decide(s, me("n1", refused=True), ASYNC) == Action(
        FOLLOW, "following n2 (term 5): its port refuses connections; waiting for its lease to expire "
                "(in async mode a refusal does not prove it stopped acknowledging writes)", target=addr("n2"))


def test_sync_with_fallback_does_not_revoke_on_a_refusal() -> None:
    s = snap(member("n1"), leader=key("n2", 5), term=5)
    fallback = Settings(commit_mode="sync", fast_revoke=False)
    assert decide(s, me("n1", refused=True), fallback).kind == FOLLOW


# --------------------------------------------------------------------------- etcd unreachable


def test_leader_without_etcd_demotes_once_its_lease_may_have_expired() -> None:
    assert decide_unreachable(me("n1", role="leader", lease_ok=False), "timeout") == Action(
        DEMOTE, "demoted: etcd unreachable (timeout); cannot prove leadership")


def test_leader_without_etcd_keeps_leading_within_its_lease() -> None:
    assert decide_unreachable(me("n1", role="leader", lease_ok=True), "timeout") == Action(
        WAIT, "etcd unreachable: timeout (role leader, keeping it)")


def test_replica_without_etcd_keeps_its_role() -> None:
    assert decide_unreachable(me("n1"), "refused") == Action(WAIT, "etcd unreachable: refused (role replica, keeping it)")


# --------------------------------------------------------------------------- switchover across ticks


def handing(**kw: object) -> Local:
    base = dict(role="leader")
    return dataclasses.replace(me("n1", **base), handover_target="n2", **kw)  # type: ignore[arg-type]


def test_handover_waits_for_writes_in_flight() -> None:
    s = snap(member("n1", 10, role="leader"), member("n2", 10), leader=key("n1"), switchover="n2")
    assert decide(s, handing(handover_elapsed_s=0.2), ASYNC) == Action(
        RENEW, "handing over to n2: waiting for writes in flight to finish (0.2 s of 5)", target="n2")


def test_handover_waits_for_the_target_to_catch_up() -> None:
    s = snap(member("n1", 10, role="leader"), member("n2", 10), leader=key("n1"), switchover="n2")
    assert decide(s, handing(handover_lsn=12, target_flushed=11, handover_elapsed_s=0.8), ASYNC) == Action(
        RENEW, "handing over to n2: waiting for LSN 12 (0.8 s of 5)", target="n2")


def test_handover_releases_once_the_target_holds_everything() -> None:
    s = snap(member("n1", 10, role="leader"), member("n2", 10), leader=key("n1"), switchover="n2")
    assert decide(s, handing(handover_lsn=12, target_flushed=12, handover_elapsed_s=0.8), ASYNC) == Action(
        RELEASE, "switchover: n2 holds LSN 12; releasing the leader key at term 3 and following it", target="n2")


def test_handover_is_abandoned_after_its_timeout() -> None:
    s = snap(member("n1", 10, role="leader"), member("n2", 10), leader=key("n1"), switchover="n2")
    assert decide(s, handing(handover_lsn=12, target_flushed=3, handover_elapsed_s=5.0), ASYNC) == Action(
        ABANDON, "switchover to n2 abandoned: it did not catch up to LSN 12 in 5 s; resuming writes at term 3")


def test_handover_is_abandoned_when_the_target_dies() -> None:
    s = snap(member("n1", 10, role="leader"), leader=key("n1"), switchover="n2")
    assert decide(s, handing(handover_lsn=12), ASYNC) == Action(
        ABANDON, "switchover to n2 abandoned: it is not alive; resuming writes at term 3")


def test_handover_is_cancelled_when_the_request_is_withdrawn() -> None:
    s = snap(member("n1", 10, role="leader"), member("n2", 10), leader=key("n1"))
    assert decide(s, handing(handover_lsn=12), ASYNC) == Action(
        ABANDON, "switchover to n2 cancelled; resuming writes at term 3")


def test_lease_check_comes_before_a_handover_in_progress() -> None:
    s = snap(member("n1", 10, role="leader"), member("n2", 10), leader=key("n1"), switchover="n2")
    assert decide(s, handing(handover_lsn=12, target_flushed=12, lease_ok=False), ASYNC).kind == DEMOTE


# --------------------------------------------------------------------------- the first sync set


def test_first_sync_set_takes_replicas_frozen_at_this_position() -> None:
    s = snap(member("n1", 10), member("n2", 10), member("n3", 12), member("n4", 9), term=3)
    assert first_sync_set(s, me("n1", lsn=10), 2) == ("n2", "n3")


def test_first_sync_set_skips_replicas_behind_from_another_history_or_not_frozen() -> None:
    s = snap(member("n1", 10), member("n2", 9), dataclasses.replace(member("n3", 10), last_term=2),
             member("n4", 10, frozen=2),
             member("n5", 10, healthy=False), term=3)
    assert first_sync_set(s, me("n1", lsn=10), 1) == ()


# --------------------------------------------------------------------------- no leader key


def test_leader_whose_key_vanished_demotes() -> None:
    s = snap(member("n1", role="leader"), member("n2"), term=5)
    assert decide(s, me("n1", role="leader", term=5), ASYNC) == Action(
        DEMOTE, "demoted: the leader key is gone (term 5)")


def test_no_key_first_freezes_and_publishes_final_lsn() -> None:
    s = snap(member("n1", 17, frozen=0), member("n2", 20), term=3)
    assert decide(s, me("n1", lsn=17, frozen=0), ASYNC) == Action(
        FREEZE, "no leader at term 3: stopped streaming at LSN 17")


def test_freeze_from_an_older_term_does_not_count() -> None:
    # Frozen for term 3, but an aborted election moved the term to 4.
    s = snap(member("n1", 5, frozen=3), term=4)
    assert decide(s, me("n1", lsn=5, frozen=3), ASYNC) == Action(
        FREEZE, "no leader at term 4: stopped streaming at LSN 5")


def test_election_waits_for_every_live_replica_to_freeze() -> None:
    s = snap(member("n1", 10), member("n3", 5, frozen=0), member("n2", 5, frozen=2), term=3)
    assert decide(s, me("n1", lsn=10), ASYNC) == Action(
        WAIT, "no leader at term 3: waiting for n2, n3 to publish a final LSN")


def test_election_does_not_wait_for_dead_or_unhealthy_members() -> None:
    # A dead leader's member key (role leader) and an unhealthy node never publish a freeze.
    s = snap(member("n1", 10), member("n0", 99, role="leader", frozen=0), member("n4", 50, healthy=False, frozen=0),
             term=3)
    assert decide(s, me("n1", lsn=10), ASYNC) == Action(ACQUIRE, "promoted self: leader key acquired at term 4",
                                                         term=4)


def test_best_replica_acquires_at_the_next_term() -> None:
    s = snap(member("n1", 10), member("n2", 9), term=3)
    assert decide(s, me("n1", lsn=10), ASYNC) == Action(ACQUIRE, "promoted self: leader key acquired at term 4",
                                                         term=4)


def test_new_term_is_above_the_nodes_own_term() -> None:
    s = snap(member("n1", 10), term=3)
    assert decide(s, me("n1", term=9, lsn=10), ASYNC) == Action(
        ACQUIRE, "promoted self: leader key acquired at term 10", term=10)


def test_other_replica_waits_for_the_best_one() -> None:
    s = snap(member("n1", 10), member("n2", 9), term=3)
    assert decide(s, me("n2", lsn=9), ASYNC) == Action(WAIT, "no leader at term 3: n1 (LSN 10) should take over")


def test_no_live_replica_waits() -> None:
    # This node's own member key is missing (its publish has not landed) and the rest are unhealthy.
    s = snap(member("n2", 10, healthy=False), term=3)
    assert decide(s, me("n1", lsn=10), ASYNC) == Action(WAIT, "no leader at term 3: no live replica to take over")


def test_fresh_cluster_at_term_zero_needs_no_freeze() -> None:
    s = snap(member("n1", 0, term=0, frozen=0, preferred=True), member("n2", 0, term=0, frozen=0), term=0)
    assert decide(s, me("n1", term=0, frozen=0), ASYNC) == Action(
        ACQUIRE, "promoted self: leader key acquired at term 1", term=1)
    assert decide(s, me("n2", term=0, frozen=0), ASYNC) == Action(
        WAIT, "no leader at term 0: n1 (LSN 0) should take over")


GRACE = Settings("async", startup_grace_s=4.0)


def test_new_cluster_waits_for_its_configured_leader_during_the_grace() -> None:
    s = snap(member("n2", 0, term=0, frozen=0), member("n3", 0, term=0, frozen=0), term=0)
    assert decide(s, me("n2", term=0, frozen=0, uptime=3.9), GRACE) == Action(
        WAIT, "new cluster: waiting for the configured leader (SUTRA_NODE_ROLE=leader) to join")


def test_new_cluster_elects_without_its_configured_leader_after_the_grace() -> None:
    s = snap(member("n2", 0, term=0, frozen=0), member("n3", 0, term=0, frozen=0), term=0)
    assert decide(s, me("n2", term=0, frozen=0, uptime=4.0), GRACE) == Action(
        ACQUIRE, "promoted self: leader key acquired at term 1", term=1)
    assert decide(s, me("n3", term=0, frozen=0, uptime=4.0), GRACE) == Action(
        WAIT, "no leader at term 0: n2 (LSN 0) should take over")


def test_new_cluster_with_its_configured_leader_visible_elects_at_once() -> None:
    s = snap(member("n1", 0, term=0, frozen=0, preferred=True), member("n2", 0, term=0, frozen=0), term=0)
    assert decide(s, me("n1", term=0, frozen=0, uptime=0.0), GRACE).kind == ACQUIRE
    assert decide(s, me("n2", term=0, frozen=0, uptime=0.0), GRACE) == Action(
        WAIT, "no leader at term 0: n1 (LSN 0) should take over")


def test_startup_grace_applies_only_to_a_new_cluster() -> None:
    s = snap(member("n2", 5), member("n3", 4), term=3)
    assert decide(s, me("n2", lsn=5, uptime=0.0), GRACE) == Action(
        ACQUIRE, "promoted self: leader key acquired at term 4", term=4)


# --------------------------------------------------------------------------- async: who may take over


def test_async_highest_flushed_lsn_wins_over_preferred_and_node_id() -> None:
    s = snap(member("a", 10, preferred=True), member("b", 12), member("c", 11))
    best, why = candidate(s, ASYNC)
    assert (best and best.node_id, why) == ("b", "")


def test_async_tie_goes_to_the_preferred_node() -> None:
    s = snap(member("a", 12), member("c", 12, preferred=True), member("b", 11))
    best, _ = candidate(s, ASYNC)
    assert best is not None and best.node_id == "c"


def test_async_tie_without_preferred_goes_to_lowest_node_id() -> None:
    s = snap(member("n3", 12), member("n2", 12), member("n1", 11))
    best, _ = candidate(s, ASYNC)
    assert best is not None and best.node_id == "n2"


def test_candidate_skips_leaders_and_unhealthy_members() -> None:
    s = snap(member("a", 99, role="leader"), member("b", 98, healthy=False), member("c", 5))
    best, _ = candidate(s, ASYNC)
    assert best is not None and best.node_id == "c"


def test_candidate_with_no_live_replica() -> None:
    assert candidate(snap(member("a", 9, role="leader")), ASYNC) == (None, "no live replica to take over")
    assert candidate(snap(), ASYNC) == (None, "no live replica to take over")


def test_max_lag_boundary_is_inclusive() -> None:
    s = snap(member("a", 100), member("b", 90, preferred=True), member("c", 89))
    lag10 = Settings("async", max_lag_on_failover=10)
    # b is exactly 10 behind: still eligible, c (11 behind) is not; a still wins on LSN.
    best, _ = candidate(s, lag10)
    assert best is not None and best.node_id == "a"
    # A switchover naming c does not make the too-far-behind c eligible.
    best, _ = candidate(snap(*s.members.values(), switchover="c"), lag10)
    assert best is not None and best.node_id == "a"
    # b ties with a once caught up (a planned switchover waits for that): then b wins.
    best, _ = candidate(snap(member("a", 100), member("b", 100), member("c", 89), switchover="b"), lag10)
    assert best is not None and best.node_id == "b"


def test_far_behind_replica_does_not_take_over_on_its_own() -> None:
    lag = Settings("async", max_lag_on_failover=100)
    s = snap(member("n1", 50), member("n2", 1_000), term=3)
    assert decide(s, me("n1", lsn=50), lag) == Action(WAIT, "no leader at term 3: n2 (LSN 1000) should take over")
    # Even a switchover naming it does not make it take over.
    s2 = snap(member("n1", 50), member("n2", 1_000), term=3, switchover="n1")
    assert decide(s2, me("n1", lsn=50), lag).kind == WAIT
    assert decide(s2, me("n2", lsn=1_000), lag) == Action(
        ACQUIRE, "promoted self: leader key acquired at term 4", term=4)


def test_max_lag_zero_allows_only_the_most_advanced() -> None:
    lag0 = Settings("async", max_lag_on_failover=0)
    s = snap(member("a", 7), member("b", 7), member("c", 6, preferred=True), switchover="c")
    best, _ = candidate(s, lag0)
    assert best is not None and best.node_id == "a"


# --------------------------------------------------------------------------- sync: only the sync set


def test_sync_only_a_sync_member_takes_over_even_when_behind() -> None:
    s = snap(member("n1", 100), member("n2", 50), member("n3", 60), sync=("n2", "n3"))
    best, _ = candidate(s, SYNC)
    assert best is not None and best.node_id == "n3"
    assert decide(s, me("n1", lsn=100), SYNC) == Action(WAIT, "no leader at term 3: n3 (LSN 60) should take over")
    assert decide(s, me("n3", lsn=60), SYNC) == Action(
        ACQUIRE, "promoted self: leader key acquired at term 4", term=4)


def test_sync_member_is_chosen_even_beyond_max_lag_of_a_non_member() -> None:
    # A sync member holds every acknowledged write; a non-member's extra records were never acknowledged.
    s = snap(member("n1", 5_000), member("n2", 10), sync=("n2",))
    best, _ = candidate(s, Settings("sync", max_lag_on_failover=1))
    assert best is not None and best.node_id == "n2"


def test_sync_no_live_sync_member_waits_with_the_documented_reason() -> None:
    s = snap(member("n1", 100), member("n2", 50, healthy=False), term=3, sync=("n3", "n2"))
    assert candidate(s, SYNC) == (
        None, "no member of the sync set ['n2', 'n3'] (nor its leader old) is alive; waiting (no acknowledged write "
              "may be lost)")
    assert decide(s, me("n1", lsn=100), SYNC) == Action(
        WAIT, "no leader at term 3: no member of the sync set ['n2', 'n3'] (nor its leader old) is alive; "
              "waiting (no acknowledged write may be lost)")


def test_sync_set_member_that_is_the_old_leader_is_not_eligible() -> None:
    s = snap(member("n1", 100), member("n2", 100, role="leader"), sync=("n2",))
    assert decide(s, me("n1", lsn=100), SYNC).reason == (
        "no leader at term 3: no member of the sync set ['n2'] (nor its leader old) is alive; waiting (no "
        "acknowledged write may be lost)")


def test_sync_empty_sync_set_waits() -> None:
    s = snap(member("n1", 100), sync=())
    assert decide(s, me("n1", lsn=100), SYNC) == Action(
        WAIT, "no leader at term 3: no member of the sync set [] (nor its leader old) is alive; waiting (no "
              "acknowledged write may be lost)")


def test_sync_the_leader_that_published_the_set_may_take_over_again() -> None:
    # The simulator's finding: a leader that published an empty set (no replica had
    # caught up) and then lost its key holds every acknowledged write; without it
    # being eligible the shard stayed leaderless for good.
    s = ClusterSnapshot(leader=None, term=3, members={m.node_id: m for m in (member("n1", 100), member("n2", 90))},
                        sync=SyncState("n1", 3, ()), revision=1)
    assert decide(s, me("n1", lsn=100), SYNC) == Action(ACQUIRE, "promoted self: leader key acquired at term 4", term=4)
    assert decide(s, me("n2", lsn=90), SYNC) == Action(
        WAIT, "no leader at term 3: n1 (LSN 100) should take over")


def _floor_snap(*members: MemberInfo, floor: int | None) -> ClusterSnapshot:
    """n1 led term 4 and published an empty set with ``floor``, then lost its key."""
    return ClusterSnapshot(leader=None, term=4, members={m.node_id: m for m in members},
                           sync=SyncState("n1", 4, (), floor), revision=1)


def test_sync_an_empty_set_with_a_floor_lets_a_replica_holding_that_terms_log_take_over() -> None:
    # The empty set's leader acknowledged nothing above LSN 40 while it stood; n2's log ends in
    # term 4 (records from n1, after their histories matched) at LSN 45: it holds n1's log up to 40.
    s = _floor_snap(member("n1", 45, term=4, frozen=3, healthy=False), member("n2", 45, term=4, frozen=4),
                    member("n3", 30, term=3, frozen=4), floor=40)
    assert decide(s, as_local(s.members["n2"]), SYNC) == Action(
        ACQUIRE, "promoted self: leader key acquired at term 5", term=5)
    assert decide(s, as_local(s.members["n3"]), SYNC) == Action(
        WAIT, "no leader at term 4: n2 (LSN 45) should take over")


def test_sync_the_floor_counts_only_a_log_of_that_term_at_or_past_it() -> None:
    dead = member("n1", 45, term=4, frozen=3, healthy=False)
    waiting = ("no leader at term 4: no member of the sync set [] (nor its leader n1) is alive; waiting (no "
               "acknowledged write may be lost)")
    # Behind the floor: it may lack writes acknowledged up to it.
    s = _floor_snap(dead, member("n2", 39, term=4, frozen=4), floor=40)
    assert decide(s, as_local(s.members["n2"]), SYNC) == Action(WAIT, waiting)
    # Past the floor but in an older term: its records there are another leader's, not n1's.
    s = _floor_snap(dead, member("n2", 50, term=3, frozen=4), floor=40)
    assert decide(s, as_local(s.members["n2"]), SYNC) == Action(WAIT, waiting)
    # No floor (SUTRA_SYNC_FALLBACK, or a leader of an older build): only n1 holds them.
    s = _floor_snap(dead, member("n2", 50, term=4, frozen=4), floor=None)
    assert decide(s, as_local(s.members["n2"]), SYNC) == Action(WAIT, waiting)


def test_sync_a_floor_beside_members_changes_nothing() -> None:
    # A set with members is what holds the writes; a floor there (never published) is ignored.
    s = ClusterSnapshot(leader=None, term=4, members={m.node_id: m for m in (
        member("n2", 50, term=4, frozen=4), member("n3", 45, term=4, frozen=4))},
        sync=SyncState("n1", 4, ("n3",), 40), revision=1)
    assert decide(s, as_local(s.members["n2"]), SYNC) == Action(
        WAIT, "no leader at term 4: n3 (LSN 45) should take over")


def test_sync_a_replica_the_floor_counts_must_publish_its_final_position_first() -> None:
    # n3 qualifies by the floor, so the election waits for its final LSN like a member's.
    s = _floor_snap(member("n1", 45, term=4, frozen=3, healthy=False), member("n2", 45, term=4, frozen=4),
                    member("n3", 48, term=4, frozen=3), floor=40)
    assert decide(s, as_local(s.members["n2"]), SYNC) == Action(
        WAIT, "no leader at term 4: waiting for n3 to publish a final LSN")


def test_sync_only_a_sync_member_revokes_a_refusing_leader() -> None:
    # One node whose own link to the leader is refused must not unseat a leader
    # that its sync set still reaches (the simulator saw terms 2..6 in a second).
    s = snap(member("n1"), member("n3"), leader=key("n2", 5), term=5, sync=("n3",))
    assert decide(s, me("n1", refused=True), SYNC).kind == FOLLOW
    assert decide(s, me("n3", refused=True), SYNC).kind == REVOKE


def test_sync_switchover_target_outside_the_sync_set_is_ignored() -> None:
    s = snap(member("n1", 10), member("n2", 10), sync=("n2",), switchover="n1")
    best, _ = candidate(s, SYNC)
    assert best is not None and best.node_id == "n2"


def test_sync_switchover_target_wins_among_equally_advanced_sync_members() -> None:
    s = snap(member("n1", 10), member("n2", 12), member("n3", 12), sync=("n2", "n3"), switchover="n3")
    best, _ = candidate(s, SYNC)
    assert best is not None and best.node_id == "n3"


def test_sync_member_holding_more_beats_a_leftover_switchover_target() -> None:
    s = snap(member("n1", 10), member("n2", 12), member("n3", 10), sync=("n2", "n3"), switchover="n3")
    best, _ = candidate(s, SYNC)
    assert best is not None and best.node_id == "n2"


def test_sync_mode_before_any_sync_key_uses_the_async_rule() -> None:
    # Bootstrap: no leader has published a sync set yet, so nothing was acknowledged in sync mode.
    s = snap(member("n1", 0, term=0, frozen=0), member("n2", 0, term=0, frozen=0, preferred=True), term=0)
    best, _ = candidate(s, SYNC)
    assert best is not None and best.node_id == "n2"


def test_sync_set_ties_go_to_preferred_then_node_id() -> None:
    s = snap(member("n3", 9), member("n2", 9), member("n4", 9, preferred=True), member("n1", 50), sync=("n2", "n3", "n4"))
    best, _ = candidate(s, SYNC)
    assert best is not None and best.node_id == "n4"
    s2 = snap(member("n3", 9), member("n2", 9), member("n1", 50), sync=("n3", "n2"))
    best, _ = candidate(s2, SYNC)
    assert best is not None and best.node_id == "n2"


# --------------------------------------------------------------------------- switchover candidates


def test_switchover_target_chosen_when_eligible() -> None:
    s = snap(member("n1", 10), member("n2", 10), member("n3", 10), switchover="n3")
    best, _ = candidate(s, ASYNC)
    assert best is not None and best.node_id == "n3"
    assert decide(s, me("n3", lsn=10), ASYNC) == Action(
        ACQUIRE, "promoted self: leader key acquired at term 4", term=4)
    assert decide(s, me("n1", lsn=10), ASYNC) == Action(WAIT, "no leader at term 3: n3 (LSN 10) should take over")


def test_switchover_target_not_alive_falls_back_to_the_normal_rule() -> None:
    s = snap(member("n1", 10), member("n2", 11), member("n3", 12, healthy=False), switchover="n3")
    best, _ = candidate(s, ASYNC)
    assert best is not None and best.node_id == "n2"


def test_unplanned_failover_with_a_lagging_switchover_target_still_picks_highest_lsn() -> None:
    # The leader died before it could hand over (it never waited for n3 to catch
    # up), so the switchover key is left behind. In async mode the rule is
    # "the replica with the highest flushed LSN among those alive": choosing n3
    # would throw away records 901..1000 that n2 holds.
    s = snap(member("n2", 1_000), member("n3", 900), switchover="n3")
    best, _ = candidate(s, ASYNC)
    assert best is not None and best.node_id == "n2"


def test_a_longer_log_from_an_older_term_does_not_beat_the_newer_history() -> None:
    # n3 led term 2 and was cut off holding records up to 500 that were never
    # acknowledged; term 3 (n2's history) acknowledged writes up to 300. n3 has
    # not rejoined yet when the term-3 leader dies: its LSN is higher, its log is not newer.
    n2 = MemberInfo("n2", addr("n2"), "replica", 3, 300, last_term=3, frozen_term=3)
    n3 = MemberInfo("n3", addr("n3"), "replica", 2, 500, last_term=2, frozen_term=3)
    best, _ = candidate(snap(n2, n3), ASYNC)
    assert best is not None and best.node_id == "n2"


# --------------------------------------------------------------------------- properties


NODES = ["n1", "n2", "n3", "n4", "n5"]


@st.composite
def elections(draw: st.DrawFn) -> tuple[ClusterSnapshot, Settings]:
    term = draw(st.integers(0, 4))
    ids = draw(st.lists(st.sampled_from(NODES), min_size=1, max_size=5, unique=True))
    members = []
    for nid in ids:
        members.append(member(
            nid, draw(st.integers(0, 30)),
            role=draw(st.sampled_from(["replica", "replica", "replica", "leader"])),
            term=draw(st.integers(0, term)),
            frozen=draw(st.sampled_from([term, term, term, 0, max(term - 1, 0)])),
            healthy=draw(st.sampled_from([True, True, True, False])),
            preferred=draw(st.booleans()),
        ))
    mode = draw(st.sampled_from(["async", "sync"]))
    sync = draw(st.none() | st.lists(st.sampled_from(NODES), max_size=3, unique=True).map(tuple))
    switchover = draw(st.sampled_from([""] + NODES))
    lag = draw(st.sampled_from([0, 3, 10, 1_000_000]))
    return snap(*members, term=term, sync=sync, switchover=switchover), Settings(mode, lag)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(elections())
def test_property_at_most_one_node_acquires_and_sync_acquirer_is_in_the_sync_set(
        case: tuple[ClusterSnapshot, Settings]) -> None:
    s, cfg = case
    # Every member decides from the same snapshot, plus one node whose member key is missing.
    locals_ = [as_local(m) for m in s.members.values()] + [me("n9", lsn=10_000, frozen=s.term, term=s.term)]
    acts = {loc.node_id: decide(s, loc, cfg) for loc in locals_}
    acquirers = [nid for nid, a in acts.items() if a.kind == ACQUIRE]
    assert len(acquirers) <= 1, acts
    for nid in acquirers:
        a, m = acts[nid], s.members[nid]
        assert a.term > s.term
        assert a.reason == f"promoted self: leader key acquired at term {a.term}"
        assert m.healthy and m.role != "leader"
        if cfg.commit_mode == "sync" and s.sync is not None:
            assert nid in s.sync.members
        # Nobody acquires while a live replica that could win has yet to publish its
        # final LSN (in sync mode only sync-set members can win).
        could_win = [o for o in s.members.values() if o.healthy and o.role != "leader"
                     and (cfg.commit_mode != "sync" or s.sync is None or o.node_id in s.sync.members)]
        assert all(o.frozen_term == s.term for o in could_win)
        live = [o for o in s.members.values() if o.healthy and o.role != "leader"]
        if cfg.commit_mode == "async" and not s.switchover_to and len({o.last_term for o in live}) == 1:
            # One history: the most advanced replica wins.
            assert m.flushed_lsn == max(o.flushed_lsn for o in live)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(elections(), st.sampled_from(NODES))
def test_property_a_key_holder_never_acquires_and_non_holders_never_renew(
        case: tuple[ClusterSnapshot, Settings], holder: str) -> None:
    s, cfg = case
    s = ClusterSnapshot(leader=key(holder, s.term), term=s.term, members=s.members, sync=s.sync,
                        switchover_to=s.switchover_to)
    for m in s.members.values():
        a = decide(s, as_local(m), cfg)
        assert a.kind != ACQUIRE and a.kind != FREEZE and a.kind != WAIT
        if m.node_id != holder:
            assert a.kind in (FOLLOW, DEMOTE), a
        else:
            assert a.kind in (RENEW, HANDOVER, REVOKE, DEMOTE), a
            if a.kind == DEMOTE:
                assert not m.healthy


# --------------------------------------------------------------------------- next_sync_set


def test_sync_members_kept_while_connected_even_when_behind() -> None:
    assert next_sync_set(("b",), {"b": 5, "c": 100}, 1, commit_lsn=50) == ("b",)


def test_disconnected_member_is_dropped_and_replaced_by_a_caught_up_one() -> None:
    assert next_sync_set(("b",), {"c": 50, "d": 49}, 1, commit_lsn=50) == ("c",)


def test_replica_joins_only_with_flushed_at_least_commit_lsn() -> None:
    assert next_sync_set((), {"b": 49}, 1, commit_lsn=50) == ()
    assert next_sync_set((), {"b": 50}, 1, commit_lsn=50) == ("b",)
    assert next_sync_set((), {"b": 51, "c": 49}, 2, commit_lsn=50) == ("b",)


def test_sync_set_size_is_capped_at_n() -> None:
    assert next_sync_set((), {"b": 60, "c": 70, "d": 50}, 2, commit_lsn=50) == ("b", "c")
    # Shrinking n drops current members deterministically (the first ones in sorted order stay).
    assert next_sync_set(("b", "c", "d"), {"b": 1, "c": 1, "d": 1}, 2, commit_lsn=50) == ("b", "c")
    assert next_sync_set(("b",), {"b": 60, "c": 70}, 0, commit_lsn=50) == ()


def test_existing_members_are_preferred_over_more_advanced_newcomers() -> None:
    assert next_sync_set(("d",), {"b": 90, "c": 80, "d": 51}, 2, commit_lsn=50) == ("b", "d")


def test_joiners_tie_break_by_node_id_and_output_is_sorted() -> None:
    assert next_sync_set((), {"z": 60, "c": 60, "m": 60}, 2, commit_lsn=60) == ("c", "m")
    assert next_sync_set((), dict(reversed(list({"z": 60, "c": 60, "m": 60}.items()))), 2, 60) == ("c", "m")
    assert next_sync_set(("z",), {"a": 99, "z": 1}, 2, commit_lsn=50) == ("a", "z")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(NODES), max_size=5, unique=True).map(tuple),
    st.dictionaries(st.sampled_from(NODES), st.integers(0, 20), max_size=5),
    st.integers(0, 4),
    st.integers(0, 20),
    st.randoms(use_true_random=False),
)
def test_property_next_sync_set(current: tuple[str, ...], connected: dict[str, int], n: int, commit: int,
                                rnd: object) -> None:
    current = tuple(sorted(current))  # a published set is always sorted
    out = next_sync_set(current, connected, n, commit)
    assert list(out) == sorted(out) and len(set(out)) == len(out)
    assert len(out) <= n
    for node in out:
        assert node in connected
        # A member either was one already, or has every acknowledged write.
        assert node in current or connected[node] >= commit
    kept = [m for m in current if m in connected]
    if len(kept) <= n:
        assert set(kept) <= set(out)
    eligible = set(kept) | {k for k, v in connected.items() if v >= commit}
    assert len(out) == min(n, len(eligible))
    # Deterministic: the order in which connections are listed does not matter.
    items = list(connected.items())
    rnd.shuffle(items)  # type: ignore[attr-defined]
    assert next_sync_set(current, dict(items), n, commit) == out


def test_sync_election_waits_only_for_sync_members_to_publish_a_final_lsn() -> None:
    # n3 is outside the sync set and has not frozen (paused, say; its member key
    # lives on for its TTL): it cannot win, so the election does not wait for it.
    s = snap(member("n1", 10), member("n2", 9), member("n3", 12, frozen=2), term=3, sync=("n1",))
    assert decide(s, me("n1", lsn=10), SYNC) == Action(ACQUIRE, "promoted self: leader key acquired at term 4", term=4)


def test_async_election_waits_for_every_live_replica() -> None:
    s = snap(member("n1", 10), member("n2", 9), member("n3", 12, frozen=2), term=3)
    assert decide(s, me("n1", lsn=10), ASYNC) == Action(
        WAIT, "no leader at term 3: waiting for n3 to publish a final LSN")


def test_sync_election_still_waits_for_an_unfrozen_sync_member() -> None:
    s = snap(member("n1", 10), member("n2", 12, frozen=2), term=3, sync=("n1", "n2"))
    assert decide(s, me("n1", lsn=10), SYNC) == Action(
        WAIT, "no leader at term 3: waiting for n2 to publish a final LSN")


def test_sync_a_leader_killed_before_its_member_key_said_so_is_not_waited_for() -> None:
    # n0 led term 3 and published the set, but died before republishing its member
    # key, which still says "replica" from before its promotion and lives on for
    # its TTL. The holders of every acknowledged write (n1, n2) elect at once.
    def s(n0_frozen: int) -> ClusterSnapshot:
        return ClusterSnapshot(leader=None, term=3, members={m.node_id: m for m in (
            member("n0", 20, frozen=n0_frozen), member("n1", 16), member("n2", 15))},
            sync=SyncState("n0", 3, ("n1", "n2")), revision=1)
    assert decide(s(2), as_local(s(2).members["n1"]), SYNC) == Action(
        ACQUIRE, "promoted self: leader key acquired at term 4", term=4)
    assert decide(s(2), as_local(s(2).members["n2"]), SYNC) == Action(
        WAIT, "no leader at term 3: n1 (LSN 16) should take over")
    # Alive and demoted, it freezes within a tick: then it is a holder like any other.
    assert decide(s(3), as_local(s(3).members["n1"]), SYNC) == Action(
        WAIT, "no leader at term 3: n0 (LSN 20) should take over")


def test_sync_a_member_that_led_an_older_term_is_still_waited_for() -> None:
    # Only the leader of the current term is read as stale: a set published at
    # term 2 says nothing about who led term 3.
    s = ClusterSnapshot(leader=None, term=3, members={m.node_id: m for m in (
        member("n0", 20, frozen=2), member("n1", 16))}, sync=SyncState("n0", 2, ("n1",)), revision=1)
    assert decide(s, as_local(s.members["n1"]), SYNC) == Action(
        WAIT, "no leader at term 3: waiting for n0 to publish a final LSN")
