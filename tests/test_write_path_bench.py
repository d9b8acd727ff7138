"""bench/bench_write_path.py runs end to end and reports every chain.

It asserts nothing about speed (a shared 2-core machine is too noisy for that):
it proves the experiment behind the handbook's write-path floor still runs, and
that it leaves no process behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # starts servers and replicas as processes


def test_every_chain_reports_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "write_path.json"
    variants = "echo,sync-1,aio-1,raw-2,sync-2,aio-2"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_write_path.py"), "--writes", "40", "--rounds", "1",
         "--threads", "4", "--no-pg", "--variants", variants, "--out", str(out)],
        capture_output=True, text=True, timeout=300, start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    medians = json.loads(out.read_text())["medians"]
    assert set(medians) == set(variants.split(","))
    for kind, m in medians.items():
        assert m["single"] > 0, kind
        assert m["leader_cpu_us"] >= 0 and m["leader_wakeups"] >= 0, kind
        if kind.endswith("-1") or kind == "echo":
            assert m["concurrent"] > 0, kind
    assert "| raw-2 |" in proc.stdout and "| sync-2 |" in proc.stdout
