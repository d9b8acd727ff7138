"""WAL streaming replication, tested with real processes on loopback (issue 3).

Every test starts its own leader and replicas (tests/cluster.py) with small
vectors, waits on conditions with deadlines, and ends every process it
started, paused ones included, pass or fail.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sutra_cluster import admin
from tests.cluster import (
    Cluster,
    Node,
    WriteLoad,
    assert_same_digest,
    lag_samples,
    missing,
    most_advanced,
    promote,
    running_cluster,
    wait_lsn,
    wait_streaming,
)
from tests.helpers import rpc_code, tool, wait_for

KILL_ROUNDS = int(os.environ.get("SUTRA_REPL_KILL_ROUNDS", "10"))
ASYNC_KILL_ROUNDS = int(os.environ.get("SUTRA_REPL_ASYNC_KILL_ROUNDS", "3"))
SEED = int(os.environ.get("SUTRA_TEST_SEED", random.randrange(1 << 30)))


def _rng(name: str) -> random.Random:
    print(f"{name}: seed {SEED} (SUTRA_TEST_SEED={SEED} repeats it)")
    return random.Random(f"{SEED}-{name}")


# ---- 1. load in both commit modes ----------------------------------------------
@pytest.mark.parametrize("mode", ["async", "sync"])
def test_digests_equal_after_concurrent_load(tmp_path: Path, mode: str) -> None:
    with running_cluster(tmp_path, replicas=2, mode=mode) as c:
        wait_streaming(c.leader, ["r1", "r2"])
        t0 = time.monotonic()
        with WriteLoad(c.leader.address, threads=4, per_thread=60, seed=SEED) as load:
            load.join()
        took = time.monotonic() - t0
        assert not load.errors(), load.errors()
        final = load.last_lsn()
        assert load.count() == 240 and final >= 240
        d = assert_same_digest(c.nodes, final)
        print(f"{mode}: 240 batches in {took:.2f}s; all 3 nodes at LSN {final}: {d.digest[:16]} "
              f"({d.concepts} concepts, {d.edges} edges)")
        assert d.concepts > 0 and d.edges > 0
