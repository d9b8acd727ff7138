"""Writers waiting for a sync replica are woken one by one: an acknowledgement
wakes exactly the writers whose LSN it commits (notify_all woke every writer in
flight at every acknowledgement), and a change of role wakes all of them, to
fail. In process, with the test as the replica (tests/test_commit_news.py)."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from sutra_cluster.errors import Unavailable
from sutra_cluster.pb import replication_pb2 as rpb
from sutra_cluster.replication.manager import ReplicationManager
from sutra_cluster.storage.engine import Engine
from tests.helpers import wait_for
from tests.test_commit_news import DEADLINE_S, Replica, _write

WRITERS = 4


def _spy_wakes(m: ReplicationManager) -> list[tuple[int, bool]]:
    """(writers woken, everyone) for every wake from now on."""
    waiters = m.leader._committing
    real = waiters.wake
    calls: list[tuple[int, bool]] = []

    def wake(durable: int, hand_over: bool, everyone: bool = False) -> int:
        n = real(durable, hand_over, everyone)
        calls.append((n, everyone))
        return n

    waiters.wake = wake  # type: ignore[method-assign]
    return calls


def _writers_waiting(eng: Engine, m: ReplicationManager, r: Replica,
                     pool: ThreadPoolExecutor) -> tuple[int, list[Future[int]]]:
    """WRITERS writes, durable here, streamed to the replica and not acknowledged."""
    r.records_until(eng.wal.durable_lsn)  # the term record, acknowledged
    first = eng.wal.last_lsn + 1
    writes = [pool.submit(_write, eng, f"c{i}") for i in range(WRITERS)]
    wait_for(lambda: len(m.leader._committing) == WRITERS, DEADLINE_S, "every writer waiting for the replica")
    sent = 0
    while sent < first + WRITERS - 1:  # the feeder runs in this thread: pull what it sends, acknowledge nothing
        msg = r.next()
        if msg.WhichOneof("kind") == "records":
            sent = msg.records.entries[-1].lsn
    return first, writes


def _ack(r: Replica, flushed: int) -> None:
    r.acks.put(rpb.FollowerMessage(ack=rpb.Ack(written_lsn=flushed, flushed_lsn=flushed)))


def test_an_acknowledgement_wakes_exactly_the_writers_it_commits(
        leader: tuple[Engine, ReplicationManager]) -> None:
    eng, m = leader
    r = Replica(m)
    pool = ThreadPoolExecutor(WRITERS)
    try:
        first, writes = _writers_waiting(eng, m, r, pool)
        wakes = _spy_wakes(m)
        _ack(r, first + 1)  # the replica flushed the first two
        wait_for(lambda: sum(w.done() for w in writes) == 2, DEADLINE_S, "the two committed writes")
        assert sorted(w.result() for w in writes if w.done()) == [first, first + 1]
        assert len(m.leader._committing) == WRITERS - 2  # the other two still wait, asleep
        assert sum(n for n, _ in wakes) == 2, wakes  # nobody else was woken
        _ack(r, first + WRITERS - 1)
        assert sorted(w.result(timeout=DEADLINE_S) for w in writes) == list(range(first, first + WRITERS))
        assert sum(n for n, _ in wakes) == WRITERS, wakes
    finally:
        r.close()
        pool.shutdown(wait=True)


def test_stepping_down_wakes_every_waiting_writer_to_fail(leader: tuple[Engine, ReplicationManager]) -> None:
    eng, m = leader
    r = Replica(m)
    pool = ThreadPoolExecutor(WRITERS)
    try:
        _, writes = _writers_waiting(eng, m, r, pool)
        wakes = _spy_wakes(m)
        m.step_down("a test")
        for w in writes:
            with pytest.raises(Unavailable, match="not acknowledged"):
                w.result(timeout=DEADLINE_S)
        assert (WRITERS, True) in wakes, wakes  # one wake for all, not their 1 s self-wake
    finally:
        r.close()
        pool.shutdown(wait=True)
