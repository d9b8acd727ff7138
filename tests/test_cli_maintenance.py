"""Maintenance mode (`sutra-cluster pause` / `resume`) and the leadership history.

Three levels: the pure decision (every paused branch, sentences verbatim), the
HA loop on the in-memory store (a paused leader renews but keeps its sync set),
and the user's run against real etcd and real processes: pause, SIGKILL the
leader, no new leader within 2 x TTL, resume, a new leader, and `history`
saying when and why.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from sutra_cluster.failover.coordinator import ClusterSnapshot, LeaderKey, MemberInfo
from sutra_cluster.failover.decide import ACQUIRE, FOLLOW, RENEW, REVOKE, WAIT, Action, Local, Settings, decide
from sutra_cluster.failover.etcd import EtcdCoordinator, shard_prefix
from sutra_cluster.failover.keys import Pause, parse_snapshot
from tests.helpers import wait_for
from tests.shard_cluster import sharded_cluster
from tests.test_cli import cli
from tests.test_ha_loop import PREFIX, TTL, Clock, Sim, sync_state

PAUSE = Pause(since=1.0, by="ops@host", reason="etcd upgrade")
SYNC = Settings(commit_mode="sync", max_lag_on_failover=1_000_000, fast_revoke=True)


def _member(node_id: str, lsn: int = 10, role: str = "replica") -> MemberInfo:
    return MemberInfo(node_id, f"{node_id}:1", role, 3, lsn, 3, frozen_term=3)


def _local(node_id: str, role: str = "replica", **kw: object) -> Local:
    return Local(node_id=node_id, address=f"{node_id}:1", role=role, term=3, flushed_lsn=10, last_term=3,
                 frozen_term=3, **kw)  # type: ignore[arg-type]


# ---- the pure decision ------------------------------------------------------------------
def test_paused_shard_without_a_leader_waits_instead_of_acquiring() -> None:
    snap = ClusterSnapshot(leader=None, term=3, members={"n2": _member("n2"), "n3": _member("n3", 9)})
    assert decide(snap, _local("n2"), SYNC) == Action(ACQUIRE, "promoted self: leader key acquired at term 4", term=4)
    paused = ClusterSnapshot(leader=None, term=3, members=snap.members, pause=PAUSE)
    assert decide(paused, _local("n2"), SYNC) == Action(
        WAIT, "no leader at term 3: maintenance mode (paused), no automatic failover; n2 (LSN 10) would take over")


def test_paused_shard_lets_only_a_switchover_target_take_the_released_key() -> None:
    members = {"n2": _member("n2"), "n3": _member("n3")}
    to_n3 = ClusterSnapshot(leader=None, term=3, members=members, pause=PAUSE, switchover_to="n3")
    assert decide(to_n3, _local("n3"), SYNC) == Action(ACQUIRE, "promoted self: leader key acquired at term 4", term=4)
    assert decide(to_n3, _local("n2"), SYNC) == Action(
        WAIT, "no leader at term 3: n3 (LSN 10) should take over")
    # A target behind the others is not the candidate: the pause holds.
    behind = ClusterSnapshot(leader=None, term=3, members={"n2": _member("n2"), "n3": _member("n3", 9)},
                             pause=PAUSE, switchover_to="n3")
    assert decide(behind, _local("n2"), SYNC).kind == WAIT and decide(behind, _local("n3"), SYNC).kind == WAIT


def test_paused_replica_does_not_revoke_a_refusing_leader() -> None:
    key = LeaderKey("n1", "n1:1", 3, 7)
    members = {"n1": _member("n1", role="leader"), "n2": _member("n2")}
    me = _local("n2", leader_refused=True)
    assert decide(ClusterSnapshot(leader=key, term=3, members=members), me, SYNC).kind == REVOKE
    act = decide(ClusterSnapshot(leader=key, term=3, members=members, pause=PAUSE), me, SYNC)
    assert act.kind == FOLLOW and act.target == "n1:1"


def test_paused_leader_renews_and_says_the_sync_set_stays() -> None:
    key = LeaderKey("n1", "n1:1", 3, 7)
    snap = ClusterSnapshot(leader=key, term=3, members={"n1": _member("n1", role="leader")}, pause=PAUSE)
    assert decide(snap, _local("n1", role="leader"), SYNC) == Action(
        RENEW, "renewed leader key at term 3 (maintenance mode: no sync-set member is replaced)")


def test_pause_key_parses_and_any_hand_written_value_pauses() -> None:
    p = shard_prefix("sutra", 0)
    assert parse_snapshot(p, {p + "pause": PAUSE.encode()}, 1).pause == PAUSE
    hand = parse_snapshot(p, {p + "pause": "yes"}, 1)
    assert hand.paused and hand.pause is not None and hand.pause.reason == "yes"
    assert not parse_snapshot(p, {}, 1).paused


# ---- the HA loop on the in-memory store -------------------------------------------------
def test_paused_sync_leader_keeps_its_key_and_its_sync_set_while_the_member_is_gone() -> None:
    sim = Sim(Clock(), set(), "sync")
    sim.elect_n1()
    lead = sim["n1"].m.leader
    sim.connect("n1")
    assert sync_state(sim) == ("n1", 1, ("n2",))
    sim.store.put(PREFIX + "pause", PAUSE.encode())
    lead.followers["n2"].connected = False  # the sync member is gone
    sim.run(3 * TTL, "n1", "n3")  # unpaused, this replaces n2 by n3 after the grace period
    assert sim["n1"].tick() == Action(RENEW, "renewed leader key at term 1 (maintenance mode: no sync-set member is replaced)")
    assert sync_state(sim) == ("n1", 1, ("n2",)) and sim.leaders() == ["n1"]
    with sim.store.lock:
        del sim.store.kv[PREFIX + "pause"]
    sim.run(0.3, "n1", "n3")
    assert sync_state(sim) == ("n1", 1, ("n3",))


def test_paused_sync_leader_still_fills_an_empty_sync_set() -> None:
    sim = Sim(Clock(), set(), "sync")
    sim.elect_n1()
    lead = sim["n1"].m.leader
    sim.connect("n1")
    lead.max_committed = 11
    lead.followers["n2"].connected = False
    sim.run(2 * TTL, "n1", "n2", "n3")  # the grace period ends: n3 replaces n2
    assert sync_state(sim) == ("n1", 1, ("n3",))
    lead.followers["n3"].connected = False  # n3 goes, n2 is back but behind the commit point
    lead.followers["n2"].connected, lead.followers["n2"].flushed = True, 10
    sim.clock.advance(0.1)
    sim["n1"].tick()
    assert sync_state(sim) == ("n1", 1, ())
    sim.store.put(PREFIX + "pause", PAUSE.encode())
    lead.followers["n2"].flushed = 11  # n2 catches up while paused: it takes the empty seat
    sim.clock.advance(0.1)
    sim["n1"].tick()
    assert sync_state(sim) == ("n1", 1, ("n2",)) and lead.sync_ids == ("n2",)


# ---- the user's run: real etcd, real processes -------------------------------------------
def test_pause_sigkill_leader_no_failover_until_resume_then_history(tmp_path: Path) -> None:
    with sharded_cluster(tmp_path, shards=1, per_shard=3, mode="sync", routers=0) as c:
        ep = c.etcd.endpoint
        first = c.wait_shard_healthy(0)
        coord = EtcdCoordinator([ep], shard_prefix(c.name, 0), "test", timeout=2.0)
        try:
            r = cli("pause", "--etcd", ep, "--reason", "etcd upgrade")
            assert r.returncode == 0 and "maintenance mode on for shard(s) 0" in r.stdout, r.stderr
            key0 = coord.snapshot().leader
            assert key0 is not None and key0.node_id == first.name
            # The paused leader keeps renewing: the same key (same lease, same term) after 3 x TTL.
            t_end = time.monotonic() + 3 * 2.0
            while time.monotonic() < t_end:
                assert coord.snapshot().leader == key0
                time.sleep(0.1)
            st = cli("status", "--etcd", ep)
            assert st.returncode == 0 and "shard 0: MAINTENANCE MODE since" in st.stdout and "(etcd upgrade)" in st.stdout
            # An operator's switchover still works while paused; then the test goes on with its target.
            sw = cli("switchover", "--etcd", ep)
            assert sw.returncode == 0 and "switchover done" in sw.stdout, sw.stderr
            key0 = coord.snapshot().leader
            assert key0 is not None and key0.node_id != first.name
            first = next(n for n in c.shards[0] if n.name == key0.node_id)
            # Kill it once it leads with a sync set. Killed in the ~0.1 s between taking the key and
            # naming a replica (as a CI run at load 4 did), only a replica that already holds its term
            # record counts by the empty set's floor, else the shard rightly waits for the dead leader
            # (docs/HA.md, Failover, "Who may take over"): not this test.
            term = key0.term
            wait_for(lambda: (s := coord.snapshot()).sync is not None and s.sync.term == term and s.sync.members,
                     15, f"{key0.node_id} to publish a sync set at term {term}")

            first.kill()
            killed_at = time.monotonic()
            # Its lease ends within TTL; for 2 x TTL after the kill nobody takes over.
            while time.monotonic() - killed_at < 2 * 2.0:
                leader = coord.snapshot().leader
                assert leader is None or leader == key0, f"{leader} took over while paused"
                time.sleep(0.05)
            wait_for(lambda: coord.snapshot().leader is None, 10, "the dead leader's key to expire")
            others = [n for n in c.shards[0] if n is not first]
            assert all(n.status().role == "replica" for n in others)
            code, doc = _status(ep)
            assert code == 1 and "shard 0 has no leader" in doc["problems"] and doc["shards"][0]["paused"]

            r = cli("resume", "--etcd", ep)
            assert r.returncode == 0 and "maintenance mode off for shard(s) 0" in r.stdout
            resumed_at = time.time()
            new = wait_for(lambda: coord.snapshot().leader, 15, "a new leader after resume")
            assert new.node_id in {n.name for n in others} and new.term > key0.term
        finally:
            coord.close()

        def acquired() -> list[dict] | None:  # type: ignore[type-arg]
            h = cli("history", "--etcd", ep, "-o", "json")
            assert h.returncode == 0, h.stderr
            entries = json.loads(h.stdout)
            return entries if any(e["event"] == "acquire" and e["term"] == new.term for e in entries) else None

        entries = wait_for(acquired, 15, "the new leader's acquire in the history", interval=0.2)
        firsts = [e for e in entries if e["event"] == "acquire" and e["node_id"] == first.name]
        assert firsts and firsts[0]["term"] == key0.term
        last = next(e for e in entries if e["event"] == "acquire" and e["term"] == new.term)
        assert last["node_id"] == new.node_id and last["time"] >= resumed_at - 1.0
        assert f"{first.name} (term {key0.term}) no longer held the leader key" in last["reason"]
        table = cli("history", "--etcd", ep, "--shard", "0")
        assert table.returncode == 0 and "REASON" in table.stdout.splitlines()[0]
        assert sum(1 for ln in table.stdout.splitlines()[1:] if " acquire " in ln) >= 2


def _status(ep: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    r = cli("status", "--etcd", ep, "--json")
    return r.returncode, json.loads(r.stdout)
