"""bench/bench_replication.py's lag phase runs end to end and says what state the
machine's memory was in while it ran. Nothing here asserts a speed or a lag: a
shared 2-core machine is too noisy for that (docs/HA.md, Write path speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # starts etcd and a leader with two replicas as processes


def test_lag_phase_reports_the_fresh_memory_rate_it_met(tmp_path: Path) -> None:
    out = tmp_path / "replication.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_replication.py"), "--lag-only", "--rate", "2000",
         "--seconds", "1.5", "--rounds", "1", "--ann-threshold", "100000000", "--out", str(out)],
        capture_output=True, text=True, timeout=300, start_new_session=True, cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path)})  # its nodes' data dirs
    assert proc.returncode == 0, proc.stderr[-2000:]
    lag = json.loads(out.read_text())["runs"]["this tree"][0]["lag"]
    assert lag["fresh_memory_ms_per_mb"] > 0
    assert lag["disk_fsyncs_per_s"] > 0
    assert lag["achieved_rate"] > 0 and lag["lag_ms_p99"] >= lag["lag_ms_p50"] >= 0
    assert "fresh memory before each round's lag phase, ms/MB" in proc.stdout
    assert "single fdatasyncs/s" in proc.stdout
