"""bench/bench_compaction.py makes the flat store compact, under the lock and
from the maintainer thread, and measures the stall. No speed is asserted
(docs/HA.md, Write path speed): only that the overwrites it sends do trigger one
compaction in each mode, and that it reports what it measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def test_overwriting_half_the_store_compacts_it_either_way_and_reports_the_stall(tmp_path: Path) -> None:
    out = tmp_path / "compaction.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_compaction.py"), "--rows", "8000",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = {r["mode"]: r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"inline", "thread"}
    for mode, run in runs.items():
        # 4,000 of 8,000 rows replaced: dead rows pass a quarter of the store (and 1,024) once.
        assert run["rows"] == 8000 and run["upserts"] == 40, run
        assert run["compactions"] == 1, run
        assert run["slowest_upsert_ms"] >= run["mean_upsert_ms"] > 0
        assert run["lock_worst_wait_ms"] >= 0 and run["ticker_worst_delay_ms"] >= 0
        assert f"| 8,000 | {mode} | 40 | 1 |" in proc.stdout
