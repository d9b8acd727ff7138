"""bench/bench_compaction.py makes the flat store compact and measures that
upsert. No speed is asserted (docs/HA.md, Write path speed): only that the
overwrites it sends do trigger a compaction, and that the figures it reports
are the ones it measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def test_overwriting_half_the_store_compacts_it_and_reports_the_stall(tmp_path: Path) -> None:
    out = tmp_path / "compaction.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_compaction.py"), "--rows", "8000",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = json.loads(out.read_text())["runs"]
    # 4,000 of 8,000 rows replaced: dead rows pass a quarter of the store (and 1,024) once.
    assert run["rows"] == 8000 and run["upserts"] == 40
    assert run["compactions"] == 1, run
    assert run["slowest_upsert_ms"] >= run["mean_upsert_ms"] > 0
    assert run["ticker_worst_delay_ms"] >= 0
    assert "| 8,000 | 40 | 1 |" in proc.stdout
