"""What bounds concurrent single writes on one node (issue 13): 32 client threads
of LearnConcept against one Sutra node, beside the same load against a bare
grpcio server that answers 8 bytes (bench_peers.py's ceiling), alternating
round by round. For each: writes/s, how busy the machine was, the client's and
the server's CPU per write, the server's wake-ups per write thread by thread,
and (Sutra) the WAL's group-commit size from its metrics. ``--gil`` also counts
the server's GIL releases per write with a perf uprobe on PyEval_SaveThread
(needs root and perf; every release on a busy node is a hand-over to another
thread and a wait to get the GIL back). The probe traps at every release, so a
``--gil`` run's writes/s are lower than a plain run's: read its counts, and take
throughput from a run without it.

    .venv/bin/python bench/bench_concurrent.py [--writes 3200] [--rounds 3] [--gil] [--before ../before]

Prints a table and writes JSON (bench/results/concurrent.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_peers as bp  # noqa: E402
import peers  # noqa: E402

from tests.helpers import free_port  # noqa: E402

LIBPYTHON_PROBE = "probe_libpython3:PyEval_SaveThread"


def _gil_probe() -> bool:
    """Add the uprobe once; False when perf cannot (not root, no perf)."""
    import sysconfig

    lib = Path(sysconfig.get_config_var("LIBDIR") or "") / (sysconfig.get_config_var("LDLIBRARY") or "")
    listed = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True)
    if "PyEval_SaveThread" in listed.stdout:
        return True
    return subprocess.run(["perf", "probe", "-x", str(lib), "-a", "PyEval_SaveThread"],
                          capture_output=True).returncode == 0


def _wal_groups(metrics_port: int) -> tuple[float, float]:
    txt = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    got = {}
    for line in txt.splitlines():
        if line.startswith(("sutra_wal_group_commit_records_sum", "sutra_wal_group_commit_records_count")):
            name, value = line.split()
            got[name] = float(value)
    return got.get("sutra_wal_group_commit_records_sum", 0.0), got.get("sutra_wal_group_commit_records_count", 0.0)


def measure(kind: str, reqs: list[bytes], threads: int, gil: bool, base: Path,
            checkout: Path | None = None) -> dict[str, Any]:
    """One round against ``kind`` ("echo" or "sutra"); the server is started and stopped here."""
    mport = free_port()
    if kind == "echo":
        server: Any = peers.EchoServer(32)
        server.start()
        pid, address, method = server.proc.pid, server.address, peers.ECHO_METHOD
    else:
        server = bp.Sutra(base / f"n{time.monotonic_ns()}", "1", False, checkout, {"SUTRA_METRICS_PORT": str(mport)})
        server.start()
        pid, address, method = server.pids[0], server.address, bp.SERVICE + "LearnConcept"
    try:
        bp.concurrent(address, method, reqs[: threads * 10], threads)  # connect and warm every thread
        groups0 = _wal_groups(mport) if kind != "echo" else (0.0, 0.0)
        counter = None
        if gil:
            counter = subprocess.Popen(["perf", "stat", "-x,", "-e", LIBPYTHON_PROBE, "-p", str(pid), "-o",
                                        str(base / "gil.txt")], stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        table = bp.ThreadTable([pid])
        m0, me0, cpu0, w0 = bp.machine_times(), os.times(), bp.cpu_seconds(pid), bp.wakeups(pid)
        rate = bp.concurrent(address, method, reqs, threads)
        m1, me1, cpu1, w1 = bp.machine_times(), os.times(), bp.cpu_seconds(pid), bp.wakeups(pid)
        lines = table.lines(len(reqs))
        n = len(reqs)
        out: dict[str, Any] = {
            "writes_per_s": rate,
            "machine_busy": 1 - (m1[1] - m0[1]) / max(1, m1[0] - m0[0]),
            "client_cpu_us": ((me1.user - me0.user) + (me1.system - me0.system)) / n * 1e6,
            "server_cpu_us": (cpu1 - cpu0) / n * 1e6,
            "server_wakeups": (w1 - w0) / n,
            "threads": lines,
        }
        if counter is not None:
            counter.send_signal(2)
            counter.wait(timeout=30)
            row = next(ln for ln in (base / "gil.txt").read_text().splitlines() if "PyEval_SaveThread" in ln)
            out["gil_releases"] = int(row.split(",")[0]) / n
        if kind != "echo":
            s1, c1 = _wal_groups(mport)
            out["records_per_fsync"] = (s1 - groups0[0]) / max(1.0, c1 - groups0[1])
        return out
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writes", type=int, default=3200)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gil", action="store_true", help="count GIL releases per write (perf uprobe; root)")
    ap.add_argument("--before", default="", help="another checkout: its node runs too, labelled (before)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "concurrent.json"))
    a = ap.parse_args()
    if a.gil and not _gil_probe():
        sys.exit("--gil: perf could not add a uprobe on PyEval_SaveThread (root and perf are needed)")
    rng = np.random.default_rng(5)
    kinds: list[tuple[str, Path | None]] = [("echo", None), ("sutra", None)]
    if a.before:
        kinds.append(("sutra (before)", Path(a.before).resolve()))
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k, _ in kinds}
    with tempfile.TemporaryDirectory(prefix="bench-concurrent-") as tmp:
        for rnd in range(a.rounds):
            reqs = [bp.single_request(r) for r in bp.make_records(a.writes, f"c{rnd}", rng)]
            sutras = kinds[1:] if rnd % 2 == 0 else kinds[:0:-1]  # which tree goes first alternates
            for label, checkout in [kinds[0], *sutras]:
                kind = "echo" if label == "echo" else "sutra"
                runs[label].append(measure(kind, reqs, a.threads, a.gil, Path(tmp), checkout))
                r = runs[label][-1]
                print(f"round {rnd + 1}: {label}: {r['writes_per_s']:,.0f} writes/s", flush=True)
    cols = ["writes_per_s", "machine_busy", "client_cpu_us", "server_cpu_us", "server_wakeups", "gil_releases",
            "records_per_fsync"]
    med = {k: {c: statistics.median(r[c] for r in v) for c in cols if all(r.get(c) is not None for r in v)}
           for k, v in runs.items()}
    print(f"\n{a.threads} client threads, {a.writes:,} single writes per round, medians of {a.rounds}\n")
    print("| server | writes/s | vs echo | machine busy | client CPU µs/write | server CPU µs/write "
          "| server wake-ups/write | GIL releases/write | records per fsync |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    echo = med["echo"]["writes_per_s"]
    for k, m in med.items():
        def f(c: str, fmt: str, m: dict[str, float] = m) -> str:
            return format(m[c], fmt) if c in m else "–"
        print(f"| {k} | {m['writes_per_s']:,.0f} | {m['writes_per_s'] / echo:.2f} | {f('machine_busy', '.2f')} "
              f"| {f('client_cpu_us', ',.0f')} | {f('server_cpu_us', ',.0f')} | {f('server_wakeups', '.1f')} "
              f"| {f('gil_releases', '.2f')} | {f('records_per_fsync', '.1f')} |")
    print("\n" + "\n".join(runs["sutra"][-1]["threads"]))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"medians": med, "runs": runs, "threads": a.threads, "writes": a.writes}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
