"""The benchmark script runs end to end (``--quick``) and reports every figure.

It asserts nothing about speed (a shared 2-core machine is too noisy for
that); it proves the script works, so ``./dev bench`` is not found broken on
the day someone needs the numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # runs the benchmark, which starts nodes

EXPECTED = [
    "single_write_1_thread_per_s",
    "single_write_8_threads_per_s",
    "disk_single_record_fdatasync_per_s",
    "learn_batch_concepts_per_s",
    "bulk_load_concepts_per_s",
    "ingest_disk_limit_concepts_per_s",
    "learn_batch_vs_disk_ratio",
    "bulk_load_vs_disk_ratio",
    "learn_batch_vs_57k_anchor_ratio",
    "bulk_load_vs_57k_anchor_ratio",
    "query_concept_p50_ms",
    "query_concept_p99_ms",
    "vector_search_qps_1_thread",
    "vector_search_qps_4_threads",
    "vector_search_recall_at_10",
    "restart_after_flush_s",
    "restart_wal_only_sigkill_s",
]


def nodes_under(folder: Path) -> list[int]:
    """Pids of live processes whose STORAGE_PATH lies in ``folder`` (the bench's nodes)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(e.startswith(b"STORAGE_PATH=" + bytes(folder)) for e in env):
            pids.append(int(entry.name))
    return pids


def test_bench_quick_reports_every_metric(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "bench" / "bench.py"), "--quick", "--out", str(out),
           "--tmp", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:  # hung: SIGTERM makes the script stop its nodes, then it is killed
            proc.terminate()
            try:
                proc.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        for pid in nodes_under(tmp_path):  # a node the script failed to stop
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, (
        f"bench.py --quick exited {proc.returncode}\n{stdout[-4000:]}\n{stderr[-4000:]}")
    assert not nodes_under(tmp_path), "the bench left node processes running"
    doc = json.loads(out.read_text())
    metrics = doc["metrics"]
    missing = [m for m in EXPECTED if m not in metrics]
    assert not missing, f"missing metrics: {missing}; have {sorted(metrics)}"
    bad = {m: metrics[m]["value"] for m in EXPECTED if not metrics[m]["value"] > 0}
    assert not bad, f"metrics without a positive value: {bad}"
    assert metrics["vector_search_recall_at_10"]["value"] <= 1.0
    assert doc["mode"] == "quick"
    # Every figure is also in the printed table.
    for m in EXPECTED:
        assert f"| {m} |" in stdout, m
    # Nothing left behind: the bench removes its data folder when it succeeds.
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"], list(tmp_path.iterdir())
