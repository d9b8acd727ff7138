"""How long the flat vector store stalls when overwrites make it compact.

    .venv/bin/python bench/bench_compaction.py [--rows 40000,160000,400000] [--out bench/results/compaction.json]

A continuously learning graph re-learns concepts: every upsert of a known id
tombstones its old row and appends a new one. Once a quarter of the rows are
dead, the next upsert compacts the store (``VectorIndex._maybe_compact_locked``):
it copies every live row into new chunks and rebuilds the key map, holding the
store's lock, which every search and the apply also take.

Per size, in process: a store of N rows (768-d, no HNSW graph), then half of
them overwritten in upserts of 100, as a stream of re-learned concepts; once
compacting under the lock (``inline``: an index without a maintainer thread) and
once with the maintainer thread, as in a node, which copies without the lock
(``thread``). Beside it, one thread takes the store's lock every 5 ms, as every
search and the apply do first: its worst wait is what they would wait. Another
wakes every 1 ms: its worst delay says whether the rest of the process (gRPC,
acknowledgements, the etcd lease) waits too, i.e. whether the GIL is held.
Prints a table and writes JSON (docs/HA.md, Write path speed, stop 27).
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


def run(rows: int, thread: bool, per_call: int = 100) -> dict[str, float]:
    """Fill a store with ``rows`` vectors, overwrite half of them ``per_call`` at a
    time, with a search running beside it. ``thread``: a maintainer thread
    compacts, as in a node (the copy without the lock); else the upsert that
    makes it due compacts under the lock."""
    store = VectorIndex(DIM, background=thread, exact_limit=1 << 40)
    rng = np.random.default_rng(1)
    for lo in range(0, rows, 1000):
        hi = min(rows, lo + 1000)
        store.upsert([f"k{i}" for i in range(lo, hi)], rng.standard_normal((hi - lo, DIM), dtype=np.float32))
    gaps: list[float] = []
    searches: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not stop.wait(0.001):
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    def search() -> None:
        while not stop.wait(0.005):
            t0 = time.perf_counter()
            with store._lock:  # what every search and the apply take first
                pass
            searches.append(time.perf_counter() - t0)

    helpers = [threading.Thread(target=tick, name="ticker"), threading.Thread(target=search, name="searcher")]
    for t in helpers:
        t.start()
    times: list[float] = []
    layout0 = store._layout
    try:
        for lo in range(0, rows // 2, per_call):
            keys = [f"k{i}" for i in range(lo, min(rows // 2, lo + per_call))]
            vecs = rng.standard_normal((len(keys), DIM), dtype=np.float32)
            t0 = time.perf_counter()
            store.upsert(keys, vecs)
            times.append(time.perf_counter() - t0)
        deadline = time.monotonic() + 120
        while store._n - store._live >= 0.25 * store._n and time.monotonic() < deadline:
            time.sleep(0.01)  # a thread's compaction still running: its wait counts too
    finally:
        stop.set()
        for t in helpers:
            t.join()
    compactions = store._layout - layout0
    store.close()
    return {"rows": rows, "mode": "thread" if thread else "inline", "upserts": len(times),
            "compactions": compactions, "slowest_upsert_ms": max(times) * 1e3,
            "mean_upsert_ms": statistics.fmean(times) * 1e3,
            "lock_worst_wait_ms": max(searches) * 1e3 if searches else 0.0,
            "ticker_worst_delay_ms": (max(gaps) - 0.001) * 1e3 if gaps else 0.0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="40000,160000,400000", help="store sizes, comma-separated")
    p.add_argument("--modes", default="inline,thread",
                   help="inline: the upsert compacts under the lock (no maintainer thread); "
                        "thread: the maintainer compacts, copying without the lock (a node)")
    p.add_argument("--out", default="bench/results/compaction.json")
    a = p.parse_args()
    results = [run(int(n), mode == "thread") for n in a.rows.split(",") for mode in a.modes.split(",")]
    print("| rows | compaction | upserts of 100 | compactions | slowest upsert ms | mean ms |"
          " worst wait for the store's lock ms | 1 ms ticker's worst delay ms |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['rows']:,} | {r['mode']} | {r['upserts']:,} | {r['compactions']} | {r['slowest_upsert_ms']:,.0f} "
              f"| {r['mean_upsert_ms']:.2f} | {r['lock_worst_wait_ms']:,.0f} | {r['ticker_worst_delay_ms']:.0f} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
