"""bench/bench_write_path.py runs end to end and reports every chain.

It asserts nothing about speed (a shared 2-core machine is too noisy for that):
it proves the experiment behind the handbook's write-path floor still runs,
that its stand-in engine work lands in the process it names, and that it
leaves no process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # starts servers and replicas as processes


def _bench(tmp_path: Path, variants: str, *extra: str) -> tuple[dict[str, dict[str, float]], str]:
    out = tmp_path / "write_path.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_write_path.py"), "--writes", "40", "--rounds", "1",
         "--threads", "4", "--no-pg", "--variants", variants, "--out", str(out), "--tmp", str(tmp_path), *extra],
        capture_output=True, text=True, timeout=300, start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Replicas end quietly when their leader's server stops at the end of a variant.
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return json.loads(out.read_text())["medians"], proc.stdout


def _processes_naming(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


def test_every_chain_reports_its_figures(tmp_path: Path) -> None:
    variants = "echo,sync-1,aio-1,split-1,raw-2,sync-2,aio-2"
    medians, stdout = _bench(tmp_path, variants)
    assert set(medians) == set(variants.split(","))
    for kind, m in medians.items():
        assert m["single"] > 0, kind
        assert m["leader_cpu_us"] >= 0 and m["leader_wakeups"] >= 0, kind
        if kind.endswith("-1") or kind == "echo":
            assert m["concurrent"] > 0, kind
            assert 0 < m["concurrent_machine_busy"] <= 1, kind
    assert "| raw-2 |" in stdout and "| split-1 |" in stdout
    assert _processes_naming(str(tmp_path)) == []  # servers, replicas and split-1's writer all ended


def test_stand_in_engine_work_lands_where_the_variant_puts_it(tmp_path: Path) -> None:
    """sync-1 burns it in the gRPC process; split-1 in its writer, whose CPU the
    32-thread figure counts and the gRPC process's own figure does not."""
    work = 5000
    medians, _ = _bench(tmp_path, "sync-1,split-1", "--work-us", str(work))
    assert medians["sync-1"]["leader_cpu_us"] >= work
    assert medians["sync-1"]["concurrent_server_cpu_us"] >= work
    assert medians["split-1"]["leader_cpu_us"] < work
    assert medians["split-1"]["concurrent_server_cpu_us"] >= work
    assert _processes_naming(str(tmp_path)) == []
