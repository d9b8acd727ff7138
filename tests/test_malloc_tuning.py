"""A node keeps its megabyte-sized buffers in malloc's heap (process.tune_malloc).

glibc maps every block from 128 KB up on its own and unmaps it on free, so a
node's per-batch buffers (3.3 MB on the wire, in the WAL and in numpy for
1,000 768-d concepts) were faulted in page by page on every batch. Each check
runs in a fresh interpreter, so the thresholds are glibc's defaults before the
call; glibc's mallinfo2 counts the bytes of blocks mapped on their own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import ROOT

PROBE = textwrap.dedent("""
    import ctypes, sys
    from sutra_cluster import process

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2

    if sys.argv[1] == "tuned":
        assert process.tune_malloc()
    size = int(sys.argv[2])
    before = libc.mallinfo2().hblkhd  # bytes in blocks mapped on their own
    block = bytearray(size)
    print(libc.mallinfo2().hblkhd - before >= size)
""")


def _mapped_alone(mode: str, size: int) -> bool:
    """Whether a fresh interpreter maps a block of ``size`` bytes on its own."""
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(size)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return {"True": True, "False": False}[out.stdout.strip()]


def test_a_batch_sized_block_comes_from_the_heap_once_tuned() -> None:
    size = 3_300_000
    assert _mapped_alone("default", size)  # glibc's default: a mapping of its own
    assert not _mapped_alone("tuned", size)


def test_blocks_from_the_mapping_threshold_up_are_still_mapped() -> None:
    from sutra_cluster import process

    size = 12_582_912  # a vector store chunk: 4,096 rows of 768 float32
    assert size > process.MMAP_THRESHOLD
    assert _mapped_alone("tuned", size)


@pytest.mark.slow  # starts a gRPC server and client per mode
def test_the_stream_bench_reports_both_modes(tmp_path: Path) -> None:
    """bench/bench_grpc_stream.py runs end to end. It asserts nothing about the
    figures: how many pages a receiver faults in depends on how grpc happens to
    chunk its reads, which moves with the machine's load."""
    out = tmp_path / "grpc_stream.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_grpc_stream.py"), "--rounds", "1", "--messages", "10",
         "--out", str(out)], capture_output=True, text=True, timeout=300, start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    med = json.loads(out.read_text())["medians"]
    for mode in ("default", "tuned"):
        assert med[mode]["receiver_cpu_ms_per_mb"] > 0 and med[mode]["sender_cpu_ms_per_mb"] > 0, mode
        assert med[mode]["receiver_faults_per_mb"] >= 0, mode
    assert "| glibc's defaults |" in proc.stdout
