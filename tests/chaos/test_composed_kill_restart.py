"""Safety: the composed kill/restart schedule that lost acknowledged writes in
sync mode (issue 10, Defect 1). Only kills and restarts, no partition.

Sync mode, SUTRA_SYNC_REPLICAS=1, three nodes: A leads, B is the sync member
(read from etcd's /sync key), C the other replica. A load of large LearnBatch
writes (SUTRA_CHAOS_COMPOSED_BATCH concepts of ~2 KB each per request) runs on
whichever node leads, through ClusterClients that follow etcd. One round:

1. SIGKILL C (not in /sync); A keeps acknowledging through B for
   SUTRA_CHAOS_COMPOSED_WRITE_S (default 6 s), so C falls far behind;
2. SIGKILL A and restart C at once; B (the only sync member) takes over;
3. the moment B's new term publishes a /sync set that contains C (an etcd watch
   on the key; the callback kills at once), SIGKILL B;
4. C may take over; then A and B are restarted, and the next round starts once
   every node streams again (roles are read afresh).

A fresh leader must not admit a replica to /sync before it holds every
acknowledged write (or the cluster must wait); otherwise C, far behind, is the
only sync member when B dies, takes over, and A's acknowledged tail is cut when
A rejoins. At the end every acknowledged concept must be readable on the final
leader with its content, every node's log must hold every acknowledged record
(the checker, sync mode), and the digests must agree.

SUTRA_CHAOS_COMPOSED_ROUNDS sets the number of rounds (default 3); each round
must fit in ROUND_BUDGET_S.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence

import grpc
import pytest

from sutra_cluster.client import Concept
from sutra_cluster.failover.coordinator import SyncState
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc
from tests.chaos.checker import Ack, Ledger, Report, fault_window, loss_by_window
from tests.chaos.cluster import (
    PREFIX,
    ChaosNode,
    ManagedCluster,
    RecordingClusterClient,
    WriteLoad,
    content_of,
    finish,
    vector,
)

pytestmark = pytest.mark.slow  # starts etcd and a node cluster

ROUNDS = int(os.environ.get("SUTRA_CHAOS_COMPOSED_ROUNDS", "3"))
WRITE_S = float(os.environ.get("SUTRA_CHAOS_COMPOSED_WRITE_S", "6"))
BATCH = int(os.environ.get("SUTRA_CHAOS_COMPOSED_BATCH", "50"))
PAD = "x" * 2000  # content bytes per concept: large records widen the window C needs to catch up
ROUND_BUDGET_S = 120.0


def big_content(cid: str) -> str:
    return f"{content_of(cid)} {PAD}"


class BatchLoad(WriteLoad):
    """WriteLoad with LearnBatch requests of ``batch`` new concepts each (one
    request id per batch, reused by the client's retries)."""

    def __init__(self, cluster: ManagedCluster, ledger: Ledger, batch: int, **kw: object) -> None:
        self.batch = batch
        super().__init__(cluster, ledger, **kw)  # type: ignore[arg-type]

    def _write(self, cc: RecordingClusterClient, prefix: str, i: int) -> float:
        cids = tuple(f"{prefix}-{i}-{j}" for j in range(self.batch))
        rid = f"rid-{prefix}-{i}"
        cc.begin()
        t = time.monotonic()
        try:
            lsn = cc.learn_batch([Concept(c, big_content(c), vector(i + j)) for j, c in enumerate(cids)],
                                 request_id=rid)
        except (grpc.RpcError, TimeoutError) as exc:
            code = exc.code().name if isinstance(exc, grpc.RpcError) else "TIMEOUT"  # type: ignore[attr-defined]
            self.ledger.fail(rid, cids[0], code, t)
        else:
            sent, address, _ = cc.trace[-1]
            self.ledger.ack(rid, cids[0], lsn, self.cluster.name_of(address), sent, len(cc.trace), cids=cids)
        return t


class KillOnSync:
    """Watches etcd's /sync key; the first time a term newer than ``after_term``
    publishes a set containing ``member``, SIGKILLs ``victim`` from the watch
    callback itself (no polling delay) and notes what it saw."""

    def __init__(self, cluster: ManagedCluster, member: str, after_term: int, victim: ChaosNode) -> None:
        self.member, self.after_term, self.victim = member, after_term, victim
        self.fired = threading.Event()
        self.seen: list[SyncState] = []
        self.at = 0.0
        self.state: SyncState | None = None
        self._client = cluster.coord.client
        self._id = self._client.add_watch_callback(PREFIX + "sync", self._on)

    def _on(self, resp: object) -> None:
        if self.fired.is_set() or isinstance(resp, BaseException):
            return
        for ev in getattr(resp, "events", []) or []:
            if type(ev).__name__ != "PutEvent":
                continue
            s = SyncState.decode(ev.value)
            self.seen.append(s)
            if s.term > self.after_term and self.member in s.members:
                self.victim.kill()
                self.at, self.state = time.monotonic(), s
                self.fired.set()
                return

    def cancel(self) -> None:
        self._client.cancel_watch(self._id)


def unreadable(node: ChaosNode, acks: Sequence[Ack]) -> list[tuple[Ack, str, str]]:
    """Every concept of every acknowledged write, read back on ``node`` (its
    content too); returns (ack, concept id, "not found" | "wrong content") for
    each one missing or wrong."""
    want = [(c, a) for a in acks for c in (a.cids or (a.cid,))]
    bad: list[tuple[Ack, str, str]] = []
    with grpc.insecure_channel(node.side) as ch:
        stub = storage_pb2_grpc.StorageServiceStub(ch)
        for i in range(0, len(want), 256):
            chunk = want[i:i + 256]
            futs = [stub.QueryConcept.future(pb.QueryConceptRequest(concept_id=c), timeout=60) for c, _ in chunk]
            for (c, a), f in zip(chunk, futs, strict=True):
                r = f.result()
                if not r.found or r.content != big_content(c):
                    bad.append((a, c, "wrong content" if r.found else "not found"))
    return bad


def read_back(cluster: ManagedCluster, acks: Sequence[Ack],
              tries: int = 3) -> tuple[ChaosNode, list[tuple[Ack, str, str]], list[str]]:
    """``unreadable`` on the leader once every node caught up. If leadership
    moves meanwhile (a loaded machine can make a leader miss a renewal: a
    liveness matter, reported), the read-back starts again on the new leader;
    returns the leader read, what it lacked, and the moves seen."""
    moved: list[str] = []
    for i in range(tries):
        final = cluster.wait_healthy(90)
        cluster.wait_caught_up(timeout=90)
        try:
            return final, unreadable(final, acks), moved
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or i == tries - 1:  # type: ignore[attr-defined]
                raise
            moved.append(f"{final.name}: {exc.details()}")  # type: ignore[attr-defined]
    raise AssertionError("unreachable")


def summarize(bad: Sequence[tuple[Ack, str, str]], t0: float) -> dict[str, dict[str, object]]:
    """Unreadable concepts grouped by the node that acknowledged their write:
    batches, concepts, LSN range and acknowledgement times."""
    out: dict[str, dict[str, object]] = {}
    for node in sorted({a.node for a, _, _ in bad}):
        mine = [(a, c, why) for a, c, why in bad if a.node == node]
        batches = {a.rid: a for a, _, _ in mine}
        lsns = [a.lsn for a in batches.values()]
        times = [a.acked - t0 for a in batches.values()]
        out[node] = {"batches": len(batches), "concepts": len(mine), "lsn_range": [min(lsns), max(lsns)],
                     "acked_between_s": [round(min(times), 3), round(max(times), 3)],
                     "kinds": sorted({why for _, _, why in mine}), "first_ids": [c for _, c, _ in mine[:3]]}
    return out


def one_round(cluster: ManagedCluster, load: WriteLoad, ledger: Ledger, r: int) -> dict[str, object]:
    t0 = cluster.t0
    a = cluster.wait_healthy(90)
    load.wait_acks(5, since=time.monotonic(), node=a.name)
    snap = cluster.snapshot()
    assert snap.sync is not None and len(snap.sync.members) == 1, f"round {r}: expected one sync member: {snap.sync}"
    b = cluster.node(snap.sync.members[0])
    c = next(n for n in cluster.others(a) if n is not b)
    a_term = a.status().term
    t_start = time.monotonic()

    # 1. C (not in /sync) dies; A acknowledges through B for WRITE_S.
    t_kill_c = time.monotonic()
    c.kill()
    time.sleep(WRITE_S)  # the fault's length: the write load runs meanwhile (bounded)
    behind = [x for x in ledger.after(t_kill_c) if x.node == a.name]
    assert behind, f"round {r}: {a.name} acknowledged nothing in the {WRITE_S}s after {c.name} died"
    acked_lsn = max(x.lsn for x in ledger.by(a.name))

    # 2. A dies and C restarts at once; 3. B dies as soon as its term puts C in /sync.
    watch = KillOnSync(cluster, c.name, a_term, b)
    try:
        t_kill_a = time.monotonic()
        a.kill()
        c.start(wait=False)
        fired = watch.fired.wait(60)
        c_flushed: int | None = None
        if fired:
            try:
                c_flushed = c.status(timeout=5).durable_lsn  # B is dead: C holds what it got from B
            except grpc.RpcError:
                pass
    finally:
        watch.cancel()
    assert fired, (f"round {r}: {b.name} did not publish a /sync set containing {c.name} within 60 s of "
                   f"taking over; /sync puts seen: {watch.seen}\n{cluster.describe()}")
    t_kill_b = watch.at
    assert watch.state is not None

    # 4. C may take over; then A and B come back.
    took_over = None
    try:
        took_over = cluster.wait_leader(20, exclude=[a, b]).name
    except AssertionError:
        pass
    a.start(wait=False)
    b.start(wait=False)
    cluster.wait_healthy(90)
    load.wait_acks(5, since=time.monotonic())
    acks = ledger.all()
    out = {
        "round": r, "A": a.name, "B": b.name, "C": c.name, "a_term": a_term,
        "c_down_s": round(t_kill_a - t_kill_c, 3), "acks_by_a_while_c_down": len(behind),
        "highest_lsn_acknowledged_by_a": acked_lsn, "sync_with_c": {"term": watch.state.term,
                                                                    "members": list(watch.state.members)},
        "c_in_sync_after_a_killed_s": round(t_kill_b - t_kill_a, 3), "c_flushed_lsn_when_b_killed": c_flushed,
        "c_behind_acknowledged_by": None if c_flushed is None else max(0, acked_lsn - c_flushed),
        "leader_after_b_killed": took_over,
        "faults": [
            {"fault": f"SIGKILL {c.name} (not in /sync)", **fault_window(acks, t_kill_c, t0=t0)},
            {"fault": f"SIGKILL {a.name} (leader), restart {c.name}",
             **fault_window(acks, t_kill_a, exclude=[a.name], t0=t0)},
            {"fault": f"SIGKILL {b.name} once /sync named {c.name}",
             **fault_window(acks, t_kill_b, exclude=[b.name], t0=t0)},
        ],
        "_t": [t_start, t_kill_c, t_kill_a, t_kill_b],
    }
    print(f"round {r}: A={a.name} B={b.name} C={c.name}; {c.name} joined /sync at term {watch.state.term} "
          f"{t_kill_b - t_kill_a:.3f}s after {a.name} died, flushed LSN {c_flushed} vs {acked_lsn} acknowledged; "
          f"then {took_over} led")
    return out


@pytest.mark.timeout(int(300 + ROUNDS * ROUND_BUDGET_S))
def test_composed_kill_restart_sync(make_cluster: Callable[..., ManagedCluster], ledger: Ledger,
                                    chaos_report: Report, request: pytest.FixtureRequest) -> None:
    assert ROUNDS >= 1 and WRITE_S >= 6.0, "the schedule needs at least one round and 6 s of writes with C down"
    cluster = make_cluster("sync", env={"SUTRA_SYNC_REPLICAS": "1"})
    load = BatchLoad(cluster, ledger, BATCH, threads=2, interval=0.02, timeout=2.0, failover_deadline=30.0).start()
    request.addfinalizer(load.stop_event.set)  # a failing test leaves no writer running
    rounds = []
    deadline = time.monotonic() + ROUNDS * ROUND_BUDGET_S
    for r in range(ROUNDS):
        assert time.monotonic() < deadline, f"only {r} of {ROUNDS} rounds fitted in {ROUNDS * ROUND_BUDGET_S:.0f}s"
        rounds.append(one_round(cluster, load, ledger, r))
    load.stop()
    acks = ledger.all()
    final, missing, moved = read_back(cluster, acks)
    res = finish(cluster, None, ledger)
    lost = sorted(res.lost_acks, key=lambda x: x.lsn)
    times: list[list[float]] = [rd.pop("_t") for rd in rounds]  # type: ignore[misc]
    per_fault = loss_by_window(lost, [t for ts in times for t in ts[1:]])
    per_round = loss_by_window(lost, [ts[0] for ts in times])
    for i, rd in enumerate(rounds):
        faults: list[dict[str, object]] = rd["faults"]  # type: ignore[assignment]
        for j, f in enumerate(faults):
            f["lost"] = per_fault[3 * i + j]
        rd["lost_acknowledged_writes"] = per_round[i]
    concepts = sum(len(x.cids) or 1 for x in acks)
    chaos_report.add("composed_kill_restart_sync", {
        "mode": "sync", "sync_replicas": 1, "rounds": rounds, "batch_concepts": BATCH, "write_s": WRITE_S,
        "acknowledged_concepts": concepts, "unreadable_on_final_leader": len(missing), "final_leader": final.name,
        "leadership_moves_during_read_back": moved,
        "unreadable_by_acknowledging_node": summarize(missing, cluster.t0),
        "lost_examples": [f"{x.cid}.. (rid {x.rid}, LSN {x.lsn}, by {x.node} at +{x.acked - cluster.t0:.3f}s)"
                          for x in lost[:5]],
        "lost_lsn_range": [lost[0].lsn, lost[-1].lsn] if lost else None,
        "unacknowledged_attempts": len(ledger.failures), **res.summary(),
    })
    print(f"composed: {len(res.lost)} of {res.acks} acknowledged batches lost, {len(missing)} of {concepts} "
          f"acknowledged concepts unreadable on {final.name}")
    res.assert_sound()
    res.assert_no_loss()
    assert not missing, (f"{len(missing)} acknowledged concepts unreadable on {final.name}: "
                         f"{summarize(missing, cluster.t0)}")
