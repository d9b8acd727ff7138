"""How long the flat vector store stalls when overwrites make it compact.

    .venv/bin/python bench/bench_compaction.py [--rows 40000,160000,400000] [--out bench/results/compaction.json]

A continuously learning graph re-learns concepts: every upsert of a known id
tombstones its old row and appends a new one. Once a quarter of the rows are
dead, the next upsert compacts the store (``VectorIndex._maybe_compact_locked``):
it copies every live row into new chunks and rebuilds the key map, holding the
store's lock, which every search and the apply also take.

Per size, in process: a store of N rows (768-d, no HNSW graph), then half of
them overwritten in upserts of 100, as a stream of re-learned concepts. A thread
beside it wakes every 1 ms: its worst delay says whether the rest of the process
(gRPC, acknowledgements, the etcd lease) waits too, i.e. whether the GIL is held.
Prints the slowest upsert against the mean, and writes JSON (docs/HA.md, Write
path speed, stop 27).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sutra_cluster.storage.vectors import VectorIndex  # noqa: E402

DIM = 768


def run(rows: int, per_call: int = 100) -> dict[str, float]:
    """Fill a store with ``rows`` vectors, overwrite half of them ``per_call`` at a time."""
    store = VectorIndex(DIM, background=False, exact_limit=1 << 40)
    rng = np.random.default_rng(1)
    for lo in range(0, rows, 1000):
        hi = min(rows, lo + 1000)
        store.upsert([f"k{i}" for i in range(lo, hi)], rng.standard_normal((hi - lo, DIM), dtype=np.float32))
    gaps: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not stop.wait(0.001):
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = threading.Thread(target=tick, name="ticker")
    ticker.start()
    times: list[float] = []
    compactions = 0
    try:
        for lo in range(0, rows // 2, per_call):
            keys = [f"k{i}" for i in range(lo, min(rows // 2, lo + per_call))]
            vecs = rng.standard_normal((len(keys), DIM), dtype=np.float32)
            used = store._n  # rows used, live or dead: a compaction brings it back down
            t0 = time.perf_counter()
            store.upsert(keys, vecs)
            times.append(time.perf_counter() - t0)
            compactions += store._n < used + len(keys)
    finally:
        stop.set()
        ticker.join()
    store.close()
    return {"rows": rows, "upserts": len(times), "compactions": compactions,
            "slowest_upsert_ms": max(times) * 1e3, "mean_upsert_ms": statistics.fmean(times) * 1e3,
            "ticker_worst_delay_ms": (max(gaps) - 0.001) * 1e3 if gaps else 0.0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="40000,160000,400000", help="store sizes, comma-separated")
    p.add_argument("--out", default="bench/results/compaction.json")
    a = p.parse_args()
    results = [run(int(n)) for n in a.rows.split(",")]
    print("| rows | upserts of 100 | compactions | slowest upsert ms | mean ms | 1 ms ticker's worst delay ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['rows']:,} | {r['upserts']:,} | {r['compactions']} | {r['slowest_upsert_ms']:,.0f} | "
              f"{r['mean_upsert_ms']:.2f} | {r['ticker_worst_delay_ms']:.0f} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
