"""Each failover of a chaos run, reconstructed from the nodes' logs.

    python -m tests.chaos.timeline CLUSTER_DIR [TERM ...]

CLUSTER_DIR holds ``n0.log``, ``n1.log``... (a chaos test's ``<tmp>/cluster0``;
run pytest with ``--basetemp DIR`` to keep it). For every term a node took
(``leader key acquired at term T``), or only the TERMs given, it prints the
log lines of the terms T-1 and T from the moment the old leader's streams
ended, with their offsets in seconds: revocation, freezes, the acquisition,
the new leader's term record, replicas refused, cut or catching up, and the
sync set's publication (writes are acknowledged only after it). A line
``survivor X cut`` flags a failover in which a surviving replica (not the
killed leader, rejoining later) cut its tail before it could acknowledge.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ \[\S+ shard=\d+ term=(\S+)\] (\S+): (.*)")
ACQUIRED = re.compile(r"leader key acquired at term (\d+)")
MUST_CUT = re.compile(r"follower (\S+) must cut")
WINDOW_S = 6.0  # lines shown after the first stream end
NOISE = ("vectors wait outside", "HNSW build", "authentication:")


@dataclass(frozen=True)
class Event:
    t: float
    node: str
    term: str
    source: str
    text: str


def read(cluster_dir: Path) -> list[Event]:
    out = []
    for log in sorted(cluster_dir.glob("n*.log")):
        for line in log.read_text(errors="replace").splitlines():
            m = LINE.match(line)
            if m is not None and not any(n in m.group(4) for n in NOISE):
                t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                out.append(Event(t, log.stem, m.group(2), m.group(3).rsplit(".", 1)[-1], m.group(4)))
    return sorted(out, key=lambda e: e.t)


def failovers(events: list[Event]) -> dict[int, Event]:
    """term -> the acquisition of that term."""
    return {int(m.group(1)): e for e in events if (m := ACQUIRED.search(e.text))}


def report(events: list[Event], terms: set[int]) -> list[str]:
    won = failovers(events)
    out = []
    for term, acq in sorted(won.items()):
        if terms and term not in terms:
            continue
        killed = won[term - 1].node if term - 1 in won else "?"
        ends = [e for e in events if acq.t - WINDOW_S < e.t <= acq.t and "ended" in e.text and e.term == str(term - 1)]
        t0 = ends[0].t if ends else acq.t
        out.append(f"=== term {term}: {acq.node} won ({killed} led term {term - 1}); offsets from "
                   f"{datetime.fromtimestamp(t0).strftime('%H:%M:%S.%f')[:-3]}")
        for e in events:
            if t0 - 0.05 <= e.t <= t0 + WINDOW_S and (e.term in (str(term - 1), str(term)) or e.node == acq.node):
                out.append(f"  {e.t - t0:+7.3f} {e.node} [term {e.term}] {e.source}: {e.text[:160]}")
            m = MUST_CUT.search(e.text)
            if m and e.node == acq.node and acq.t <= e.t <= acq.t + 3 and m.group(1) != killed:
                out.append(f"  survivor {m.group(1)} cut at {e.t - t0:+.3f}: the new leader waits for it")
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    print("\n".join(report(read(Path(argv[0])), {int(t) for t in argv[1:]})))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
