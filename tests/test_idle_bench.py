"""bench/bench_idle.py measures an idle HA cluster, process by process, and ends
every process it started. It asserts nothing about how much an idle cluster costs
(a shared machine is too noisy for that): it proves the figures are the processes'
own and add up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.test_peers_bench import _processes_under

pytestmark = pytest.mark.slow  # starts etcd and three nodes


def test_bench_idle_reports_each_process_and_leaves_none_behind(tmp_path: Path) -> None:
    out = tmp_path / "idle.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_idle.py"), "--seconds", "1.5", "--settle", "0.5",
         "--rounds", "1", "--tmp", str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, timeout=300, start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(out.read_text())["medians"]["this tree"]
    parts = ("leader", "replica 1", "replica 2", "etcd")
    # Every node runs its HA loop and heartbeats, and etcd answers them: none is asleep.
    for p in parts:
        assert row[f"{p} cpu %"] >= 0 and row[f"{p} wakeups/s"] > 0, (p, row)
    assert row["total cpu %"] == pytest.approx(sum(row[f"{p} cpu %"] for p in parts))
    assert "| this tree |" in proc.stdout and "all four" in proc.stdout
    assert not _processes_under(tmp_path), _processes_under(tmp_path)
