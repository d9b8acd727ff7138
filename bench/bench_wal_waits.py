"""Group commit in the WAL alone: concurrent writers that append one record and
wait until it is durable (real fsync), as the node's write path does.

    .venv/bin/python bench/bench_wal_waits.py [--threads 8,32] [--writes 4000] [--rounds 3]
    .venv/bin/python bench/bench_wal_waits.py --before <an older checkout>   # both trees, alternating

Prints, per tree and thread count, the medians of --rounds of writes/s, process
CPU µs per write and voluntary context switches per write (threads that
blocked and were woken: the number a wake-up scheme changes). Each round runs
in its own process so that the trees' modules never mix. JSON goes to
bench/results/wal_waits.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = b"x" * 3288  # the peers bench's record size


def one_round(threads: int, writes: int) -> dict[str, float]:
    """One round, in a child process whose sys.path starts at the tree under test."""
    from sutra_cluster.storage.wal import WriteAheadLog

    with tempfile.TemporaryDirectory(prefix="bench-wal-") as d, WriteAheadLog(d) as wal:
        def write(_: int) -> None:
            wal.wait_durable(wal.append(1, RECORD, 1, wake=False))

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(write, range(200)))  # warm up: threads started, file open
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            list(pool.map(write, range(writes)))
            wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    return {"writes_per_s": writes / wall, "cpu_us_per_write": cpu / writes * 1e6,
            "wakeups_per_write": (r1.ru_nvcsw - r0.ru_nvcsw) / writes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="8,32")
    ap.add_argument("--writes", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", default="", help="an older checkout, measured alternately with this one")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "wal_waits.json"))
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--tree", default=str(ROOT), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, args.tree)  # the tree under test, ahead of the installed one
        print(json.dumps(one_round(int(args.child), args.writes)))
        return 0
    trees = {"this tree": ROOT, **({"before": Path(args.before).resolve()} if args.before else {})}
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for t in (int(x) for x in args.threads.split(",")):
            for name, tree in trees.items():
                out = subprocess.run([sys.executable, __file__, "--child", str(t), "--tree", str(tree),
                                      "--writes", str(args.writes)], check=True, capture_output=True, text=True)
                runs.setdefault(f"{name}, {t} threads", []).append(json.loads(out.stdout.splitlines()[-1]))
    print(f"\n{args.writes} writes of {len(RECORD)} bytes per round, medians of {args.rounds}\n")
    print("| tree, writers | writes/s | CPU µs/write | wake-ups/write |\n|---|---:|---:|---:|")
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    for k, m in sorted(med.items()):
        print(f"| {k} | {m['writes_per_s']:,.0f} | {m['cpu_us_per_write']:.0f} | {m['wakeups_per_write']:.1f} |")
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"medians": med, "runs": runs, "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
