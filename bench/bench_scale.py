"""Scale benchmark (issue 12): one real ``sutra-cluster serve`` node per size,
bulk-loaded with clustered vectors, then Flush, SIGTERM and restart.

Measures, per size: bulk load rate (indexing running), time until the HNSW
graph covers the vectors, resident memory once indexed (and GetStats' memory
by part), data directory size, search p50/p99 and recall@10 before the
restart, restart-to-ready (all concepts visible and the graph ready), and
search p50/p99 in the first 10 s after the restart.

    nice .venv/bin/python bench/bench_scale.py --sizes 100000,300000 [--out bench/results/scale.json]
    .venv/bin/python bench/bench_scale.py --quick      # seconds; run by tests/test_bench_smoke.py
    nice .venv/bin/python bench/bench_scale.py --restart-only --sizes 1000000 --out bench/results/scale-restart.json

``--restart-only`` skips the load and the graph build (an hour of CPU at 1M on
two shared cores): it writes storage.dat (the current format, clustered vectors
and contents like a load's) and a storage.hnsw shaped like a built M=32 graph
but with random links (sq8: random codes too; pq: an IVF-PQ index trained as a node trains
it, with random codes in random lists) straight into a data directory, and times a real node's
start until every concept is visible and the graph adopted, with the node's own
CPU seconds (what a quiet machine would take) and its memory. No searches (the
links are random). ``--no-graph``: no storage.hnsw, and SUTRA_ANN_THRESHOLD
above the size so no graph build starts: the load alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sutra_cluster.client.options import channel_options  # noqa: E402
from sutra_cluster.pb import storage_pb2 as pb  # noqa: E402
from sutra_cluster.pb import storage_pb2_grpc as pbg  # noqa: E402
from tests.helpers import NodeProcess  # noqa: E402
from tests.test_vectors import _clustered  # noqa: E402


def _rss(pid: int, field: str = "VmRSS") -> int:
    """Resident bytes; ``RssAnon`` is the heap's share, ``RssFile`` mapped files' (the mmap vector store)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _du(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def _channel(address: str) -> grpc.Channel:
    """A channel with the client library's short reconnect backoff. gRPC's default backs off
    1, 1.6, 2.6, 4.1 ... s (x1.6, jittered) while the node is not yet listening, so a start timed
    through a default channel was seen up to several seconds after the node was ready."""
    return grpc.insecure_channel(address, options=channel_options(1 << 28))


def _wait(cond: Any, timeout: float, what: str, node: NodeProcess) -> float:
    t0 = time.monotonic()
    while True:
        if not node.alive():
            raise RuntimeError(f"{what}: the node exited; log:\n{node.log_tail()}")
        try:
            if cond():
                return time.monotonic() - t0
        except grpc.RpcError:
            pass  # still starting
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Run:
    """One node, one size."""

    def __init__(self, base: Path, n: int, dim: int, queries: int, env: dict[str, str],
                 efs: tuple[int, ...] = ()) -> None:
        self.n, self.dim, self.efs = n, dim, efs
        self.data = base / "data"
        self.env = {"VECTOR_DIMENSION": str(dim), "MEMORY_THRESHOLD": str(1 << 40), "SUTRA_WAL_FSYNC": "on",
                    "SUTRA_LOG_LEVEL": "info", **env}
        self.node = NodeProcess(self.data, env=self.env, log_path=base / "node.log")
        both = _clustered(np.random.default_rng(17), n + queries, dim)
        self.vectors, self.queries = both[:n], both[n:]
        normed = self.vectors / np.linalg.norm(self.vectors, axis=1, keepdims=True)
        qn = self.queries / np.linalg.norm(self.queries, axis=1, keepdims=True)
        self.truth = [set(np.argpartition(-(normed @ q), 10)[:10].tolist()) for q in qn]
        del normed

    def stub(self) -> pbg.StorageServiceStub:
        return pbg.StorageServiceStub(_channel(self.node.address))

    def stats(self, stub: pbg.StorageServiceStub) -> pb.GetStatsResponse:
        return stub.GetStats(pb.GetStatsRequest(), timeout=10)

    def load(self, stub: pbg.StorageServiceStub, batch: int = 1000) -> float:
        t0 = time.monotonic()
        for lo in range(0, self.n, batch):
            req = pb.LearnBatchRequest(concepts=[
                pb.LearnConceptRequest(concept_id=f"c{i:07d}", content=f"concept {i}",
                                       embedding_f32=self.vectors[i].astype("<f4").tobytes())
                for i in range(lo, min(self.n, lo + batch))])
            stub.LearnBatch(req, timeout=120)
        return self.n / (time.monotonic() - t0)

    def search(self, stub: pbg.StorageServiceStub, seconds: float | None = None, ef: int = 0) -> dict[str, float]:
        """p50/p99 latency and recall@10 over the queries (for ``seconds``, cycling, if given)."""
        lat, hits, done = [], 0, 0
        t_end = None if seconds is None else time.monotonic() + seconds
        while True:
            for i, q in enumerate(self.queries):
                t0 = time.perf_counter()
                res = stub.VectorSearch(pb.VectorSearchRequest(query_f32=q.astype("<f4").tobytes(), k=10,
                                                               ef_search=ef), timeout=60)
                lat.append(time.perf_counter() - t0)
                hits += len({int(r.concept_id[1:]) for r in res.results} & self.truth[i])
                done += 1
                if t_end is not None and time.monotonic() > t_end:
                    break
            if t_end is None or time.monotonic() > t_end:
                break
        ms = np.array(lat) * 1000
        return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                "recall_at_10": hits / (10 * done), "queries": done}

    def run(self) -> dict[str, Any]:
        out: dict[str, Any] = {"concepts": self.n, "dim": self.dim, "raw_vector_bytes": self.n * self.dim * 4}
        self.node.start(wait=False)
        try:
            self.node.wait_ready(120)
            stub = self.stub()
            out["bulk_load_per_s"] = self.load(stub)
            # Ready only once every vector is applied: before that a node below SUTRA_ANN_THRESHOLD
            # reports ready with no graph at all (searches exact by design), and a Flush then
            # saves no storage.hnsw for the restart to adopt.
            out["index_build_s"] = _wait(lambda: (st := self.stats(stub)).vectors >= self.n and st.vector_index_ready,
                                         7200, "the index", self.node)
            st = self.stats(stub)
            out["rss_bytes"] = _rss(self.node.proc.pid)  # type: ignore[union-attr]
            out["rss_anon_bytes"] = _rss(self.node.proc.pid, "RssAnon")  # type: ignore[union-attr]
            out["rss_file_bytes"] = _rss(self.node.proc.pid, "RssFile")  # type: ignore[union-attr]
            out["modes"] = f"{self.env.get('SUTRA_VECTOR_STORAGE', 'memory')}/{self.env.get('SUTRA_QUANTIZATION', 'none')}"
            out["memory_by_part"] = {"vectors": st.vector_memory_bytes, "index": st.index_memory_bytes,
                                     "metadata": st.metadata_memory_bytes}
            out["search_before"] = self.search(stub)
            for ef in self.efs:  # the recall-vs-beam curve on the same graph
                out[f"search_before_ef_{ef}"] = self.search(stub, ef=ef)
            stub.Flush(pb.FlushRequest(), timeout=600)
            out["data_dir_bytes"] = _du(self.data)
        finally:
            self.node.stop(timeout=120)
        t0 = time.monotonic()
        self.node.start(wait=False)
        try:
            stub = self.stub()
            _wait(lambda: self.stats(stub).concepts == self.n, 600, "all concepts visible", self.node)
            out["restart_visible_s"] = time.monotonic() - t0
            _wait(lambda: self.stats(stub).vector_index_ready, 7200, "the index after restart", self.node)
            out["restart_ready_s"] = time.monotonic() - t0
            out["restart_ready_node_cpu_s"] = _cpu_seconds(self.node.proc.pid)  # type: ignore[union-attr]
            st = self.stats(stub)
            out["index_source_after_restart"] = st.vector_index_source
            out["search_first_10s_after_restart"] = self.search(stub, seconds=10.0)
            out["rss_after_restart_bytes"] = _rss(self.node.proc.pid)  # type: ignore[union-attr]
            out["rss_after_restart_anon_bytes"] = _rss(self.node.proc.pid, "RssAnon")  # type: ignore[union-attr]
            out["rss_after_restart_file_bytes"] = _rss(self.node.proc.pid, "RssFile")  # type: ignore[union-attr]
        finally:
            self.node.stop(timeout=120)
        return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _write_storage(data: Path, n: int, dim: int) -> int:
    """storage.dat with ``n`` concepts as a bulk load leaves them (clustered 768-d vectors, contents
    ``concept <i>``); returns its size."""
    from sutra_cluster.pb import wal_pb2
    from sutra_cluster.storage import checkpoint as ckpt
    from sutra_cluster.storage import columns
    from sutra_cluster.storage.vecform import fingerprint, normalise

    # The mixture of tests/test_vectors.py's _clustered, drawn block by block: at 1M the whole
    # matrix and its temporaries would take ~12 GB.
    rng = np.random.default_rng(17)
    centres = rng.standard_normal((20, dim), dtype=np.float32)
    basis = rng.standard_normal((dim, 128), dtype=np.float32) / np.sqrt(128)
    header = wal_pb2.SnapshotHeader(lsn=1, term=1, concepts=n, vector_dimension=dim, node_id="bench")

    def blocks() -> Any:
        yield ckpt.FILE_HEADER.pack(ckpt.MAGIC, ckpt.VERSION, 0)
        yield ckpt._frame(ckpt.KIND_HEADER, header.SerializeToString())
        for lo in range(0, n, ckpt.CHUNK_CONCEPTS):
            hi = min(n, lo + ckpt.CHUNK_CONCEPTS)
            m = hi - lo
            block = (centres[rng.integers(0, 20, m)] + 1.5 * rng.standard_normal((m, 128), dtype=np.float32) @ basis.T
                     + rng.standard_normal((m, dim), dtype=np.float32))
            rows, norms = normalise(block)
            fps = [fingerprint(r.tobytes(), float(x)) for r, x in zip(rows, norms)]
            yield ckpt._frame(ckpt.KIND_COLUMNS, columns.pack(
                [f"c{i:07d}" for i in range(lo, hi)], [f"concept {i}" for i in range(lo, hi)], [1.0] * m,
                [1.0] * m, [1] * m, [1] * m, [{} for _ in range(m)], rows, norms, fps))
        yield ckpt._frame(ckpt.KIND_END, header.SerializeToString())

    data.mkdir(parents=True, exist_ok=True)
    return ckpt.write_checkpoint(data, blocks())


def _write_synthetic_graph(data: Path, n: int, dim: int, quantization: str = "none", m: int = 32) -> int:
    """storage.hnsw for that storage.dat with the shape of a real M=32 graph (faiss' level
    distribution, full neighbour lists) but random links: the file, its read and its
    adoption cost what a built graph's do, without the hour of CPU a build takes at 1M.
    Searches through it find nothing useful, so ``--restart-only`` times no searches.
    ``sq8``: an IndexHNSWSQ with trained ranges and random 8-bit codes (version 2 of the
    file, the whole index), so the memory a quantized node keeps after a start is measured;
    ``pq``: an IndexIVFPQ (``_write_synthetic_pq``)."""
    import contextlib

    import faiss

    from sutra_cluster.storage import annfile

    rng = np.random.default_rng(5)
    if quantization == "sq8":
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, m, faiss.METRIC_INNER_PRODUCT)
        sample = rng.standard_normal((4096, dim), dtype=np.float32)
        index.train(sample / np.linalg.norm(sample, axis=1, keepdims=True))
        codes = faiss.downcast_index(index.storage)
        codes.codes.resize(n * dim)
        view = faiss.rev_swig_ptr(codes.codes.data(), n * dim)
        for lo in range(0, n * dim, 1 << 26):
            view[lo : lo + (1 << 26)] = rng.integers(0, 256, min(1 << 26, n * dim - lo), dtype=np.uint8)
        codes.ntotal = n
    elif quantization == "none":
        index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    else:
        return _write_synthetic_pq(data, n, dim, rng)
    hnsw = index.hnsw
    levels = (1 + np.floor(-np.log(rng.random(n)) / np.log(m))).astype(np.int32)  # P(level > l) = M^-l
    per_level = np.array([hnsw.cum_nb_neighbors(int(lv)) for lv in range(int(levels.max()) + 1)], dtype=np.uint64)
    offsets = np.concatenate([[0], np.cumsum(per_level[levels], dtype=np.uint64)]).astype(np.uint64)
    faiss.copy_array_to_vector(levels, hnsw.levels)
    faiss.copy_array_to_vector(offsets, hnsw.offsets)
    faiss.copy_array_to_vector(rng.integers(0, n, int(offsets[-1]), dtype=np.int32), hnsw.neighbors)
    hnsw.max_level = int(levels.max()) - 1
    hnsw.entry_point = int(np.argmax(levels))
    index.ntotal = n
    unlocked = SimpleNamespace(read=contextlib.nullcontext)  # nothing else touches this index
    cap = annfile.GraphCapture(index, unlocked, n, np.ones(n, dtype=bool),
                               annfile.keys_hash(f"c{i:07d}" for i in range(n)), quantization)
    return annfile.write_graph(data, cap, 1, dim)


def _write_synthetic_pq(data: Path, n: int, dim: int, rng: np.random.Generator) -> int:
    """storage.hnsw of a pq node (IndexIVFPQ, version 2): trained as a node trains it (on the
    first build's 5,000 vectors: 128 lists), then ``n`` random codes spread over random lists, so
    the file, its read and the inverted lists' memory are a real 1M pq index's."""
    import contextlib

    import faiss

    from sutra_cluster.storage import annfile
    from sutra_cluster.storage.quant import new_pq

    sample = rng.standard_normal((5000, dim), dtype=np.float32)
    index = new_pq(dim, len(sample))
    index.pq.cp.min_points_per_centroid = 1  # a node trains on as few, only without faiss' warning
    index.train(sample / np.linalg.norm(sample, axis=1, keepdims=True))
    invlists = index.invlists
    lists = rng.integers(0, index.nlist, n)
    order = np.argsort(lists, kind="stable").astype(np.int64)
    bounds = np.searchsorted(lists[order], np.arange(index.nlist + 1))
    for no in range(index.nlist):
        ids = np.ascontiguousarray(order[bounds[no] : bounds[no + 1]])
        codes = rng.integers(0, 256, (len(ids), index.code_size), dtype=np.uint8)
        invlists.add_entries(no, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(codes))
    index.ntotal = n
    unlocked = SimpleNamespace(read=contextlib.nullcontext)  # nothing else touches this index
    cap = annfile.GraphCapture(index, unlocked, n, np.ones(n, dtype=bool),
                               annfile.keys_hash(f"c{i:07d}" for i in range(n)), "pq")
    return annfile.write_graph(data, cap, 1, dim)


def restart_only(base: Path, n: int, dim: int, env: dict[str, str], graph: bool) -> dict[str, Any]:
    """Start a node on a written storage.dat (and, with ``graph``, a storage.hnsw of the same
    shape as a built one); time and CPU until all ``n`` concepts are visible and the index ready."""
    data = base / "data"
    out: dict[str, Any] = {"concepts": n, "dim": dim, "raw_vector_bytes": n * dim * 4,
                           "storage_dat_bytes": _write_storage(data, n, dim)}
    if graph:
        out["storage_hnsw_bytes"] = _write_synthetic_graph(data, n, dim, env.get("SUTRA_QUANTIZATION", "none"))
    else:  # no graph built either: its CPU would count as the start's
        env = {"SUTRA_ANN_THRESHOLD": str(4 * n), **env}
    node = NodeProcess(data, env={"VECTOR_DIMENSION": str(dim), "MEMORY_THRESHOLD": str(1 << 40),
                                  "SUTRA_LOG_LEVEL": "info", **env}, log_path=base / "node.log")
    t0 = time.monotonic()
    node.start(wait=False)
    try:
        channel = _channel(node.address)
        stub = pbg.StorageServiceStub(channel)
        _wait(lambda: stub.GetStats(pb.GetStatsRequest(), timeout=10).concepts == n, 3600, "all concepts visible",
              node)
        out["restart_visible_s"] = time.monotonic() - t0
        pid = node.proc.pid  # type: ignore[union-attr]
        out["restart_visible_node_cpu_s"] = _cpu_seconds(pid)
        if graph:
            _wait(lambda: stub.GetStats(pb.GetStatsRequest(), timeout=10).vector_index_ready, 3600, "the index",
                  node)
            out["restart_ready_s"] = time.monotonic() - t0
            out["restart_ready_node_cpu_s"] = _cpu_seconds(pid)
        st = stub.GetStats(pb.GetStatsRequest(), timeout=10)
        out["index_source_after_restart"] = st.vector_index_source
        out["rss_at_ready_bytes"] = _rss(pid)
        out["rss_peak_bytes"] = _rss(pid, "VmHWM")  # the start's high-water mark (transient copies)
        # The buffers a start frees go back to the OS when the maintainer is next idle (malloc_trim):
        # resident memory once that has happened is what the node keeps.
        time.sleep(5.0)
        out["rss_after_restart_bytes"] = _rss(pid)
        out["rss_after_restart_anon_bytes"] = _rss(pid, "RssAnon")
        out["rss_after_restart_file_bytes"] = _rss(pid, "RssFile")
        out["modes"] = f"{env.get('SUTRA_VECTOR_STORAGE', 'memory')}/{env.get('SUTRA_QUANTIZATION', 'none')}"
        out["memory_by_part"] = {"vectors": st.vector_memory_bytes, "index": st.index_memory_bytes,
                                 "metadata": st.metadata_memory_bytes}
        channel.close()
    finally:
        node.stop(timeout=120)
    return out


def _table(results: list[dict[str, Any]]) -> str:
    rows = [("concepts", lambda r: f"{r['concepts']:,} ({r.get('modes', 'memory/none')})"),
            ("RSS once indexed", lambda r: f"{r['rss_bytes'] / 1e6:,.0f} MB ({r['rss_bytes'] / r['raw_vector_bytes']:.2f}x raw, "
                                           f"{r['rss_bytes'] / r['concepts']:,.0f} B/concept)"),
            ("  heap / mapped files", lambda r: f"{r['rss_anon_bytes'] / 1e6:,.0f} / {r['rss_file_bytes'] / 1e6:,.0f} MB"
                                               f" ({r['rss_anon_bytes'] / r['raw_vector_bytes']:.2f}x raw on the heap)"),
            ("  vectors/index/metadata", lambda r: "/".join(f"{v / 1e6:,.0f}" for v in r["memory_by_part"].values())
             + " MB"),
            ("data directory", lambda r: f"{r['data_dir_bytes'] / 1e6:,.0f} MB "
                                         f"({r['data_dir_bytes'] / r['raw_vector_bytes']:.2f}x raw)"),
            ("bulk load", lambda r: f"{r['bulk_load_per_s']:,.0f} concepts/s"),
            ("index ready after load", lambda r: f"{r['index_build_s']:.1f} s"),
            ("search p50/p99 before", lambda r: f"{r['search_before']['p50_ms']:.1f} / {r['search_before']['p99_ms']:.1f} ms"),
            ("recall@10", lambda r: f"{r['search_before']['recall_at_10']:.3f}" + "".join(
                f" ({k[len('search_before_'):]}: {v['recall_at_10']:.3f}, p50/p99 {v['p50_ms']:.1f}/{v['p99_ms']:.1f} ms)"
                for k, v in r.items() if k.startswith("search_before_ef_"))),
            ("restart: visible / ready", lambda r: f"{r['restart_visible_s']:.1f} / {r['restart_ready_s']:.1f} s"
             f" ({r['index_source_after_restart']}; node CPU {r.get('restart_ready_node_cpu_s', 0):.1f} s)"),
            ("search p50/p99 first 10 s", lambda r: f"{r['search_first_10s_after_restart']['p50_ms']:.1f} / "
                                                   f"{r['search_first_10s_after_restart']['p99_ms']:.1f} ms")]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  " + "  |  ".join(fmt(r) for r in results) for name, fmt in rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100000,300000")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--quick", action="store_true", help="3,000 x 64-d, 50 queries: a smoke run")
    p.add_argument("--ef", default="", help="also search with these ef_search (comma-separated) before the restart")
    p.add_argument("--storage", choices=("memory", "mmap"), default=None, help="SUTRA_VECTOR_STORAGE")
    p.add_argument("--quantization", choices=("none", "sq8", "pq"), default=None, help="SUTRA_QUANTIZATION")
    p.add_argument("--out", default="bench/results/scale.json")
    p.add_argument("--tmp", default=None, help="folder for the data directories (default: the system's)")
    p.add_argument("--keep", action="store_true",
                   help="keep each size's data directory (its path is printed), to time more starts of it")
    p.add_argument("--restart-only", action="store_true",
                   help="write storage.dat and a random-link storage.hnsw directly; time a start to ready (no load)")
    p.add_argument("--no-graph", action="store_true", help="with --restart-only: no storage.hnsw (and none built)")
    a = p.parse_args()
    sizes = [3000] if a.quick else [int(s) for s in a.sizes.split(",")]
    dim, queries = (64, 50) if a.quick else (a.dim, a.queries)
    env = {"SUTRA_ANN_THRESHOLD": "1000"} if a.quick else {}
    if a.storage:
        env["SUTRA_VECTOR_STORAGE"] = a.storage
    if a.quantization:
        env["SUTRA_QUANTIZATION"] = a.quantization
    results = []
    for n in sizes:
        base = Path(tempfile.mkdtemp(prefix=f"scale-{n}-", dir=a.tmp))
        try:
            if a.restart_only:
                results.append(restart_only(base, n, dim, env, not a.no_graph))
                r = results[-1]
                print(f"{n:,} concepts: storage.dat {r['storage_dat_bytes'] / 1e6:,.0f} MB, all visible after "
                      f"{r['restart_visible_s']:.1f} s ({r['restart_visible_node_cpu_s']:.1f} s of node CPU)"
                      + (f", ready after {r['restart_ready_s']:.1f} s ({r['restart_ready_node_cpu_s']:.1f} s CPU; "
                         f"{r['index_source_after_restart']})" if "restart_ready_s" in r else "")
                      + f", RSS {r['rss_at_ready_bytes'] / 1e6:,.0f} MB at ready, 5 s later "
                      f"{r['rss_after_restart_bytes'] / 1e6:,.0f} MB (peak {r['rss_peak_bytes'] / 1e6:,.0f} MB) "
                      f"({r['rss_after_restart_bytes'] / r['raw_vector_bytes']:.2f}x raw; heap "
                      f"{r['rss_after_restart_anon_bytes'] / 1e6:,.0f} MB = "
                      f"{r['rss_after_restart_anon_bytes'] / r['raw_vector_bytes']:.2f}x raw), parts "
                      + "/".join(f"{v / 1e6:,.0f}" for v in r["memory_by_part"].values()) + " MB")
            else:
                efs = tuple(int(e) for e in a.ef.split(",") if e)
                results.append(Run(base, n, dim, queries, env, efs).run())
        finally:
            if a.keep:
                print(f"kept {base}", file=sys.stderr)
            else:
                shutil.rmtree(base, ignore_errors=True)
        print(f"done: {n:,} concepts", file=sys.stderr)
    if not a.restart_only:
        print(_table(results))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv), "cpus": os.cpu_count(), "results": results},
                              indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
