#!/usr/bin/env python3
"""Sharding benchmark: the same load through the router at 1 shard and at 2 shards, in one run.

    .venv/bin/python bench/bench_shards.py [--quick] [--replicas N] [--out bench/results/shards.json]

For each shard count it starts etcd, the shards (``sutra-cluster serve``, one
leader plus ``--replicas`` replicas each) and one router (``sutra-cluster
router``), all real processes on loopback, then measures through the router:

1. ingest: concepts/s of LearnBatch (``--batch`` concepts, random ids, so each
   batch is split across the shards) from ``--threads`` client threads;
2. search: VectorSearch queries/s (k=10) from ``--threads`` threads, exact
   search on every shard (SUTRA_ANN_THRESHOLD above the data size, so both
   runs do the same work and give the same answers as one node; nodes run with
   OPENBLAS_NUM_THREADS=1, see ``bench_one``);
3. single reads: QueryConcept latency from one thread, through the router and
   straight to the shard's leader, for the router's overhead as a ratio.

Prints a table and writes JSON. The ratios mean little on a machine with few
cores: every process (router, shards, the bench itself) shares them; see the
"cpus" figure in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc
from tests.shard_cluster import sharded_cluster


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by the router, each shard node and this bench between ``start`` and ``stop``."""

    def __init__(self, cluster: Any) -> None:
        self.pids = {"router": cluster.router.proc.pid, "bench": os.getpid(),
                     **{f"node {n.name}": n.proc.pid for n in cluster.nodes}}

    def _read(self) -> dict[str, float]:
        return {k: cpu_seconds(p) for k, p in self.pids.items()}

    def start(self) -> None:
        self.t0, self.c0 = time.perf_counter(), self._read()

    def stop(self, items: int) -> dict[str, Any]:
        """Cores used on average per role (1.0 = one core busy all the time), and
        CPU milliseconds per item for the router and the busiest node."""
        wall, c1 = time.perf_counter() - self.t0, self._read()
        used = {k: c1[k] - self.c0[k] for k in c1}
        nodes = [v for k, v in used.items() if k.startswith("node ")]
        out: dict[str, Any] = {
            "cores_router": round(used["router"] / wall, 2), "cores_nodes": round(sum(nodes) / wall, 2),
            "cores_bench": round(used["bench"] / wall, 2),
            "cpu_ms_per_item_router": 1000 * used["router"] / items,
            "cpu_ms_per_item_busiest_node": 1000 * max(nodes) / items,
        }
        # With a core for every process, the busiest process bounds the rate
        # (a Python process runs its Python code on about one core at a time).
        out["ceiling_per_s_one_core_per_process"] = 1000 / max(out["cpu_ms_per_item_router"],
                                                               out["cpu_ms_per_item_busiest_node"])
        return out


def stub(address: str) -> tuple[grpc.Channel, storage_pb2_grpc.StorageServiceStub]:
    ch = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 256 << 20),
                                                 ("grpc.max_receive_message_length", 256 << 20)])
    return ch, storage_pb2_grpc.StorageServiceStub(ch)


def run_threads(n: int, work: Callable[[int], None]) -> float:
    """Run ``work(i)`` on ``n`` threads; the wall time in seconds."""
    errors: list[BaseException] = []

    def wrap(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def make_batches(n: int, batch: int, dim: int, seed: int) -> list[pb.LearnBatchRequest]:
    rng = np.random.default_rng(seed)
    out = []
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        vecs = rng.standard_normal((hi - lo, dim), dtype=np.float32)
        out.append(pb.LearnBatchRequest(request_id=f"b{lo}", concepts=[
            pb.LearnConceptRequest(concept_id=f"c{i:07d}", content=f"content {i}", strength=1.0, confidence=1.0,
                                   embedding_f32=vecs[i - lo].astype("<f4").tobytes())
            for i in range(lo, hi)]))
    return out


def bench_one(shards: int, args: argparse.Namespace, base: Path, batches: list[pb.LearnBatchRequest],
              queries: np.ndarray) -> dict[str, Any]:
    # One BLAS thread per node: numpy's matrix-vector product otherwise starts a
    # thread per core in every node, and several nodes on few cores then spin
    # against each other (measured here: 4-thread exact search on one node went
    # from ~160 to ~1400 queries/s with it).
    env = {"SUTRA_ANN_THRESHOLD": str(10 * args.concepts), "SUTRA_WAL_FSYNC": "on", "OPENBLAS_NUM_THREADS": "1"}
    mode = "sync" if args.replicas else "async"
    out: dict[str, Any] = {"shards": shards, "nodes_per_shard": 1 + args.replicas, "commit_mode": mode}
    print(f"\n{shards} shard(s), {1 + args.replicas} node(s) each, {mode} commit: starting", flush=True)
    with sharded_cluster(base / f"shards{shards}", shards=shards, per_shard=1 + args.replicas, mode=mode, env=env,
                         routers=1, name=f"bench{shards}", dim=args.dim) as c:
        ch, router = stub(c.router.address)
        try:
            # 1. ingest
            todo = list(range(len(batches)))
            lock = threading.Lock()
            token: dict[int, int] = {}

            def ingest(_: int) -> None:
                while True:
                    with lock:
                        if not todo:
                            return
                        i = todo.pop()
                    r = router.LearnBatch(batches[i], timeout=120)
                    with lock:
                        for e in r.shard_sequences:
                            token[e.shard] = max(token.get(e.shard, 0), e.sequence)

            meter = CpuMeter(c)
            meter.start()
            secs = run_threads(args.threads, ingest)
            out["ingest_cpu"] = meter.stop(args.concepts)
            out["ingest_concepts_per_s"] = args.concepts / secs
            print(f"  ingest      {out['ingest_concepts_per_s']:>10,.0f} concepts/s ({secs:.1f} s); "
                  f"{_cpu(out['ingest_cpu'])}", flush=True)
            seqs = [pb.ShardSequence(shard=s, sequence=q) for s, q in token.items()]
            # 2. search (waits for every write to be visible first)
            router.VectorSearch(pb.VectorSearchRequest(query_f32=queries[0].tobytes(), k=10, shard_sequences=seqs),
                                timeout=120)
            per = len(queries) // args.threads

            def search(t: int) -> None:
                for q in queries[t * per:(t + 1) * per]:
                    router.VectorSearch(pb.VectorSearchRequest(query_f32=q.tobytes(), k=10), timeout=60)

            meter.start()
            secs = run_threads(args.threads, search)
            out["search_cpu"] = meter.stop(per * args.threads)
            out["search_queries_per_s"] = per * args.threads / secs
            print(f"  search      {out['search_queries_per_s']:>10,.1f} queries/s; {_cpu(out['search_cpu'])}",
                  flush=True)
            # 3. single reads: the router, then the leader of each key's shard directly
            ids = [f"c{i:07d}" for i in np.random.default_rng(3).integers(0, args.concepts, args.reads)]
            lat_router = []
            for cid in ids:
                t0 = time.perf_counter()
                router.QueryConcept(pb.QueryConceptRequest(concept_id=cid), timeout=30)
                lat_router.append(time.perf_counter() - t0)
            leaders = {s: stub(c.leader(s).address) for s in range(shards)}
            lat_direct = []
            for cid in ids:
                st = leaders[c.owner(cid)][1]
                t0 = time.perf_counter()
                st.QueryConcept(pb.QueryConceptRequest(concept_id=cid), timeout=30)
                lat_direct.append(time.perf_counter() - t0)
            for lch, _ in leaders.values():
                lch.close()
            for name, lat in (("router", lat_router), ("direct", lat_direct)):
                lat.sort()
                out[f"read_{name}_p50_ms"] = 1000 * statistics.median(lat)
                out[f"read_{name}_p99_ms"] = 1000 * lat[int(0.99 * (len(lat) - 1))]
            out["router_read_overhead_ratio"] = out["read_router_p50_ms"] / out["read_direct_p50_ms"]
            print(f"  QueryConcept p50 {out['read_router_p50_ms']:.2f} ms via the router, "
                  f"{out['read_direct_p50_ms']:.2f} ms direct (x{out['router_read_overhead_ratio']:.2f})", flush=True)
            stats = router.GetStats(pb.GetStatsRequest(), timeout=30)
            out["per_shard_concepts"] = [s.concepts for s in stats.shards]
            assert stats.concepts == args.concepts, (stats.concepts, args.concepts)
        finally:
            ch.close()
    return out


def _cpu(m: dict[str, Any]) -> str:
    return (f"cores used: router {m['cores_router']}, nodes {m['cores_nodes']}, bench {m['cores_bench']}; "
            f"ceiling with a core per process {m['ceiling_per_s_one_core_per_process']:,.0f}/s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, to smoke-test the script")
    ap.add_argument("--concepts", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--reads", type=int, default=2000)
    ap.add_argument("--replicas", type=int, default=0, help="replicas per shard (0: leaders only, async commit)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "shards.json"))
    ap.add_argument("--tmp", default=None, help="parent folder for data (default: the system temp folder)")
    args = ap.parse_args(argv)
    if args.quick:
        args.concepts, args.queries, args.reads = 5000, 200, 300
    base = Path(tempfile.mkdtemp(prefix="sutra-bench-shards-", dir=args.tmp))
    batches = make_batches(args.concepts, args.batch, args.dim, seed=1)
    queries = np.random.default_rng(2).standard_normal((args.queries, args.dim), dtype=np.float32)
    started = time.perf_counter()
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    ok = False
    try:
        for shards in (1, 2):
            results[str(shards)] = bench_one(shards, args, base, batches, queries)
        ok = True
    finally:
        if ok:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"bench failed; logs kept in {base}", file=sys.stderr)
    one, two = results["1"], results["2"]
    ratios = {
        "ingest_2_over_1": two["ingest_concepts_per_s"] / one["ingest_concepts_per_s"],
        "search_2_over_1": two["search_queries_per_s"] / one["search_queries_per_s"],
        "router_read_overhead_1_shard": one["router_read_overhead_ratio"],
        "router_read_overhead_2_shards": two["router_read_overhead_ratio"],
    }
    doc = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": round(time.perf_counter() - started, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "grpcio": grpc.__version__,
                    "loadavg_1m_before": round(load_before[0], 2), "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "tmp")},
        "results": results,
        "ratios": ratios,
    }
    rows = [("ingest (concepts/s)", "ingest_concepts_per_s", "{:,.0f}"),
            ("search k=10 (queries/s)", "search_queries_per_s", "{:,.1f}"),
            ("QueryConcept p50 via router (ms)", "read_router_p50_ms", "{:.2f}"),
            ("QueryConcept p50 direct (ms)", "read_direct_p50_ms", "{:.2f}"),
            ("QueryConcept p99 via router (ms)", "read_router_p99_ms", "{:.2f}"),
            ("QueryConcept p99 direct (ms)", "read_direct_p99_ms", "{:.2f}"),
            ("router overhead (p50 ratio)", "router_read_overhead_ratio", "x{:.2f}")]
    for phase in ("ingest", "search"):
        for key in ("ceiling_per_s_one_core_per_process", "cpu_ms_per_item_router", "cpu_ms_per_item_busiest_node"):
            one[f"{phase}_{key}"], two[f"{phase}_{key}"] = one[f"{phase}_cpu"][key], two[f"{phase}_cpu"][key]
    rows += [("ingest ceiling, a core per process (/s)", "ingest_ceiling_per_s_one_core_per_process", "{:,.0f}"),
             ("  router CPU ms per concept", "ingest_cpu_ms_per_item_router", "{:.4f}"),
             ("  busiest node CPU ms per concept", "ingest_cpu_ms_per_item_busiest_node", "{:.4f}"),
             ("search ceiling, a core per process (/s)", "search_ceiling_per_s_one_core_per_process", "{:,.0f}"),
             ("  router CPU ms per query", "search_cpu_ms_per_item_router", "{:.3f}"),
             ("  busiest node CPU ms per query", "search_cpu_ms_per_item_busiest_node", "{:.3f}")]
    ratios["ingest_ceiling_2_over_1"] = (two["ingest_ceiling_per_s_one_core_per_process"]
                                         / one["ingest_ceiling_per_s_one_core_per_process"])
    ratios["search_ceiling_2_over_1"] = (two["search_ceiling_per_s_one_core_per_process"]
                                         / one["search_ceiling_per_s_one_core_per_process"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\n{'':40s} {'1 shard':>12s} {'2 shards':>12s} {'2 / 1':>8s}")
    for label, key, fmt in rows:
        a, b = one[key], two[key]
        print(f"{label:40s} {fmt.format(a):>12s} {fmt.format(b):>12s} {b / a:>8.2f}")
    print(f"\n{args.concepts} concepts of {args.dim} dims, {1 + args.replicas} node(s) per shard, "
          f"{args.threads} client threads, {os.cpu_count()} CPUs; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
