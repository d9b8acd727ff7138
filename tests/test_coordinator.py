"""The coordinator contract (issue 4), one suite run against both implementations:
``MemoryCoordinator`` (on an injectable clock) and ``EtcdCoordinator`` on a real
etcd started in ``tmp_path`` and always stopped.

The contract, from coordinator.py: raise ``CoordinatorUnavailable`` when the
store cannot be reached; return False when a lease or compare-and-swap was
lost; take the key only when none exists and the term still matches; renew by
comparing the value; release and revoke with a compare-and-delete.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from sutra_cluster.failover.coordinator import (
    Coordinator,
    CoordinatorUnavailable,
    LeaderKey,
    MemberInfo,
    SyncState,
)
from sutra_cluster.failover.etcd import EtcdCoordinator, shard_prefix
from sutra_cluster.failover.memory import MemoryCoordinator, MemoryStore
from tests.etcd import EtcdProcess
from tests.helpers import tool, wait_for

TTL = 2  # etcd's minimum lease TTL at its default election timeout
EXPIRY_DEADLINE = TTL + 5.0  # etcd checks expiry about every 500 ms; allow a loaded machine more
RECOVERY_DEADLINE = 15.0
_prefixes = itertools.count(1)


class Backend(Protocol):
    name: str

    def coord(self, node_id: str, prefix: str, ttl: int = TTL, member_ttl: int = 4) -> Coordinator: ...

    def let_time_pass(self, seconds: float) -> None: ...

    def now(self) -> float: ...

    def wait_until(self, cond: Callable[[], bool], deadline: float, what: str) -> float: ...

    def outage(self) -> None: ...

    def recover(self) -> None: ...


class MemoryBackend:
    name = "memory"

    def __init__(self) -> None:
        self.t = 5000.0
        self.store = MemoryStore()
        self.store.now = lambda: self.t

    def coord(self, node_id: str, prefix: str, ttl: int = TTL, member_ttl: int = 4) -> Coordinator:
        return MemoryCoordinator(self.store, prefix, node_id, ttl=float(ttl), member_ttl=float(member_ttl))

    def let_time_pass(self, seconds: float) -> None:
        self.t += seconds

    def now(self) -> float:
        return self.t

    def wait_until(self, cond: Callable[[], bool], deadline: float, what: str) -> float:
        """Advance the simulated clock in 10 ms steps; returns the simulated time it took."""
        start = self.t
        while not cond():
            if self.t - start > deadline:
                raise AssertionError(f"timed out after {deadline}s (simulated) waiting for {what}")
            self.t += 0.01
        return self.t - start

    def outage(self) -> None:
        self.store.down = True

    def recover(self) -> None:
        self.store.down = False


class EtcdBackend:
    name = "etcd"

    def __init__(self, etcd: EtcdProcess) -> None:
        self.etcd = etcd

    def coord(self, node_id: str, prefix: str, ttl: int = TTL, member_ttl: int = 4) -> Coordinator:
        return EtcdCoordinator([self.etcd.endpoint], prefix, node_id, ttl=ttl, member_ttl=member_ttl, timeout=0.4)

    def let_time_pass(self, seconds: float) -> None:
        # Real leases run on etcd's clock: pacing renewals is the behaviour under test.
        time.sleep(seconds)

    def now(self) -> float:
        return time.monotonic()

    def wait_until(self, cond: Callable[[], bool], deadline: float, what: str) -> float:
        start = time.monotonic()
        wait_for(cond, deadline, what, interval=0.01)
        return time.monotonic() - start

    def outage(self) -> None:
        self.etcd.kill()

    def recover(self) -> None:
        self.etcd.start()


@pytest.fixture(scope="module")
def shared_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    """One etcd for the module's non-destructive tests (each test has its own key prefix)."""
    etcd = EtcdProcess(tmp_path_factory.mktemp("etcd-shared") / "data").start()
    try:
        yield etcd
    finally:
        etcd.stop()


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.slow)])  # etcd is a process
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return MemoryBackend()
    return EtcdBackend(request.getfixturevalue("shared_etcd"))


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.slow)])  # etcd is a process
def private_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """For tests that take the store down: etcd of their own, stopped whatever happens."""
    if request.param == "memory":
        yield MemoryBackend()
        return
    etcd = EtcdProcess(tmp_path / "etcd").start()
    try:
        yield EtcdBackend(etcd)
    finally:
        etcd.stop()


def _coords(backend: Backend) -> Iterator[Callable[..., Coordinator]]:
    prefix = shard_prefix(f"contract{next(_prefixes)}", 0)
    made: list[Coordinator] = []

    def make(node_id: str, **kw: int) -> Coordinator:
        c = backend.coord(node_id, prefix, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.close()
        except CoordinatorUnavailable:
            pass


@pytest.fixture
def coords(backend: Backend) -> Iterator[Callable[..., Coordinator]]:
    """Coordinators for nodes of one shard (a fresh prefix per test); all closed at the end."""
    yield from _coords(backend)


@pytest.fixture
def private_coords(private_backend: Backend) -> Iterator[Callable[..., Coordinator]]:
    yield from _coords(private_backend)


def lk(node_id: str, term: int) -> LeaderKey:
    return LeaderKey(node_id, f"{node_id}:50051", term)


def info(node_id: str, lsn: int = 0, **kw: object) -> MemberInfo:
    return MemberInfo(node_id=node_id, address=f"{node_id}:50051", role="replica", term=1, flushed_lsn=lsn,
                      last_term=1, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- acquire


def test_acquire_when_no_key_and_term_matches(coords: Callable[..., Coordinator]) -> None:
    a, b = coords("a"), coords("b")
    snap = b.snapshot()
    assert (snap.leader, snap.term) == (None, 0)
    stored = a.acquire(lk("a", 1), 0)
    assert stored is not None
    assert (stored.node_id, stored.address, stored.term) == ("a", "a:50051", 1)
    assert stored.lease != 0  # bound to a lease
    snap = b.snapshot()
    assert snap.leader == stored and snap.term == 1  # key and term written together


def test_acquire_refused_when_the_term_moved(coords: Callable[..., Coordinator]) -> None:
    a, b = coords("a"), coords("b")
    assert b.acquire(lk("b", 1), 5) is None  # the term is 0, not 5
    assert b.acquire(lk("b", 2), 1) is None
    k1 = a.acquire(lk("a", 1), 0)
    assert k1 is not None and a.release(k1)
    # The key is gone, but the term is now 1: a node acting on an older snapshot loses.
    assert b.acquire(lk("b", 1), 0) is None
    snap = b.snapshot()
    assert (snap.leader, snap.term) == (None, 1)
    k2 = b.acquire(lk("b", 2), 1)
    assert k2 is not None and b.snapshot().leader == k2 and b.snapshot().term == 2


def test_second_acquire_fails_while_the_key_is_held(coords: Callable[..., Coordinator]) -> None:
    a, b = coords("a"), coords("b")
    k = a.acquire(lk("a", 1), 0)
    assert k is not None
    assert b.acquire(lk("b", 2), 1) is None  # right term, but the key exists
    assert b.acquire(lk("b", 1), 0) is None
    assert a.acquire(lk("a", 2), 1) is None  # not even the holder takes it twice
    snap = b.snapshot()
    assert snap.leader == k and snap.term == 1


# --------------------------------------------------------------------------- renew, release, revoke


def test_renew_true_for_the_holder(coords: Callable[..., Coordinator]) -> None:
    a = coords("a")
    k = a.acquire(lk("a", 1), 0)
    assert k is not None
    assert a.renew(k) is True
    assert a.renew(k) is True


def test_renew_false_after_release(coords: Callable[..., Coordinator]) -> None:
    a, b = coords("a"), coords("b")
    k = a.acquire(lk("a", 1), 0)
    assert k is not None
    assert a.release(k) is True
    assert b.snapshot().leader is None  # at once, no TTL wait
    assert a.renew(k) is False
    assert a.release(k) is False  # compare-and-delete: nothing of ours left


def test_renew_false_for_a_stale_key(coords: Callable[..., Coordinator]) -> None:
    a, b = coords("a"), coords("b")
    old = a.acquire(lk("a", 1), 0)
    assert old is not None and b.revoke(old)
    new = b.acquire(lk("b", 2), 1)
    assert new is not None
    assert a.renew(old) is False
    # Same node and term but a different lease is not the same key either.
    assert b.renew(LeaderKey(new.node_id, new.address, new.term, new.lease + 1)) is False
    assert b.snapshot().leader == new


def test_revoke_by_another_node_removes_the_key_at_once(coords: Callable[..., Coordinator]) -> None:
    a, b, c = coords("a"), coords("b"), coords("c")
    k = a.acquire(lk("a", 1), 0)
    assert k is not None
    assert b.revoke(k) is True
    assert c.snapshot().leader is None
    assert a.renew(k) is False
    assert b.revoke(k) is False  # already gone
    assert c.acquire(lk("c", 2), 1) is not None


def test_revoke_of_a_stale_key_leaves_the_new_one(coords: Callable[..., Coordinator]) -> None:
    a, b = coords("a"), coords("b")
    old = a.acquire(lk("a", 1), 0)
    assert old is not None and a.release(old)
    new = b.acquire(lk("b", 2), 1)
    assert new is not None
    assert a.revoke(old) is False
    assert a.revoke(LeaderKey("b", new.address, 1, new.lease)) is False  # wrong term
    assert b.snapshot().leader == new and b.renew(new)


# --------------------------------------------------------------------------- sync set, members, switchover


def test_sync_state_floor_round_trips_and_older_forms_still_read() -> None:
    assert SyncState.decode(SyncState("a", 3, (), 40).encode()) == SyncState("a", 3, (), 40)
    assert SyncState.decode(SyncState("a", 3, ("b",)).encode()) == SyncState("a", 3, ("b",), None)
    assert "floor" not in SyncState("a", 3, ("b",)).encode()  # what a build before the floor wrote
    assert SyncState.decode('{"leader": "a", "term": 3, "members": []}') == SyncState("a", 3, (), None)
    # A build before the floor reads only these three fields, so it sees the set it always did.
    d = json.loads(SyncState("a", 3, (), 40).encode())
    assert (d["leader"], d["term"], d["members"]) == ("a", 3, [])


def test_set_sync_only_by_the_holder(coords: Callable[..., Coordinator]) -> None:
    a, b = coords("a"), coords("b")
    k = a.acquire(lk("a", 1), 0)
    assert k is not None
    assert a.set_sync(k, SyncState("a", 1, ("b",))) is True
    assert b.snapshot().sync == SyncState("a", 1, ("b",))
    assert b.set_sync(lk("b", 1), SyncState("b", 1, ())) is False
    assert b.set_sync(LeaderKey("a", k.address, 1, k.lease + 1), SyncState("b", 1, ())) is False
    assert b.snapshot().sync == SyncState("a", 1, ("b",))
    assert a.set_sync(k, SyncState("a", 1, ())) is True
    assert b.snapshot().sync == SyncState("a", 1, ())
    assert a.set_sync(k, SyncState("a", 1, (), 17)) is True  # an empty set with its floor
    assert b.snapshot().sync == SyncState("a", 1, (), 17)
    assert a.release(k)
    assert a.set_sync(k, SyncState("a", 1, ("b", "c"))) is False
    assert b.snapshot().sync == SyncState("a", 1, (), 17)  # the sync key outlives the leader key


def test_members_publish_and_are_visible_in_the_snapshot(coords: Callable[..., Coordinator]) -> None:
    a, b, c = coords("a"), coords("b"), coords("c")
    ia = info("a", 10, preferred=True)
    ib = info("b", 7, frozen_term=1, healthy=False)
    a.publish_member(ia)
    b.publish_member(ib)
    assert c.snapshot().members == {"a": ia, "b": ib}
    ia2 = MemberInfo("a", "a:50051", "leader", 2, 12, 2)
    a.publish_member(ia2)  # republishing replaces, under the same member lease
    assert c.snapshot().members == {"a": ia2, "b": ib}


def test_switchover_request_is_visible_and_cleared(coords: Callable[..., Coordinator]) -> None:
    a, b = coords("a"), coords("b")
    assert b.snapshot().switchover_to == ""
    a.request_switchover("b")
    assert b.snapshot().switchover_to == "b"
    b.clear_switchover()
    assert a.snapshot().switchover_to == ""
    b.clear_switchover()  # idempotent


def test_prefixes_are_isolated(backend: Backend) -> None:
    s0 = backend.coord("a", shard_prefix("iso", 0))
    s1 = backend.coord("a", shard_prefix("iso", 1))
    try:
        k = s0.acquire(lk("a", 1), 0)
        assert k is not None
        assert s1.snapshot().leader is None and s1.snapshot().term == 0
        assert s1.acquire(lk("a", 1), 0) is not None
    finally:
        s0.close()
        s1.close()


# --------------------------------------------------------------------------- leases


def test_renewed_key_survives_and_unrenewed_key_vanishes_after_the_ttl(
        backend: Backend, coords: Callable[..., Coordinator]) -> None:
    a, b = coords("a", ttl=TTL, member_ttl=TTL), coords("b")
    k = a.acquire(lk("a", 1), 0)
    assert k is not None
    a.publish_member(info("a", 3))
    # Renewed every TTL/4 for 1.5 TTLs: the key stays.
    for _ in range(6):
        backend.let_time_pass(TTL / 4)
        assert a.renew(k) is True
        a.publish_member(info("a", 3))
    assert b.snapshot().leader == k
    # Then a stops renewing and publishing.
    stopped = backend.now()
    backend.wait_until(lambda: b.snapshot().leader is None, EXPIRY_DEADLINE, "the leader key to expire")
    took = backend.now() - stopped
    print(f"\n[{backend.name}] leader key (TTL {TTL} s) gone {took:.3f} s after the last renewal")
    assert took >= TTL - 0.5, f"expired after {took:.2f}s, before its {TTL}s TTL"
    assert a.renew(k) is False
    backend.wait_until(lambda: "a" not in b.snapshot().members, EXPIRY_DEADLINE, "the member key to expire")
    print(f"[{backend.name}] member key (TTL {TTL} s) gone {backend.now() - stopped:.3f} s after the last publish")
    a.publish_member(info("a", 4))  # a member whose lease expired publishes again under a new one
    assert b.snapshot().members["a"].flushed_lsn == 4
    snap = b.snapshot()
    assert snap.term == 1  # the term is not leased: it never goes backwards
    assert b.acquire(lk("b", 2), 1) is not None


# --------------------------------------------------------------------------- store unreachable


def test_unavailable_when_the_store_is_down_and_working_again_after(
        private_backend: Backend, private_coords: Callable[..., Coordinator]) -> None:
    backend, coords = private_backend, private_coords
    a, b = coords("a"), coords("b")
    k = a.acquire(lk("a", 1), 0)
    assert k is not None
    a.publish_member(info("a"))
    backend.outage()
    calls: list[tuple[str, Callable[[], object]]] = [
        ("snapshot", a.snapshot),
        ("publish_member", lambda: a.publish_member(info("a", 1))),
        ("acquire", lambda: b.acquire(lk("b", 2), 1)),
        ("renew", lambda: a.renew(k)),
        ("set_sync", lambda: a.set_sync(k, SyncState("a", 1, ()))),
        ("revoke", lambda: b.revoke(k)),
        ("release", lambda: a.release(k)),
        ("request_switchover", lambda: a.request_switchover("b")),
        ("clear_switchover", a.clear_switchover),
    ]
    for name, call in calls:
        t0 = time.monotonic()
        with pytest.raises(CoordinatorUnavailable):
            call()
        took = time.monotonic() - t0
        assert took < 2.0, f"{name} took {took:.2f}s to report the outage (its deadline is 0.4 s)"
    backend.recover()
    t0 = time.monotonic()
    wait_for(lambda: b.snapshot() is not None, RECOVERY_DEADLINE, "the store to answer again")
    print(f"\n[{backend.name}] snapshot works again {time.monotonic() - t0:.3f} s after the store came back")
    # Every call works again, from the same coordinator objects.
    a.publish_member(info("a", 2))
    snap = b.snapshot()
    assert snap.members["a"].flushed_lsn == 2 and snap.term == 1
    if snap.leader is not None:  # etcd extends leases across a restart; the key may have survived
        assert snap.leader == k and a.renew(k) is True and a.release(k) is True
    assert b.acquire(lk("b", 2), 1) is not None
    a.request_switchover("b")
    a.clear_switchover()


# --------------------------------------------------------------------------- etcd-specific


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    proc = EtcdProcess(tmp_path / "etcd").start()
    try:
        yield proc
    finally:
        proc.stop()


def lease_ids(etcd: EtcdProcess) -> set[int]:
    out = subprocess.run([tool("etcdctl"), f"--endpoints=http://{etcd.endpoint}", "lease", "list"],
                         capture_output=True, text=True, timeout=20, check=True).stdout
    return {int(line.strip(), 16) for line in out.splitlines()[1:] if line.strip()}


@pytest.mark.slow
def test_etcd_leader_key_is_bound_to_its_lease_and_term_is_not(etcd: EtcdProcess) -> None:
    prefix = shard_prefix("raw", 0)
    c = EtcdCoordinator([etcd.endpoint], prefix, "a", ttl=TTL)
    raw = etcd.client()
    try:
        k = c.acquire(lk("a", 1), 0)
        assert k is not None
        value, meta = raw.get(prefix + "leader")
        assert value is not None and LeaderKey.decode(value) == k
        assert meta.lease_id == k.lease and meta.create_revision == meta.mod_revision
        ttl = next(iter(raw.refresh_lease(k.lease))).TTL
        assert 0 < ttl <= TTL
        value, meta = raw.get(prefix + "term")
        assert value == b"1" and meta.lease_id == 0
        # A lost election gives back the lease it granted: no lease leaks per attempt.
        before = lease_ids(etcd)
        assert k.lease in before
        for term in (2, 3, 4):
            assert c.acquire(lk("b", term), term - 1) is None
        assert lease_ids(etcd) == before
    finally:
        c.close()
        raw.close()


@pytest.mark.slow
def test_etcd_member_lease_is_refreshed_once_per_interval_and_replaced_when_gone(etcd: EtcdProcess) -> None:
    """The member key is put at every publish, its lease refreshed at most every
    member_ttl / 5: a refresh opens a keep-alive stream, the costliest call of an HA tick."""
    prefix = shard_prefix("member-refresh", 0)
    c = EtcdCoordinator([etcd.endpoint], prefix, "a", ttl=TTL, member_ttl=5)
    raw = etcd.client()
    now = [100.0]
    c.clock = lambda: now[0]
    refreshes: list[int] = []
    real_refresh = c.client.refresh_lease

    def counted(lease_id: int):  # type: ignore[no-untyped-def]
        refreshes.append(lease_id)
        return real_refresh(lease_id)

    c.client.refresh_lease = counted  # type: ignore[method-assign]
    try:
        assert c.member_refresh_s == pytest.approx(1.0)
        c.publish_member(info("a", 1))  # the first publish grants the lease
        first = c.member_lease
        for lsn in range(2, 12):  # ten ticks within the interval: puts only
            now[0] += 0.09
            c.publish_member(info("a", lsn))
        assert refreshes == []
        value, meta = raw.get(prefix + "members/a")
        assert value is not None and MemberInfo.decode(value).flushed_lsn == 11 and meta.lease_id == first
        now[0] += 0.2  # 1.1 s since the grant: this publish refreshes, once
        c.publish_member(info("a", 12))
        c.publish_member(info("a", 13))
        assert refreshes == [first] and c.member_lease == first
        # A lease gone between refreshes (revoked here; expired in etcd's clock): the next
        # publish puts the key under a new lease instead of failing the tick.
        raw.revoke_lease(first)
        c.publish_member(info("a", 14))
        assert c.member_lease not in (0, first)
        value, meta = raw.get(prefix + "members/a")
        assert value is not None and MemberInfo.decode(value).flushed_lsn == 14 and meta.lease_id == c.member_lease
        assert refreshes == [first]  # replaced without a refresh of the dead lease
    finally:
        c.close()
        raw.close()


@pytest.mark.slow
def test_etcd_member_key_lives_while_published_at_the_tick_rate(etcd: EtcdProcess) -> None:
    """With the shortest TTL etcd grants, publishing every 100 ms keeps the member key,
    on etcd's own clock, though most publishes do not refresh its lease."""
    prefix = shard_prefix("member-live", 0)
    c = EtcdCoordinator([etcd.endpoint], prefix, "a", ttl=TTL, member_ttl=TTL)
    watcher = EtcdCoordinator([etcd.endpoint], prefix, "b", ttl=TTL)
    try:
        t_end = time.monotonic() + 2.5 * TTL
        seen = 0
        while time.monotonic() < t_end:
            c.publish_member(info("a", seen))
            assert "a" in watcher.snapshot().members, f"the member key expired after {seen} publishes"
            seen += 1
            time.sleep(0.1)  # the HA loop's tick
        assert seen >= 2 * TTL * 5
    finally:
        c.close()
        watcher.close()


def stopped(pid: int, tid: str) -> bool:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except FileNotFoundError:
        return True


@pytest.mark.slow
def test_etcd_stalled_server_gives_unavailable_within_the_deadline(etcd: EtcdProcess) -> None:
    c = EtcdCoordinator([etcd.endpoint], shard_prefix("stall", 0), "a", ttl=TTL, timeout=0.4)
    try:
        c.snapshot()
        assert etcd.proc is not None
        pid = etcd.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            # kill() returns before every thread has stopped: wait until the kernel says so.
            wait_for(lambda: all(stopped(pid, tid) for tid in os.listdir(f"/proc/{pid}/task")), 10,
                     "etcd's threads to stop")
            t0 = time.monotonic()
            with pytest.raises(CoordinatorUnavailable):
                c.snapshot()
            took = time.monotonic() - t0
            print(f"\n[etcd] stalled server reported unavailable after {took:.3f} s (deadline 0.4 s)")
            assert took < 1.5
        finally:
            os.kill(etcd.proc.pid, signal.SIGCONT)
        wait_for(lambda: c.snapshot() is not None, RECOVERY_DEADLINE, "etcd to answer after SIGCONT")
    finally:
        c.close()
