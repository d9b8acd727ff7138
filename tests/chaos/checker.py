"""The chaos checker: a ledger of acknowledged writes and the checks run after
each fault, plus the JSON report.

The ledger
----------
Every write of the load has its own concept id and request id. For each
acknowledgement the ledger keeps the LSN the node answered, WHICH node answered
(the address of the attempt that succeeded), when that attempt was sent and when
the answer arrived (one ``time.monotonic`` clock: every load thread lives in the
test process), and how many attempts the client made (a retry reuses the
request id).

Checks (``check``), run once the cluster has stopped
----------------------------------------------------
Nodes are stopped first, then every node's WAL (and its ``divergent-*.wal``
files) is read from disk. Nodes run with MEMORY_THRESHOLD high enough that no
checkpoint cuts the WAL during a test, so each log reaches back to LSN 1.

1. **Loss.** An acknowledged write is present when the log of the final leader
   (and, in sync mode, of every node) holds at the acknowledged LSN a record
   carrying the acknowledged request id. Sync mode must lose nothing; async
   mode counts and reports the loss. A node bootstrapped from a snapshot is
   asked only about LSNs its log reaches (the digests cover the rest).
2. **One node per term.** The term of an acknowledgement is read from the
   acknowledging node's own log: the record it acknowledged, at that LSN with
   that request id (kept in a divergent file if it was cut later). etcd says
   which node each term was granted to: the checker replays every put of the
   leader key since revision 1 (the term is taken in the same transaction).
   An acknowledgement of a record of term T by a node etcd did not grant T is
   a violation, unless it is a retry that the request-id table answered with
   the LSN of an earlier leader's record (a re-acknowledgement: the write was
   logged once, by the node that held T, and is counted apart). So no two nodes
   acknowledged fresh writes in one term, and each acknowledging node held it.
   (A retried write acknowledged by a node that led again later is counted apart
   too: its acknowledgement may belong to the later term.)
3. **No acknowledgement after a newer term acknowledged.** If a client had
   already received an acknowledgement of term T2 when it sent a request that
   was then acknowledged in an older term T1 < T2, two leaders acknowledged
   writes at the same time (the old one after it was replaced). Sent and
   received times bound the instant the server acknowledged, so this check has
   no false positives. The tests add each fault's own bound: a leader paused or
   cut off at time t0 cannot acknowledge anything sent after t0 + TTL - margin.
"""

from __future__ import annotations

import bisect
import json
import math
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyetcd

from sutra_cluster.failover.coordinator import LeaderKey
from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage.wal import wal_files
from sutra_cluster.storage.wal_format import ACTIVE_NAME, RT_BATCH, TMP_NAME
from sutra_cluster.storage.wal_reader import scan_segment


# ---- the ledger ---------------------------------------------------------------
@dataclass(frozen=True)
class Ack:
    rid: str  # request id (one per write; reused by the client's retries)
    cid: str  # the concept the write creates
    lsn: int  # the sequence the node answered
    node: str  # node id that answered
    sent: float  # monotonic time the successful attempt was sent
    acked: float  # monotonic time the answer arrived
    attempts: int  # 1: first attempt succeeded; more: retried with the same request id
    cids: tuple[str, ...] = ()  # a LearnBatch: every concept it created (``cid`` is the first)


@dataclass(frozen=True)
class Failure:
    rid: str
    cid: str
    error: str
    sent: float
    ended: float


class Ledger:
    """Thread-safe record of acknowledgements, kept in order of arrival."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acks: list[Ack] = []
        self._times: list[float] = []
        self.failures: list[Failure] = []

    def ack(self, rid: str, cid: str, lsn: int, node: str, sent: float, attempts: int,
            acked: float | None = None, cids: tuple[str, ...] = ()) -> Ack:
        with self._lock:
            a = Ack(rid, cid, lsn, node, sent, time.monotonic() if acked is None else acked, attempts, cids)
            i = bisect.bisect_right(self._times, a.acked)  # kept sorted by arrival
            self.acks.insert(i, a)
            self._times.insert(i, a.acked)
            return a

    def fail(self, rid: str, cid: str, error: str, sent: float) -> None:
        with self._lock:
            self.failures.append(Failure(rid, cid, error, sent, time.monotonic()))

    def count(self) -> int:
        with self._lock:
            return len(self.acks)

    def all(self) -> list[Ack]:
        with self._lock:
            return list(self.acks)

    def after(self, t: float) -> list[Ack]:
        """Acknowledgements received after ``t``."""
        with self._lock:
            return self.acks[bisect.bisect_right(self._times, t):]

    def first_after(self, t: float, exclude: Iterable[str] = ()) -> Ack | None:
        """The first acknowledgement received after ``t`` from a node not in ``exclude``."""
        ex = set(exclude)
        return next((a for a in self.after(t) if a.node not in ex), None)

    def by(self, node: str) -> list[Ack]:
        with self._lock:
            return [a for a in self.acks if a.node == node]


# ---- reading logs from disk ---------------------------------------------------------
@dataclass(frozen=True)
class LogRecord:
    lsn: int
    term: int
    rtype: int
    rid: str = ""
    cids: tuple[str, ...] = ()


def _records(path: Path, is_last: bool) -> list[LogRecord]:
    res = scan_segment(path.read_bytes(), is_last, path=path)
    out = []
    for r in res.records:
        if r.rtype == RT_BATCH:
            b = wal_pb2.WalBatch.FromString(r.payload)
            out.append(LogRecord(r.lsn, r.term, r.rtype, b.request_id, tuple(c.concept_id for c in b.concepts)))
        else:
            out.append(LogRecord(r.lsn, r.term, r.rtype))
    return out


def read_log(data_dir: Path) -> dict[int, LogRecord]:
    """A stopped node's current log (every WAL segment), by LSN."""
    out: dict[int, LogRecord] = {}
    for p in wal_files(data_dir):
        if p.name == TMP_NAME:
            continue
        for r in _records(p, is_last=p.name == ACTIVE_NAME):
            out[r.lsn] = r
    return out


def read_divergent(data_dir: Path) -> list[LogRecord]:
    """Records a node cut from its log when it rejoined (its ``divergent-*.wal`` files)."""
    out: list[LogRecord] = []
    for p in sorted(data_dir.glob("divergent-*.wal")):
        out.extend(_records(p, is_last=True))
    return out


# ---- etcd: who was granted each term ------------------------------------------------------
def term_owners(endpoint: str, prefix: str, timeout: float = 15.0) -> dict[int, set[str]]:
    """{term: node ids} from every put of the leader key since revision 1. The
    term key is written in the same transaction as the leader key, so the watch
    is complete once it has delivered the term key's last modification."""
    host, _, port = endpoint.rpartition(":")
    c = pyetcd.client(host, int(port), timeout=5)
    owners: dict[int, set[str]] = defaultdict(set)
    done = threading.Event()
    errors: list[BaseException] = []
    try:
        resp = c.get_response(prefix + "term")
        if not resp.kvs:
            return {}
        last = resp.kvs[0].mod_revision

        def on(r: object) -> None:
            if isinstance(r, BaseException):
                errors.append(r)
                done.set()
                return
            for ev in r.events:  # type: ignore[attr-defined]
                if type(ev).__name__ == "PutEvent":
                    k = LeaderKey.decode(ev.value)
                    owners[k.term].add(k.node_id)
                if ev.mod_revision >= last:
                    done.set()

        wid = c.add_watch_callback(prefix + "leader", on, start_revision=1)
        try:
            if not done.wait(timeout):
                raise AssertionError(f"etcd watch did not replay the leader key up to revision {last}")
        finally:
            c.cancel_watch(wid)
        if errors:
            raise AssertionError(f"etcd watch failed: {errors[0]}")
        return dict(owners)
    finally:
        c.close()


# ---- the checks ------------------------------------------------------------------
@dataclass
class CheckResult:
    mode: str
    acks: int
    lost: list[str] = field(default_factory=list)
    lost_by_node: dict[str, int] = field(default_factory=dict)
    term_violations: list[str] = field(default_factory=list)
    order_violations: list[str] = field(default_factory=list)
    reacks: int = 0  # retries answered with an earlier leader's record (request ids)
    unverifiable: list[str] = field(default_factory=list)
    acks_by_term: dict[int, dict[str, int]] = field(default_factory=dict)
    owners: dict[int, list[str]] = field(default_factory=dict)
    lost_acks: list[Ack] = field(default_factory=list)  # the acknowledgements behind ``lost``
    # Acknowledgements of an older term that ARRIVED after a newer term's first acknowledgement
    # was sent: overlap is possible but not proven (the server's instant lies in [sent, acked]).
    # Reported next to ``order_violations``, which are the proven ones.
    late_old_term_acks: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {
            "acknowledged": self.acks, "lost": len(self.lost), "lost_by_node": self.lost_by_node,
            "term_violations": len(self.term_violations), "order_violations": len(self.order_violations),
            "reacknowledged_retries": self.reacks, "unverifiable": len(self.unverifiable),
            "late_old_term_acks": len(self.late_old_term_acks),
            "acks_by_term": {str(k): v for k, v in sorted(self.acks_by_term.items())},
            "term_owners": {str(k): v for k, v in sorted(self.owners.items())},
        }

    def problems(self, limit: int = 8) -> str:
        parts = []
        for name in ("lost", "term_violations", "order_violations", "unverifiable"):
            items = getattr(self, name)
            if items:
                parts.append(f"{name} ({len(items)}): " + "; ".join(items[:limit]))
        return "\n".join(parts)

    def assert_sound(self) -> None:
        """The checks every mode must pass: one node per term, no overlap in time."""
        assert not self.term_violations and not self.order_violations, self.problems()

    def assert_no_loss(self) -> None:
        assert not self.lost, self.problems()


def check(acks: Sequence[Ack], logs: dict[str, dict[int, LogRecord]], divergent: dict[str, list[LogRecord]],
          owners: dict[int, set[str]], final_leader: str, mode: str, t0: float = 0.0) -> CheckResult:
    """Run the checks above. ``logs``/``divergent`` are per node id; ``final_leader``
    is the node whose log is the cluster's history; in sync mode every node of
    ``logs`` must hold every acknowledged write."""
    res = CheckResult(mode, len(acks), owners={t: sorted(n) for t, n in owners.items()})
    must_hold = list(logs) if mode == "sync" else [final_leader]
    lost_by_node: dict[str, int] = defaultdict(int)
    by_term: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    leader_acks: list[tuple[int, Ack]] = []
    # A node bootstrapped from a snapshot has no log below the snapshot's LSN: it cannot show
    # (nor deny) an older record, so it is not asked about one. Its state is still covered: the
    # test compares every node's digest at the end.
    starts = {n: min(logs[n]) if logs[n] else 0 for n in must_hold}
    for a in acks:
        # 1. loss
        asked = [n for n in must_hold if starts[n] <= a.lsn]
        if not asked:
            res.unverifiable.append(f"{a.rid} (LSN {a.lsn}): no log of {must_hold} reaches back to it "
                                    f"(they start at {starts})")
        for n in asked:
            rec = logs[n].get(a.lsn)
            if rec is None or rec.rid != a.rid:
                res.lost.append(f"{a.cid} (rid {a.rid}, LSN {a.lsn}, acknowledged by {a.node} at "
                                f"+{a.acked - t0:.3f}s) is not in {n}'s log (found "
                                f"{'nothing' if rec is None else repr(rec.rid)} at that LSN)")
                lost_by_node[a.node] += 1
                res.lost_acks.append(a)
                break
        # 2. the term of the acknowledgement, from the acknowledging node's own log
        own = logs.get(a.node, {}).get(a.lsn)
        if own is None or own.rid != a.rid:
            own = next((r for r in divergent.get(a.node, []) if r.lsn == a.lsn and r.rid == a.rid), None)
        if own is None:
            first = min(logs.get(a.node, {}) or [0])
            why = (f"{a.node} acknowledged {a.rid} at LSN {a.lsn} but holds no such record "
                   f"(its log starts at LSN {first}, divergent files checked)")
            (res.unverifiable if first > a.lsn or not logs.get(a.node) else res.term_violations).append(why)
            continue
        granted = owners.get(own.term, set())
        if len(granted) > 1:
            res.term_violations.append(f"etcd granted term {own.term} to {sorted(granted)}")
        led_later = any(a.node in ns and t > own.term for t, ns in owners.items())
        if a.attempts > 1 and led_later:
            # A retry the request-id table may have answered with a record logged earlier (by
            # another leader, or by this node in an earlier term): its term is not known, so it
            # is counted apart and left out of the ordering check.
            res.reacks += 1
        elif granted == {a.node}:
            leader_acks.append((own.term, a))
            by_term[own.term][a.node] += 1
        else:
            res.term_violations.append(
                f"{a.node} acknowledged {a.rid} (LSN {a.lsn}, attempt {a.attempts}) as a record of term "
                f"{own.term}, which etcd granted to {sorted(granted) or 'nobody'}")
    res.lost_by_node = dict(lost_by_node)
    res.acks_by_term = {t: dict(v) for t, v in by_term.items()}
    # 3. no acknowledgement in an older term once a newer term had acknowledged
    first_recv: dict[int, Ack] = {}
    for term, a in leader_acks:
        if term not in first_recv or a.acked < first_recv[term].acked:
            first_recv[term] = a
    newer_first: dict[int, Ack | None] = {}
    best: Ack | None = None
    for term in sorted(first_recv, reverse=True):
        newer_first[term] = best
        if best is None or first_recv[term].acked < best.acked:
            best = first_recv[term]
    for term, a in leader_acks:
        b = newer_first.get(term)
        if b is not None and a.sent > b.acked:
            res.order_violations.append(
                f"{a.node} acknowledged {a.rid} in term {term}, sent at +{a.sent - t0:.3f}s, after "
                f"{b.node} had acknowledged {b.rid} in a newer term at +{b.acked - t0:.3f}s")
        elif b is not None and a.acked > b.sent and a.node != b.node:
            res.late_old_term_acks.append(
                f"{a.node} term {term}: {a.rid} sent +{a.sent - t0:.3f}s, answered +{a.acked - t0:.3f}s; "
                f"{b.node}'s first newer-term write sent +{b.sent - t0:.3f}s, answered +{b.acked - t0:.3f}s")
    return res


# ---- figures ---------------------------------------------------------------------
def distribution(values: Sequence[float]) -> dict[str, float | int]:
    """min / p50 / p99 / max (nearest rank) and mean, in seconds, rounded to the ms."""
    if not values:
        return {"n": 0}
    s = sorted(values)

    def rank(p: float) -> float:
        return s[max(0, math.ceil(p * len(s)) - 1)]

    return {"n": len(s), "min": round(s[0], 3), "p50": round(rank(0.5), 3), "p99": round(rank(0.99), 3),
            "max": round(s[-1], 3), "mean": round(sum(s) / len(s), 3)}


class Report:
    """The JSON report: one entry per fault, written after every test (so a
    partial run still leaves one) and printed at the end of the session."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, object] = {"faults": {}}
        self._lock = threading.Lock()

    def add(self, fault: str, entry: dict[str, object]) -> None:
        with self._lock:
            self.data["faults"][fault] = entry  # type: ignore[index]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True, default=_jsonable))
            tmp.replace(self.path)
        print(f"\nchaos report [{fault}]:\n{json.dumps(entry, indent=2, sort_keys=True, default=_jsonable)}")

    def text(self) -> str:
        with self._lock:
            return json.dumps(self.data, indent=2, sort_keys=True, default=_jsonable)


def _jsonable(o: object) -> object:
    if isinstance(o, set):
        return sorted(o)
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)  # type: ignore[call-overload]
    return str(o)


# ---- per-fault figures --------------------------------------------------------------
def fault_window(acks: Sequence[Ack], t_fault: float, exclude: Iterable[str] = (), sent_after: bool = False,
                 t0: float = 0.0) -> dict[str, object]:
    """What a client saw of one fault at ``t_fault``: the last acknowledgement
    that arrived before it, the first after it (from a node not in ``exclude``;
    with ``sent_after``, only of a write sent after the fault, so an answer
    already on its way when the fault struck does not count), and the RTO
    (last ack before the fault to the first after it; ``None`` when either is
    missing). Times are seconds from ``t0``."""
    ex = set(exclude)
    before = [a for a in acks if a.acked <= t_fault]
    after = [a for a in acks if a.acked > t_fault and a.node not in ex and (not sent_after or a.sent >= t_fault)]
    last = max(before, key=lambda a: a.acked, default=None)
    first = min(after, key=lambda a: a.acked, default=None)
    out: dict[str, object] = {
        "fault_at_s": round(t_fault - t0, 3),
        "last_ack_before": None if last is None else {"node": last.node, "at_s": round(last.acked - t0, 3)},
        "first_ack_after": None if first is None else {"node": first.node, "at_s": round(first.acked - t0, 3)},
        "rto_s": None if last is None or first is None else round(first.acked - last.acked, 3),
        "fault_to_first_ack_s": None if first is None else round(first.acked - t_fault, 3),
    }
    return out


def loss_by_window(lost: Sequence[Ack], starts: Sequence[float]) -> list[int]:
    """How many lost acknowledgements arrived in each window [starts[i], starts[i+1]);
    acknowledgements before the first start count in the first window."""
    counts = [0] * len(starts)
    for a in lost:
        i = max(0, bisect.bisect_right(list(starts), a.acked) - 1)
        counts[i] += 1
    return counts
