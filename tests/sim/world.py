"""Simulated time, the event queue and the network of one simulated shard.

Everything in a run happens through ``World.at`` / ``World.after``: one heap
of events ordered by (time, sequence number), one seeded ``random.Random``.
Given the same seed and the same fault schedule, a run is bit-for-bit the same
(FoundationDB's rule: no threads, no wall clock, no unseeded randomness).

Network model (per ordered pair of nodes):
- ``ok``: a message arrives after a random delay, in order per stream.
- ``drop``: packets vanish (iptables DROP). Messages on a stream are held, as
  TCP would retransmit them; if the cut lasts ``stall_s`` both ends see the
  stream die (keepalive) and the held messages are gone. A new connection
  hangs for ``stall_s`` and fails. A probe is not refused (it times out).
- ``reject``: connections are reset (iptables REJECT --reject-with tcp-reset):
  streams die at once, new connections and probes are refused, although the
  process may be alive (issue 10, Defect 2).
A crashed node refuses everything; a paused node (SIGSTOP) accepts connections
(the kernel does) but handles nothing until it resumes.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any

OK, DROP, REJECT = "ok", "drop", "reject"


# A queued event: (time, sequence, function, args, node, life). Plain tuples: the
# heap compares them millions of times. ``node`` "" is a world event; otherwise
# the event belongs to that node's ``life`` (void once it crashes).
_Event = tuple[float, int, Callable[..., None], tuple[Any, ...], str, int]


class Clock:
    """The simulated monotonic clock, injected into HaLoop and MemoryStore."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Scheduler:
    """A seeded discrete-event scheduler. Events bound to a node are dropped when
    that node crashed since they were scheduled (``life`` changed) and held while
    it is paused (delivered, in order, when it resumes)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.clock = Clock()
        self._q: list[_Event] = []
        self._seq = 0
        self.lives: dict[str, int] = {}
        self.paused: dict[str, list[_Event]] = {}
        self.steps = 0

    @property
    def now(self) -> float:
        return self.clock.t

    def at(self, t: float, fn: Callable[..., None], *args: Any, node: str = "") -> None:
        self._seq += 1
        life = self.lives.get(node, 0) if node else 0
        heapq.heappush(self._q, (max(t, self.clock.t), self._seq, fn, args, node, life))

    def after(self, dt: float, fn: Callable[..., None], *args: Any, node: str = "") -> None:
        self.at(self.clock.t + dt, fn, *args, node=node)

    def pause(self, node: str) -> None:
        self.paused.setdefault(node, [])

    def resume(self, node: str) -> None:
        held = self.paused.pop(node, [])
        for _, _, fn, args, n, life in held:  # same order, at the moment of resumption
            self._seq += 1
            heapq.heappush(self._q, (self.clock.t, self._seq, fn, args, n, life))

    def kill(self, node: str) -> None:
        """Every event bound to the node's current life is void from now on."""
        self.lives[node] = self.lives.get(node, 0) + 1
        self.paused.pop(node, None)

    def run_until(self, t_end: float, after_step: Callable[[], None]) -> None:
        q = self._q
        pop = heapq.heappop
        lives, paused, clock = self.lives, self.paused, self.clock
        while q and q[0][0] <= t_end:
            ev = pop(q)
            t, _, fn, args, node, life = ev
            if node:
                if life != lives.get(node, 0):
                    continue
                held = paused.get(node)
                if held is not None:
                    held.append(ev)
                    continue
            clock.t = t
            fn(*args)
            self.steps += 1
            after_step()
        self.clock.t = max(self.clock.t, t_end)


class Network:
    """Link states between nodes and message delays (seconds)."""

    def __init__(self, sched: Scheduler, min_delay: float = 0.0005, max_delay: float = 0.004,
                 stall_s: float = 1.0) -> None:
        self.s = sched
        self.min_delay, self.max_delay, self.stall_s = min_delay, max_delay, stall_s
        self.links: dict[tuple[str, str], str] = {}
        self.since: dict[tuple[str, str], float] = {}

    def link(self, a: str, b: str) -> str:
        return self.links.get((a, b), OK)

    def cut(self, a: str, b: str, mode: str) -> None:
        for pair in ((a, b), (b, a)):
            self.links[pair] = mode
            self.since[pair] = self.s.now

    def heal(self, a: str, b: str) -> None:
        for pair in ((a, b), (b, a)):
            self.links.pop(pair, None)
            self.since.pop(pair, None)

    def heal_all(self) -> None:
        self.links.clear()
        self.since.clear()

    def delay(self) -> float:
        return self.s.rng.uniform(self.min_delay, self.max_delay)
