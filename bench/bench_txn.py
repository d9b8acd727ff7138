#!/usr/bin/env python3
"""Cross-shard atomic writes: what they cost, in one run.

    .venv/bin/python bench/bench_txn.py [--rounds 200] [--batch 10] [--mode sync] [--out bench/results/txn.json]

Starts etcd, two shards (a leader and ``--replicas`` replicas each, ``--mode``
commit mode) and two routers, all real processes on loopback: ``atomic`` (the
default router) and ``plain`` (``SUTRA_ROUTER_ATOMIC=off``: the path before
cross-shard transactions, atomic per shard only). Then, from one client thread,
round-robin so that every case sees the same machine noise, LearnBatch latency of:

- ``single/plain`` and ``single/atomic``: a batch whose concepts all live on one
  shard (the plain path in both routers: the "before/after" of a single-shard batch);
- ``two-shard/atomic``: a batch split over both shards, as one transaction
  (prepare, etcd decision, commit);
- ``two-shard/plain``: the same batch through the plain router (its two parts in
  parallel, not atomic);
- ``2 x single``: the same concepts as two single-shard batches (one per shard),
  one after the other;
- ``etcd create``: one create-once put of a decision key, the transaction's one
  extra durable round trip, measured alone.

Prints a table (p50, p90, p99, mean in ms) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sutra_cluster.pb import storage_pb2 as pb  # noqa: E402
from sutra_cluster.pb import storage_pb2_grpc  # noqa: E402
from sutra_cluster.txn.decision import DecisionStore  # noqa: E402
from tests.shard_cluster import ShardedCluster, sharded_cluster  # noqa: E402
from tests.txn_check import start_router  # noqa: E402


def batch(ids: list[str], tag: str) -> pb.LearnBatchRequest:
    return pb.LearnBatchRequest(concepts=[pb.LearnConceptRequest(concept_id=c, content=f"{tag} {c}", strength=1.0,
                                                                 confidence=0.9) for c in ids])


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def run(c: ShardedCluster, plain_addr: str, rounds: int, size: int) -> dict[str, list[float]]:
    store = DecisionStore([c.etcd.endpoint], c.name, "bench")
    atomic = storage_pb2_grpc.StorageServiceStub(grpc.insecure_channel(c.router.address))
    plain = storage_pb2_grpc.StorageServiceStub(grpc.insecure_channel(plain_addr))
    # Fresh ids for every batch (a concept written again would be the same work on a warm key).
    half = size // 2
    on0 = iter(c.ids_on(0, (rounds + 10) * (3 * size + half), prefix="a"))
    on1 = iter(c.ids_on(1, (rounds + 10) * (2 * size), prefix="b"))

    def ids(pool: Any, n: int) -> list[str]:
        return [next(pool) for _ in range(n)]

    lat: dict[str, list[float]] = {k: [] for k in
                                   ("single/plain", "single/atomic", "two-shard/atomic", "two-shard/plain", "2 x single",
                                    "etcd create")}
    for r in range(rounds + 10):  # the first 10 rounds warm up channels and caches
        cases = [
            ("single/plain", [(plain, batch(ids(on0, size), "sp"))]),
            ("single/atomic", [(atomic, batch(ids(on0, size), "sa"))]),
            ("two-shard/atomic", [(atomic, batch(ids(on0, half) + ids(on1, size - half), "ta"))]),
            ("two-shard/plain", [(plain, batch(ids(on0, half) + ids(on1, size - half), "tp"))]),
            ("2 x single", [(plain, batch(ids(on0, half), "s0")), (plain, batch(ids(on1, size - half), "s1"))]),
        ]
        for name, calls in cases:
            t0 = time.perf_counter()
            for stub, req in calls:
                stub.LearnBatch(req, timeout=30)
            if r >= 10:
                lat[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        store.decide(f"bench-{r}", True, [0, 1])
        if r >= 10:
            lat["etcd create"].append(time.perf_counter() - t0)
    store.close()
    return lat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--batch", type=int, default=10, help="concepts per batch")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--mode", default="sync", choices=("sync", "async"))
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-txn-") as tmp, \
            sharded_cluster(Path(tmp), shards=2, per_shard=1 + args.replicas, mode=args.mode, routers=0) as c:
        start_router(c, "atomic")
        plain = start_router(c, "plain", {"SUTRA_ROUTER_ATOMIC": "off"})
        lat = run(c, plain.address, args.rounds, args.batch)
    rows = {name: {"p50_ms": pct(xs, 50) * 1e3, "p90_ms": pct(xs, 90) * 1e3, "p99_ms": pct(xs, 99) * 1e3,
                   "mean_ms": statistics.fmean(xs) * 1e3, "n": len(xs)} for name, xs in lat.items()}
    print(f"{'case':<18}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    for name, r in rows.items():
        print(f"{name:<18}{r['p50_ms']:>9.2f}{r['p90_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['mean_ms']:>9.2f}")
    out = Path(args.out or ROOT / "bench" / "results" / "txn.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "bench": "txn", "rounds": args.rounds, "batch": args.batch, "mode": args.mode, "replicas": args.replicas,
        "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "python": platform.python_version(),
        "cases": rows,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
