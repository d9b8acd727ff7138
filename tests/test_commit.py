"""SyncCommit: what a leader may acknowledge, and who may join the sync set.
Pure: no processes, no clocks (the caller's time is passed in)."""

from __future__ import annotations

from sutra_cluster.replication.commit import SyncCommit
from sutra_cluster.roles import CommitMode


def sync(required: int = 1) -> SyncCommit:
    return SyncCommit(CommitMode.SYNC, required, managed=True)


def test_new_term_counts_everything_it_holds_as_acknowledged() -> None:
    # Defect 1: a fresh leader started with committed = 0 and admitted a replica far
    # behind into the sync set; that replica won the next election and the tail
    # the previous leader had acknowledged was cut.
    c = sync()
    c.lead(from_lsn=1000)
    assert c.committed == 1000
    far_behind = c.connect("c", 0, now=0.0)
    c.ack(far_behind, 400, now=0.0)
    keep, wanted = c.plan(now=0.0, stall_s=0.5)
    assert (keep, wanted) == ((), ())
    c.ack(far_behind, 1000, now=0.1)
    assert c.plan(now=0.1, stall_s=0.5) == ((), ("c",))


def test_a_write_commits_only_with_the_published_members() -> None:
    c = sync()
    c.lead(10)
    b = c.connect("b", 0, 0.0)
    c.ack(b, 11, 0.0)
    assert not c.try_commit(11)  # b is connected but not yet a published member
    c.adopt(("b",))
    assert c.try_commit(11) and c.committed == 11
    assert not c.try_commit(12)


def test_committed_rises_with_the_commit_itself() -> None:
    c = sync()
    c.lead(10)
    b = c.connect("b", 10, 0.0)
    c.adopt(("b",))
    c.ack(b, 15, 0.0)
    assert c.try_commit(15)
    late = c.connect("c", 0, 0.0)
    c.ack(late, 14, 0.0)
    c.disconnect(b)
    # c lacks LSN 15, which was acknowledged: it may not replace b.
    assert c.plan(0.0, 0.5) == ((), ())


def test_a_stalled_member_is_replaced_by_a_caught_up_replica() -> None:
    c = sync()
    c.lead(10)
    b, d = c.connect("b", 0, 0.0), c.connect("d", 0, 0.0)
    c.ack(b, 10, 0.0)
    c.ack(d, 10, 0.0)
    c.adopt(("b",))
    c.ack(d, 12, 1.0)  # b paused at 0.0; d keeps acknowledging
    assert c.plan(now=1.0, stall_s=0.5) == ((), ("d",))


def test_a_stalled_member_stays_when_no_replica_can_take_its_place() -> None:
    # Shrinking the set would leave no one to fail over to: keep waiting for it.
    c = sync()
    c.lead(10)
    b, d = c.connect("b", 0, 0.0), c.connect("d", 0, 0.0)
    c.ack(b, 10, 0.0)
    c.ack(d, 9, 1.0)
    c.adopt(("b",))
    assert c.plan(now=1.0, stall_s=0.5) == (("b",), ("b",))


def test_shrink_then_adopt_never_counts_an_unpublished_member() -> None:
    c = sync()
    c.lead(10)
    b, d = c.connect("b", 10, 0.0), c.connect("d", 10, 0.0)
    c.adopt(("b",))
    c.disconnect(b)
    keep, wanted = c.plan(0.0, 0.5)
    assert (keep, wanted) == ((), ("d",))
    c.shrink(keep)
    c.ack(d, 11, 0.0)
    assert not c.try_commit(11)  # d not published yet
    c.adopt(wanted)
    assert c.try_commit(11)


def test_adopt_does_not_count_a_joiner_missing_a_committed_write() -> None:
    c = sync()
    c.lead(10)
    c.connect("b", 9, 0.0)
    c.adopt(("b",))
    assert c.members == ()


def test_acks_never_move_a_position_backwards() -> None:
    c = sync()
    b = c.connect("b", 0, 0.0)
    c.ack(b, 9, 0.0)
    c.ack(b, 3, 0.1)
    assert b.flushed == 9


def test_async_commits_without_replicas() -> None:
    c = SyncCommit(CommitMode.ASYNC, 1, managed=True)
    c.lead(5)
    assert c.try_commit(6) and c.committed == 6
    assert c.commit_lsn(durable=9, applied=3) == 9


def test_fallback_degrades_only_while_replicas_are_missing() -> None:
    c = SyncCommit(CommitMode.SYNC, 1, managed=False, fallback=True)
    c.lead(5)
    assert c.try_commit(6)  # nobody connected: degraded to async (SUTRA_SYNC_FALLBACK)
    b = c.connect("b", 0, 0.0)
    assert not c.try_commit(7)
    c.ack(b, 7, 0.0)
    assert c.try_commit(7)


def test_commit_lsn_is_what_the_members_flushed() -> None:
    c = sync(2)
    c.lead(1)
    b, d = c.connect("b", 1, 0.0), c.connect("d", 1, 0.0)
    c.adopt(("b", "d"))
    c.ack(b, 8, 0.0)
    c.ack(d, 6, 0.0)
    assert c.commit_lsn(durable=10, applied=2) == 6
    c.disconnect(d)
    assert c.commit_lsn(durable=10, applied=2) == 2  # too few members: only what is visible already


def test_committable_is_the_highest_lsn_try_commit_accepts() -> None:
    # The leader wakes exactly the writers at or below it (replication/leader.py).
    c = sync(required=2)
    c.lead(10)
    assert c.committable() == 0  # no members yet: nothing may commit
    b, d = c.connect("b", 10, 0.0), c.connect("d", 10, 0.0)
    c.adopt(("b", "d"))
    c.ack(b, 17, 0.0)
    c.ack(d, 14, 0.0)
    assert c.committable() == 14
    assert c.try_commit(14) and not c.try_commit(15)
    c.disconnect(d)
    assert c.committable() == 0
    assert SyncCommit(CommitMode.ASYNC, 1, managed=False).committable() is None
    fallback = SyncCommit(CommitMode.SYNC, 1, managed=False, fallback=True)
    assert fallback.committable() is None  # degraded while no replica is connected


def test_floor_is_what_was_acknowledged_once_no_member_counts() -> None:
    """Published with an empty set (decide._sync_holders): nothing above it may be
    acknowledged until a member counts, and one counts only once published."""
    c = sync()
    c.lead(10)
    assert c.floor() == 10  # a new term: the term record; nothing acknowledged in it yet
    b = c.connect("b", 10, 0.0)
    c.adopt(("b",))
    c.ack(b, 15, 0.0)
    assert c.try_commit(15)
    c.shrink(())  # b leaves (disconnected): it stops counting before the empty set is published
    assert c.floor() == 15
    c.ack(b, 30, 0.1)
    assert not c.try_commit(16) and c.floor() == 15  # no member: nothing more is acknowledged


def test_no_floor_where_a_write_commits_without_a_member() -> None:
    assert SyncCommit(CommitMode.ASYNC, 1, managed=True).floor() is None
    assert SyncCommit(CommitMode.SYNC, 1, managed=True, fallback=True).floor() is None
    assert SyncCommit(CommitMode.SYNC, 0, managed=True).floor() is None
    assert SyncCommit(CommitMode.SYNC, 1, managed=False).floor() is None
