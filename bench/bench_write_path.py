"""The floor under a replicated single write in Python grpcio, measured.

    .venv/bin/python bench/bench_write_path.py [--writes 600] [--rounds 3] [--threads 32] [--no-pg]
    .venv/bin/python bench/bench_write_path.py --variants echo,sync-1,split-1 --work-us 500 --no-pg

Issue 13 asks single writes through a leader and one sync replica to match
PostgreSQL with a synchronous standby. This measures what the chain itself
costs with nothing of Sutra in it: a client's unary RPC, the leader's append +
fdatasync of the 3,288-byte record, the record sent on a stream to a replica
process, its append + fdatasync, its acknowledgement back, and the answer. Each
part is a few lines of Python around raw bytes (no protobuf, no validation, no
engine), so whatever Sutra spends above these figures is its own.

Variants, each a fresh pair of processes, one sequential client (then --threads
client threads on the one-node chains):

- ``echo``: the bare sync grpcio unary call (the RPC alone);
- ``sync-1`` / ``aio-1``: RPC + leader fsync (group commit), sync server
  (ThreadPoolExecutor, like a node) or a ``grpc.aio`` server (the fsync inline
  in the event loop);
- ``split-1``: the gRPC process only passes each request's bytes to a writer
  process over a Unix socket and waits for its one-byte answer; the writer
  (one thread, a selector) group-commits what is readable. The floor of moving
  a node's engine and log out of the gRPC process's GIL;
- ``raw-2``: the floor: the client RPC as in ``sync-1``, and the record sent to
  the replica over a plain TCP socket by the very thread that made it durable,
  which then reads the 8-byte acknowledgement itself (no hand-off on the
  leader; the replica is one thread: recv, write, fdatasync, send);
- ``sync-2a`` / ``aio-2a``: the same with the replica a ``grpc.aio`` client;
- ``sync-2`` / ``aio-2``: the whole chain with a replica process that streams
  from the leader like Sutra's (a sync grpcio client, one fsync and one
  acknowledgement per message). In ``sync-2`` the leader is built like Sutra's:
  the writer wakes a feeder thread whose generator sends, and an ack-reader
  thread wakes the writer; in ``aio-2`` the feeder, the ack reader and the
  writer are coroutines of one event loop.

- ``sutra-1`` / ``sutra-2``: Sutra's own nodes (one node; leader + 1 sync
  replica; HNSW off), started as bench_peers.py starts them (``sutra-1`` also
  with the client threads, 2 x --writes LearnConcept calls).

``--work-us N`` adds N µs of CPU per record of stand-in engine work holding
the GIL (validation, the apply): in the leader's handler for ``sync-1`` (and
``sync-2``, ``raw-2``), where a node does it today; in the writer process for
``split-1``, where a split node would. Side by side they say what moving that
work out of the gRPC process buys with 32 client threads.

Also PostgreSQL 15 + a synchronous standby (bench/peers.py), same run. Prints
a table (writes/s, leader CPU µs and voluntary wake-ups per write; medians of
--rounds; with 32 threads also the server's CPU per write over all its
processes, and how busy the whole machine was) and writes JSON to
bench/results/write_path.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import peers  # noqa: E402

from tests.helpers import free_port  # noqa: E402

SERVICE = "hb.Chain"
WRITE = f"/{SERVICE}/Write"
STREAM = f"/{SERVICE}/Stream"
RECORD = 3288
OK = b"\x08\x01"
# CPU each server spends per record on stand-in engine work (--work-us): in the
# sync leader's gRPC handler, or in split-1's writer process.
WORK_US = int(os.environ.get("BENCH_WRITE_PATH_WORK_US", "0"))


def _work() -> None:
    """Hold the GIL for WORK_US of this thread's CPU, as validation and the
    engine's apply do in a node."""
    if WORK_US:
        end = time.thread_time() + WORK_US / 1e6
        while time.thread_time() < end:
            pass


def _open_log(data: Path) -> int:
    data.mkdir(parents=True, exist_ok=True)
    return os.open(data / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


# ---- the leader, sync grpcio ------------------------------------------------------
class SyncLeader:
    """Group commit as Sutra's WAL does it (a waiting writer fsyncs the buffered
    group itself), then the sync-replica hand-offs as Sutra's leader does them."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.mu = threading.Condition()
        self.buf: list[bytes] = []
        self.last = self.durable = 0
        self.flushing = False
        self.data = threading.Condition()  # the feeder's wake-up
        self.acks = threading.Condition()  # the writers' wait for the replica
        self.acked = 0
        self.replica = False

    def write(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        _work()
        with self.mu:
            self.buf.append(request)
            self.last += 1
            lsn = self.last
            while self.durable < lsn:
                if not self.flushing:
                    batch, self.buf, upto = self.buf, [], self.last
                    self.flushing = True
                    self.mu.release()
                    try:
                        os.write(self.fd, b"".join(batch))
                        os.fdatasync(self.fd)
                    finally:
                        self.mu.acquire()
                    self.flushing = False
                    self.durable = upto
                    self.mu.notify_all()
                else:
                    self.mu.wait()
        if self.replica:
            with self.data:
                self.data.notify_all()
            with self.acks:
                self.acks.wait_for(lambda: self.acked >= lsn, 5.0)
        return OK

    def stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        next(requests)  # hello
        self.replica = True
        sent = self.durable

        def read_acks() -> None:
            for m in requests:
                with self.acks:
                    self.acked = int(m)
                    self.acks.notify_all()

        threading.Thread(target=read_acks, daemon=True).start()
        while context.is_active():
            with self.data:
                self.data.wait_for(lambda s=sent: self.durable > s, 0.05)
            upto = self.durable
            if upto > sent:
                # The payload is not kept in this experiment: a record of the
                # same size per LSN goes out (the bytes on the wire are what count).
                yield upto.to_bytes(8, "little") + b"\0" * (RECORD * (upto - sent))
                sent = upto


def serve_sync(port: int, data: Path, workers: int) -> None:
    leader = SyncLeader(_open_log(data))
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Write": grpc.unary_unary_rpc_method_handler(leader.write),
        "Stream": grpc.stream_stream_rpc_method_handler(leader.stream),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), handlers=(handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


# ---- the leader, replicating over a plain socket from the writer's own thread ---------
class RawLeader(SyncLeader):
    """The client RPC through a sync grpcio server as above, but the record goes
    to the replica over a plain TCP socket from the thread that made it durable,
    and that thread reads the acknowledgement itself: no feeder, no ack reader,
    no hand-off at all on the leader. The physical floor of the chain in Python."""

    def __init__(self, fd: int, port: int) -> None:
        super().__init__(fd)
        import socket

        self.lsock = socket.create_server(("127.0.0.1", port))
        self.sock: Any = None
        self.wire = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        sock, _ = self.lsock.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock

    def write(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        replica, self.replica = self.replica, False
        super().write(request, context)  # durable here, nobody else to wake
        self.replica = replica
        sock = self.sock
        if sock is not None:
            with self.wire:  # one record and its acknowledgement at a time
                sock.sendall(len(request).to_bytes(4, "little") + request)
                got = b""
                while len(got) < 8:
                    got += sock.recv(8 - len(got))
        return OK


def serve_writes(write: Any, port: int, workers: int) -> None:
    """A sync grpcio server with the one Write method, until the process is killed."""
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Write": grpc.unary_unary_rpc_method_handler(write)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), handlers=(handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def serve_raw(port: int, wire_port: int, data: Path, workers: int) -> None:
    serve_writes(RawLeader(_open_log(data), wire_port).write, port, workers)


def run_replica_raw(leader_port: int, data: Path) -> None:
    import socket

    fd = _open_log(data)
    sock = socket.create_connection(("127.0.0.1", leader_port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lsn = 0
    while True:
        head = sock.recv(4, socket.MSG_WAITALL)
        if len(head) < 4:
            return
        body = sock.recv(int.from_bytes(head, "little"), socket.MSG_WAITALL)
        os.write(fd, body)
        os.fdatasync(fd)
        lsn += 1
        sock.sendall(lsn.to_bytes(8, "little"))


# ---- the leader split in two processes: gRPC in one, the log in another ----------------
def _abstract(name: str) -> str:
    """A Unix socket name in Linux's abstract namespace: no file, no path-length limit."""
    return "\0" + name


def run_writer(name: str, data: Path) -> None:
    """The log's own process: one thread, a selector over the gRPC process's
    connections. Whatever is readable is one group: written, fdatasynced once,
    then each record's one-byte answer goes back on its connection."""
    import selectors
    import socket

    fd = _open_log(data)
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(_abstract(name))
    lsock.listen(128)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ)
    bufs: dict[socket.socket, bytearray] = {}
    while True:
        group: list[bytes] = []
        answers: list[socket.socket] = []
        for key, _ in sel.select():
            s = key.fileobj
            if s is lsock:
                conn, _ = lsock.accept()
                bufs[conn] = bytearray()
                sel.register(conn, selectors.EVENT_READ)
                continue
            assert isinstance(s, socket.socket)
            chunk = s.recv(1 << 20)
            if not chunk:
                sel.unregister(s)
                del bufs[s]
                s.close()
                continue
            buf = bufs[s]
            buf += chunk
            while len(buf) >= 4:
                n = int.from_bytes(buf[:4], "little")
                if len(buf) < 4 + n:
                    break
                _work()
                group.append(bytes(buf[4:4 + n]))
                answers.append(s)
                del buf[:4 + n]
        if group:
            os.write(fd, b"".join(group))
            os.fdatasync(fd)
            for s in answers:
                s.sendall(b"\x01")


class SplitLeader:
    """The gRPC process does nothing but pass each request's bytes to the
    writer process (one Unix socket per worker thread) and wait for its answer:
    the floor of moving a node's engine and log out of the gRPC process."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.local = threading.local()

    def write(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        import socket

        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(_abstract(self.name))
        conn.sendall(len(request).to_bytes(4, "little") + request)
        if conn.recv(1) != b"\x01":
            context.abort(grpc.StatusCode.UNAVAILABLE, "writer process gone")
        return OK


def serve_split(port: int, data: Path, workers: int) -> None:
    import socket

    data.mkdir(parents=True, exist_ok=True)
    name = f"bench-write-path-{os.getpid()}-{port}"
    writer = subprocess.Popen([sys.executable, __file__, "--writer", name, str(data)])
    try:
        deadline = time.monotonic() + 30
        while True:  # until the writer listens
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(_abstract(name))
                break
            except OSError:
                if time.monotonic() > deadline or writer.poll() is not None:
                    raise SystemExit("the writer process did not start") from None
                time.sleep(0.01)
            finally:
                probe.close()
        serve_writes(SplitLeader(name).write, port, workers)
    finally:
        writer.kill()
        writer.wait()


# ---- the leader, grpc.aio -----------------------------------------------------------
class AioLeader:
    """Everything in one event loop: group commit by a flush scheduled once per
    loop turn, the feeder and the ack reader as coroutines."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf: list[bytes] = []
        self.last = self.durable = 0
        self.durable_waits: dict[int, asyncio.Future[None]] = {}
        self.ack_waits: dict[int, asyncio.Future[None]] = {}
        self.acked = 0
        self.replica = False
        self.news = asyncio.Event()
        self.scheduled = False

    def _flush(self) -> None:
        self.scheduled = False
        batch, self.buf, upto = self.buf, [], self.last
        os.write(self.fd, b"".join(batch))
        os.fdatasync(self.fd)
        self.durable = upto
        for lsn in [k for k in self.durable_waits if k <= upto]:
            self.durable_waits.pop(lsn).set_result(None)
        self.news.set()

    async def write(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        loop = asyncio.get_running_loop()
        self.buf.append(request)
        self.last += 1
        lsn = self.last
        fut: asyncio.Future[None] = loop.create_future()
        self.durable_waits[lsn] = fut
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self._flush)
        await fut
        if self.replica and self.acked < lsn:
            ack: asyncio.Future[None] = loop.create_future()
            self.ack_waits[lsn] = ack
            await asyncio.wait_for(ack, 5.0)
        return OK

    async def stream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        await requests.__anext__()  # hello
        self.replica = True
        sent = self.durable

        async def read_acks() -> None:
            async for m in requests:
                self.acked = int(m)
                for lsn in [k for k in self.ack_waits if k <= self.acked]:
                    self.ack_waits.pop(lsn).set_result(None)

        reader = asyncio.ensure_future(read_acks())
        try:
            while True:
                await self.news.wait()
                self.news.clear()
                upto = self.durable
                if upto > sent:
                    await context.write(upto.to_bytes(8, "little") + b"\0" * (RECORD * (upto - sent)))
                    sent = upto
        finally:
            reader.cancel()


def serve_aio(port: int, data: Path) -> None:
    async def main() -> None:
        leader = AioLeader(_open_log(data))
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "Write": grpc.unary_unary_rpc_method_handler(leader.write),
            "Stream": grpc.stream_stream_rpc_method_handler(leader.stream),
        })
        server = grpc.aio.server(handlers=(handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


# ---- the replica (as Sutra's follower: sync client, acks through a queue) -----------
def run_replica(leader: str, data: Path) -> None:
    fd = _open_log(data)
    acks: queue.Queue[bytes | None] = queue.Queue()

    def requests() -> Iterator[bytes]:
        yield b"hello"
        while True:
            m = acks.get()
            if m is None:
                return
            yield m

    ch = grpc.insecure_channel(leader)
    call = ch.stream_stream(STREAM)(requests())
    try:
        for msg in call:
            os.write(fd, msg[8:])
            os.fdatasync(fd)
            acks.put(str(int.from_bytes(msg[:8], "little")).encode())
    except grpc.RpcError as exc:
        if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):  # type: ignore[attr-defined]
            raise
        # the leader's server stopped at the end of its variant: the stream ends here


def run_replica_aio(leader: str, data: Path) -> None:
    """The same replica as a grpc.aio client: reading, fsync and acknowledging in one loop."""
    fd = _open_log(data)

    async def main() -> None:
        async with grpc.aio.insecure_channel(leader) as ch:
            call = ch.stream_stream(STREAM)()
            await call.write(b"hello")
            async for msg in call:
                os.write(fd, msg[8:])
                os.fdatasync(fd)
                await call.write(str(int.from_bytes(msg[:8], "little")).encode())

    asyncio.run(main())


# ---- the driver ------------------------------------------------------------------------
def cpu_and_wakeups(pid: int) -> tuple[float, int]:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    cpu = (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    wake = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                wake += next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
        except FileNotFoundError:
            pass
    return cpu, wake


def family_cpu(pid: int) -> float:
    """CPU seconds of a server process and its children (split-1's writer)."""
    total = cpu_and_wakeups(pid)[0]
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                total += sum(family_cpu(int(c)) for c in f.read().split())
        except FileNotFoundError:
            pass
    return total


def timed_concurrent(pid: int, writes: int, run: Any) -> dict[str, float]:
    """``run()`` (``writes`` calls from the client threads; returns writes/s) with
    the server's CPU per write over ``pid`` and its children, and how busy the
    whole machine was meanwhile."""
    from bench_peers import machine_times

    f0, m0 = family_cpu(pid), machine_times()
    rate = run()
    f1, m1 = family_cpu(pid), machine_times()
    return {"concurrent": rate, "concurrent_server_cpu_us": (f1 - f0) / writes * 1e6,
            "concurrent_machine_busy": 1 - (m1[1] - m0[1]) / max(1, m1[0] - m0[0])}


class Chain:
    """One variant as processes: the leader (or echo server) and maybe a replica."""

    def __init__(self, kind: str, base: Path) -> None:
        self.kind, self.base = kind, base
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, __file__, *args], start_new_session=True)
        self.procs.append(p)
        return p

    def start(self) -> None:
        server, replicas = self.kind.split("-") if "-" in self.kind else (self.kind, "1")
        if server == "echo":
            self.leader = subprocess.Popen([sys.executable, str(ROOT / "bench" / "bench_peers.py"), "--echo-server",
                                            str(self.port), "--echo-workers", "32"], start_new_session=True)
            self.procs.append(self.leader)
            self.method = peers.ECHO_METHOD
        elif server == "raw":
            self.wire_port = free_port()
            self.leader = self._spawn("--serve-raw", f"{self.port}:{self.wire_port}", str(self.base / "leader"))
            self.method = WRITE
        else:
            self.leader = self._spawn(f"--serve-{server}", str(self.port), str(self.base / "leader"))
            self.method = WRITE
        ch = grpc.insecure_channel(self.address)
        grpc.channel_ready_future(ch).result(timeout=30)
        ch.close()
        if server == "raw":
            self._spawn("--replica-raw", str(self.wire_port), str(self.base / "replica"))
            time.sleep(1.0)
        elif replicas in ("2", "2a"):
            self._spawn("--replica-aio" if replicas == "2a" else "--replica", self.address, str(self.base / "replica"))
            time.sleep(1.0)  # the stream connects; the warm-up writes below wait for its acks

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)  # with its children (split-1's writer)
                p.wait(timeout=30)


def sequential(address: str, method: str, n: int) -> float:
    with grpc.insecure_channel(address) as ch:
        call = ch.unary_unary(method)
        body = os.urandom(RECORD)
        for _ in range(20):
            call(body, timeout=30)
        t0 = time.perf_counter()
        for _ in range(n):
            call(body, timeout=30)
        return n / (time.perf_counter() - t0)


def concurrent(address: str, method: str, n: int, threads: int) -> float:
    chans = [grpc.insecure_channel(address) for _ in range(threads)]
    body = os.urandom(RECORD)
    try:
        calls = [c.unary_unary(method) for c in chans]
        for c in calls:
            c(body, timeout=30)
        barrier = threading.Barrier(threads + 1)

        def work(k: int) -> None:
            barrier.wait()
            for _ in range(n // threads):
                calls[k](body, timeout=30)

        ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for t in ts:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in ts:
            t.join()
        return threads * (n // threads) / (time.perf_counter() - t0)
    finally:
        for c in chans:
            c.close()


def measure_sutra(kind: str, base: Path, writes: int, threads: int) -> dict[str, float]:
    """Sutra's own nodes (bench_peers' topologies, HNSW off), the same way."""
    import bench_peers
    import numpy as np

    s = bench_peers.Sutra(base / kind, kind.split("-")[1], False)
    try:
        s.start()
        recs = bench_peers.make_records(writes * 3 + 20, f"{kind}-{time.monotonic_ns()}", np.random.default_rng())
        s.single(recs[:20])
        cpu0, w0 = cpu_and_wakeups(s.pids[0])
        row = {"single": writes / s.single(recs[20:writes + 20])}
        cpu1, w1 = cpu_and_wakeups(s.pids[0])
        row["leader_cpu_us"] = (cpu1 - cpu0) / writes * 1e6
        row["leader_wakeups"] = (w1 - w0) / writes
        if kind == "sutra-1":
            reqs = [bench_peers.single_request(r) for r in recs[writes + 20:]]
            row.update(timed_concurrent(s.pids[0], len(reqs), lambda: bench_peers.concurrent(
                s.address, bench_peers.SERVICE + "LearnConcept", reqs, threads)))
        return row
    finally:
        s.stop()


def measure(kind: str, base: Path, writes: int, threads: int) -> dict[str, float]:
    if kind.startswith("sutra-"):
        return measure_sutra(kind, base, writes, threads)
    c = Chain(kind, base / kind)
    try:
        c.start()
        cpu0, w0 = cpu_and_wakeups(c.leader.pid)
        row = {"single": sequential(c.address, c.method, writes)}
        cpu1, w1 = cpu_and_wakeups(c.leader.pid)
        row["leader_cpu_us"] = (cpu1 - cpu0) / (writes + 20) * 1e6
        row["leader_wakeups"] = (w1 - w0) / (writes + 20)
        if kind.endswith("-1") or kind == "echo":
            row.update(timed_concurrent(c.leader.pid, threads * (writes * 2 // threads),
                                        lambda: concurrent(c.address, c.method, writes * 2, threads)))
        return row
    finally:
        c.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writes", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--variants", default="echo,sync-1,aio-1,sync-2,aio-2")
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--work-us", type=int, default=0,
                    help="CPU µs of stand-in engine work per record: in the handler (sync-1) or the writer (split-1)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "write_path.json"))
    ap.add_argument("--tmp", default=None, help="folder for all data (default: the system's temp folder)")
    ap.add_argument("--serve-sync", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--serve-aio", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--replica", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--replica-aio", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--replica-raw", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--serve-raw", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--serve-split", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--writer", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_sync:
        serve_sync(int(args.serve_sync[0]), Path(args.serve_sync[1]), 32)
        return 0
    if args.serve_aio:
        serve_aio(int(args.serve_aio[0]), Path(args.serve_aio[1]))
        return 0
    if args.serve_split:
        serve_split(int(args.serve_split[0]), Path(args.serve_split[1]), 32)
        return 0
    if args.writer:
        run_writer(args.writer[0], Path(args.writer[1]))
        return 0
    if args.serve_raw:
        port, wire_port = args.serve_raw[0].split(":")
        serve_raw(int(port), int(wire_port), Path(args.serve_raw[1]), 32)
        return 0
    if args.replica_raw:
        run_replica_raw(int(args.replica_raw[0]), Path(args.replica_raw[1]))
        return 0
    if args.replica_aio:
        run_replica_aio(args.replica_aio[0], Path(args.replica_aio[1]))
        return 0
    if args.replica:
        run_replica(args.replica[0], Path(args.replica[1]))
        return 0
    os.environ["BENCH_WRITE_PATH_WORK_US"] = str(args.work_us)
    load0 = os.getloadavg()[0]
    base = Path(tempfile.mkdtemp(prefix="bench-write-path-", dir=args.tmp))
    runs: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    pg = None if args.no_pg else peers.Postgres(base, peers.pg_bindir())
    try:
        if pg is not None:
            pg.start()
        for rnd in range(args.rounds):
            if pg is not None:
                recs = [peers.Record(f"w{rnd}-{i}", "x" * 200, os.urandom(3072)) for i in range(args.writes)]
                runs["postgres"].append({"single": args.writes / pg.single(recs)})
            for kind in args.variants.split(","):
                runs[kind].append(measure(kind, base / f"r{rnd}", args.writes, args.threads))
            print(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]['single']:,.0f}/s" for k, v in runs.items()),
                  flush=True)
    finally:
        if pg is not None:
            pg.stop()
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    med: dict[str, dict[str, Any]] = {k: {m: statistics.median(r[m] for r in v) for m in v[0]}
                                      for k, v in runs.items()}
    pgs = med.get("postgres", {}).get("single")
    print(f"\n{args.writes} sequential single writes of {RECORD} B, medians of {args.rounds}; load average "
          f"{load0:.1f} -> {os.getloadavg()[0]:.1f}\n")
    echo = med.get("echo", {}).get("concurrent")
    print(f"| chain | single writes/s | vs PostgreSQL | leader CPU µs / write | leader wake-ups / write "
          f"| {args.threads} threads, writes/s | vs echo | server CPU µs / write (all its processes) "
          f"| machine busy |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, m in med.items():
        vs = f"{m['single'] / pgs:.2f}" if pgs else "–"
        conc = m.get("concurrent")
        print(f"| {k} | {m['single']:,.0f} | {vs} | {m.get('leader_cpu_us', 0):,.0f} | "
              f"{m.get('leader_wakeups', 0):.1f} | {conc or 0:,.0f} | "
              f"{f'{conc / echo:.2f}' if conc and echo else '–'} | {m.get('concurrent_server_cpu_us', 0):,.0f} | "
              f"{m.get('concurrent_machine_busy', 0):.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"medians": med, "runs": runs, "args": vars(args),
                               "load": [load0, os.getloadavg()[0]]}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
