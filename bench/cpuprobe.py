"""How fast this machine's CPU runs right now, for the write-path benches.

The machine is a virtual one on a shared host. In full bench_peers runs the
replicated Sutra cells of rounds 2 and 3 spent twice round 1's CPU per record,
with fresh memory and the disk at their usual pace (docs/HA.md, Write path
speed, stop 28). A fixed piece of pure-Python work, timed just before each
system, says whether the CPU itself was slower then.
"""

from __future__ import annotations

import time


def python_loop_ms(n: int = 300_000) -> float:
    """Wall ms for ``n`` iterations of a fixed pure-Python loop (one thread; the
    best of three, so one preemption does not count)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        acc = 0
        for i in range(n):
            acc = (acc + i * i) % 1_000_003
        best = min(best, time.perf_counter() - t0)
    return best * 1e3
