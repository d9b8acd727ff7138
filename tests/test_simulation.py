"""Deterministic simulation of the HA protocol (issue 10, "Prove it").

The real ``HaLoop`` (and its pure ``decide``), ``MemoryCoordinator`` with
leases and revisions, ``SyncCommit`` and the term-history logic run over
simulated time, network, disks and faults (``tests/sim``). Every schedule is
checked after every event; a violation prints its seed and a minimal schedule.

- ``SUTRA_SIM_SCHEDULES`` (default 500): schedules per commit mode in the fixed budget.
- ``SUTRA_SIM_SECONDS`` (default 0): also run random seeds for this long.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from typing import Any

import pytest

from sutra_cluster.failover import decide
from sutra_cluster.failover.coordinator import ClusterSnapshot
from sutra_cluster.replication.commit import SyncCommit
from tests.sim.cluster import Rules, default_loop
from tests.sim.run import Shape, endless, report, run_one, search

SAFETY = frozenset({"sync durability", "two acknowledgers", "terms", "reads"})
BUDGET = int(os.environ.get("SUTRA_SIM_SCHEDULES", "500"))
SHAPE = Shape()
# The scripted family aimed at an empty sync set's floor (nemesis.empty_set_plan): its
# faults need longer than random ones (a lease runs out, a replica catches up and joins).
EMPTY_SET = Shape(plan="empty_set", start=0.6, heal=9.0, settle=5.0)


class CommittedStartsAtZero(SyncCommit):
    """Defect 1 reverted: a new term forgets what earlier leaders acknowledged, so
    a replica far behind may join the sync set right after a failover."""

    def lead(self, from_lsn: int) -> None:
        super().lead(from_lsn)
        self.committed = 0


def revoke_on_refusal(*args: Any) -> Any:
    """Defect 2 reverted: a refused connection is taken as proof the leader is
    gone, in async mode too."""
    loop = default_loop(*args)
    loop.settings = dataclasses.replace(loop.settings, fast_revoke=True)
    return loop


def _found(rules: Rules, kind: str, limit: int, shape: Shape = SHAPE) -> str:
    t0 = time.monotonic()
    res = search(range(1, limit + 1), rules, shape, kinds=frozenset({kind}), shrink_s=30.0)
    text = report(res, rules, shape)
    print(f"\n{text}\n  time to find: {res.seconds:.2f}s; with shrinking: {time.monotonic() - t0:.2f}s")
    assert res.failure is not None and res.minimal is not None, f"{rules.name} was not caught: {text}"
    m = res.minimal
    assert m.violation is not None and m.violation.kind == kind
    # The minimal schedule replays: same seed, same faults, same violation.
    again = run_one(m.seed, rules, shape, m.faults)
    assert again.violation is not None and str(again.violation) == str(m.violation)
    assert len(m.faults) <= len(res.failure.faults)
    return text


# --------------------------------------------------------------------------- the real rules


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_real_rules_hold_for_the_fixed_budget(mode: str) -> None:
    rules = Rules(mode=mode)
    res = search(range(1, BUDGET + 1), rules, SHAPE, kinds=SAFETY)
    print(f"\n{report(res, rules, SHAPE)}: {res.events} events, {res.acked} writes acknowledged, "
          f"{res.failovers} promotions, {res.lost_async} acknowledged writes lost (async), "
          f"{res.exposed_cuts} replica reads of a tail cut later, {res.replica_shown} records shown by replicas, "
          f"{res.lost_tail_held} crashes of a leader whose lost tail a replica held; "
          f"other findings: "
          f"{ {k: (n, o.seed) for k, (n, o) in res.other.items()} }")
    assert res.failure is None, report(res, rules, SHAPE)
    assert res.runs == BUDGET
    # The schedules exercised something: writes were acknowledged and leaders changed.
    assert res.acked > 20 * BUDGET
    assert res.failovers > BUDGET
    # Replicas showed records to reads (in sync mode, as their leaders' commit news allowed).
    assert res.replica_shown > 10 * BUDGET
    # Leaders stream records before their own fsync: crashes lost tails replicas held.
    assert res.lost_tail_held > 0
    if mode == "sync":
        assert res.lost_async == 0


@pytest.mark.slow
def test_five_nodes_with_two_sync_replicas() -> None:
    """SUTRA_SYNC_REPLICAS=2 of 4 replicas: sets of two, replaced one member at a time."""
    rules = Rules(mode="sync", nodes=5, sync_replicas=2, name="5 nodes, SUTRA_SYNC_REPLICAS=2")
    res = search(range(1, BUDGET // 5 + 1), rules, SHAPE, kinds=SAFETY)
    print(f"\n{report(res, rules, SHAPE)}: {res.acked} writes acknowledged, {res.failovers} promotions")
    assert res.failure is None, report(res, rules, SHAPE)
    assert res.acked > 20 * res.runs and res.failovers > res.runs


def test_same_seed_same_run() -> None:
    a = run_one(83, Rules(mode="sync"), SHAPE)
    b = run_one(83, Rules(mode="sync"), SHAPE)
    assert (a.events, a.stats, a.faults, str(a.violation)) == (b.events, b.stats, b.faults, str(b.violation))
    c = run_one(84, Rules(mode="sync"), SHAPE)
    assert (a.events, a.faults) != (c.events, c.faults)


@pytest.mark.timeout(600 + int(float(os.environ.get("SUTRA_SIM_SECONDS", "0"))))
def test_random_seeds_for_as_long_as_asked() -> None:
    """SUTRA_SIM_SECONDS=N: random seeds, both modes, for N seconds (a few
    schedules when unset, so this path is always exercised)."""
    seconds = float(os.environ.get("SUTRA_SIM_SECONDS", "0"))
    start = random.SystemRandom().randrange(1 << 31)
    for mode in ("sync", "async"):
        rules = Rules(mode=mode)
        seeds = endless(start) if seconds > 0 else range(start, start + 5)
        res = search(seeds, rules, SHAPE, seconds=seconds / 2 if seconds > 0 else None, kinds=SAFETY)
        print(f"\n{report(res, rules, SHAPE)} (seeds from {start})")
        assert res.failure is None, report(res, rules, SHAPE)


def test_the_checker_catches_each_kind_of_violation() -> None:
    """Each invariant can fail: fed a broken history directly, the checker says so."""
    from tests.sim.checker import Violation
    from tests.sim.cluster import SimCluster

    def shard() -> tuple[SimCluster, list[Any]]:
        c = SimCluster(1, Rules(mode="sync"))
        return c, [c.nodes[n] for n in c.ids]

    c, (n1, n2, n3) = shard()
    for t, node, wid, term in ((1.0, n1, 1, 2), (2.0, n2, 2, 3)):
        c.sched.clock.t = t
        c.check.on_ack(node, wid, wid, term)
    c.sched.clock.t = 3.0
    with pytest.raises(Violation, match="two acknowledgers"):
        c.check.on_ack(n1, 3, 3, 2)  # n1 again, after n2 began
    c, (n1, n2, n3) = shard()
    n3.terms.observe(5)
    c.check.tick(n3)
    n3.terms.highest = 4
    with pytest.raises(Violation, match="terms"):
        c.check.tick(n3)
    c, (n1, n2, n3) = shard()
    n1.log, n2.log = [(2, 0), (2, 7)], [(2, 0), (3, 8)]
    with pytest.raises(Violation, match="reads"):
        c.check.on_accept(n1, n2, 2)  # n2's second record is not n1's
    c, (n1, n2, n3) = shard()
    c.check.sync_members = ("n3",)
    with pytest.raises(Violation, match="sync durability"):
        c.check.on_ack(n2, 4, 3, 3)  # n3 holds nothing at LSN 3
    c, (n1, n2, n3) = shard()
    c.check.acked[9] = (2, 3, "n2", 0.0)
    with pytest.raises(Violation, match="sync durability"):
        c.check.on_cut(n2, 1, [(3, 9)], "diverged")  # an acknowledged write cut


# --------------------------------------------------------------------------- the proof it bites


@pytest.mark.slow
def test_finds_defect_1_committed_left_at_zero_on_promotion() -> None:
    """Sync mode, 3 nodes: the composed kill/restart that lost acknowledged writes."""
    _found(Rules(mode="sync", sync_factory=CommittedStartsAtZero, name="Defect 1 (committed at 0 on lead)"),
           "sync durability", 2000)


@pytest.mark.slow
def test_finds_defect_2_revoke_on_refused_port_in_async_mode() -> None:
    """Async mode: a live leader whose port refuses is revoked while it still acknowledges."""
    _found(Rules(mode="async", loop_factory=revoke_on_refusal, name="Defect 2 (revoke on refusal, async)"),
           "two acknowledgers", 2000)


@pytest.mark.slow
def test_finds_defect_3_sync_replica_shows_what_it_holds() -> None:
    """Sync mode: a replica that shows every record it holds, not only those its
    leader said are committed, serves a read of a write that a failover then cuts."""
    _found(Rules(mode="sync", replica_shows="durable", name="Defect 3 (sync replica shows what it holds)"),
           "reads", 2000)


# --------------------------------------------------------------------------- an empty sync set's floor


def _floor_without_term_check(snap: ClusterSnapshot) -> set[str]:
    """The floor rule without its term check: any member at or past the floor holds
    the acknowledged writes, even one whose log ends in an older term."""
    sync = snap.sync
    assert sync is not None
    holders = set(sync.members) | {sync.leader}
    if not sync.members and sync.floor is not None:
        holders |= {m.node_id for m in snap.members.values() if m.flushed_lsn >= sync.floor}
    return holders


def _floor_without_floor_check(snap: ClusterSnapshot) -> set[str]:
    """The floor rule without the floor: any member whose log ends in the leader's
    term holds the acknowledged writes, however far behind."""
    sync = snap.sync
    assert sync is not None
    holders = set(sync.members) | {sync.leader}
    if not sync.members and sync.floor is not None:
        holders |= {m.node_id for m in snap.members.values() if m.last_term == sync.term}
    return holders


def test_real_rules_hold_where_a_sync_set_empties(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scripted family (a replica behind in the term, or an old leader with a
    longer log of an older term; the set's member lost; then its leader): no
    violation of any kind, liveness included, and the floor did admit members."""
    admitted: list[int] = []
    real = decide._sync_holders

    def counting(snap: ClusterSnapshot) -> set[str]:
        holders = real(snap)
        assert snap.sync is not None
        if holders - set(snap.sync.members) - {snap.sync.leader}:
            admitted.append(snap.sync.term)
        return holders

    monkeypatch.setattr(decide, "_sync_holders", counting)
    rules = Rules(mode="sync", name="real rules, empty-set schedules")
    budget = max(100, BUDGET // 2)
    res = search(range(1, budget + 1), rules, EMPTY_SET)
    print(f"\n{report(res, rules, EMPTY_SET)}: {res.acked} writes acknowledged, {res.failovers} promotions, "
          f"{len(admitted)} decisions with members admitted by a floor")
    assert res.failure is None, report(res, rules, EMPTY_SET)
    assert res.acked > 20 * budget and res.failovers > budget
    assert len(admitted) > budget // 10


@pytest.mark.slow
def test_finds_the_floor_without_its_term_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop 22's random schedules did not catch this variant in 4,000 tries; the
    scripted family catches it: an old leader's longer log of an older term is not
    the new leader's history, and electing it cuts writes the new one acknowledged."""
    monkeypatch.setattr(decide, "_sync_holders", _floor_without_term_check)
    _found(Rules(mode="sync", name="floor without its term check"), "sync durability", 400, EMPTY_SET)


@pytest.mark.slow
def test_finds_the_floor_without_its_floor_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica of the leader's term that fell behind the floor lacks acknowledged writes."""
    monkeypatch.setattr(decide, "_sync_holders", _floor_without_floor_check)
    _found(Rules(mode="sync", name="floor without its floor check"), "sync durability", 400, EMPTY_SET)


# --------------------------------------------------------------------------- liveness


@pytest.mark.slow
def test_a_leader_after_healing() -> None:
    """The simulator's liveness finding, fixed: a sync set published empty (no
    replica caught up) stranded the shard once its leader lost the key, until the
    /sync leader became eligible too."""
    rules = Rules(mode="sync")
    res = search(range(1, 101), rules, SHAPE, kinds=frozenset({"liveness"}), shrink_s=20.0)
    assert res.failure is None, report(res, rules, SHAPE)
