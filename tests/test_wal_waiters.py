"""Writers blocked on WAL durability are woken one by one (storage/wal_waiters.py):
exactly those whose record is durable, plus one that will write the next group."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sutra_cluster.storage.wal import WriteAheadLog
from sutra_cluster.storage.wal_waiters import Waiters
from tests.helpers import wait_for

DEADLINE_S = 30.0


def _blocked(w: Waiters, mu: threading.Lock, specs: list[tuple[int, bool]]) -> tuple[dict[int, threading.Event], list]:
    """One thread per (lsn, flushes) blocked in ``sleep``; returns lsn -> woken event."""
    woken = {lsn: threading.Event() for lsn, _ in specs}
    threads = []

    def run(lsn: int, flushes: bool) -> None:
        with mu:
            w.sleep(mu, lsn, flushes, 60.0)
        woken[lsn].set()

    for lsn, flushes in specs:
        t = threading.Thread(target=run, args=(lsn, flushes), daemon=True)
        t.start()
        threads.append(t)
    def blocked() -> bool:
        with mu:
            return len(w) == len(specs)

    wait_for(blocked, DEADLINE_S, "writers to block", interval=0.001)
    return woken, threads


def _settle(woken: dict[int, threading.Event], expected: set[int]) -> None:
    for lsn in expected:
        assert woken[lsn].wait(DEADLINE_S), f"writer of LSN {lsn} was not woken"


def test_a_group_wakes_exactly_its_writers() -> None:
    w, mu = Waiters(), threading.Lock()
    woken, threads = _blocked(w, mu, [(i, True) for i in range(1, 9)])
    with mu:
        assert w.wake(durable=3, hand_over=False) == 3
        assert len(w) == 5
    _settle(woken, {1, 2, 3})
    assert not any(woken[i].is_set() for i in range(4, 9))
    with mu:
        assert w.wake(durable=0, hand_over=False, everyone=True) == 5
    _settle(woken, set(range(4, 9)))
    for t in threads:
        t.join(DEADLINE_S)


def test_the_hand_over_wakes_one_writer_that_may_write_the_group() -> None:
    # LSN 5 only polls (a timeout wait never writes a group): LSN 6 is handed the group.
    w, mu = Waiters(), threading.Lock()
    woken, threads = _blocked(w, mu, [(5, False), (6, True), (7, True)])
    with mu:
        assert w.wake(durable=4, hand_over=True) == 1
    _settle(woken, {6})
    assert not woken[5].is_set() and not woken[7].is_set()
    with mu:
        w.wake(durable=7, hand_over=False)
    _settle(woken, {5, 7})
    for t in threads:
        t.join(DEADLINE_S)


def test_a_writer_nobody_wakes_returns_after_its_timeout() -> None:
    w, mu = Waiters(), threading.Lock()
    t0 = time.monotonic()
    with mu:
        w.sleep(mu, 1, True, 0.05)
        assert len(w) == 0  # removed itself
    assert time.monotonic() - t0 >= 0.05


@pytest.mark.parametrize("writers", [1, 8, 32])
def test_concurrent_writers_all_become_durable(tmp_path: Path, writers: int) -> None:
    wal = WriteAheadLog(tmp_path / "wal")
    try:
        def write(i: int) -> int:
            lsn = wal.append(1, f"record {i}".encode(), 1, wake=False)
            wal.wait_durable(lsn)
            return int(lsn)

        with ThreadPoolExecutor(writers) as pool:
            lsns = list(pool.map(write, range(20 * writers)))
        assert sorted(lsns) == list(range(1, 20 * writers + 1))
        assert wal.durable_lsn == 20 * writers
        assert len(wal._waiters) == 0
    finally:
        wal.close()
