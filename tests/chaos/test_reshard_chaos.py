"""Chaos for resharding: SIGKILL of a participant at a random point of a
reshard, under a sync write load through a router, RUNS times in all.

One cluster (etcd, three shard groups of two nodes, one router) moves back
and forth between 2 and 3 shards: every run grows or shrinks it, and at a
random moment SIGKILLs one of: the driver, a source shard's leader, a target
shard's leader, or the router. A killed node or router is restarted (same
data, same port); the driver is rerun until it reports the reshard done.

The checker, after every run: the map is settled (no reshard fields) and
names the expected count. At the end: 0 acknowledged writes lost (the router
answers as a single reference node holding exactly the acknowledged writes:
concepts, neighbours in each direction, paths, exact vector search), each
shard holds only keys it owns (their counts sum to the reference's), and a
key is writable on exactly one shard (every leader is probed directly).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc
from sutra_cluster.sharding import shardmap
from tests.helpers import ROOT
from tests.reshard_support import Load, add_shard, replay, shard_concepts, wait_equal
from tests.shard_cluster import ShardedCluster, sharded_cluster
from tests.test_sharding import reference_node

pytestmark = pytest.mark.slow  # starts etcd, six nodes and a router

RUNS = int(os.environ.get("SUTRA_RESHARD_CHAOS_RUNS", "20"))
VICTIMS = ("driver", "source-leader", "target-leader", "router")


def _driver(c: ShardedCluster, to: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "sutra_cluster", "reshard", "--to", str(to), "--etcd", c.etcd.endpoint,
           "--cluster", c.name, "--cleanup-after", "0.5"]
    return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _finish(c: ShardedCluster, to: int, first: subprocess.Popen[str] | None, deadline_s: float = 90.0) -> int:
    """Wait for ``first`` (if still running), then rerun the driver until it exits 0; returns the reruns."""
    deadline = time.monotonic() + deadline_s
    proc, reruns, out = first, 0, ""
    while True:
        if proc is None:
            proc, reruns = _driver(c, to), reruns + 1
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"reshard to {to} not done within {deadline_s} s\n{c.logs()}") from None
        if proc.returncode == 0:
            return reruns
        assert time.monotonic() < deadline, f"reshard to {to} keeps failing: {out}\n{c.logs()}"
        proc = None


def _kill(c: ShardedCluster, victim: str, sources: list[int], targets: list[int],
          driver: subprocess.Popen[str], rng: random.Random) -> str:
    if victim == "driver":
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        return "driver"
    if victim == "router":
        c.router.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        c.router.proc.wait()  # type: ignore[union-attr]
        c.router.start()
        return "router"
    shard = rng.choice(sources if victim == "source-leader" else targets)
    node = c.leader(shard)
    node.kill()
    node.restart(60)
    return f"leader of shard {shard} ({node.name})"


def _probe_single_owner(c: ShardedCluster, shards: int) -> None:
    """Every probe key is accepted by exactly one shard leader (its owner)."""
    stubs = [storage_pb2_grpc.StorageServiceStub(grpc.insecure_channel(c.leader(s).address)) for s in range(shards)]
    m = shardmap.load_from_etcd([c.etcd.endpoint], c.name)
    assert m is not None
    for i in range(30):
        cid = f"probe-{i}"
        took = []
        for s, stub in enumerate(stubs):
            try:
                stub.LearnConcept(pb.LearnConceptRequest(concept_id=cid, content="probe"), timeout=10)
                took.append(s)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc  # wrong-shard
        assert took == [m.owner(cid)], (cid, took)


def test_sigkill_participants_during_resharding(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("SUTRA_CHAOS_SEED", "15")))
    report: list[dict[str, object]] = []
    t_start = time.monotonic()
    with sharded_cluster(tmp_path / "c", shards=2, per_shard=2, mode="sync") as c:
        add_shard(c, 2)
        load = Load(c.router.address, writers=2, keys_per_writer=80).start()
        shards = 2
        try:
            for run in range(RUNS):
                to = 3 if shards == 2 else 2
                sources = [0, 1] if to == 3 else [2]
                targets = [2] if to == 3 else [0, 1]
                # Each participant in turn, for one grow and one shrink each; when: at random.
                victim = VICTIMS[(run // 2) % len(VICTIMS)]
                delay = rng.uniform(0.0, 2.5)
                t0 = time.monotonic()
                driver = _driver(c, to)
                time.sleep(delay)
                killed = _kill(c, victim, sources, targets, driver, rng)
                reruns = _finish(c, to, None if victim == "driver" else driver)
                m = shardmap.load_from_etcd([c.etcd.endpoint], c.name)
                assert m is not None and (m.shards, m.next_shards, m.frozen, m.leftovers) == (to, 0, False, False), m
                shards = to
                report.append({"run": run, "to": to, "killed": killed, "at_s": round(delay, 2), "reruns": reruns,
                               "seconds": round(time.monotonic() - t0, 2), "acked": load.count()})
        finally:
            load.finish()
        assert not load.failed, load.failed[:3]
        with reference_node(tmp_path / "ref") as ref:
            replay(load.acked, ref)
            wait_equal(c.router.address, ref, load.all_keys(), on_fail=c.logs)
            want = ref.GetStats(pb.GetStatsRequest()).concepts
            per_shard = [shard_concepts(c, s) for s in range(3)]
            assert sum(per_shard[:shards]) == want and (shards == 3 or per_shard[2] == 0), (per_shard, want)
        _probe_single_owner(c, shards)
    summary = {"runs": report, "acked_writes": load.count(), "lost": 0, "seconds": round(time.monotonic() - t_start)}
    (tmp_path / "reshard-chaos.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    assert len(report) == RUNS >= 20 or os.environ.get("SUTRA_RESHARD_CHAOS_RUNS")
