"""Sutra's write path beside PostgreSQL, Redis, etcd and the disk, in one run.

    ./dev bench-peers                       # installs PostgreSQL and Redis when missing, then runs this
    .venv/bin/python bench/bench_peers.py [--rounds 3] [--batches 12] [--singles 300] [--systems ...]
    .venv/bin/python bench/bench_peers.py --before /path/to/older/checkout   # also runs that checkout's nodes
    .venv/bin/python bench/bench_peers.py --profile sutra-1-flat --rounds 1  # py-spy + per-thread CPU into bench/profiles/
    .venv/bin/python bench/bench_peers.py --concurrent-topologies 1,2       # 32 threads also against leader + sync replica

Every system writes the same 3,288-byte records (id, ~200 B content, 768-d
float32) durably: batches of --batch-size (1,000) and then --singles sequential
single writes, from one Python client thread, on a fresh instance per round
for Sutra (peers: one instance, new keys each round). Reported: medians of
--rounds, records/s. Also 32 client threads of single writes against one Sutra
node and against a bare grpcio server that answers 8 bytes (same request
bytes, same worker count), measured in the same run: the ceiling of a sync
Python gRPC server here. How the peers' binaries are found: bench/peers.py.

Sutra topologies: 1 node; leader + 1 replica, sync (PostgreSQL's topology);
leader + 2 replicas, sync with SUTRA_SYNC_REPLICAS=1. Replicated topologies run
as deployed, with an etcd of their own deciding who leads (--failover none: fixed
roles, no etcd; a leader then streams only records durable on it, see
docs/HA.md). Each with HNSW off
(SUTRA_ANN_THRESHOLD above the data) and at the default threshold (10,000), where
the batched phase's 12,000 records make HNSW indexing due while the single
writes run (nodes since SUTRA_INDEX_QUIET_MS wait for them; the report says how
long after the last write every node's index is ready). Prints a table with
ratios and writes JSON under bench/results/. All processes are ended and the
data removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import peers  # noqa: E402  (bench/ is on sys.path: this script's folder)
from cpuprobe import python_loop_ms  # noqa: E402
from diskprobe import fsync_rate  # noqa: E402
from memprobe import fresh_memory_cost  # noqa: E402

from sutra_cluster.pb import storage_pb2 as pb  # noqa: E402
from tests import cluster as tc  # noqa: E402
from tests import helpers  # noqa: E402
from tests.helpers import NodeProcess  # noqa: E402

DIM = 768
SERVICE = "/sutra.storage.StorageService/"
OPTS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
TOPOLOGIES = {  # key: (replicas, label)
    "1": (0, "Sutra, 1 node"),
    "2": (1, "Sutra, leader + 1 sync replica"),
    "3": (2, "Sutra, leader + 2 replicas, SUTRA_SYNC_REPLICAS=1"),
}


def stat_fields(path: str) -> list[str]:
    """The fields of a ``/proc/<pid>[/task/<tid>]/stat`` file after the command name
    (fields[0] is the state; utime is fields[11], stime fields[12], minflt fields[7])."""
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    parts = stat_fields(f"/proc/{pid}/stat")
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def system_cpu_seconds(pid: int) -> float:
    """The kernel's share of ``cpu_seconds``: time in system calls, page faults and the like."""
    return int(stat_fields(f"/proc/{pid}/stat")[12]) / os.sysconf("SC_CLK_TCK")


def machine_times() -> tuple[int, int]:
    """(all, idle + iowait) jiffies of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]


def minor_faults(pid: int) -> int:
    """Minor page faults of ``pid`` so far: each is a page it touched for the first time
    (or again after handing it back), cleared by the kernel."""
    return int(stat_fields(f"/proc/{pid}/stat")[7])


def wakeups(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid``: each is a thread that
    blocked (a lock, the GIL, a condition, I/O) and was woken again."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{tid}/status") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
    return total


def make_records(n: int, prefix: str, rng: np.random.Generator) -> list[peers.Record]:
    vecs = rng.standard_normal((n, DIM), dtype=np.float32).astype("<f4")
    pad = "lorem ipsum dolor sit amet " * 8  # 216 characters
    return [peers.Record(f"{prefix}-{i:07d}", f"{i} {pad}"[:200], vecs[i].tobytes()) for i in range(n)]


# ---- Sutra ------------------------------------------------------------------
class Sutra:
    """A Sutra topology as real processes (tests/cluster.py), optionally from
    another checkout (``checkout``: its nodes run that tree's code)."""

    def __init__(self, base: Path, topo: str, hnsw: bool, checkout: Path | None = None,
                 env: dict[str, str] | None = None, managed: bool = True) -> None:
        self.base = base
        self.managed = managed
        self.replicas, label = TOPOLOGIES[topo]
        self.key = f"sutra-{topo}-{'hnsw' if hnsw else 'flat'}" + ("-before" if checkout else "")
        self.name = f"{label}, HNSW {'default' if hnsw else 'off'}" + (" (before)" if checkout else "")
        self.checkout = checkout
        self.env = {"VECTOR_DIMENSION": str(DIM), "SUTRA_LOG_LEVEL": "warning", **(env or {})}
        if not hnsw:
            self.env["SUTRA_ANN_THRESHOLD"] = str(1 << 40)
        self.stack = contextlib.ExitStack()
        self.pids: list[int] = []
        self.etcd_pid: int | None = None  # a managed topology's own etcd
        self.address = ""

    def start(self) -> None:
        old = helpers.ROOT
        helpers.ROOT = self.checkout or old  # NodeProcess.start runs `python -m sutra_cluster` there
        try:
            if self.replicas == 0:
                node = NodeProcess(self.base / "n", env=self.env)
                self.stack.callback(node.stop)
                node.start()
                nodes: list[NodeProcess] = [node]
            else:
                env = {**self.env, "SUTRA_SYNC_REPLICAS": "1"}
                if self.managed:
                    c = self.stack.enter_context(tc.running_managed_cluster(self.base, self.replicas, "sync", env=env))
                    self.etcd_pid = c.etcd_pid
                else:
                    c = self.stack.enter_context(tc.running_cluster(self.base, self.replicas, "sync", env=env))
                    tc.wait_streaming(c.leader, [r.name for r in c.replicas])
                nodes = list(c.nodes)
        finally:
            helpers.ROOT = old
        self.address = nodes[0].address
        self.addresses = [n.address for n in nodes]
        self.pids = [n.proc.pid for n in nodes if n.proc is not None]
        self.channel = grpc.insecure_channel(self.address, options=OPTS)
        self.stack.callback(self.channel.close)
        self.channel.unary_unary(SERVICE + "LearnConcept")(single_request(warm_record()), timeout=60)  # connect

    def stop(self) -> None:
        self.stack.close()

    def cpu(self) -> list[float]:
        return [cpu_seconds(p) for p in self.pids]

    def system_cpu(self) -> list[float]:
        return [system_cpu_seconds(p) for p in self.pids]

    def wakeups(self) -> list[int]:
        return [wakeups(p) for p in self.pids]

    def faults(self) -> list[int]:
        return [minor_faults(p) for p in self.pids]

    def batched(self, recs: Sequence[peers.Record], size: int) -> float:
        reqs = []
        for c in peers.chunks(recs, size):
            req = pb.LearnBatchRequest()
            for r in c:
                req.concepts.add(concept_id=r.rid, content=r.content, embedding_f32=r.vector)
            reqs.append(req.SerializeToString())
        call = self.channel.unary_unary(SERVICE + "LearnBatch")
        t0 = time.perf_counter()
        for q in reqs:
            call(q, timeout=120)
        return time.perf_counter() - t0

    def single(self, recs: Sequence[peers.Record]) -> float:
        reqs = [single_request(r) for r in recs]
        call = self.channel.unary_unary(SERVICE + "LearnConcept")
        t0 = time.perf_counter()
        for q in reqs:
            call(q, timeout=60)
        return time.perf_counter() - t0


    def index_catchup(self, timeout: float = 600.0) -> float:
        """Seconds from now until every node reports vector_index_ready (its
        HNSW graph holds all but a few vectors): how long indexing that paused
        for the writes takes to catch up once they stop.  Raises TimeoutError."""
        t0 = time.perf_counter()
        pending = list(self.addresses)
        while pending:
            with grpc.insecure_channel(pending[0], options=OPTS) as ch:
                stats = ch.unary_unary(SERVICE + "GetStats", response_deserializer=pb.GetStatsResponse.FromString)(
                    pb.GetStatsRequest().SerializeToString(), timeout=60)
            if stats.vector_index_ready:
                pending.pop(0)
                continue
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"{pending[0]}: vector index not ready {timeout:.0f} s after the writes")
            time.sleep(0.05)  # polling a remote node's stats; the deadline above bounds it
        return time.perf_counter() - t0


def single_request(r: peers.Record) -> bytes:
    return pb.LearnConceptRequest(concept_id=r.rid, content=r.content, embedding_f32=r.vector).SerializeToString()


def concurrent(address: str, method: str, reqs: Sequence[bytes], threads: int) -> float:
    """Calls/s for ``reqs`` spread over ``threads`` client threads, each with its own channel."""
    chans = [grpc.insecure_channel(address, options=OPTS) for _ in range(threads)]
    try:
        calls = [ch.unary_unary(method) for ch in chans]
        for c in calls:
            c(reqs[0] if method.startswith("/bench") else single_request(warm_record()), timeout=60)
        barrier = threading.Barrier(threads + 1)
        errors: list[BaseException] = []

        def work(k: int) -> None:
            barrier.wait()
            try:
                for q in reqs[k::threads]:
                    calls[k](q, timeout=60)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for t in ts:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in ts:
            t.join()
        wall = time.perf_counter() - t0
        if errors:
            raise errors[0]
        return len(reqs) / wall
    finally:
        for ch in chans:
            ch.close()


def warm_record() -> peers.Record:
    return make_records(1, f"warm-{time.monotonic_ns()}", np.random.default_rng())[0]


# ---- profiles ---------------------------------------------------------------
def thread_times(pid: int) -> dict[int, tuple[int, int]]:
    """CPU clock ticks and voluntary context switches of each thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, StopIteration):
            parts = stat_fields(f"/proc/{pid}/task/{tid}/stat")
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                wake = next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
            out[int(tid)] = (int(parts[11]) + int(parts[12]), wake)
    return out


def thread_names(pid: int) -> dict[int, str]:
    """Python thread names by OS thread id, from ``py-spy dump`` (threads it does
    not list are grpcio's and numpy's native threads)."""
    exe = Path(sys.executable).parent / "py-spy"
    txt = subprocess.run([str(exe), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60).stdout
    names = {}
    for line in txt.splitlines():
        if line.startswith("Thread ") and '"' in line:
            tid = line.split()[1]
            if tid.isdigit():
                names[int(tid)] = line.split('"')[1]
    return names


class ThreadTable:
    """Each node's CPU and wake-ups per write, thread by thread, over one phase:
    unlike py-spy's samples (which count a thread woken and waiting for a CPU
    as busy), these are the kernel's own counts."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.before = {p: thread_times(p) for p in self.pids}

    def lines(self, writes: int) -> list[str]:
        hz = os.sysconf("SC_CLK_TCK")
        out = ["", f"## per thread, per record written ({writes} records; CPU from /proc, clock ticks of 1/{hz} s)"]
        for i, pid in enumerate(self.pids):
            after, names = thread_times(pid), thread_names(pid)
            rows = []
            for tid, (cpu, wake) in after.items():
                c0, w0 = self.before[pid].get(tid, (0, 0))
                rows.append(((cpu - c0) / hz / writes * 1e6, (wake - w0) / writes, names.get(tid, "(native)")))
            total_cpu, total_wake = sum(r[0] for r in rows), sum(r[1] for r in rows)
            out += ["", f"### {'leader' if i == 0 else f'replica {i}'}: {total_cpu:,.0f} µs CPU, "
                        f"{total_wake:.1f} wake-ups per record", "| CPU µs | wake-ups | thread |", "|---:|---:|---|"]
            out += [f"| {c:,.0f} | {w:.2f} | {n} |" for c, w, n in sorted(rows, reverse=True) if c > 0 or w >= 0.05]
        return out


class Profiler:
    """py-spy attached to one process for the length of a phase; the summary
    (top functions by own and by inclusive samples, then every node's CPU and
    wake-ups per thread) goes to bench/profiles/."""

    def __init__(self, pid: int, out: Path, title: str, pids: Sequence[int] = ()) -> None:
        self.raw = out.with_suffix(".raw")
        self.out, self.title = out, title
        self.threads = ThreadTable(pids or [pid])
        exe = Path(sys.executable).parent / "py-spy"
        self.proc = subprocess.Popen([str(exe), "record", "-p", str(pid), "-r", "250", "-f", "raw", "-o",
                                      str(self.raw), "--nonblocking"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # py-spy attaches

    def finish(self, writes: int) -> None:
        table = self.threads.lines(writes)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)
        summarise(self.raw, self.out, self.title)
        self.raw.unlink(missing_ok=True)
        with self.out.open("a") as f:
            f.write("\n".join(table) + "\n")


def summarise(raw: Path, out: Path, title: str, top: int = 40) -> None:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        total += count
        frames = [f.split(":")[0] + ")" if ":" in f else f for f in stack.split(";")]
        frames = [f.replace(str(ROOT) + "/", "").replace(sys.prefix + "/", "") for f in frames]
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    lines = [f"# {title}", f"# py-spy record, 250 Hz, on-CPU samples only: {total} samples",
             "# (a thread woken and waiting for a CPU or the GIL counts as on-CPU: on a busy machine much of",
             "# Condition.wait's own share is that; the per-thread table at the end has the kernel's CPU counts)", "",
             "## own samples (where the CPU is)", "| % | function (file) |", "|---:|---|"]
    lines += [f"| {100 * c / max(1, total):5.1f} | {f} |" for f, c in own.most_common(top)]
    lines += ["", "## inclusive samples (what it is spent under)", "| % | function (file) |", "|---:|---|"]
    lines += [f"| {100 * c / max(1, total):5.1f} | {f} |" for f, c in incl.most_common(top)]
    out.write_text("\n".join(lines) + "\n")


# ---- the run ------------------------------------------------------------------
def measure(sys_: Any, recs: Sequence[peers.Record], singles: Sequence[peers.Record], size: int,
            prof: Callable[[str], Profiler | None], probe_dir: Path) -> dict[str, float]:
    """One system's figures, with what the machine's memory and disk cost just before
    (bench/memprobe.py, bench/diskprobe.py)."""
    fsyncs, loop = fsync_rate(probe_dir), python_loop_ms()
    with fresh_memory_cost() as cost:
        row = {"fresh_memory_ms_per_mb": cost, "disk_fsyncs_per_s": fsyncs, "cpu_probe_ms": loop}
        row.update(_measure(sys_, recs, singles, size, prof))
    return row


def _measure(sys_: Any, recs: Sequence[peers.Record], singles: Sequence[peers.Record], size: int,
             prof: Callable[[str], Profiler | None]) -> dict[str, float]:
    row: dict[str, float] = {}
    cpu0 = sys_.cpu() if hasattr(sys_, "cpu") else None
    sys0 = sys_.system_cpu() if hasattr(sys_, "system_cpu") else None
    f0 = sys_.faults() if hasattr(sys_, "faults") else None
    m0 = machine_times()
    p = prof("batched")
    row["batched"] = len(recs) / sys_.batched(recs, size)
    if p:
        p.finish(len(recs))
    m1 = machine_times()
    # How busy the whole machine was meanwhile: with the nodes' own CPU, whether anything
    # else took the cores while this system ran.
    row["machine_busy_batched"] = 1 - (m1[1] - m0[1]) / max(1, m1[0] - m0[0])
    cpu1 = sys_.cpu() if cpu0 is not None else None
    if sys0 is not None:
        row["all_nodes_system_cpu_us_per_batched_record"] = (sum(sys_.system_cpu()) - sum(sys0)) / len(recs) * 1e6
    if f0 is not None:
        f1 = sys_.faults()
        row["leader_faults_per_batched_record"] = (f1[0] - f0[0]) / len(recs)
        row["all_nodes_faults_per_batched_record"] = (sum(f1) - sum(f0)) / len(recs)
        if sys0 is not None and sum(f1) > sum(f0):
            # All the nodes' kernel time over their page faults: an upper bound on what a
            # fault cost. It rises several-fold when the host must back fresh pages again
            # (docs/HA.md, "The later rounds' kernel CPU"), while the fault count stays.
            row["all_nodes_system_cpu_us_per_fault"] = (row["all_nodes_system_cpu_us_per_batched_record"]
                                                        / row["all_nodes_faults_per_batched_record"])
    w1 = sys_.wakeups() if hasattr(sys_, "wakeups") else None
    p = prof("single")
    row["single"] = len(singles) / sys_.single(singles)
    if p:
        p.finish(len(singles))
    if cpu0 is not None and cpu1 is not None:
        cpu2 = sys_.cpu()
        row["leader_cpu_us_per_batched_record"] = (cpu1[0] - cpu0[0]) / len(recs) * 1e6
        row["all_nodes_cpu_us_per_batched_record"] = (sum(cpu1) - sum(cpu0)) / len(recs) * 1e6
        row["leader_cpu_us_per_single_write"] = (cpu2[0] - cpu1[0]) / len(singles) * 1e6
        row["all_nodes_cpu_us_per_single_write"] = (sum(cpu2) - sum(cpu1)) / len(singles) * 1e6
    if w1 is not None:
        w2 = sys_.wakeups()
        row["leader_wakeups_per_single_write"] = (w2[0] - w1[0]) / len(singles)
        row["all_nodes_wakeups_per_single_write"] = (sum(w2) - sum(w1)) / len(singles)
    if hasattr(sys_, "index_catchup"):  # after the wake-up count: polling stats wakes the nodes too
        row["index_ready_after_writes_s"] = sys_.index_catchup()
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=12, help="batches per round (12 x 1,000 passes the HNSW threshold)")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--singles", type=int, default=300)
    ap.add_argument("--threads", type=int, default=32, help="client threads of the concurrent single writes")
    ap.add_argument("--concurrent-writes", type=int, default=1600)
    ap.add_argument("--concurrent-topologies", default="1",
                    help="Sutra topologies the concurrent single writes also run on (1; 2: leader + 1 sync replica)")
    ap.add_argument("--systems", default="disk,pg,redis,etcd,sutra,concurrent",
                    help="comma list of disk, pg, redis, etcd, sutra, concurrent")
    ap.add_argument("--topologies", default="1,2,3", help="Sutra topologies: 1 node, 2 leader+1, 3 leader+2")
    ap.add_argument("--hnsw", default="off,default", help="HNSW settings to run: off, default or both")
    ap.add_argument("--before", default="", help="another checkout: its Sutra nodes run too, labelled (before)")
    ap.add_argument("--profile", default="", help="profile these Sutra keys' leaders (sutra-1-flat,...) in bench/profiles/")
    ap.add_argument("--node-env", default="", help="extra settings for every Sutra node: K=V,K=V")
    ap.add_argument("--failover", choices=("etcd", "none"), default="etcd",
                    help="replicated Sutra topologies with an etcd of their own, as deployed (default), or "
                         "with fixed roles and no etcd")
    ap.add_argument("--pg-bin", default="", help="folder of initdb/pg_ctl (default: see bench/peers.py)")
    ap.add_argument("--tmp", default=None, help="folder for all data (default: the system's temp folder)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "peers.json"))
    ap.add_argument("--echo-server", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--echo-workers", type=int, default=32, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo_server:
        peers.serve_echo(args.echo_server, args.echo_workers)
        return 0
    chosen = set(args.systems.split(","))
    node_env = dict(kv.split("=", 1) for kv in args.node_env.split(",") if kv)
    load0 = os.getloadavg()[0]
    base = Path(tempfile.mkdtemp(prefix="bench-peers-", dir=args.tmp))
    n = args.batches * args.batch_size
    rng = np.random.default_rng(7)
    peer_list: list[Any] = []
    if "disk" in chosen:
        peer_list.append(peers.Disk(base))
    if "pg" in chosen:
        peer_list.append(peers.Postgres(base, peers.pg_bindir(args.pg_bin)))
    if "redis" in chosen:
        peer_list.append(peers.Redis(base))
    if "etcd" in chosen:
        peer_list.append(peers.Etcd(base))
    checkouts: list[Path | None] = [None] + ([Path(args.before).resolve()] if args.before else [])
    hnsw_modes = [m == "default" for m in args.hnsw.split(",")]
    sutra_keys = [(t, h, co) for co in checkouts for t in args.topologies.split(",") for h in hnsw_modes] \
        if "sutra" in chosen else []
    runs: dict[str, list[dict[str, float]]] = {}
    names: dict[str, str] = {}
    conc: dict[str, list[float]] = {}
    echo = peers.EchoServer(32) if "concurrent" in chosen else None
    profiles = ROOT / "bench" / "profiles"
    started: list[Any] = []
    try:
        for p in peer_list:
            p.start()
            started.append(p)
        if echo is not None:
            echo.start()
        for rnd in range(args.rounds):
            recs = make_records(n + args.singles, f"r{rnd}", rng)
            batch, singles = recs[:n], recs[n:]
            for p in peer_list:
                key = type(p).__name__.lower()
                names[key] = p.name
                runs.setdefault(key, []).append(measure(p, batch, singles, args.batch_size, lambda _: None, base))
                print(f"round {rnd + 1}: {p.name}: {runs[key][-1]}", flush=True)
            # Which tree goes first alternates round by round, so the position in a
            # round (the writeback of the runs before it) does not favour one tree.
            first = checkouts if rnd % 2 == 0 else checkouts[::-1]
            # And which topology goes first turns round by round: the first Sutra system
            # of a round follows the long-lived peers, which free no memory, so it met
            # fresh memory at the host's rate (~2.7 ms/MB against ~0.5 after a node's
            # exit: the fresh-memory column) and paid ~2.5x the CPU per record.
            turn = rnd % max(1, len(sutra_keys))
            for topo, hnsw, co in sorted(sutra_keys[turn:] + sutra_keys[:turn], key=lambda k: first.index(k[2])):
                s = Sutra(base / f"s{rnd}-{topo}-{int(hnsw)}-{int(co is not None)}", topo, hnsw, co, node_env,
                          managed=args.failover == "etcd")
                names[s.key] = s.name
                try:
                    s.start()

                    def prof(phase: str, s: Sutra = s) -> Profiler | None:
                        if s.key not in args.profile.split(","):
                            return None
                        profiles.mkdir(exist_ok=True)
                        return Profiler(s.pids[0], profiles / f"{s.key}-{phase}.txt",
                                        f"{s.name}: leader process, {phase} writes ({args.batch_size}/batch)",
                                        s.pids)

                    runs.setdefault(s.key, []).append(measure(s, batch, singles, args.batch_size, prof, base))
                finally:
                    s.stop()
                print(f"round {rnd + 1}: {s.name}: {runs[s.key][-1]}", flush=True)
            if echo is not None:
                creqs = [single_request(r) for r in make_records(args.concurrent_writes, f"c{rnd}", rng)]
                conc.setdefault("echo", []).append(concurrent(echo.address, peers.ECHO_METHOD, creqs, args.threads))
                for co in checkouts if rnd % 2 == 0 else checkouts[::-1]:
                    for topo in args.concurrent_topologies.split(","):
                        s = Sutra(base / f"c{rnd}-{topo}-{int(co is not None)}", topo, False, co, node_env,
                                  managed=args.failover == "etcd")
                        try:
                            s.start()
                            w0, c0 = s.wakeups(), s.cpu()
                            conc.setdefault(s.key, []).append(concurrent(s.address, SERVICE + "LearnConcept", creqs,
                                                                         args.threads))
                            w1, c1 = s.wakeups(), s.cpu()
                            conc.setdefault(s.key + ":leader-wakeups", []).append((w1[0] - w0[0]) / len(creqs))
                            conc.setdefault(s.key + ":leader-cpu-us", []).append((c1[0] - c0[0]) / len(creqs) * 1e6)
                        finally:
                            s.stop()
                print(f"round {rnd + 1}: concurrent: { {k: v[-1] for k, v in conc.items()} }", flush=True)
    finally:
        for p in started:
            p.stop()
        if echo is not None:
            echo.stop()
    import shutil

    shutil.rmtree(base, ignore_errors=True)
    result = report(runs, names, conc, args, load0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


def report(runs: dict[str, list[dict[str, float]]], names: dict[str, str], conc: dict[str, list[float]],
           args: argparse.Namespace, load0: float) -> dict[str, Any]:
    # A figure is a median of the rounds that have it (a cell without page faults has no cost per fault).
    med = {k: {name: statistics.median(r[name] for r in v if name in r)
               for name in dict.fromkeys(name for r in v for name in r)} for k, v in runs.items()}
    cmed = {k: statistics.median(v) for k, v in conc.items()}
    pg = med.get("postgres")
    print(f"\n{args.batches * args.batch_size:,} records in batches of {args.batch_size:,}, then {args.singles} "
          f"sequential single writes; records/s, medians of {args.rounds}\n")
    print("| system | batched | single write | batched vs PostgreSQL | single vs PostgreSQL |"
          " leader CPU µs/record batched / single | wake-ups per single write, leader / all nodes |"
          " all nodes per batched record: CPU µs / page faults | system CPU µs per page fault |"
          " fresh memory, ms/MB | disk, fsyncs/s | CPU probe, ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, m in med.items():
        vs = (f"{m['batched'] / pg['batched']:.2f}× | {m['single'] / pg['single']:.2f}×") if pg else "– | –"
        cpu = (f"{m['leader_cpu_us_per_batched_record']:.0f} / {m['leader_cpu_us_per_single_write']:.0f}"
               if "leader_cpu_us_per_single_write" in m else "")
        wk = (f"{m['leader_wakeups_per_single_write']:.1f} / {m['all_nodes_wakeups_per_single_write']:.1f}"
              if "leader_wakeups_per_single_write" in m else "")
        nodes = (f"{m['all_nodes_cpu_us_per_batched_record']:.0f} / {m['all_nodes_faults_per_batched_record']:.2f}"
                 if "all_nodes_faults_per_batched_record" in m else "")
        per_fault = f"{m['all_nodes_system_cpu_us_per_fault']:.1f}" if "all_nodes_system_cpu_us_per_fault" in m else ""
        print(f"| {names[k]} | {m['batched']:,.0f} | {m['single']:,.0f} | {vs} | {cpu} | {wk} | {nodes} | {per_fault} | "
              f"{m['fresh_memory_ms_per_mb']:.2f} | {m['disk_fsyncs_per_s']:,.0f} | {m['cpu_probe_ms']:.1f} |")
    goals: list[tuple[str, float | None, str]] = []

    def ratio(a: str, am: str, b: str, bm: str) -> float | None:
        return med[a][am] / med[b][bm] if a in med and b in med else None

    for suffix in ("", "-before"):
        tag = " (before)" if suffix else ""
        goals += [
            (f"single writes, leader + 1 sync replica vs PostgreSQL{tag}",
             ratio(f"sutra-2-flat{suffix}", "single", "postgres", "single"), "≥ 1.0"),
            (f"batched, leader + 1 sync replica vs PostgreSQL{tag}",
             ratio(f"sutra-2-flat{suffix}", "batched", "postgres", "batched"), "≥ 2.5"),
            (f"concurrent single writes ({args.threads} threads), 1 node vs bare grpcio{tag}",
             cmed[f"sutra-1-flat{suffix}"] / cmed["echo"] if f"sutra-1-flat{suffix}" in cmed and "echo" in cmed
             else None, "≥ 0.6"),
            (f"concurrent single writes ({args.threads} threads), leader + 1 sync replica vs bare grpcio{tag}",
             cmed[f"sutra-2-flat{suffix}"] / cmed["echo"] if f"sutra-2-flat{suffix}" in cmed and "echo" in cmed
             else None, "(no goal)"),
            (f"batched, 1 node vs the disk's limit{tag}", ratio(f"sutra-1-flat{suffix}", "batched", "disk", "batched"),
             "≥ 0.3"),
            (f"batched, leader + 2 replicas vs 1 node{tag}",
             ratio(f"sutra-3-flat{suffix}", "batched", f"sutra-1-flat{suffix}", "batched"), "≥ 0.6"),
            (f"single writes, leader + 2 replicas, HNSW indexing vs off{tag}",
             ratio(f"sutra-3-hnsw{suffix}", "single", f"sutra-3-flat{suffix}", "single"), "≥ 0.8"),
            (f"single writes, leader + 1 sync replica, HNSW indexing vs off{tag}",
             ratio(f"sutra-2-hnsw{suffix}", "single", f"sutra-2-flat{suffix}", "single"), "≥ 0.8"),
        ]
    print("\n| measure | ratio | goal |\n|---|---:|---|")
    for what, v, goal in goals:
        if v is not None:
            print(f"| {what} | {v:.2f} | {goal} |")
    ready = {names[k]: m["index_ready_after_writes_s"] for k, m in med.items() if "-hnsw" in k}
    if ready:
        print("\nHNSW index ready on every node, seconds after the last single write: "
              + ", ".join(f"{k} {v:.1f}" for k, v in ready.items()))
    if cmed:
        print("\nconcurrent single writes/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in cmed.items() if ":" not in k))
        print("per concurrent write, leader wake-ups / CPU µs: " + ", ".join(
            f"{k} {cmed[k + ':leader-wakeups']:.1f} / {cmed[k + ':leader-cpu-us']:,.0f}"
            for k in cmed if k + ":leader-wakeups" in cmed))
    return {"medians": med, "runs": runs, "names": names, "concurrent": cmed, "concurrent_runs": conc,
            "ratios": {w: v for w, v, _ in goals if v is not None},
            "args": {k: v for k, v in vars(args).items() if not k.startswith("echo")},
            "machine": {"cpus": os.cpu_count(), "load_before": load0, "load_after": os.getloadavg()[0],
                        "python": platform.python_version()}}


if __name__ == "__main__":
    raise SystemExit(main())
