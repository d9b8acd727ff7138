"""How dear fresh memory is on this machine right now, for the write-path benches.

A virtual machine whose guest hands freed memory back to its host (virtio-balloon
free page reporting) pays the host's price the next time it touches such a page:
~2.5 ms of CPU per MB here, against ~0.07 ms/MB for a page the kernel recently
had in use. A node, PostgreSQL's page cache and every other system that grows
memory while it writes pay that rate, so the benches print it beside their
figures (docs/HA.md, Write path speed, stop 27).
"""

from __future__ import annotations

import contextlib
import mmap
import time
from collections.abc import Iterator

import numpy as np


@contextlib.contextmanager
def fresh_memory_cost(mib: int = 64) -> Iterator[float]:
    """CPU ms per MB to take ``mib`` MiB of fresh memory from the kernel and touch
    each page once, now; the pages are held until the block ends, so the system
    measured inside it cannot be handed them back warm.

    On bare metal this is clearing pages (~0.07 ms/MB on this machine when warm).
    In a virtual machine whose guest hands freed memory back to its host
    (virtio-balloon free page reporting), a page the host must back again costs
    ~2.5 ms/MB. Every system that grows memory while it writes (page cache, a
    node's vector store and WAL tail) pays that rate, so it is printed beside each
    system: runs met at different rates do not compare."""
    size = mib << 20
    t0 = time.process_time()
    buf = mmap.mmap(-1, size)
    try:
        np.frombuffer(buf, dtype=np.uint8)[::mmap.PAGESIZE] = 1
        yield (time.process_time() - t0) * 1e3 / (size / 1e6)
    finally:
        buf.close()
