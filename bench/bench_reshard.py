#!/usr/bin/env python3
"""Online resharding, end to end: one shard of N concepts split into two.

    .venv/bin/python bench/bench_reshard.py [--concepts 100000] [--dim 32] [--out bench/results/reshard.json]

Starts etcd, shard 0 (a leader and a replica, sync commit) and a router, all
real processes on loopback; loads ``--concepts`` concepts (and half as many
associations) through the router; starts shard 1's group; then runs
``sutra-cluster reshard --to 2`` as a process while three writer threads
write through the router, each one sync write at a time:

- ``normal``: new keys, measured for ``--normal-s`` seconds before the reshard;
- the same writer goes on during the reshard: its rate while the driver copies
  (phase prepare/copy) over the normal rate is "ingest during the copy";
- ``moving``: updates of keys that move to shard 1, one after another: the
  longest gap between two acknowledgements around the cutover is the write
  pause on moving keys (the driver also prints its own freeze-to-switch span);
- ``staying``: updates of keys that stay: their longest gap shows whether
  writes to keys that do not move paused.

Prints a table and writes JSON. A benchmark, not a test: numbers depend on the
machine (two cores shared with whatever else runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sutra_cluster.pb import storage_pb2 as pb  # noqa: E402
from sutra_cluster.pb import storage_pb2_grpc  # noqa: E402
from sutra_cluster.sharding.reshard_state import RecordStore  # noqa: E402
from sutra_cluster.sharding.shardmap import ShardMap  # noqa: E402
from tests.reshard_support import add_shard  # noqa: E402
from tests.shard_cluster import sharded_cluster  # noqa: E402


class Writer(threading.Thread):
    """One sync write at a time through the router; records (time, latency) of each ack."""

    def __init__(self, address: str, keys: list[str], dim: int, name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.stub = storage_pb2_grpc.StorageServiceStub(grpc.insecure_channel(address))
        self.keys, self.dim = keys, dim
        self.acks: list[tuple[float, float]] = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        rng = np.random.default_rng(abs(hash(self.name)) % (1 << 30))
        i = 0
        while not self.stop.is_set():
            cid = self.keys[i % len(self.keys)]
            req = pb.LearnConceptRequest(concept_id=cid, content=f"{self.name} {i}", strength=1.0, confidence=0.5,
                                         embedding_f32=rng.standard_normal(self.dim).astype("<f4").tobytes(),
                                         request_id=f"{self.name}-{i}")
            t0 = time.monotonic()
            try:
                self.stub.LearnConcept(req, timeout=60)
                self.acks.append((time.monotonic(), time.monotonic() - t0))
            except grpc.RpcError:
                self.errors += 1
            i += 1

    def rate(self, t0: float, t1: float) -> float:
        n = sum(1 for t, _ in self.acks if t0 <= t < t1)
        return n / max(t1 - t0, 1e-9)

    def longest_gap(self, t0: float, t1: float) -> float:
        ts = [t for t, _ in self.acks if t0 <= t <= t1]
        return max((b - a for a, b in zip(ts, ts[1:])), default=0.0)


def load(address: str, n: int, dim: int) -> float:
    stub = storage_pb2_grpc.StorageServiceStub(grpc.insecure_channel(address))
    rng = np.random.default_rng(1)
    t0 = time.monotonic()
    for lo in range(0, n, 1000):
        ids = [f"c{i}" for i in range(lo, min(n, lo + 1000))]
        vecs = rng.standard_normal((len(ids), dim)).astype("<f4")
        req = pb.LearnBatchRequest(request_id=f"load-{lo}")
        for cid, v in zip(ids, vecs):
            req.concepts.add(concept_id=cid, content=f"concept {cid}", strength=1.0, confidence=0.9,
                             embedding_f32=v.tobytes())
        for k in range(0, len(ids), 2):
            req.associations.add(source_id=ids[k], target_id=f"c{int(rng.integers(0, n))}", assoc_type=0,
                                 confidence=0.5)
        stub.LearnBatch(req, timeout=120)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--normal-s", type=float, default=15.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "reshard.json"))
    args = ap.parse_args()
    split = ShardMap(shards=2)
    moving = [k for k in (f"c{i}" for i in range(args.concepts)) if split.owner(k) == 1][:200]
    staying = [k for k in (f"c{i}" for i in range(args.concepts)) if split.owner(k) == 0][:200]
    with tempfile.TemporaryDirectory(prefix="bench-reshard-") as tmp, \
            sharded_cluster(Path(tmp), shards=1, per_shard=2, mode="sync", dim=args.dim,
                            env={"SUTRA_LOG_LEVEL": "warning"}) as c:
        load_s = load(c.router.address, args.concepts, args.dim)
        add_shard(c, 1)
        writers = {"normal": Writer(c.router.address, [f"n{i}" for i in range(10**6)], args.dim, "normal"),
                   "moving": Writer(c.router.address, moving, args.dim, "moving"),
                   "staying": Writer(c.router.address, staying, args.dim, "staying")}
        for w in writers.values():
            w.start()
        time.sleep(args.normal_s)
        t_start = time.monotonic()
        cmd = [sys.executable, "-m", "sutra_cluster", "reshard", "--to", "2", "--etcd", c.etcd.endpoint,
               "--cluster", c.name, "--cleanup-after", "2"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        phases: dict[str, float] = {}
        store = RecordStore([c.etcd.endpoint], c.name)
        while proc.poll() is None:
            try:
                rec = store.read()
            except Exception:  # noqa: BLE001 - etcd busy: look again
                rec = None
            if rec is not None and rec.phase not in phases:
                phases[rec.phase] = time.monotonic()
            time.sleep(0.05)
        t_end = time.monotonic()
        store.close()
        out_text = proc.stdout.read() if proc.stdout else ""
        time.sleep(2.0)
        for w in writers.values():
            w.stop.set()
        for w in writers.values():
            w.join(70)
        if proc.returncode != 0:
            print(out_text, file=sys.stderr)
            return 1
        copy_end = phases.get("catchup", t_end)
        cut0, cut1 = phases.get("cutover", t_end) - 0.5, phases.get("switched", t_end) + 0.5
        normal = writers["normal"].rate(t_start - args.normal_s, t_start)
        during = writers["normal"].rate(t_start, copy_end)
        result: dict[str, Any] = {
            "concepts": args.concepts, "dim": args.dim, "load_s": round(load_s, 1),
            "reshard_s": round(t_end - t_start, 2),
            "copy_s": round(copy_end - phases.get("copy", t_start), 2),
            "catchup_s": round(phases.get("cutover", t_end) - copy_end, 2),
            "cutover_to_switched_s": round(phases.get("switched", t_end) - phases.get("cutover", t_end), 2),
            "driver_says": [ln for ln in out_text.splitlines() if "paused" in ln or "copy:" in ln],
            "moving_key_write_pause_s": round(writers["moving"].longest_gap(cut0, cut1), 3),
            "staying_key_longest_gap_s": round(writers["staying"].longest_gap(cut0, cut1), 3),
            "staying_key_longest_gap_whole_run_s": round(writers["staying"].longest_gap(t_start, t_end), 3),
            "ingest_normal_per_s": round(normal, 1), "ingest_during_copy_per_s": round(during, 1),
            "ingest_ratio": round(during / normal, 2) if normal else None,
            "write_errors": {k: w.errors for k, w in writers.items()},
            "machine": f"{platform.machine()} {os.cpu_count()} cpu, load {os.getloadavg()[0]:.1f}",
        }
    print(f"{'measure':38} value")
    for k, v in result.items():
        print(f"{k:38} {v}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
