"""bench/bench_peers.py's machine probes, and the script itself on Sutra alone.

Nothing here asserts a speed: the probes' job is to say what state the machine
was in (how dear fresh memory was, how fast the disk answered an fdatasync,
how many pages each system touched), and
these tests prove they measure what they name."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import bench_peers  # noqa: E402
import cpuprobe  # noqa: E402
import diskprobe  # noqa: E402
import memprobe  # noqa: E402


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * mmap.PAGESIZE


def test_minor_faults_count_each_first_touch() -> None:
    pages = 2048
    buf = mmap.mmap(-1, pages * mmap.PAGESIZE)
    try:
        before = bench_peers.minor_faults(os.getpid())
        for off in range(0, pages * mmap.PAGESIZE, mmap.PAGESIZE):
            buf[off] = 1
        touched = bench_peers.minor_faults(os.getpid()) - before
        again = bench_peers.minor_faults(os.getpid())
        for off in range(0, pages * mmap.PAGESIZE, mmap.PAGESIZE):
            buf[off] = 2
        retouched = bench_peers.minor_faults(os.getpid()) - again
    finally:
        buf.close()
    assert touched >= pages * 0.9, touched  # (a huge page would need fewer: anonymous mmap gets none unless asked)
    assert retouched < pages * 0.1, retouched


def test_fresh_memory_probe_holds_its_pages_until_the_block_ends() -> None:
    rss0 = _rss_bytes()
    with memprobe.fresh_memory_cost(mib=32) as cost:
        held = _rss_bytes() - rss0
    after = _rss_bytes() - rss0
    assert cost > 0
    assert held >= 30 << 20, held  # touched and still mapped while the system under test runs
    assert after < 4 << 20, after  # handed back afterwards


def test_disk_probe_counts_appends_each_made_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    rate = diskprobe.fsync_rate(tmp_path, seconds=0.2)
    assert len(synced) >= 2
    # One record appended before each fdatasync, and the rate is those syncs over ~0.2 s.
    assert synced == [diskprobe.RECORD * (i + 1) for i in range(len(synced))]
    assert 0 < rate <= len(synced) / 0.2  # those syncs over at least 0.2 s
    assert list(tmp_path.iterdir()) == []  # its file is gone


def test_cpu_probe_times_the_work_it_names() -> None:
    small, large = cpuprobe.python_loop_ms(20_000), cpuprobe.python_loop_ms(400_000)
    assert 0 < small < large  # 20x the loop takes longer, whatever the machine's pace


def _bench_sutra(tmp_path: Path, topology: str, batches: int) -> tuple[subprocess.CompletedProcess[str], dict]:
    """bench_peers on one Sutra topology, one round, HNSW off: its output and its JSON."""
    out = tmp_path / "peers.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_peers.py"), "--systems", "sutra", "--topologies", topology,
         "--hnsw", "off", "--rounds", "1", "--batches", str(batches), "--singles", "5", "--tmp", str(tmp_path),
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, json.loads(out.read_text())


@pytest.mark.slow
def test_bench_peers_reports_faults_cpu_and_fresh_memory_per_system(tmp_path: Path) -> None:
    proc, res = _bench_sutra(tmp_path, "1", batches=2)
    row = res["medians"]["sutra-1-flat"]
    # 2,000 records of 768 floats are ~6 MB the node did not hold before: it must touch new pages.
    assert row["all_nodes_faults_per_batched_record"] > 0.1, row
    assert row["leader_faults_per_batched_record"] == row["all_nodes_faults_per_batched_record"]  # one node
    assert row["fresh_memory_ms_per_mb"] > 0
    assert row["disk_fsyncs_per_s"] > 0
    assert row["cpu_probe_ms"] > 0
    assert 0 < row["machine_busy_batched"] <= 1
    # The kernel's share of the nodes' CPU (both from clock ticks, so they may be equal).
    assert 0 <= row["all_nodes_system_cpu_us_per_batched_record"] <= row["all_nodes_cpu_us_per_batched_record"] + 1e-6
    # ... and that kernel time over the faults, which tells a fault's cost apart from their number.
    assert row["all_nodes_system_cpu_us_per_fault"] == pytest.approx(
        row["all_nodes_system_cpu_us_per_batched_record"] / row["all_nodes_faults_per_batched_record"])
    assert "system CPU µs per page fault" in proc.stdout
    assert "| Sutra, 1 node, HNSW off |" in proc.stdout
    assert "page faults" in proc.stdout and "fresh memory, ms/MB" in proc.stdout
    assert "disk, fsyncs/s" in proc.stdout and "CPU probe, ms" in proc.stdout


def _processes_under(path: Path) -> list[str]:
    """Command lines of live processes that name ``path`` (data folders of nodes, etcd)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(path) in cmd:
                out.append(cmd)
    return out


@pytest.mark.slow
def test_bench_peers_runs_replicated_topologies_under_etcd_and_ends_every_process(tmp_path: Path) -> None:
    _, res = _bench_sutra(tmp_path, "2", batches=1)
    assert res["args"]["failover"] == "etcd"
    row = res["medians"]["sutra-2-flat"]
    assert row["batched"] > 0 and row["single"] > 0, row
    assert not _processes_under(tmp_path), _processes_under(tmp_path)
