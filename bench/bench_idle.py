"""What an idle HA cluster costs: a leader and two sync-mode replicas under an
etcd of their own (the deployed topology, tests/cluster.py), taking no writes,
measured for ``--seconds`` after ``--settle`` seconds of start-up. Per process:
CPU as a share of one core and wake-ups per second, from /proc. Every node
runs its HA loop (10 ticks a second, each with etcd calls), streams heartbeats
and runs its background threads; etcd serves them.

    .venv/bin/python bench/bench_idle.py [--seconds 20] [--rounds 2] [--before ../before]

``--before`` runs an older checkout's nodes in the same run, alternating which
tree goes first round by round. Prints a table and writes JSON
(bench/results/idle.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_peers as bp  # noqa: E402

PARTS = ("leader", "replica 1", "replica 2", "etcd")


def measure(base: Path, checkout: Path | None, settle: float, seconds: float) -> dict[str, Any]:
    sutra = bp.Sutra(base, "3", hnsw=False, checkout=checkout)
    sutra.start()
    try:
        assert sutra.etcd_pid is not None  # a managed topology
        pids = dict(zip(PARTS, [*sutra.pids, sutra.etcd_pid], strict=True))
        time.sleep(settle)  # start-up work (imports, the first checkpoint, elections) is not idle cost
        c0 = {k: bp.cpu_seconds(p) for k, p in pids.items()}
        w0 = {k: bp.wakeups(p) for k, p in pids.items()}
        t0 = time.monotonic()
        time.sleep(seconds)  # the measured window: nothing is sent to the cluster
        dt = time.monotonic() - t0
        row: dict[str, Any] = {}
        for k, p in pids.items():
            row[f"{k} cpu %"] = 100 * (bp.cpu_seconds(p) - c0[k]) / dt
            row[f"{k} wakeups/s"] = (bp.wakeups(p) - w0[k]) / dt
        row["total cpu %"] = sum(row[f"{k} cpu %"] for k in PARTS)
        return row
    finally:
        sutra.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="the measured window")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after start-up before measuring")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--before", default="", help="another checkout: its nodes run too, labelled (before)")
    ap.add_argument("--tmp", default=None, help="folder for all data (default: the system's temp folder)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "idle.json"))
    args = ap.parse_args()
    trees: list[tuple[str, Path | None]] = [("this tree", None)]
    if args.before:
        trees.append(("before", Path(args.before).resolve()))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for rnd in range(args.rounds):
            order = trees if rnd % 2 == 0 else trees[::-1]
            for name, checkout in order:
                row = measure(Path(tmp) / f"r{rnd}-{len(runs[name])}-{name.replace(' ', '-')}", checkout,
                              args.settle, args.seconds)
                runs[name].append(row)
                print(f"round {rnd + 1}: {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)
    med = {name: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for name, rows in runs.items()}
    print(f"\nan idle leader + 2 sync replicas under etcd, {args.seconds:g} s measured after {args.settle:g} s; "
          f"% of one core and wake-ups per second, medians of {args.rounds}\n")
    print("| tree | " + " | ".join(PARTS) + " | all four |")
    print("|---|" + "---:|" * (len(PARTS) + 1))
    for name, m in med.items():
        cells = [f"{m[f'{k} cpu %']:.1f} % / {m[f'{k} wakeups/s']:.0f}" for k in PARTS]
        print(f"| {name} | " + " | ".join(cells) + f" | {m['total cpu %']:.1f} % |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"medians": med, "runs": runs, "args": vars(args), "load": os.getloadavg()}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
