"""What replication lag is made of: reads the marks nodes write with
``SUTRA_LAG_TRACE`` (``sutra_cluster/storage/lagtrace.py``) and tells, for every
record the leader logged, when it reached each stage on its way to each replica.

Stages (leader L, replica R), in order:
  L tail     logged by the leader (its in-memory tail; before its fsync)
  L durable  the leader's group fsync done
  L sent     the feeder handed the records message to gRPC
  R recv     the replica's follower thread got the message
  R tail     appended to the replica's WAL buffer
  R durable  the replica's fsync done
  R ackq     the acknowledgement queued for gRPC
  L ack      the leader's ack reader got it (the leader's lag figure ends here)
  R visible  applied on the replica (reads see it)

A mark names the highest LSN of its message or group; a record reached a
stage at the first mark with an LSN at or above its own.
"""

from __future__ import annotations

import bisect
import glob
import statistics
from collections import defaultdict

Marks = dict[tuple[str, str], tuple[list[int], list[int]]]  # (node, stage) -> (lsns, first time at or above)


def load(prefix: str) -> Marks:
    raw: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for path in glob.glob(prefix + ".*"):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 4:
                    raw[(parts[0], parts[1])].append((int(parts[2]), int(parts[3])))
    out: Marks = {}
    for key, pts in raw.items():
        pts.sort()
        lsns = [p[0] for p in pts]
        first = [p[1] for p in pts]
        for i in range(len(first) - 2, -1, -1):  # a later mark at a higher LSN covers this one too
            first[i] = min(first[i], first[i + 1])
        out[key] = (lsns, first)
    return out


def reached(marks: Marks, node: str, stage: str, lsn: int) -> int | None:
    got = marks.get((node, stage))
    if got is None:
        return None
    i = bisect.bisect_left(got[0], lsn)
    return got[1][i] if i < len(got[0]) else None


def stages(marks: Marks, after_lsn: int = 0) -> dict[str, dict[str, list[float]]]:
    """Per replica: each step's duration in ms for every record the leader logged
    after ``after_lsn`` (the marks cover the cluster's whole life: an earlier
    phase's records are left out this way)."""
    leader = next((n for (n, s) in marks if s.startswith("sent:")), None)
    if leader is None:
        return {}
    replicas = sorted({s.split(":", 1)[1] for (n, s) in marks if n == leader and s.startswith("sent:")})
    lsns = marks.get((leader, "tail"), ([], []))[0]
    chain = [(leader, "tail"), (leader, "durable"), (leader, "sent:{r}"), ("{r}", "recv"), ("{r}", "tail"),
             ("{r}", "durable"), ("{r}", "ackq"), (leader, "ack:{r}")]
    out: dict[str, dict[str, list[float]]] = {}
    for r in replicas:
        steps: dict[str, list[float]] = defaultdict(list)
        for lsn in lsns[bisect.bisect_right(lsns, after_lsn):]:
            ts = [reached(marks, n.format(r=r), s.format(r=r), lsn) for n, s in chain]
            if any(t is None for t in ts):
                continue
            for (na, a), (nb, b), ta, tb in zip(chain, chain[1:], ts, ts[1:], strict=False):
                step = f"{'L' if na == leader else 'R'} {a.split(':')[0]} -> {'L' if nb == leader else 'R'} {b.split(':')[0]}"
                steps[step].append((tb - ta) / 1e6)  # type: ignore[operator]
            steps["total: L tail -> L ack"].append((ts[-1] - ts[0]) / 1e6)  # type: ignore[operator]
            steps["L durable -> L ack"].append((ts[-1] - ts[1]) / 1e6)  # type: ignore[operator]
            vis = reached(marks, r, "visible", lsn)
            lvis = reached(marks, leader, "visible", lsn)
            if lvis is not None:
                steps["L durable -> L visible"].append((lvis - ts[1]) / 1e6)  # type: ignore[operator]
            if vis is not None:
                steps["R durable -> R visible"].append((vis - ts[5]) / 1e6)  # type: ignore[operator]
                steps["L durable -> R visible"].append((vis - ts[1]) / 1e6)  # type: ignore[operator]
        out[r] = dict(steps)
    return out


def pct(vals: list[float], q: float) -> float:
    s = sorted(vals)
    return s[int(q * (len(s) - 1))]


def summary(prefix: str, after_lsn: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """{replica: {step: {p50, p99, max, mean, n}}} in ms, over the records after ``after_lsn``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r, steps in stages(load(prefix), after_lsn).items():
        out[r] = {k: {"p50": statistics.median(v), "p99": pct(v, 0.99), "max": max(v),
                      "mean": statistics.fmean(v), "n": len(v)} for k, v in steps.items() if v}
    return out


def print_summary(label: str, summ: dict[str, dict[str, dict[str, float]]]) -> None:
    for r, steps in summ.items():
        print(f"{label}: where replica {r}'s lag goes (ms per record)")
        print(f"  {'step':<28} {'p50':>7} {'p99':>7} {'max':>7} {'mean':>7} {'n':>6}")
        for k, v in steps.items():
            print(f"  {k:<28} {v['p50']:>7.2f} {v['p99']:>7.2f} {v['max']:>7.2f} {v['mean']:>7.2f} {v['n']:>6.0f}")
