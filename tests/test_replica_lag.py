"""A replica's lag as its leader reports it: counted from when the first record
the replica lacks became durable on the leader (PostgreSQL's flush_lag), not
from when it was appended (the leader's own fsync is no replica's lag)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from sutra_cluster.replication.commit import ReplicaPosition
from sutra_cluster.replication.leader import Follower, LeaderStreams
from sutra_cluster.storage.tail import WalTail


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)
    wal = SimpleNamespace(durable_lsn=0)
    engine = SimpleNamespace(durable_listeners=[], recent=WalTail(), wal=wal)
    cfg = SimpleNamespace(commit_mode="async", sync_replicas=1, sync_fallback=False)
    streams = LeaderStreams(engine, cfg, managed=False, identity=None)  # type: ignore[arg-type]
    f = Follower("r1", "", ReplicaPosition(flushed=0))

    def log(lsn: int, appended: float, durable: float) -> None:
        clock.now = appended
        engine.recent.append(lsn, 1, 1, b"x" * 10)
        clock.now = durable
        wal.durable_lsn = lsn
        for fn in engine.durable_listeners:
            fn(lsn)

    return clock, streams, f, log


def test_lag_counts_from_the_leaders_fsync_not_its_append(setup) -> None:  # type: ignore[no-untyped-def]
    clock, streams, f, log = setup
    log(1, appended=100.0, durable=100.020)  # a 20 ms fsync on the leader
    clock.now = 100.025
    _, seconds = streams.lag(f)
    assert seconds == pytest.approx(0.005)


def test_lag_is_zero_once_flushed_and_counts_the_first_missing_group(setup) -> None:  # type: ignore[no-untyped-def]
    clock, streams, f, log = setup
    log(1, 100.0, 100.001)
    log(2, 100.002, 100.003)
    log(3, 100.004, 100.010)
    f.pos.flushed = 3
    assert streams.lag(f) == (0, 0.0)
    f.pos.flushed = 1
    clock.now = 100.020
    assert streams.lag(f)[1] == pytest.approx(0.017)  # record 2 durable at 100.003


def test_lag_falls_back_to_the_append_time_for_forgotten_groups(setup) -> None:  # type: ignore[no-untyped-def]
    clock, streams, f, log = setup
    log(1, 100.0, 100.001)
    streams._durable_at.clear()  # e.g. more groups since than are remembered
    log(2, 100.002, 100.003)
    clock.now = 100.010
    assert streams.lag(f)[1] == pytest.approx(0.010)  # record 1: only its append time is known


def test_a_log_cut_back_forgets_the_older_times(setup) -> None:  # type: ignore[no-untyped-def]
    clock, streams, f, log = setup
    log(1, 100.0, 100.001)
    log(2, 100.002, 100.003)
    streams._on_durable(1)  # LSNs reused after a rewind
    assert list(streams._durable_at) == [(1, 100.003)]
