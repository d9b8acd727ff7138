"""What a replica spends per record on the records its leader streams, in process
(no gRPC, no other node): appending them (append_replicated: parse, log, fsync)
and applying them (reconcile_once: graph records, stored vector forms,
fingerprints, the vector index), and what the cyclic collector costs as the
graph grows.

    .venv/bin/python bench/bench_replica_apply.py [--rounds 5] [--before ../before] [--out bench/results/replica_apply.json]
    .venv/bin/python bench/bench_replica_apply.py --size 1 --batches 2000 --reconcile-every 4   # single writes

Each round runs in a fresh process per tree, alternating with ``--before``'s
tree (an older checkout) so both see the same machine load; medians are printed,
the JSON keeps every round. CPU is process CPU time (all threads).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r'''
import dataclasses, gc, json, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from sutra_cluster.config import Config
from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage.engine import Engine
from sutra_cluster.storage.wal_format import RT_BATCH

batches, size, dim, every = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(1)
vecs = rng.standard_normal((size, dim)).astype("<f4")
gc_cpu, full = [0.0], []
def on_gc(phase, info, t0=[0.0]):
    if phase == "start":
        t0[0] = time.thread_time()
    else:
        gc_cpu[0] += time.thread_time() - t0[0]
        if info["generation"] == 2:
            full.append(round((time.thread_time() - t0[0]) * 1000, 1))
with tempfile.TemporaryDirectory() as d:
    cfg = dataclasses.replace(Config(), storage_path=d, vector_dimension=dim, ann_threshold=10**12,
                              memory_threshold=10**12, reconcile_interval_ms=10**7)
    eng = Engine(cfg)
    gc.callbacks.append(on_gc)
    t_app = t_apply = 0.0
    for b in range(batches):
        w = wal_pb2.WalBatch()
        for i in range(size):
            w.concepts.add(concept_id=f"c{b * size + i}", content="x" * 200, embedding_f32=vecs[i].tobytes(),
                           attributes={"kind": str(i % 5)})
        payload = w.SerializeToString() + wal_pb2.WalBatch(timestamp_us=time.time_ns() // 1000).SerializeToString()
        c0 = time.process_time()
        eng.append_replicated([(b + 1, 1, RT_BATCH, payload)])
        c1 = time.process_time()
        if (b + 1) % every == 0 or b + 1 == batches:
            eng.reconcile_once()
        c2 = time.process_time()
        t_app += c1 - c0
        t_apply += c2 - c1
    gc.callbacks.remove(on_gc)
    n = batches * size
    print(json.dumps({"append_us": t_app / n * 1e6, "apply_us": t_apply / n * 1e6, "gc_ms": gc_cpu[0] * 1000,
                      "full_collections_ms": full, "tracked_objects": len(gc.get_objects()), "concepts": n}))
    eng.close()
'''


def probe(tree: Path, batches: int, size: int, dim: int, every: int = 1) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(tree), str(batches), str(size), str(dim), str(every)],
                         cwd=tree, capture_output=True, text=True, check=True, timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batches", type=int, default=60, help="batches per round (60 x 1,000: the collector's growth shows)")
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--reconcile-every", type=int, default=1,
                   help="batches appended per reconcile_once (a reconciler tick applies all it finds: "
                        "with --size 1 this shows the fixed cost of one apply)")
    p.add_argument("--before", type=Path, default=None, help="an older checkout, measured alternating with this tree")
    p.add_argument("--out", default="bench/results/replica_apply.json")
    a = p.parse_args()
    trees = {"this tree": ROOT} if a.before is None else {"before": a.before.resolve(), "this tree": ROOT}
    runs: dict[str, list[dict[str, object]]] = {k: [] for k in trees}
    for _ in range(a.rounds):
        for label, tree in trees.items():
            runs[label].append(probe(tree, a.batches, a.size, a.dim, a.reconcile_every))
    print(f"{a.batches} batches of {a.size} {a.dim}-d concepts per round, {a.reconcile_every} per reconcile, "
          f"medians of {a.rounds} rounds (CPU)")
    print("| tree | append µs/record | apply µs/record | collector ms per round | full collections, ms each |")
    print("|---|---:|---:|---:|---|")
    for label, rs in runs.items():
        def med(key: str, rs: list[dict[str, object]] = rs) -> float:
            return statistics.median(float(r[key]) for r in rs)  # type: ignore[arg-type]
        fulls = "; ".join(",".join(str(x) for x in r["full_collections_ms"]) for r in rs)  # type: ignore[attr-defined]
        print(f"| {label} | {med('append_us'):.1f} | {med('apply_us'):.1f} | {med('gc_ms'):.0f} | {fulls} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
