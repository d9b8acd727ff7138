"""Running schedules: one run, a search over seeds (a fixed count, or for as
long as ``SUTRA_SIM_SECONDS`` says), and the shrinker that turns a failing
schedule into a minimal one that still fails the same way."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from tests.sim.checker import Violation
from tests.sim.cluster import Rules, SimCluster, Stats
from tests.sim.nemesis import Fault, Resolver, apply, empty_set_plan, generate


@dataclass(frozen=True)
class Shape:
    """How long a schedule is: faults land in [start, heal), then every fault is
    healed and the cluster has ``settle`` seconds to elect and converge."""

    faults: int = 4  # episodes (a fault and, mostly, its end)
    start: float = 0.6
    heal: float = 4.0
    settle: float = 4.0
    # "random": ``faults`` episodes drawn from every kind (nemesis.generate); "empty_set": the
    # scripted shrink-to-empty-then-lose-the-leader family (nemesis.empty_set_plan).
    plan: str = "random"


@dataclass
class Outcome:
    seed: int
    faults: list[Fault]
    violation: Violation | None
    stats: Stats
    lost: int = 0
    exposed_cuts: int = 0
    events: int = 0
    last_words: dict[str, str] = field(default_factory=dict)  # each node's last HA-loop sentence

    @property
    def failed(self) -> bool:
        return self.violation is not None


def run_one(seed: int, rules: Rules, shape: Shape = Shape(), faults: list[Fault] | None = None,
            strict_reads: bool = False) -> Outcome:
    """Run one schedule. Same (seed, rules, shape, faults): same run, event for event.
    The nodes' own log lines are silenced meanwhile: thousands of schedules'
    worth of them would only cost time (a failure's report says what happened)."""
    quiet = logging.getLogger("sutra_cluster")  # its children inherit the level
    was = quiet.level
    quiet.setLevel(logging.CRITICAL + 1)
    try:
        return _run_one(seed, rules, shape, faults, strict_reads)
    finally:
        quiet.setLevel(was)


def _run_one(seed: int, rules: Rules, shape: Shape, faults: list[Fault] | None, strict_reads: bool) -> Outcome:
    c = SimCluster(seed, rules)
    c.check.strict_reads = strict_reads
    if faults is None and shape.plan == "empty_set":
        faults = empty_set_plan(seed, shape.start, shape.heal)
    elif faults is None:
        faults = generate(seed, c.ids, shape.faults, shape.start, shape.heal)
    resolver = Resolver()
    for f in faults:
        c.sched.at(f.t, apply, c, f, resolver)
    c.sched.at(shape.heal, c.heal_everything)
    violation = None
    try:
        c.run(shape.heal + shape.settle)
        c.check.final()
    except Violation as v:
        violation = v
    finally:
        c.close()
    violation = c.check.violation or violation
    words = {n: getattr(loop, "last_reason", "") for n, loop in sorted(c.loops.items())}
    return Outcome(seed, list(faults), violation, c.stats, c.check.lost, c.check.exposed_cuts, c.sched.steps, words)


def _same(a: Violation | None, b: Violation) -> bool:
    return a is not None and a.kind == b.kind


def shrink(out: Outcome, rules: Rules, shape: Shape = Shape(), strict_reads: bool = False,
           budget_s: float = 60.0) -> Outcome:
    """Drop faults (halves, then one at a time, until nothing more can go) while
    the run still fails with the same kind of violation."""
    assert out.violation is not None
    best = out
    deadline = time.monotonic() + budget_s
    chunk = max(1, len(best.faults) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        i = 0
        progressed = False
        while i < len(best.faults) and time.monotonic() < deadline:
            trial = best.faults[:i] + best.faults[i + chunk:]
            o = run_one(best.seed, rules, shape, trial, strict_reads)
            if _same(o.violation, out.violation):
                best = o
                progressed = True
            else:
                i += chunk
        if not progressed:
            chunk //= 2
    return best


@dataclass
class Search:
    runs: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time: the figure that does not depend on the machine's load
    failure: Outcome | None = None
    minimal: Outcome | None = None
    acked: int = 0
    failovers: int = 0
    events: int = 0
    lost_async: int = 0
    exposed_cuts: int = 0
    replica_shown: int = 0
    lost_tail_held: int = 0
    tick_errors: list[str] = field(default_factory=list)
    # Violations of kinds the search was not looking for: kind -> (count, first outcome).
    other: dict[str, tuple[int, Outcome]] = field(default_factory=dict)


def search(seeds: Iterable[int], rules: Rules, shape: Shape = Shape(), *, seconds: float | None = None,
           strict_reads: bool = False, shrink_s: float = 60.0, kinds: frozenset[str] | None = None) -> Search:
    """Run ``seeds`` in order (or until ``seconds`` pass); stop at the first
    violation of one of ``kinds`` (None: any) and shrink it. Violations of other
    kinds are counted in ``other`` and the search goes on."""
    res = Search()
    t0, c0 = time.monotonic(), time.process_time()
    for seed in seeds:
        if seconds is not None and time.monotonic() - t0 >= seconds:
            break
        o = run_one(seed, rules, shape, strict_reads=strict_reads)
        res.runs += 1
        res.acked += o.stats.acked
        res.failovers += o.stats.failovers
        res.events += o.events
        res.lost_async += o.lost
        res.exposed_cuts += o.exposed_cuts
        res.replica_shown += o.stats.replica_shown
        res.lost_tail_held += o.stats.lost_tail_held
        res.tick_errors.extend(o.stats.tick_errors[:1])
        if o.violation is not None and kinds is not None and o.violation.kind not in kinds:
            n, first = res.other.get(o.violation.kind, (0, o))
            res.other[o.violation.kind] = (n + 1, first)
            continue
        if o.failed:
            res.failure = o
            res.seconds, res.cpu_seconds = time.monotonic() - t0, time.process_time() - c0
            res.minimal = shrink(o, rules, shape, strict_reads, shrink_s)
            return res
    res.seconds, res.cpu_seconds = time.monotonic() - t0, time.process_time() - c0
    return res


def endless(start: int) -> Iterator[int]:
    seed = start
    while True:
        yield seed
        seed += 1


def report(res: Search, rules: Rules, shape: Shape) -> str:
    """What a failure prints: the seed, the minimal schedule, and how to replay it."""
    if res.failure is None or res.minimal is None:
        return f"{rules.name}: {res.runs} schedules in {res.seconds:.1f}s ({res.cpu_seconds:.1f}s CPU), no violation"
    m = res.minimal
    lines = [f"{rules.name} ({rules.mode}, {rules.nodes} nodes): violation after {res.runs} schedule(s), "
             f"{res.seconds:.2f}s ({res.cpu_seconds:.2f}s CPU)",
             f"  seed {m.seed}: {m.violation}",
             f"  minimal schedule ({len(m.faults)} of {len(res.failure.faults)} faults; every fault healed at "
             f"t={shape.heal}s):"]
    lines += [f"    {f}" for f in m.faults]
    lines.append("  each node's last HA-loop sentence:")
    lines += [f"    {n}: {w}" for n, w in m.last_words.items()]
    lines.append(f"  replay: run_one({m.seed}, rules, shape, faults={m.faults!r})")
    return "\n".join(lines)
