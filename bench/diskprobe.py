"""How fast this machine's disk answers an fdatasync right now, for the write-path benches.

The disk here is virtual and shared: in one run of bench_peers its append +
fdatasync peer did 29K, 163K and 401K batched records/s in three rounds a few
minutes apart, and 691, 1,635 and 6,515 single writes/s (docs/HA.md, Write path
speed, stop 28). Every system measured writes durably, so the benches print this
rate beside each one: cells met at different rates do not compare.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

RECORD = 3288  # bytes: the benches' record (id, content, a 768-d float32 vector)


def fsync_rate(folder: Path, seconds: float = 0.3) -> float:
    """Appends of one record, each followed by fdatasync, per second, for about
    ``seconds``, into a file of its own in ``folder`` (removed afterwards)."""
    path = folder / f"diskprobe-{os.getpid()}.log"
    data = os.urandom(RECORD)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        n = 0
        t0 = time.perf_counter()
        while True:
            os.write(fd, data)
            os.fdatasync(fd)
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                return n / elapsed
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
