"""The thin HA loop (issue 4), driven tick by tick for three simulated nodes.

Each node is a real ``HaLoop`` (its thread never started) with a
``MemoryCoordinator`` on ONE shared ``MemoryStore``. Only the replication
manager is faked, with exactly the attributes the loop touches. One injectable
clock drives both the store's leases and the loop's lease deadline, so expiry
is reached by advancing the clock, never by sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from sutra_cluster.config import Config
from sutra_cluster.errors import Unavailable
from sutra_cluster.failover.coordinator import ClusterSnapshot, LeaderKey
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
)
from sutra_cluster.failover.loop import HANDOVER_TIMEOUT_S, HaLoop
from sutra_cluster.failover.memory import MemoryCoordinator, MemoryStore
from sutra_cluster.replication.commit import ReplicaPosition, SyncCommit
from sutra_cluster.roles import CommitMode, NodeState, Role

PREFIX = "/sutra/shards/0/"
TTL = 2  # seconds: the leader key's lease
MARGIN_MS = 500  # stop acknowledging this long before the lease can expire


# --------------------------------------------------------------------------- clock and fakes


class Clock:
    """One monotonic clock for the store's leases and the loop's deadlines."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class FakeWal:
    durable_lsn: int = 0

    @property
    def last_lsn(self) -> int:
        return self.durable_lsn


@dataclass
class FakeTerms:
    last_term: int = 0


@dataclass
class FakeEngine:
    role: str = "replica"
    term: int = 0
    wal: FakeWal = field(default_factory=FakeWal)
    terms: FakeTerms = field(default_factory=FakeTerms)
    write_failure: str | None = None
    paused: list[str] = field(default_factory=list)
    resumed: int = 0
    inflight: int = 0


@dataclass
class FakeFollower:
    """This node streaming from a leader."""

    leader_address: str
    term: int = 0
    state: str = "streaming"
    behind_s: float = 0.0


class FakeLeaderStreams:
    """The leader's side, with the real commit bookkeeping (SyncCommit) inside:
    ``followers`` are its replica positions, so tests move them directly."""

    def __init__(self, commit_mode: str) -> None:
        self.commit = SyncCommit(CommitMode(commit_mode), 1, managed=True)

    @property
    def followers(self) -> dict[str, ReplicaPosition]:
        return self.commit.replicas

    @followers.setter
    def followers(self, value: dict[str, ReplicaPosition]) -> None:
        self.commit.replicas = value

    @property
    def sync_ids(self) -> tuple[str, ...] | None:
        return self.commit.members

    @property
    def max_committed(self) -> int:
        return self.commit.committed

    @max_committed.setter
    def max_committed(self, value: int) -> None:
        self.commit.committed = value


class FakeNode:
    """The NodePort HaLoop uses, in memory, recording every transition."""

    def __init__(self, clock: Clock, commit_mode: str) -> None:
        self.clock = clock
        self.engine = FakeEngine()
        self.follower: FakeFollower | None = None
        self.leader = FakeLeaderStreams(commit_mode)
        self.fence: Callable[[], None] | None = None  # set by HaLoop
        self.calls: list[str] = []
        self.promote_error: Exception | None = None

    def state(self) -> NodeState:
        e, f = self.engine, self.follower
        return NodeState(role=Role(e.role), term=e.term, durable_lsn=e.wal.durable_lsn, last_term=e.terms.last_term,
                         healthy=e.write_failure is None, streaming=f is not None and f.state == "streaming",
                         lag_ms=f.behind_s * 1000.0 if f is not None else 0.0, inflight=e.inflight)

    def lead(self, term: int) -> int:
        self.calls.append(f"promote_to {term}")
        if self.promote_error is not None:
            raise self.promote_error
        self.follower = None
        self.engine.term = term
        self.engine.terms.last_term = term
        self.engine.wal.durable_lsn += 1  # the term record
        self.leader.commit.lead(self.engine.wal.durable_lsn)
        self.engine.role = "leader"
        return self.engine.wal.durable_lsn

    def step_down(self, reason: str) -> None:
        self.calls.append("demote")
        self.engine.role = "replica"

    def follow(self, address: str, term: int = 0) -> None:
        self.calls.append(f"follow {address}")
        self.engine.role = "replica"
        if self.follower is None or self.follower.leader_address != address:
            self.follower = FakeFollower(address, term)

    def freeze(self) -> None:
        self.calls.append("freeze")
        self.follower = None

    def set_fence(self, fence: object) -> None:
        assert callable(fence)
        self.fence = fence

    def set_wake(self, wake: object) -> None:
        assert callable(wake)
        self.wake = wake

    def sync_plan(self, now: float, grace: dict[str, int]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return self.leader.commit.plan(now, 0.5, grace)

    def sync_members(self) -> tuple[str, ...] | None:
        return self.leader.commit.members

    def sync_shrink(self, keep: tuple[str, ...]) -> None:
        self.leader.commit.shrink(keep)

    def sync_adopt(self, published: tuple[str, ...]) -> None:
        self.leader.commit.adopt(published)

    def sync_count(self, members: tuple[str, ...]) -> None:
        self.leader.commit.count_all(members)

    def sync_floor(self) -> int | None:
        return self.leader.commit.floor()

    def replica_flushed(self, node_id: str) -> int | None:
        pos = self.leader.followers.get(node_id)
        return pos.flushed if pos is not None and pos.connected else None

    def pause_writes(self, why: str) -> None:
        self.engine.paused.append(why)

    def resume_writes(self) -> None:
        self.engine.resumed += 1

    def last_lsn(self) -> int:
        return self.engine.wal.durable_lsn


# --------------------------------------------------------------------------- the simulated shard


def addr(node_id: str) -> str:
    return f"{node_id}:50051"


class Node:
    def __init__(self, sim: Sim, node_id: str, role: str, commit_mode: str, lsn: int) -> None:
        self.id = node_id
        self.cfg = Config(node_id=node_id, advertise=addr(node_id), role=role, commit_mode=commit_mode,
                          sync_replicas=1, lease_ttl_s=TTL, loop_wait_ms=100, retry_timeout_ms=400,
                          fence_margin_ms=MARGIN_MS, leader="" if role == "leader" else addr("n1"))
        self.sim = sim
        self.m = FakeNode(sim.clock, commit_mode)
        self.m.engine.wal.durable_lsn = lsn
        self.coord = MemoryCoordinator(sim.store, PREFIX, node_id, ttl=TTL, member_ttl=4.0)
        self.loop = self._loop()

    def _loop(self) -> HaLoop:
        return HaLoop(self.m, self.coord, self.cfg, clock=self.sim.clock, probe=lambda a: a in self.sim.refusing)

    def tick(self) -> Action | None:
        return self.loop.tick()

    def act(self) -> Action:
        """A tick that must reach a decision (the store is up)."""
        action = self.tick()
        assert action is not None
        return action

    def stream(self, state: str) -> None:
        """Set the state of this replica's stream from its leader."""
        assert self.m.follower is not None
        self.m.follower.state = state

    def fence(self) -> None:
        """What the commit path calls before acknowledging (the hook HaLoop installed)."""
        assert self.m.fence is not None and self.m.fence == self.loop.fence
        self.m.fence()

    def restart(self, sim: Sim) -> None:
        """The process died and came back: fresh memory, same data on disk."""
        old = self.m.engine
        self.m = FakeNode(sim.clock, self.cfg.commit_mode)
        self.m.engine.wal.durable_lsn = old.wal.durable_lsn
        self.m.engine.term = old.term
        self.m.engine.terms.last_term = old.terms.last_term
        self.coord = MemoryCoordinator(sim.store, PREFIX, self.id, ttl=TTL, member_ttl=4.0)
        self.loop = self._loop()


class Sim:
    def __init__(self, clock: Clock, refusing: set[str], commit_mode: str = "async",
                 lsns: tuple[int, int, int] = (10, 10, 10)) -> None:
        self.clock = clock
        self.store = MemoryStore()
        self.store.now = self.clock
        self.refusing = refusing  # addresses where nothing listens any more
        self.nodes = {
            "n1": Node(self, "n1", "leader", commit_mode, lsns[0]),
            "n2": Node(self, "n2", "replica", commit_mode, lsns[1]),
            "n3": Node(self, "n3", "replica", commit_mode, lsns[2]),
        }

    def __getitem__(self, node_id: str) -> Node:
        return self.nodes[node_id]

    def snapshot(self) -> ClusterSnapshot:
        return MemoryCoordinator(self.store, PREFIX, "observer").snapshot()

    def boot(self) -> None:
        """Every node has published itself once (they start at about the same time)."""
        for n in self.nodes.values():
            n.coord.publish_member(n.loop._member(n.m.state()))

    def round(self, *ids: str) -> dict[str, Action | None]:
        return {i: self[i].tick() for i in ids}

    def run(self, seconds: float, *ids: str, step: float = 0.1) -> None:
        """Let time pass with the named nodes ticking every ``step``."""
        end = self.clock.t + seconds
        while self.clock.t < end:
            self.clock.advance(step)
            self.round(*ids)

    def connect(self, leader: str, caught_up: bool = True) -> None:
        """The leader's view of its replicas' streams; ``caught_up`` first gives
        every replica all of the leader's records (the term record included)."""
        lead = self[leader].m
        for n in self.nodes.values():
            if n.id != leader and caught_up:
                n.m.engine.wal.durable_lsn = lead.engine.wal.durable_lsn
                n.m.engine.term = n.m.engine.terms.last_term = lead.engine.term
        lead.leader.followers = {n.id: ReplicaPosition(n.m.engine.wal.durable_lsn, last_ack=self.clock.t)
                                 for n in self.nodes.values() if n.id != leader}

    def leaders(self) -> list[str]:
        return [n.id for n in self.nodes.values() if n.m.engine.role == "leader"]

    def elect_n1(self) -> None:
        self.boot()
        acts = self.round("n3", "n2", "n1")
        assert acts["n1"] == Action(ACQUIRE, "promoted self: leader key acquired at term 1", term=1)
        acts = self.round("n2", "n3", "n1")  # n1 now publishes itself as the leader
        assert acts["n1"] == Action(RENEW, "renewed leader key at term 1")
        assert self.leaders() == ["n1"]


def make_sim(monkeypatch: pytest.MonkeyPatch, commit_mode: str = "async") -> Sim:
    # The loop takes its clock and its connection probe as arguments: no sockets, no sleeps.
    return Sim(Clock(), set[str](), commit_mode)


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Sim:
    return make_sim(monkeypatch)


# --------------------------------------------------------------------------- initial election


def test_initial_election_picks_the_preferred_node(sim: Sim) -> None:
    sim.boot()
    acts = sim.round("n3", "n2", "n1")
    assert acts["n3"] == Action(WAIT, "no leader at term 0: n1 (LSN 10) should take over")
    assert acts["n2"] == Action(WAIT, "no leader at term 0: n1 (LSN 10) should take over")
    assert acts["n1"] == Action(ACQUIRE, "promoted self: leader key acquired at term 1", term=1)
    assert sim["n1"].m.calls == ["promote_to 1"]
    acts = sim.round("n2", "n3", "n1")
    assert acts["n2"] == Action(FOLLOW, "following n1 (term 1), lag 0 ms", target=addr("n1"))
    assert acts["n3"] == Action(FOLLOW, "following n1 (term 1), lag 0 ms", target=addr("n1"))
    assert acts["n1"] == Action(RENEW, "renewed leader key at term 1")
    assert sim.leaders() == ["n1"]
    snap = sim.snapshot()
    assert snap.leader == LeaderKey("n1", addr("n1"), 1, snap.leader.lease if snap.leader else 0)
    assert snap.term == 1
    assert sim["n1"].loop.last_reason == "renewed leader key at term 1"


def test_new_cluster_waits_for_its_configured_leader_to_join(sim: Sim) -> None:
    # n2 and n3 start first: at term 0 they must not race the configured leader.
    for _ in range(10):
        acts = sim.round("n2", "n3")
        assert acts["n2"] == acts["n3"] == Action(
            WAIT, "new cluster: waiting for the configured leader (SUTRA_NODE_ROLE=leader) to join")
        sim.clock.advance(0.1)
    acts = sim.round("n1", "n2", "n3")
    assert acts["n1"] == Action(ACQUIRE, "promoted self: leader key acquired at term 1", term=1)
    assert acts["n2"] == Action(FOLLOW, "following n1 (term 1), lag 0 ms", target=addr("n1"))
    assert sim.leaders() == ["n1"]


def test_new_cluster_without_its_configured_leader_elects_after_the_grace(sim: Sim) -> None:
    grace = sim["n2"].loop.settings.startup_grace_s
    assert grace == 2 * TTL
    sim.round("n2", "n3")
    sim.clock.advance(grace - 0.01)
    sim["n3"].tick()
    assert sim["n2"].act().kind == WAIT
    sim.clock.advance(0.01)
    acts = sim.round("n3", "n2")
    assert acts["n3"] == Action(WAIT, "no leader at term 0: n2 (LSN 10) should take over")
    assert acts["n2"] == Action(ACQUIRE, "promoted self: leader key acquired at term 1", term=1)
    acts = sim.round("n1", "n3")
    assert acts["n1"] == Action(FOLLOW, "following n2 (term 1), lag 0 ms", target=addr("n2"))


def test_renewing_leader_keeps_its_key_across_many_ttls(sim: Sim) -> None:
    sim.elect_n1()
    for _ in range(50):  # 5 s of ticks at 100 ms: 2.5 TTLs
        sim.clock.advance(0.1)
        assert sim.round("n1", "n2", "n3")["n1"] == Action(RENEW, "renewed leader key at term 1")
    sim["n1"].fence()  # within the lease: acknowledging is allowed
    assert sim.leaders() == ["n1"] and sim.snapshot().term == 1


# --------------------------------------------------------------------------- the leader dies


@pytest.mark.parametrize("first", ["n2", "n3"])
def test_dead_leader_is_replaced_by_exactly_one_replica_at_the_next_term(sim: Sim, first: str) -> None:
    sim.elect_n1()
    sim["n2"].m.engine.wal.durable_lsn = 25
    sim["n3"].m.engine.wal.durable_lsn = 24
    # n1 hangs (no port refusal, so only the TTL can tell): it stops ticking.
    for n in ("n2", "n3"):
        sim[n].stream("connecting")
    sim.clock.advance(TTL - 0.1)
    assert {a.kind for a in sim.round("n2", "n3").values() if a} == {FOLLOW}  # key not yet expired
    sim.clock.advance(0.2)
    second = "n3" if first == "n2" else "n2"
    acts = sim.round(first, second)
    assert acts["n2"] == Action(FREEZE, "no leader at term 1: stopped streaming at LSN 25")
    assert acts["n3"] == Action(FREEZE, "no leader at term 1: stopped streaming at LSN 24")
    acts = sim.round(first, second)
    assert acts["n2"] == Action(ACQUIRE, "promoted self: leader key acquired at term 2", term=2)
    if first == "n3":
        assert acts["n3"] == Action(WAIT, "no leader at term 1: n2 (LSN 25) should take over")
    else:
        assert acts["n3"] == Action(FOLLOW, "following n2 (term 2), lag 0 ms", target=addr("n2"))
    acts = sim.round("n3", "n2")
    assert acts["n3"] == Action(FOLLOW, "following n2 (term 2), lag 0 ms", target=addr("n2"))
    assert acts["n2"] == Action(RENEW, "renewed leader key at term 2")
    assert [c for n in ("n2", "n3") for c in sim[n].m.calls if c.startswith("promote_to")] == ["promote_to 2"]
    snap = sim.snapshot()
    assert snap.term == 2 and snap.leader is not None and snap.leader.node_id == "n2"
    assert sim.leaders() == ["n1", "n2"]  # n1 is frozen in time; its fence now refuses (below)
    with pytest.raises(Unavailable):
        sim["n1"].fence()


def test_leader_dead_before_it_published_itself_as_leader_delays_the_election_by_its_member_ttl(sim: Sim) -> None:
    # n1 dies right after its ACQUIRE tick: its member key still says "replica,
    # not frozen", so the others wait for it until that key expires (member TTL 4 s).
    sim.boot()
    sim.round("n3", "n2", "n1")
    sim.round("n2", "n3")
    for n in ("n2", "n3"):
        sim[n].stream("connecting")
    died = sim.clock.t
    sim.run(TTL + 0.1, "n2", "n3")
    assert sim["n2"].act() == Action(WAIT, "no leader at term 1: waiting for n1 to publish a final LSN")
    while sim.snapshot().leader is None:
        assert sim.clock.t - died < 4.0 + 0.5, "the election did not finish once n1's member key expired"
        sim.run(0.1, "n2", "n3")
    leader = sim.snapshot().leader
    assert leader is not None and leader.node_id == "n2" and leader.term == 2


def test_async_leader_refusing_connections_is_waited_out_not_revoked(sim: Sim) -> None:
    # Defect 2: a refusal can come from a firewall in front of a live leader that
    # still acknowledges writes; in async mode only its lease's expiry is proof.
    sim.elect_n1()
    sim.refusing.add(addr("n1"))
    for n in ("n2", "n3"):
        sim[n].stream("disconnected")
    for _ in range(int((TTL - 0.3) / 0.1)):
        sim.clock.advance(0.1)
        sim["n2"].act()
        assert sim.snapshot().leader is not None, "a refusing leader's lease was revoked in async mode"
    assert sim["n2"].act() == Action(
        FOLLOW, "following n1 (term 1): its port refuses connections; waiting for its lease to expire "
                "(in async mode a refusal does not prove it stopped acknowledging writes)", target=addr("n1"))


def test_dead_leader_refusing_connections_is_revoked_before_its_ttl(sync_sim: Sim) -> None:
    sim = sync_sim
    sim.elect_n1()
    sim.refusing.add(addr("n1"))
    for n in ("n2", "n3"):
        sim[n].stream("disconnected")
    sim.clock.advance(0.1)
    # In sync mode one refusal is enough: revoking is safe even for a live leader.
    assert sim["n2"].tick() == Action(
        REVOKE, f"leader n1 at {addr('n1')} refuses connections: it is gone; revoking its lease (term 1)")
    assert sim.snapshot().leader is None
    sim.clock.advance(0.1)
    assert sim.round("n2", "n3")["n3"] == Action(FREEZE, "no leader at term 1: stopped streaming at LSN 10")
    acts = sim.round("n3", "n2")
    assert acts["n2"] == Action(ACQUIRE, "promoted self: leader key acquired at term 2", term=2)
    assert sim.clock.t - 1000.0 < TTL  # well before n1's lease ran out


# --------------------------------------------------------------------------- crashes halfway through


def test_promotion_failure_after_acquire_revokes_the_key_and_a_later_tick_elects(sim: Sim) -> None:
    sim.elect_n1()
    for n in ("n2", "n3"):
        sim[n].stream("connecting")
    sim.clock.advance(TTL + 0.1)  # n1 died
    sim.round("n2", "n3")  # both freeze at term 1
    sim["n2"].m.promote_error = OSError("disk gone mid-promotion")
    with pytest.raises(OSError, match="disk gone"):
        sim["n2"].tick()
    snap = sim.snapshot()
    assert snap.leader is None  # released at once, nobody waits out a TTL
    assert snap.term == 2  # the term was taken; it is never reused
    assert sim["n2"].m.calls[-2:] == ["promote_to 2", "demote"]
    assert sim["n2"].m.engine.role == "replica" and sim["n2"].loop.key is None
    # The disk recovers; a later election happens at term 3.
    sim["n2"].m.promote_error = None
    acts = sim.round("n2", "n3")
    assert acts["n2"] == Action(FREEZE, "no leader at term 2: stopped streaming at LSN 10")
    assert acts["n3"] == Action(FREEZE, "no leader at term 2: stopped streaming at LSN 10")
    acts = sim.round("n3", "n2")
    assert acts["n3"] == Action(WAIT, "no leader at term 2: n2 (LSN 10) should take over")
    assert acts["n2"] == Action(ACQUIRE, "promoted self: leader key acquired at term 3", term=3)
    assert sim["n3"].tick() == Action(FOLLOW, "following n2 (term 3), lag 0 ms", target=addr("n2"))


def test_process_crash_between_acquire_and_promote_revokes_on_restart(sim: Sim) -> None:
    sim.elect_n1()
    for n in ("n2", "n3"):
        sim[n].stream("connecting")
    sim.clock.advance(TTL + 0.1)
    sim.round("n2", "n3")
    # n2 wins the transaction and dies before promote_to: simulate just the transaction.
    assert sim["n2"].coord.acquire(LeaderKey("n2", addr("n2"), 2), 1) is not None
    sim["n2"].restart(sim)
    assert sim["n3"].tick() == Action(FOLLOW, "following n2 (term 2), lag 0 ms", target=addr("n2"))
    assert sim["n2"].tick() == Action(
        REVOKE, "leader key (term 2) names this node, which is not leading "
                "(a previous life or an interrupted promotion): revoking it")
    assert sim.snapshot().leader is None
    assert sim["n2"].m.calls == []  # it never led
    sim.round("n2", "n3")  # freeze at term 2
    acts = sim.round("n3", "n2")
    assert acts["n2"] == Action(ACQUIRE, "promoted self: leader key acquired at term 3", term=3)
    assert sim.leaders() == ["n1", "n2"] and sim.snapshot().term == 3


def test_restarted_leader_revokes_its_old_key_instead_of_waiting_for_ttl(sim: Sim) -> None:
    sim.elect_n1()
    sim["n1"].restart(sim)  # crash and quick restart: the key still names it
    assert sim["n1"].tick() == Action(
        REVOKE, "leader key (term 1) names this node, which is not leading "
                "(a previous life or an interrupted promotion): revoking it")
    assert sim.snapshot().leader is None
    sim.round("n1", "n2", "n3")  # all freeze at term 1
    acts = sim.round("n3", "n2", "n1")
    assert acts["n1"] == Action(ACQUIRE, "promoted self: leader key acquired at term 2", term=2)


# --------------------------------------------------------------------------- store unreachable


def test_leader_cut_from_the_store_demotes_only_at_its_lease_deadline(sim: Sim) -> None:
    sim.elect_n1()
    sim.clock.advance(0.1)
    assert sim["n1"].tick() == Action(RENEW, "renewed leader key at term 1")
    renewed_at = sim.clock.t
    deadline = renewed_at + TTL - MARGIN_MS / 1000.0
    assert sim["n1"].loop.lease_deadline == pytest.approx(deadline)
    sim.store.down = True
    calls_before = list(sim["n1"].m.calls)
    keep = {r: Action(WAIT, f"etcd unreachable: memory store is down (role {r}, keeping it)")
            for r in ("leader", "replica")}
    while sim.clock.t + 0.1 < deadline:
        sim.clock.advance(0.1)
        assert sim["n1"].tick() == keep["leader"]
        assert sim["n1"].m.engine.role == "leader", f"demoted early at +{sim.clock.t - renewed_at:.1f}s"
        sim["n1"].fence()  # still provably the leader: acknowledging is allowed
        assert sim.round("n2", "n3") == {"n2": keep["replica"], "n3": keep["replica"]}  # replicas keep their role
    assert sim["n1"].m.calls == calls_before
    sim.clock.t = deadline
    with pytest.raises(Unavailable, match="lease not renewed in time"):
        sim["n1"].fence()
    assert sim["n1"].tick() == Action(DEMOTE, "demoted: etcd unreachable (memory store is down); cannot prove leadership")
    assert sim["n1"].m.calls[len(calls_before):] == ["demote"]
    assert sim["n1"].m.engine.role == "replica" and sim["n1"].loop.key is None
    with pytest.raises(Unavailable, match="not acknowledged"):
        sim["n1"].fence()  # a write logged while it led is not acknowledged once it stopped leading
    # It stepped down while its lease was still valid in the store: margin kept.
    assert sim.clock.t < renewed_at + TTL
    # The store comes back before the lease ran out: the key names a non-leader, so it revokes it.
    sim.store.down = False
    assert sim["n1"].tick() == Action(
        REVOKE, "leader key (term 1) names this node, which is not leading "
                "(a previous life or an interrupted promotion): revoking it")


def test_leader_with_a_late_tick_fences_until_it_renews(sim: Sim) -> None:
    sim.elect_n1()
    sim.clock.advance(TTL - MARGIN_MS / 1000.0)  # the loop stalled until exactly the deadline
    with pytest.raises(Unavailable, match="lease not renewed in time"):
        sim["n1"].fence()
    # The key's lease is still alive in the store: the tick renews it first, and
    # leadership is proven again.
    assert sim["n1"].tick() == Action(RENEW, "renewed leader key at term 1")
    sim["n1"].fence()
    assert sim["n1"].m.engine.role == "leader"


def test_leader_whose_tick_came_after_its_lease_expired_demotes(sim: Sim) -> None:
    sim.elect_n1()
    sim.clock.advance(TTL + 0.1)  # the loop stalled past the lease: the store dropped the key
    assert sim["n1"].tick() == Action(DEMOTE, "demoted: the leader key is gone (term 1)")
    assert sim["n1"].m.engine.role == "replica"


def test_leader_that_lost_its_key_demotes(sim: Sim) -> None:
    sim.elect_n1()
    key = sim["n1"].loop.key
    assert key is not None and sim["n2"].coord.revoke(key)
    assert sim["n1"].tick() == Action(DEMOTE, "demoted: the leader key is gone (term 1)")
    assert sim["n1"].m.calls[-1] == "demote"


def test_leader_with_a_storage_failure_demotes_and_releases_its_key(sim: Sim) -> None:
    sim.elect_n1()
    sim["n1"].m.engine.write_failure = "fsync failed: EIO"
    assert sim["n1"].tick() == Action(
        DEMOTE, "demoted: storage failure on this node; giving up the leader key at term 1", release=True)
    assert sim["n1"].m.engine.role == "replica" and sim.snapshot().leader is None  # released, no TTL wait
    for n in ("n2", "n3"):
        sim[n].stream("connecting")
    sim.round("n1", "n2", "n3")  # the replicas freeze; unhealthy n1 is not waited for
    acts = sim.round("n1", "n2", "n3")
    assert acts["n2"] == Action(ACQUIRE, "promoted self: leader key acquired at term 2", term=2)
    assert sim["n1"].m.calls.count("promote_to 2") == 0


def test_renew_refused_by_the_store_demotes(sim: Sim) -> None:
    sim.elect_n1()
    # The key was replaced between the snapshot and the renewal (same holder name, different lease).
    real_renew = sim["n1"].coord.renew
    sim["n1"].coord.renew = lambda key: False  # type: ignore[method-assign]
    sim["n1"].tick()
    assert sim["n1"].m.engine.role == "replica" and sim["n1"].loop.key is None
    sim["n1"].coord.renew = real_renew  # type: ignore[method-assign]


# --------------------------------------------------------------------------- switchover


def test_switchover_hands_over_to_the_target(sim: Sim) -> None:
    sim.elect_n1()
    sim.connect("n1")
    sim["n1"].coord.request_switchover("n3")
    assert sim["n1"].tick() == Action(HANDOVER, "switchover: handing leadership at term 1 to n3", target="n3")
    n1 = sim["n1"].m
    assert n1.engine.paused == ["switchover to n3"] and n1.engine.resumed == 0
    sim.clock.advance(0.1)
    # Writes drained and n3 was caught up: the next tick releases, nothing blocks a tick.
    assert sim["n1"].tick() == Action(
        RELEASE, "switchover: n3 holds LSN 11; releasing the leader key at term 1 and following it", target="n3")
    assert n1.engine.resumed == 1
    assert n1.calls[-2:] == ["demote", f"follow {addr('n3')}"]
    assert sim.snapshot().leader is None and sim["n1"].loop.key is None
    acts = sim.round("n2", "n3", "n1")
    assert {a.kind for a in acts.values() if a} == {FREEZE}
    acts = sim.round("n2", "n1", "n3")
    # n2 has the same LSN and a lower node id, but the switchover names n3.
    assert acts["n2"] == Action(WAIT, "no leader at term 1: n3 (LSN 11) should take over")
    assert acts["n3"] == Action(ACQUIRE, "promoted self: leader key acquired at term 2", term=2)
    assert sim.snapshot().switchover_to == ""  # the new leader cleared the request
    acts = sim.round("n1", "n2", "n3")
    assert acts["n1"] == Action(FOLLOW, "following n3 (term 2), lag 0 ms", target=addr("n3"))
    assert acts["n2"] == Action(FOLLOW, "following n3 (term 2), lag 0 ms", target=addr("n3"))
    assert acts["n3"] == Action(RENEW, "renewed leader key at term 2")
    assert sim.leaders() == ["n3"]


def test_switchover_waits_across_ticks_for_writes_in_flight_and_the_target(sim: Sim) -> None:
    sim.elect_n1()
    sim.connect("n1")
    lead = sim["n1"].m
    lead.leader.followers["n3"].flushed = 5  # behind the leader's durable LSN
    lead.engine.inflight = 1
    sim["n1"].coord.request_switchover("n3")
    assert sim["n1"].act().kind == HANDOVER
    sim.clock.advance(0.1)
    assert sim["n1"].act() == Action(
        RENEW, "handing over to n3: waiting for writes in flight to finish (0.1 s of 5)", target="n3")
    lead.engine.inflight = 0
    lead.engine.wal.durable_lsn = 12  # the write in flight made it
    sim.clock.advance(0.1)
    assert sim["n1"].act() == Action(RENEW, "handing over to n3: waiting for LSN 12 (0.2 s of 5)", target="n3")
    assert sim.snapshot().leader is not None and sim.snapshot().leader.node_id == "n1"  # key renewed meanwhile
    lead.leader.followers["n3"].flushed = 12
    sim.clock.advance(0.1)
    assert sim["n1"].act().kind == RELEASE
    assert sim.snapshot().leader is None and sim["n1"].m.engine.role == "replica"


def test_switchover_to_a_dead_target_keeps_leading(sim: Sim) -> None:
    sim.elect_n1()
    sim["n1"].coord.request_switchover("n9")
    assert sim["n1"].tick() == Action(RENEW, "renewed leader key at term 1; switchover target n9 is not alive")
    assert sim.leaders() == ["n1"]


def test_abandoned_switchover_keeps_the_leader_and_its_key(sim: Sim) -> None:
    sim.elect_n1()
    sim.connect("n1")
    sim["n1"].m.leader.followers["n3"].flushed = 0  # never catches up
    sim["n1"].coord.request_switchover("n3")
    assert sim["n1"].act().kind == HANDOVER
    start = sim.clock.t
    while True:
        sim.clock.advance(0.1)
        sim.round("n2", "n3")  # alive and publishing, just not catching up
        act = sim["n1"].act()
        if act.kind != RENEW:
            break
        sim["n1"].fence()  # the key is renewed on every tick of the wait
    assert act == Action(ABANDON, "switchover to n3 abandoned: it did not catch up to LSN 11 in 5 s; "
                                  "resuming writes at term 1")
    assert sim.clock.t - start >= HANDOVER_TIMEOUT_S - 0.15
    assert sim["n1"].m.engine.resumed == 1
    assert sim.snapshot().switchover_to == ""  # abandoned and cleared
    # A planned switchover that did not happen must not turn into an unplanned failover.
    sim.clock.advance(0.1)
    assert sim["n1"].tick() == Action(RENEW, "renewed leader key at term 1")
    assert sim.leaders() == ["n1"]


# --------------------------------------------------------------------------- sync mode


@pytest.fixture
def sync_sim(monkeypatch: pytest.MonkeyPatch) -> Sim:
    return make_sim(monkeypatch, "sync")


def sync_state(sim: Sim) -> tuple[str, int, tuple[str, ...]] | None:
    snap = sim.snapshot()
    return None if snap.sync is None else (snap.sync.leader, snap.sync.term, snap.sync.members)


def kill_leader_and_freeze(sim: Sim, dead: str, alive: tuple[str, ...]) -> None:
    for n in alive:
        if sim[n].m.follower is not None:
            sim[n].stream("connecting")
    sim.clock.advance(TTL + 0.1)
    acts = sim.round(*alive)
    assert {a.kind for a in acts.values() if a} == {FREEZE}, acts


def test_sync_new_leader_starts_with_frozen_caught_up_peers_as_its_sync_set(sync_sim: Sim) -> None:
    sim = sync_sim
    sim.elect_n1()
    # n2 and n3 both hold n1's LSN 10: the lowest node id fills SUTRA_SYNC_REPLICAS=1.
    assert sync_state(sim) == ("n1", 1, ("n2",))
    assert sim["n1"].m.leader.sync_ids == ("n2",)


def test_sync_set_member_is_kept_through_the_grace_period_then_replaced(sync_sim: Sim) -> None:
    sim = sync_sim
    sim.elect_n1()
    lead = sim["n1"].m.leader
    sim.connect("n1")
    lead.max_committed = 11
    lead.followers["n2"].connected = False  # n2 has not connected yet
    sim.clock.advance(0.1)
    assert sim["n1"].tick() == Action(RENEW, "renewed leader key at term 1")
    assert sync_state(sim) == ("n1", 1, ("n2",)) and lead.sync_ids == ("n2",)
    sim.run(2 * TTL, "n1", "n2", "n3")  # grace over: a disconnected member is replaced by a caught-up one
    assert sim["n1"].tick() == Action(RENEW, "renewed leader key at term 1")
    assert sync_state(sim) == ("n1", 1, ("n3",)) and lead.sync_ids == ("n3",)
    # n3 disconnects and n2 returns behind the commit point: nobody may join.
    lead.followers["n3"].connected = False
    lead.followers["n2"].connected, lead.followers["n2"].flushed = True, 10
    sim.clock.advance(0.1)
    sim["n1"].tick()
    assert sync_state(sim) == ("n1", 1, ()) and lead.sync_ids == ()
    sync = sim.snapshot().sync
    assert sync is not None and sync.floor == 11  # the empty set says what was acknowledged
    lead.followers["n2"].flushed = 11
    sim.clock.advance(0.1)
    sim["n1"].tick()
    assert sync_state(sim) == ("n1", 1, ("n2",)) and lead.sync_ids == ("n2",)
    sync = sim.snapshot().sync
    assert sync is not None and sync.floor is None  # a set with a member holds them itself


def test_sync_failover_goes_to_the_sync_member_not_the_most_advanced(sync_sim: Sim) -> None:
    sim = sync_sim
    sim.elect_n1()
    lead = sim["n1"].m.leader
    sim.connect("n1")
    lead.followers["n3"].connected = False
    lead.max_committed = 11
    sim.run(2 * TTL, "n1", "n2", "n3")
    sim["n1"].tick()
    assert sync_state(sim) == ("n1", 1, ("n2",))
    # n3 received more of term 1 than n2, but those records were never acknowledged.
    sim["n3"].m.engine.wal.durable_lsn = 40
    kill_leader_and_freeze(sim, "n1", ("n3", "n2"))
    acts = sim.round("n3", "n2")
    assert acts["n3"] == Action(WAIT, "no leader at term 1: n2 (LSN 11) should take over")
    assert acts["n2"] == Action(ACQUIRE, "promoted self: leader key acquired at term 2", term=2)
    # n3 holds everything n2 held (same history, further along), so it may be the first sync member.
    assert sync_state(sim) == ("n2", 2, ("n3",))


def test_sync_leader_dead_before_a_replica_joined_its_empty_set_is_replaced(sync_sim: Sim) -> None:
    """n2 takes term 2 with no peer frozen at its position: it publishes an empty set
    with its term record's LSN as the floor. n3 streams that term's records past it,
    then n2 dies before the next tick names n3: n3 holds everything n2 acknowledged
    (nothing in term 2), so it takes over instead of waiting for n2 to come back."""
    sim = sync_sim
    sim.elect_n1()
    sim["n3"].m.engine.wal.durable_lsn = 8  # n3 was behind n1, outside its sync set
    kill_leader_and_freeze(sim, "n1", ("n2", "n3"))
    acts = sim.round("n2", "n3")
    assert acts["n2"] == Action(ACQUIRE, "promoted self: leader key acquired at term 2", term=2)
    sync = sim.snapshot().sync
    assert sync is not None and (sync.leader, sync.term, sync.members, sync.floor) == ("n2", 2, (), 11)
    # n3 follows n2 and flushes its term record and more; n2 dies before publishing it as a member.
    sim["n3"].m.engine.wal.durable_lsn, sim["n3"].m.engine.terms.last_term = 12, 2
    kill_leader_and_freeze(sim, "n2", ("n3",))
    sim.clock.advance(0.1)
    # n2 never republished its member key as leader (it still says frozen at term 1 and lives
    # on for its TTL), but n2 led term 2: nobody waits for that key to expire.
    assert sim["n3"].tick() == Action(ACQUIRE, "promoted self: leader key acquired at term 3", term=3)


def test_sync_dead_leader_and_dead_sync_member_leave_the_shard_waiting(sync_sim: Sim) -> None:
    sim = sync_sim
    sim.elect_n1()
    assert sync_state(sim) == ("n1", 1, ("n2",))
    sim["n3"].stream("connecting")
    sim.clock.advance(4.1)  # n1 and n2 both gone: the leader key and n2's member key expired
    assert sim["n3"].tick() == Action(FREEZE, "no leader at term 1: stopped streaming at LSN 10")
    for _ in range(5):
        sim.clock.advance(0.1)
        assert sim["n3"].tick() == Action(
            WAIT, "no leader at term 1: no member of the sync set ['n2'] (nor its leader n1) is alive; "
                  "waiting (no acknowledged write may be lost)")
    assert sim.snapshot().leader is None and sim["n3"].m.calls.count("promote_to 2") == 0


def test_sync_switchover_to_a_node_outside_the_sync_set_makes_it_the_sync_set_first(sync_sim: Sim) -> None:
    sim = sync_sim
    sim.elect_n1()
    sim.connect("n1")
    assert sync_state(sim) == ("n1", 1, ("n2",))
    sim["n1"].coord.request_switchover("n3")
    assert sim["n1"].tick() == Action(HANDOVER, "switchover: handing leadership at term 1 to n3", target="n3")
    sim.clock.advance(0.1)
    assert sim["n1"].tick().kind == RELEASE
    assert sync_state(sim) == ("n1", 1, ("n3",))  # published while n1 still held the key
    assert sim.snapshot().leader is None
    sim.round("n1", "n2", "n3")  # all freeze at term 1
    acts = sim.round("n1", "n2", "n3")
    assert acts["n3"] == Action(ACQUIRE, "promoted self: leader key acquired at term 2", term=2)
    acts = sim.round("n1", "n2", "n3")
    assert acts["n1"] == Action(FOLLOW, "following n3 (term 2), lag 0 ms", target=addr("n3"))
    assert sim.leaders() == ["n3"] and sim.snapshot().switchover_to == ""
