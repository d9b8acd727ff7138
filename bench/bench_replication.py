"""Replicated ingest against single-node ingest, in one run, and replication lag
at a fixed write rate.

    .venv/bin/python bench/bench_replication.py [--seconds 8] [--rate 10000] [--out bench/results/replication.json]
    .venv/bin/python bench/bench_replication.py --lag-only --rounds 3 --before ../before   # an older tree beside
    .venv/bin/python bench/bench_replication.py --lag-only --trace   # and where the lag goes, stage by stage

Every configuration ingests the same batches (768-d vectors, LearnBatch of
--batch concepts from --threads client threads, for --seconds). Replicated
figures are reported as a ratio to single-node ingest measured in the same run.
Clusters run as deployed, with an etcd of their own deciding who leads
(``--failover none``: fixed roles and no etcd; a leader then streams only records
durable on it). Lag: an async leader with two replicas takes a paced load of --rate concepts/s
while the leader's GetReplicationStatus is sampled every 20 ms; p50/p99 of the
per-replica lag in milliseconds are reported (the guide's target: about 10 ms).
With ``--before <checkout>`` that tree's nodes are measured too, alternating
with this tree's in every round, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lag_stages  # noqa: E402  (this folder is on sys.path: the script runs from it)
from diskprobe import fsync_rate  # noqa: E402
from memprobe import fresh_memory_cost  # noqa: E402

from sutra_cluster.client import Concept, SutraClient  # noqa: E402
from tests import cluster as tc  # noqa: E402
from tests import helpers  # noqa: E402
from tests.helpers import NodeProcess  # noqa: E402

DIM = 768


def batches(prefix: str, size: int, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    i = 0
    while True:
        vecs = rng.standard_normal((size, DIM), dtype=np.float32)
        yield [Concept(f"{prefix}-{i}-{j}", f"concept {i}-{j}", vecs[j]) for j in range(size)]
        i += 1


def ingest(address: str, seconds: float, threads: int, size: int) -> float:
    """Concepts per second acknowledged by ``address``."""
    done = [0] * threads
    stop = time.monotonic() + seconds

    def work(t: int) -> None:
        gen = batches(f"t{t}", size, np.random.default_rng(t))
        with SutraClient(address, timeout=60, retry_deadline=0) as c:
            while time.monotonic() < stop:
                c.learn_batch(next(gen))
                done[t] += size

    t0 = time.monotonic()
    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(done) / (time.monotonic() - t0)


def caught_up(c: tc.Cluster) -> bool:
    """Every replica has flushed and applied all the leader holds durably, and so has the leader."""
    st = c.leader.status()
    return bool(st.replicas) and st.applied_lsn >= st.durable_lsn and all(
        min(r.flushed_lsn, r.applied_lsn) >= st.durable_lsn for r in st.replicas)


def lag_at_rate(c: tc.Cluster, rate: int, seconds: float, size: int = 100) -> dict[str, float]:
    """Replicas' lag under a paced load of ``rate`` concepts/s, sampled from the
    leader every 20 ms. It starts once every node has flushed and applied all the
    leader holds, so an ingest phase just before cannot leave a backlog in it
    (``caught_up_after_s`` says how long that took)."""
    t_wait = time.monotonic()
    helpers.wait_for(lambda: caught_up(c), 120, "replicas to catch up before the paced load")
    waited = time.monotonic() - t_wait
    first_lsn = c.leader.status().durable_lsn + 1  # the paced phase's records start after this
    samples: list[float] = []
    stop = threading.Event()
    sent = [0]

    def writer() -> None:
        gen = batches("lag", size, np.random.default_rng(99))
        interval = size / rate
        nxt = time.monotonic()
        with SutraClient(c.leader.address, timeout=60, retry_deadline=0) as cl:
            while not stop.is_set():
                cl.learn_batch(next(gen))
                sent[0] += size
                nxt += interval
                delay = nxt - time.monotonic()
                if delay > 0:
                    time.sleep(delay)

    w = threading.Thread(target=writer)
    t0 = time.monotonic()
    w.start()
    while time.monotonic() - t0 < seconds:
        st = c.leader.status()
        samples += [r.lag_ms for r in st.replicas]
        time.sleep(0.02)
    stop.set()
    w.join()
    achieved = sent[0] / (time.monotonic() - t0)
    samples.sort()
    return {"target_rate": rate, "achieved_rate": achieved, "samples": len(samples), "caught_up_after_s": waited,
            "first_lsn": first_lsn,
            "lag_ms_p50": statistics.median(samples), "lag_ms_p99": samples[int(0.99 * (len(samples) - 1))],
            "lag_ms_max": samples[-1]}


def run_tree(tmp: Path, a: argparse.Namespace, node_env: dict[str, str]) -> dict[str, object]:
    """One round of every measurement, with the nodes of the tree helpers.ROOT names."""
    out: dict[str, object] = {}
    if not a.lag_only:
        single = NodeProcess(tmp / "single", env={"VECTOR_DIMENSION": str(DIM), **node_env},
                             log_path=tmp / "single.log")
        try:
            single.start()
            out["single_node_per_s"] = ingest(single.address, a.seconds, a.threads, a.batch)
        finally:
            single.stop()
    for mode in ("async",) if a.lag_only else ("async", "sync"):
        env = dict(node_env)
        trace = str(tmp / f"trace-{mode}")
        if a.trace:
            env["SUTRA_LAG_TRACE"] = trace  # an older tree without lagtrace ignores it
        managed = a.failover == "etcd"
        start = tc.running_managed_cluster if managed else tc.running_cluster
        with start(tmp / mode, replicas=2, mode=mode, env=env) as c:
            if not managed:
                tc.wait_streaming(c.leader, ["r1", "r2"])
            if not a.lag_only:
                out[f"{mode}_per_s"] = ingest(c.leader.address, a.seconds, a.threads, a.batch)
            if mode == "async":
                fsyncs = fsync_rate(tmp)  # the disk's pace just before (bench/diskprobe.py)
                with fresh_memory_cost() as cost:  # held through the lag phase (bench/memprobe.py)
                    out["lag"] = lag_at_rate(c, a.rate, a.seconds)
                out["lag"]["fresh_memory_ms_per_mb"] = cost  # type: ignore[index]
                out["lag"]["disk_fsyncs_per_s"] = fsyncs  # type: ignore[index]
        if a.trace and mode == "async":  # the nodes wrote their marks out as they stopped
            # The paced phase's records only: an ingest phase before it is in the same marks.
            out["stages"] = lag_stages.summary(trace, int(out["lag"]["first_lsn"]) - 1)  # type: ignore[index]
    if not a.lag_only:
        base = float(out["single_node_per_s"])  # type: ignore[arg-type]
        out["async_ratio"] = float(out["async_per_s"]) / base  # type: ignore[arg-type]
        out["sync_ratio"] = float(out["sync_per_s"]) / base  # type: ignore[arg-type]
    return out


def med(rounds: list[dict[str, object]], key: str, sub: str = "") -> float:
    vals = [float(r[key][sub] if sub else r[key]) for r in rounds]  # type: ignore[index,arg-type]
    return statistics.median(vals)


def report(label: str, rounds: list[dict[str, object]], lag_only: bool) -> None:
    n = len(rounds)
    if not lag_only:
        print(f"{label}: medians of {n} round(s)")
        print(f"  {'configuration':<34} {'concepts/s':>11} {'ratio':>7}")
        print(f"  {'single node':<34} {med(rounds, 'single_node_per_s'):>11.0f} {1.0:>7.2f}")
        print(f"  {'leader + 2 replicas, async':<34} {med(rounds, 'async_per_s'):>11.0f} "
              f"{med(rounds, 'async_ratio'):>7.2f}")
        print(f"  {'leader + 2 replicas, sync (1)':<34} {med(rounds, 'sync_per_s'):>11.0f} "
              f"{med(rounds, 'sync_ratio'):>7.2f}")
    each = ", ".join(f"{r['lag']['lag_ms_p99']:.1f}" for r in rounds)  # type: ignore[index]
    print(f"{label}: replication lag at {med(rounds, 'lag', 'achieved_rate'):.0f} concepts/s "
          f"(target {rounds[0]['lag']['target_rate']}): p50 {med(rounds, 'lag', 'lag_ms_p50'):.1f} ms, "  # type: ignore[index]
          f"p99 {med(rounds, 'lag', 'lag_ms_p99'):.1f} ms (each round: {each}), "
          f"max {med(rounds, 'lag', 'lag_ms_max'):.1f} ms")
    fresh = ", ".join(f"{r['lag']['fresh_memory_ms_per_mb']:.2f}" for r in rounds)  # type: ignore[index]
    print(f"{label}: fresh memory before each round's lag phase, ms/MB: {fresh} "
          "(~0.5 warm, ~2.5 at the host's rate: bench/memprobe.py)")
    disk = ", ".join(f"{r['lag']['disk_fsyncs_per_s']:,.0f}" for r in rounds)  # type: ignore[index]
    print(f"{label}: the disk before each round's lag phase, single fdatasyncs/s: {disk} (bench/diskprobe.py)")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--rate", type=int, default=10_000)
    p.add_argument("--ann-threshold", type=int, default=0,
                   help="SUTRA_ANN_THRESHOLD for the nodes (0: their default); a large value keeps HNSW "
                        "indexing, which every node does, out of the measurement")
    p.add_argument("--index-yield", type=float, default=-1.0, help="SUTRA_INDEX_YIELD for the nodes (default: theirs)")
    p.add_argument("--rounds", type=int, default=1, help="rounds; medians are printed, the JSON keeps each")
    p.add_argument("--before", type=Path, default=None,
                   help="another checkout: its nodes are measured too, alternating with this tree's in every round")
    p.add_argument("--lag-only", action="store_true", help="only the async lag at --rate (no ingest ratios)")
    p.add_argument("--trace", action="store_true",
                   help="nodes mark each record's stages (SUTRA_LAG_TRACE); prints where the async lag goes")
    p.add_argument("--node-env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment setting for every node (both trees; a tree that lacks it ignores it)")
    p.add_argument("--failover", choices=("etcd", "none"), default="etcd",
                   help="the clusters with an etcd of their own, as deployed (default), or fixed roles and no etcd")
    p.add_argument("--out", default="bench/results/replication.json")
    a = p.parse_args()
    tc.DIM = DIM
    results: dict[str, object] = {"seconds": a.seconds, "threads": a.threads, "batch": a.batch, "rounds": a.rounds,
                                  "ann_threshold": a.ann_threshold or "default"}
    node_env = {"MEMORY_THRESHOLD": "10000000"}
    if a.ann_threshold:
        node_env["SUTRA_ANN_THRESHOLD"] = str(a.ann_threshold)
    for kv in a.node_env:
        name, _, value = kv.partition("=")
        node_env[name] = value
    results["node_env"] = a.node_env
    if a.index_yield >= 0:
        node_env["SUTRA_INDEX_YIELD"] = str(a.index_yield)
        results["index_yield"] = a.index_yield
    trees = {"this tree": helpers.ROOT}
    if a.before is not None:
        trees = {"before": a.before.resolve(), **trees}
        results["before"] = str(a.before)
    rounds: dict[str, list[dict[str, object]]] = {label: [] for label in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.rounds):
            # Which tree goes first alternates, so the position in a round (the
            # writeback of the runs before it) does not favour one tree.
            order = list(trees.items()) if i % 2 == 0 else list(trees.items())[::-1]
            for label, root in order:
                helpers.ROOT = root  # NodeProcess.start runs `python -m sutra_cluster` there
                try:
                    rounds[label].append(run_tree(Path(tmp) / f"{i}-{label.replace(' ', '-')}", a, node_env))
                finally:
                    helpers.ROOT = trees["this tree"]
    for label, rs in rounds.items():
        report(label, rs, a.lag_only)
        for i, r in enumerate(rs):
            if r.get("stages"):
                lag_stages.print_summary(f"{label}, round {i + 1}", r["stages"])  # type: ignore[arg-type]
    results["runs"] = rounds
    if a.before is None:  # the earlier file's keys, for whoever reads them
        results.update(rounds["this tree"][0])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
