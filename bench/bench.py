#!/usr/bin/env python3
"""Sutra Cluster benchmark: one run, its own node processes, a table and a JSON file.

    .venv/bin/python bench/bench.py [--quick] [--out bench/results/bench.json]

Measures, against real ``sutra-cluster serve`` processes (VECTOR_DIMENSION=768,
default settings unless a section says otherwise) on loopback:

1. single-RPC writes/s (LearnConcept, 768-d float32 bytes) from 1 and 8 client threads;
2. batched ingest in concepts/s (LearnBatch from 4 threads; the client-streaming
   ``bulk_load``), each against the disk's own limit measured in the same run:
   a plain append + fdatasync of the same bytes in the same batch sizes, into
   the same filesystem; plus the original engine's 57,000 writes/s anchor;
3. QueryConcept p50/p99 latency;
4. VectorSearch queries/s and recall@10 against numpy brute force, past
   SUTRA_ANN_THRESHOLD so the HNSW path answers;
5. restart time with 100,000 concepts: after Flush + SIGTERM, and WAL-only
   after SIGKILL.

See bench/README.md for what each figure means. Every node is stopped and the
temporary data removed on exit, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sutra_cluster.client import Concept, SutraClient
from sutra_cluster.pb import storage_pb2 as pb
from tests.helpers import NodeProcess, free_port

DIM = 768
ANCHOR_WRITES_PER_S = 57_000  # the original engine's claim: in memory, no fsync
INGEST_GOAL_RATIO = 0.5
ANN_THRESHOLD_DEFAULT = 10_000  # SUTRA_ANN_THRESHOLD's default (sutra_cluster/config.py)


@dataclass(frozen=True)
class Sizes:
    single_ops_1: int  # LearnConcept calls from one thread
    single_ops_8: int  # LearnConcept calls per thread, 8 threads
    ingest_concepts: int  # per ingest method
    batch_size: int  # concepts per LearnBatch / stream message
    ingest_threads: int
    ingest_repeats: int  # server and disk runs, interleaved; medians reported
    queries: int  # QueryConcept calls
    vectors: int  # vectors for VectorSearch (must exceed the ANN threshold)
    search_queries: int  # timed VectorSearch calls per thread count
    recall_queries: int
    restart_concepts: int
    restart_repeats: int


FULL = Sizes(single_ops_1=3000, single_ops_8=600, ingest_concepts=60_000, batch_size=500, ingest_threads=4,
             ingest_repeats=3, queries=5000, vectors=25_000, search_queries=1000, recall_queries=200,
             restart_concepts=100_000, restart_repeats=3)
QUICK = Sizes(single_ops_1=500, single_ops_8=100, ingest_concepts=10_000, batch_size=500, ingest_threads=4,
              ingest_repeats=1, queries=1000, vectors=12_000, search_queries=300, recall_queries=50,
              restart_concepts=10_000, restart_repeats=1)


@dataclass
class Results:
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def put(self, name: str, value: float, unit: str, what: str) -> None:
        self.metrics[name] = {"value": float(value), "unit": unit, "what": what}
        print(f"  {name:42s} {_fmt(value):>12s} {unit}", flush=True)


def _fmt(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


# ---------------------------------------------------------------- data


def clustered(rng: np.random.Generator, n: int, dim: int = DIM, clusters: int = 20, rank: int = 128,
              centres: np.ndarray | None = None, basis: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Topic-like mixture (the same recipe as tests/test_vectors.py): a cluster
    centre + shared low-rank variation + isotropic noise. Returns (data, centres, basis)."""
    if centres is None:
        centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    if basis is None:
        basis = rng.standard_normal((dim, rank), dtype=np.float32) / np.sqrt(rank)
    which = rng.integers(0, len(centres), n)
    latent = 1.5 * rng.standard_normal((n, basis.shape[1]), dtype=np.float32)
    noise = rng.standard_normal((n, dim), dtype=np.float32)
    data = np.ascontiguousarray(centres[which] + latent @ basis.T + noise, dtype=np.float32)
    return data, centres, basis


def random_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((n, DIM), dtype=np.float32)


def make_batches(prefix: str, vectors: np.ndarray, batch_size: int) -> list[pb.LearnBatchRequest]:
    out = []
    for lo in range(0, len(vectors), batch_size):
        chunk = [Concept(f"{prefix}-{i}", f"content of {prefix}-{i}", vectors[i])
                 for i in range(lo, min(lo + batch_size, len(vectors)))]
        out.append(SutraClient.batch_request(chunk))
    return out


def batch_stream(prefix: str, n: int, batch_size: int, seed: int) -> Iterator[pb.LearnBatchRequest]:
    """Batches generated on the fly (restart section: only the restart is timed)."""
    rng = np.random.default_rng(seed)
    for lo in range(0, n, batch_size):
        vecs = random_vectors(rng, min(batch_size, n - lo))
        chunk = [Concept(f"{prefix}-{lo + j}", f"content of {prefix}-{lo + j}", v)
                 for j, v in enumerate(vecs)]
        yield SutraClient.batch_request(chunk)


# ---------------------------------------------------------------- processes


class Nodes:
    """Every node started by the bench; ``close`` stops them all."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[NodeProcess] = []

    def start(self, name: str, env: dict[str, str] | None = None, data: Path | None = None,
              port: int | None = None, wait: bool = True) -> NodeProcess:
        full_env = {"VECTOR_DIMENSION": str(DIM), "SUTRA_LOG_LEVEL": "info"}
        full_env.update(env or {})
        node = NodeProcess(data or self.base / name, env=full_env, port=port,
                           log_path=self.base / f"{name}.log")
        self.started.append(node)
        node.start(wait=False)
        if wait:
            wait_ready(node, 600)
        return node

    def close(self) -> None:
        for node in self.started:
            try:
                node.stop(timeout=60)
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"warning: stopping node on port {node.port}: {exc}", file=sys.stderr)


def poll(cond: Callable[[], bool], timeout: float, what: str, node: NodeProcess | None = None,
         interval: float = 0.02) -> None:
    """Wait for ``cond`` with a deadline; fail at once if ``node`` exits meanwhile.
    (Exceptions from ``cond`` count as "not yet": a node may still be starting.)"""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        if node is not None and not node.alive():
            raise RuntimeError(f"{what}: the node exited with {node.proc.returncode if node.proc else None}; "
                               f"log:\n{node.log_tail()}")
        try:
            if cond():
                return
        except Exception as exc:  # noqa: BLE001 - "not yet": the node may be starting
            last = exc
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what} (last error: {last})")
        time.sleep(interval)


def wait_ready(node: NodeProcess, timeout: float) -> None:
    def healthy() -> bool:
        with SutraClient(node.address, timeout=2.0, retry_deadline=0) as c:
            return bool(c.health().healthy)

    poll(healthy, timeout, f"node on port {node.port} to answer HealthCheck", node)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runnable_threads(pid: int) -> int:
    """Threads of a process that are running or waiting for a CPU (state R)."""
    n = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "R":
                n += 1
        except (OSError, IndexError):
            continue
    return n


def wait_idle(node: NodeProcess, timeout: float, window: float = 1.0, max_share: float = 0.1) -> float:
    """Wait until the node has no background work left (HNSW indexing, checkpoints):
    under ``max_share`` of a core over ``window`` s and no thread runnable, on a
    busy machine too (a starved thread uses little CPU but stays runnable)."""
    assert node.proc is not None
    pid = node.proc.pid
    t0 = time.monotonic()
    last = [cpu_seconds(pid), time.monotonic()]
    busy = [0]

    def idle() -> bool:
        busy[0] += runnable_threads(pid)
        now_cpu, now = cpu_seconds(pid), time.monotonic()
        if now - last[1] < window:
            return False
        share = (now_cpu - last[0]) / (now - last[1])
        quiet = share < max_share and busy[0] == 0
        last[:] = [now_cpu, now]
        busy[0] = 0
        return quiet

    poll(idle, timeout, f"node pid {pid} to go idle (background indexing done)", node, interval=0.05)
    return time.monotonic() - t0


def run_threads(n: int, target: Callable[[int], Any]) -> tuple[float, list[Any]]:
    """Run ``target(i)`` in ``n`` threads released together; (wall seconds, results)."""
    barrier = threading.Barrier(n + 1)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def body(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return wall, results


# ---------------------------------------------------------------- disk limit


def disk_append_fdatasync(directory: Path, sizes: Sequence[int]) -> float:
    """Append blocks of the given sizes to a new file, fdatasync after each;
    returns seconds. The file is removed afterwards."""
    path = directory / f"disk-probe-{os.getpid()}-{time.monotonic_ns()}.bin"
    blob = os.urandom(max(sizes))
    view = memoryview(blob)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
    try:
        t0 = time.perf_counter()
        for size in sizes:
            part = view[:size]
            while part:
                part = part[os.write(fd, part):]
            os.fdatasync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink()


# ---------------------------------------------------------------- sections


def bench_single_writes(nodes: Nodes, sizes: Sizes, res: Results, tmp: Path) -> None:
    print("\n[1] single-RPC writes (LearnConcept, 768-d float32 bytes)", flush=True)
    node = nodes.start("single")
    rng = np.random.default_rng(1)
    vecs = random_vectors(rng, max(sizes.single_ops_1, 8 * sizes.single_ops_8))

    def one_thread(_: int) -> int:
        with SutraClient(node.address, timeout=30) as c:
            for i in range(sizes.single_ops_1):
                c.learn_concept(f"s1-{i}", f"content of s1-{i}", vecs[i])
        return sizes.single_ops_1

    wall, _ = run_threads(1, one_thread)
    res.put("single_write_1_thread_per_s", sizes.single_ops_1 / wall, "writes/s",
            "LearnConcept from 1 client thread, each acknowledged after its fsync")

    def eight(t: int) -> int:
        with SutraClient(node.address, timeout=30) as c:
            for i in range(sizes.single_ops_8):
                j = t * sizes.single_ops_8 + i
                c.learn_concept(f"s8-{j}", f"content of s8-{j}", vecs[j])
        return sizes.single_ops_8

    cpu0 = cpu_seconds(node.proc.pid)  # type: ignore[union-attr]
    wall, _ = run_threads(8, eight)
    server_cpu = (cpu_seconds(node.proc.pid) - cpu0) / wall  # type: ignore[union-attr]
    res.put("single_write_8_threads_per_s", 8 * sizes.single_ops_8 / wall, "writes/s",
            "LearnConcept from 8 client threads (group commit shares fsyncs)")
    res.details["single_write_8_threads_server_cpu_cores"] = round(server_cpu, 2)

    # The disk's limit for one durable record at a time: 3.3 KB append + fdatasync, serially.
    record = len(Concept("s1-0000", "content of s1-0000", vecs[0]).to_pb().SerializeToString())
    n = max(200, sizes.single_ops_1)
    secs = disk_append_fdatasync(tmp, [record] * n)
    res.put("disk_single_record_fdatasync_per_s", n / secs, "records/s",
            f"disk limit for serial durable writes: append {record} B + fdatasync, one at a time")
    res.details["single_record_bytes"] = record
    node.stop()


def _ingest_once(nodes: Nodes, name: str, batches: list[pb.LearnBatchRequest], threads: int,
                 keep: bool = False) -> tuple[float, float, NodeProcess | None]:
    """Ingest ``batches`` into a fresh node; (concepts/s, server CPU cores, the node if ``keep``).
    ``threads`` > 0: LearnBatch from that many client threads; 0: one bulk_load stream."""
    concepts = sum(len(b.concepts) for b in batches)
    os.sync()  # no earlier section's dirty pages in the way
    node = nodes.start(name)
    assert node.proc is not None
    cpu0 = cpu_seconds(node.proc.pid)
    if threads:
        per_thread = [batches[t::threads] for t in range(threads)]

        def send(t: int) -> None:
            with SutraClient(node.address, timeout=120) as c:
                for b in per_thread[t]:
                    c._invoke("LearnBatch", b)

        wall, _ = run_threads(threads, send)
    else:
        with SutraClient(node.address, timeout=120) as c:
            t0 = time.perf_counter()
            reply = c.bulk_load(iter(batches))
            wall = time.perf_counter() - t0
        assert reply.concepts == concepts, reply
    cpu = (cpu_seconds(node.proc.pid) - cpu0) / wall
    # Everything acknowledged becomes visible (and counted).
    poll(lambda: node.stats().concepts == concepts, 120, f"{name}: {concepts} concepts visible", node)
    if keep:
        return concepts / wall, cpu, node
    node.stop()
    shutil.rmtree(node.data_dir, ignore_errors=True)
    return concepts / wall, cpu, None


def _disk_once(tmp: Path, batches: list[pb.LearnBatchRequest]) -> float:
    """The disk's limit for these batches: append + fdatasync each one's bytes; concepts/s."""
    os.sync()
    return sum(len(b.concepts) for b in batches) / disk_append_fdatasync(tmp, [b.ByteSize() for b in batches])


def bench_ingest(nodes: Nodes, sizes: Sizes, res: Results, tmp: Path) -> dict[str, Any]:
    reps = sizes.ingest_repeats
    print(f"\n[2] batched ingest: {sizes.ingest_concepts:,} concepts of 768-d per run, "
          f"{sizes.batch_size} per "
          f"batch, fresh node per run; server runs interleaved with disk runs, median of {reps}", flush=True)
    rng = np.random.default_rng(2)
    out: dict[str, Any] = {}
    batches = make_batches("lb", random_vectors(rng, sizes.ingest_concepts), sizes.batch_size)
    nbytes = sum(b.ByteSize() for b in batches)
    runs: dict[str, list[float]] = {k: [] for k in ("lb", "lb_cpu", "bl", "bl_cpu", "disk")}
    for rep in range(reps):
        runs["disk"].append(_disk_once(tmp, batches))
        rate, cpu, _ = _ingest_once(nodes, f"ingest-stream-{rep}", batches, 0)
        runs["bl"].append(rate)
        runs["bl_cpu"].append(cpu)
        runs["disk"].append(_disk_once(tmp, batches))
        # The last LearnBatch node stays up for section 3 (nothing is measured beside it).
        last = rep == reps - 1
        rate, cpu, node = _ingest_once(nodes, f"ingest-batch-{rep}", batches, sizes.ingest_threads, keep=last)
        runs["lb"].append(rate)
        runs["lb_cpu"].append(cpu)
        if node is not None:
            out["query_node"] = node
    out["query_ids"] = [f"lb-{i}" for i in range(sizes.ingest_concepts)]
    med = {k: statistics.median(v) for k, v in runs.items()}
    disk = med["disk"]
    res.put("learn_batch_concepts_per_s", med["lb"], "concepts/s",
            f"LearnBatch of {sizes.batch_size} from {sizes.ingest_threads} client threads, "
            "acknowledged (durable)")
    res.put("bulk_load_concepts_per_s", med["bl"], "concepts/s",
            f"SutraClient.bulk_load (LearnStream), one stream of {sizes.batch_size}-concept messages")
    res.put("ingest_disk_limit_concepts_per_s", disk, "concepts/s",
            f"disk: append + fdatasync of the same {len(batches)} batches ({nbytes / 1e6:.0f} MB), "
            "same filesystem")
    res.put("learn_batch_vs_disk_ratio", med["lb"] / disk, "ratio", f"goal >= {INGEST_GOAL_RATIO}")
    res.put("bulk_load_vs_disk_ratio", med["bl"] / disk, "ratio", f"goal >= {INGEST_GOAL_RATIO}")
    res.put("learn_batch_vs_57k_anchor_ratio", med["lb"] / ANCHOR_WRITES_PER_S, "ratio",
            "against the original engine's 57,000 writes/s (in memory, no fsync)")
    res.put("bulk_load_vs_57k_anchor_ratio", med["bl"] / ANCHOR_WRITES_PER_S, "ratio",
            "against the original engine's 57,000 writes/s (in memory, no fsync)")
    res.details["ingest_runs"] = {k: [round(x, 2) for x in v] for k, v in runs.items()}
    res.details["ingest_bytes_per_run"] = nbytes
    return out


def bench_queries(node: NodeProcess, ids: list[str], sizes: Sizes, res: Results) -> None:
    print(f"\n[3] QueryConcept latency ({sizes.queries:,} sequential calls, 1 client thread, "
          f"{len(ids):,} concepts stored)", flush=True)
    rng = np.random.default_rng(3)
    pick = rng.integers(0, len(ids), sizes.queries)

    def latencies() -> np.ndarray:
        lat = []
        with SutraClient(node.address, timeout=30) as c:
            for i in pick[:50]:  # warm the channel
                c.query_concept(ids[i])
            for i in pick:
                t0 = time.perf_counter()
                got = c.query_concept(ids[i])
                lat.append(time.perf_counter() - t0)
                assert got is not None, ids[i]
        return np.percentile(np.asarray(lat) * 1000, [50, 99])

    # Right after the ingest the node is still indexing the new vectors (HNSW,
    # in the background): that figure is kept in details; the metric is the
    # steady state, once the node is idle.
    busy = latencies()
    res.details["query_concept_during_indexing_p50_p99_ms"] = [round(float(x), 3) for x in busy]
    res.details["query_concept_index_wait_s"] = round(wait_idle(node, timeout=900), 1)
    q = latencies()
    res.put("query_concept_p50_ms", q[0], "ms", "QueryConcept round trip, loopback, no embedding returned")
    res.put("query_concept_p99_ms", q[1], "ms", "QueryConcept round trip, loopback, no embedding returned")
    node.stop()


def bench_vector_search(nodes: Nodes, sizes: Sizes, res: Results) -> None:
    n = sizes.vectors
    assert n > ANN_THRESHOLD_DEFAULT, "VectorSearch must run past SUTRA_ANN_THRESHOLD"
    print(f"\n[4] VectorSearch over {n:,} clustered 768-d vectors (20-centre mixture + rank-128 "
          "shared variation + noise; held-out queries from the same mixture), k=10, default ef", flush=True)
    rng = np.random.default_rng(4)
    data, centres, basis = clustered(rng, n)
    queries, _, _ = clustered(rng, sizes.recall_queries + sizes.search_queries, centres=centres, basis=basis)
    node = nodes.start("search")
    with SutraClient(node.address, timeout=120) as c:
        reply = c.bulk_load(iter(make_batches("v", data, 1000)))
        assert reply.concepts == n
        poll(lambda: c.stats().vectors == n, 120, f"{n} vectors visible", node)
    # Measure the steady state: the HNSW graph answers (exact=false) and the
    # background indexing of the rest is done (the node is idle).
    t0 = time.monotonic()
    probe = pb.VectorSearchRequest(query_f32=queries[0].astype("<f4").tobytes(), k=10)
    with SutraClient(node.address, timeout=30) as c:
        poll(lambda: not c.stub.VectorSearch(probe, timeout=30).exact, 600,
             "VectorSearch to use HNSW (exact=false)",
             node, interval=0.2)
    wait_idle(node, timeout=600)
    waited = time.monotonic() - t0
    res.details["vector_search_index_wait_s"] = round(waited, 1)

    keys = [f"v-{i}" for i in range(n)]
    normed = data / np.linalg.norm(data, axis=1, keepdims=True)
    rq = queries[: sizes.recall_queries]
    truth = np.argsort(-(rq @ normed.T), axis=1)[:, :10]
    hits = 0
    exact_flags = set()
    with SutraClient(node.address, timeout=30) as c:
        for q, want in zip(rq, truth):
            req = pb.VectorSearchRequest(query_f32=q.astype("<f4").tobytes(), k=10)
            r = c.stub.VectorSearch(req, timeout=30)
            exact_flags.add(r.exact)
            hits += len({x.concept_id for x in r.results} & {keys[i] for i in want})
    if exact_flags != {False}:
        raise AssertionError(f"VectorSearch answered exact={exact_flags}: the ANN path was not used")
    recall = hits / (10 * len(rq))

    timed = queries[sizes.recall_queries:]

    def searcher(t: int, threads: int) -> int:
        with SutraClient(node.address, timeout=30) as c:
            mine = timed[t::threads]
            for q in mine:
                c.vector_search(q, 10)
            return len(mine)

    w1, _ = run_threads(1, lambda t: searcher(t, 1))
    w4, _ = run_threads(4, lambda t: searcher(t, 4))
    res.put("vector_search_qps_1_thread", len(timed) / w1, "queries/s",
            "k=10, HNSW (exact=false), 1 client thread")
    res.put("vector_search_qps_4_threads", len(timed) / w4, "queries/s", "k=10, HNSW, 4 client threads")
    res.put("vector_search_recall_at_10", recall, "fraction",
            f"vs numpy brute-force cosine, {len(rq)} held-out queries, clustered data")
    node.stop()


def _recovery_log_seconds(log: Path) -> float | None:
    """The node's own 'recovered in X s' figure, from the last start in its log."""
    found = None
    for line in log.read_text(errors="replace").splitlines():
        if " recovered in " in line:
            try:
                found = float(line.split(" recovered in ", 1)[1].split("s", 1)[0])
            except ValueError:
                pass
    return found


def _timed_restart(nodes: Nodes, name: str, data: Path, port: int, env: dict[str, str],
                   expect: int) -> tuple[float, NodeProcess]:
    """Start a node on ``data``; seconds until HealthCheck answers and GetStats shows ``expect``."""
    t0 = time.perf_counter()
    node = nodes.start(name, env=env, data=data, port=port, wait=False)

    def ready() -> bool:
        with SutraClient(node.address, timeout=2.0, retry_deadline=0) as c:
            if not c.health().healthy:
                return False
            return c.stats().concepts == expect

    poll(ready, 900, f"{name}: HealthCheck and GetStats concepts == {expect}", node, interval=0.01)
    return time.perf_counter() - t0, node


def _restarts(nodes: Nodes, res: Results, case: str, data: Path, port: int, env: dict[str, str], n: int,
              reps: int, stop: Callable[[NodeProcess], None]) -> float:
    """``reps`` timed restarts of the same data, each ended by ``stop``; the median seconds."""
    times, own = [], []
    for rep in range(reps):
        name = f"restart-{case}-{rep + 2}"
        secs, node = _timed_restart(nodes, name, data, port, env, n)
        stop(node)
        times.append(round(secs, 2))
        own.append(_recovery_log_seconds(nodes.base / f"{name}.log"))
    res.details[f"restart_{case}_runs_s"] = times
    res.details[f"restart_{case}_node_recovery_s"] = own
    return statistics.median(times)


def _sigterm(node: NodeProcess) -> None:
    rc = node.stop(timeout=120)
    assert rc == 0, f"SIGTERM exit status {rc}"


def bench_restart(nodes: Nodes, sizes: Sizes, res: Results) -> None:
    n, reps = sizes.restart_concepts, sizes.restart_repeats
    print(f"\n[5] restart with {n:,} concepts of 768-d (until HealthCheck answers and GetStats shows {n:,}), "
          f"median of {reps}", flush=True)
    # After Flush + SIGTERM (default settings: automatic checkpoints too).
    data = nodes.base / "restart-flush"
    port = free_port()
    node = nodes.start("restart-flush-1", data=data, port=port)
    with SutraClient(node.address, timeout=600) as c:
        reply = c.bulk_load(batch_stream("r", n, 1000, seed=5))
        assert reply.concepts == n, reply
        poll(lambda: c.stats().concepts == n, 300, f"{n} concepts visible", node)
        t0 = time.perf_counter()
        c.flush()
        res.details["restart_flush_rpc_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    _sigterm(node)
    res.details["restart_sigterm_exit_s"] = round(time.perf_counter() - t0, 2)
    res.details["restart_flush_data_bytes"] = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    secs = _restarts(nodes, res, "flush", data, port, {}, n, reps, _sigterm)
    res.put("restart_after_flush_s", secs, "s", f"{n:,} concepts in storage.dat; process start to ready")

    # WAL only: no checkpoint at all (MEMORY_THRESHOLD above n), SIGKILL.
    data = nodes.base / "restart-wal"
    port = free_port()
    env = {"MEMORY_THRESHOLD": str(10 * n)}
    node = nodes.start("restart-wal-1", env=env, data=data, port=port)
    with SutraClient(node.address, timeout=600) as c:
        reply = c.bulk_load(batch_stream("w", n, 1000, seed=6))
        assert reply.concepts == n, reply

    def kill(node: NodeProcess) -> None:
        node.kill()
        assert not (data / "storage.dat").exists(), "a checkpoint was written; the WAL-only case needs none"

    kill(node)
    res.details["restart_wal_bytes"] = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    secs = _restarts(nodes, res, "wal", data, port, env, n, reps, kill)
    res.put("restart_wal_only_sigkill_s", secs, "s", f"{n:,} concepts only in the WAL, after SIGKILL")


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (~1 minute), to smoke-test the script")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench.json"), help="JSON output file")
    ap.add_argument("--tmp", default=None, help="parent folder for data (default: the system temp folder)")
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else FULL

    res = Results()
    base = Path(tempfile.mkdtemp(prefix="sutra-bench-", dir=args.tmp))
    nodes = Nodes(base)
    started = time.perf_counter()

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    ok = False
    load_before = os.getloadavg()
    fs_type = _fs_type_name(base)
    try:
        print(f"sutra bench ({'quick' if args.quick else 'full'}), data in a temporary folder "
              f"on a {fs_type} filesystem", flush=True)
        bench_single_writes(nodes, sizes, res, base)
        ingest = bench_ingest(nodes, sizes, res, base)
        bench_queries(ingest["query_node"], ingest["query_ids"], sizes, res)
        bench_vector_search(nodes, sizes, res)
        bench_restart(nodes, sizes, res)
        ok = True
    finally:
        nodes.close()
        if ok:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"bench failed; node logs kept in {base}", file=sys.stderr)
    elapsed = time.perf_counter() - started
    doc = {
        "mode": "quick" if args.quick else "full",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": round(elapsed, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "grpcio": grpc.__version__,
                    "filesystem": fs_type,
                    # Other work on a shared machine skews every figure: look here first.
                    "loadavg_1m_before": round(load_before[0], 2),
                    "loadavg_1m_after": round(os.getloadavg()[0], 2)},
        "sizes": sizes.__dict__,
        "metrics": res.metrics,
        "details": res.details,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print_table(doc)
    print(f"\nwrote {out} ({elapsed:.0f} s)")
    return 0


def _fs_type_name(path: Path) -> str:
    try:
        out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(path)], capture_output=True,
                             text=True, timeout=10, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def print_table(doc: dict[str, Any]) -> None:
    m = doc["metrics"]
    print("\n| metric | value | unit | what |\n|---|---:|---|---|")
    for name, v in m.items():
        print(f"| {name} | {_fmt(v['value'])} | {v['unit']} | {v['what']} |")
    if doc["details"]:
        print("\ndetails: " + ", ".join(f"{k}={v}" for k, v in doc["details"].items()))


if __name__ == "__main__":
    sys.exit(main())
