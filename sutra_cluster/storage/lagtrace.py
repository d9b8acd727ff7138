"""Timestamps of each record on its way from a leader to its replicas, for
measuring what replication lag is made of (``bench/bench_replication.py --trace``).

Off unless ``SUTRA_LAG_TRACE`` names a file prefix: each node process then writes
``<prefix>.<pid>`` with one line per mark, ``node stage lsn monotonic_ns``.
``time.monotonic_ns`` is one clock for every process of a machine, so the marks
of a leader and its co-located replicas line up. Off, a mark costs one global
read; callers test ``ON`` first so that nothing else is computed.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from typing import TextIO

PREFIX = os.environ.get("SUTRA_LAG_TRACE", "")
ON = bool(PREFIX)
_NODE = os.environ.get("SUTRA_NODE_ID", "?")
_lock = threading.Lock()
_file: TextIO | None = None


def mark(stage: str, lsn: int) -> None:
    """Record that record ``lsn`` reached ``stage`` now (no-op unless ``ON``)."""
    global _file
    if not ON:
        return
    now = time.monotonic_ns()
    with _lock:
        if _file is None:
            _file = open(f"{PREFIX}.{os.getpid()}", "a", buffering=1 << 16)  # noqa: SIM115 (closed at exit)
            atexit.register(_file.close)
        _file.write(f"{_NODE} {stage} {int(lsn)} {now}\n")


def flush() -> None:
    """Write buffered marks out (a node flushes at exit; a test may call this)."""
    with _lock:
        if _file is not None:
            _file.flush()
