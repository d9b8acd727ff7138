"""bench/bench_scale.py runs end to end (``--quick``: 3,000 x 64-d) and reports
every figure; it asserts no speed (a shared machine is too noisy), but that the
restart adopted the stored graph and that no node outlives the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.test_bench_smoke import nodes_under

pytestmark = pytest.mark.slow  # starts node processes

FIGURES = ["bulk_load_per_s", "index_build_s", "rss_bytes", "memory_by_part", "data_dir_bytes", "search_before",
           "restart_visible_s", "restart_ready_s", "search_first_10s_after_restart", "index_source_after_restart"]


def test_bench_scale_quick_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    try:
        res = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_scale.py"), "--quick", "--out", str(out),
                              "--tmp", str(tmp_path), "--ef", "16,64"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    finally:
        assert nodes_under(tmp_path) == [], "the bench left a node running"
    assert res.returncode == 0, res.stderr[-3000:]
    (r,) = json.loads(out.read_text())["results"]
    assert set(FIGURES) <= set(r)
    assert r["index_source_after_restart"] == "storage.hnsw"  # the restart did not rebuild the graph
    assert r["search_before"]["recall_at_10"] >= 0.9 and r["memory_by_part"]["vectors"] >= 3000 * 64 * 4
    assert "restart: visible / ready" in res.stdout
    # --ef: the recall-vs-beam curve over the same graph, one entry per beam
    assert r["search_before_ef_64"]["recall_at_10"] >= r["search_before_ef_16"]["recall_at_10"] - 0.05
    assert r["search_before_ef_64"]["queries"] == r["search_before_ef_16"]["queries"] == 50
