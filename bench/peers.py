"""The systems bench_peers.py compares Sutra with, each started as real processes
in a temporary folder and always stopped: the disk's own append + fdatasync
limit, PostgreSQL 15 with one synchronous standby, Redis with appendfsync always
and one replica (WAIT 1), a one-member etcd, and a bare grpcio echo server.

How the binaries are found (``./dev bench-peers`` installs the Debian packages
``postgresql`` and ``redis-server`` when they are missing):

- PostgreSQL: ``--pg-bin``, else the folder of ``initdb`` on PATH, else Debian's
  ``/usr/lib/postgresql/<version>/bin`` (the highest version). Run as root, the
  server runs as the ``postgres`` user (initdb refuses root) through ``runuser``.
- Redis: ``redis-server`` on PATH.
- etcd: the binary ``./dev setup`` installs in the virtual environment.

Every driver writes the same records (``Record``) durably, and times two loads:
``batched(recs, size)`` and ``single(recs)`` (one durable write at a time).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.etcd import EtcdProcess  # noqa: E402
from tests.helpers import free_port, wait_for  # noqa: E402


@dataclass(frozen=True)
class Record:
    """One record as every system stores it: an id, ~200 B of text, a 768-d float32 vector."""

    rid: str
    content: str
    vector: bytes  # little-endian float32

    def as_bytes(self) -> bytes:
        return self.rid.encode() + b"\0" + self.content.encode() + b"\0" + self.vector


def chunks(recs: Sequence[Record], size: int) -> list[Sequence[Record]]:
    return [recs[i:i + size] for i in range(0, len(recs), size)]


# ---- the disk -------------------------------------------------------------
class Disk:
    """Append + fdatasync in the bench's own folder: the limit for every system."""

    name = "disk: append + fdatasync (the limit)"

    def __init__(self, base: Path) -> None:
        self.path = base / "disk.log"

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.path.unlink(missing_ok=True)

    def _run(self, groups: list[bytes]) -> float:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            t0 = time.perf_counter()
            for g in groups:
                os.write(fd, g)
                os.fdatasync(fd)
            return time.perf_counter() - t0
        finally:
            os.close(fd)
            self.path.unlink(missing_ok=True)

    def batched(self, recs: Sequence[Record], size: int) -> float:
        return self._run([b"".join(r.as_bytes() for r in c) for c in chunks(recs, size)])

    def single(self, recs: Sequence[Record]) -> float:
        return self._run([r.as_bytes() for r in recs])


# ---- PostgreSQL -------------------------------------------------------------
def pg_bindir(flag: str = "") -> Path:
    """Where initdb, pg_ctl and pg_basebackup are (see the module docstring)."""
    if flag:
        return Path(flag)
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if versions:
        return Path(versions[-1]).parent
    raise SystemExit("PostgreSQL not found: run ./dev bench-peers (installs Debian's postgresql), or pass --pg-bin")


class Postgres:
    """A primary and one synchronous standby (synchronous_commit=on: a commit
    returns once the standby flushed it), on loopback ports."""

    name = "PostgreSQL 15, primary + 1 synchronous standby (COPY / INSERT)"

    def __init__(self, base: Path, bindir: Path) -> None:
        self.base = base / "pg"
        self.bin = bindir
        self.ports = (free_port(), free_port())
        self.as_root = os.geteuid() == 0
        self.conn: Any = None

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def _start(self, data: Path, port: int) -> None:
        opts = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.base}"
        self._run("pg_ctl", "-D", str(data), "-l", str(self.base / f"{data.name}.log"), "-o", opts, "-w", "start")

    def start(self) -> None:
        import psycopg

        self.base.mkdir(parents=True)
        if self.as_root:
            shutil.chown(self.base, "postgres", "postgres")
            os.chmod(self.base.parent, 0o755)
        primary, standby = self.base / "primary", self.base / "standby"
        self._run("initdb", "-D", str(primary), "--auth=trust", "-U", "postgres", "--no-sync")
        with open(primary / "postgresql.conf", "a") as f:
            f.write("wal_level = replica\nmax_wal_senders = 4\nsynchronous_standby_names = '*'\n"
                    "synchronous_commit = on\nfsync = on\n")
        self._start(primary, self.ports[0])
        self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.ports[0]), "-U", "postgres",
                  "-D", str(standby), "-R", "-X", "stream")
        self._start(standby, self.ports[1])
        self.conn = psycopg.connect(host="127.0.0.1", port=self.ports[0], user="postgres", dbname="postgres",
                                    autocommit=True)
        wait_for(lambda: self.conn.execute(
            "select count(*) from pg_stat_replication where sync_state = 'sync'").fetchone()[0] == 1,
            30, "the PostgreSQL standby to be synchronous")
        self.conn.execute("create table rec (id text primary key, content text, embedding bytea)")

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        for d in ("standby", "primary"):
            if (self.base / d / "postmaster.pid").exists():
                try:
                    self._run("pg_ctl", "-D", str(self.base / d), "-m", "immediate", "stop")
                except subprocess.CalledProcessError as exc:
                    print(f"pg_ctl stop {d}: {exc.stderr.decode(errors='replace')}", file=sys.stderr)

    def batched(self, recs: Sequence[Record], size: int) -> float:
        conn = self.conn
        assert conn is not None
        t0 = time.perf_counter()
        for c in chunks(recs, size):
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy("copy rec (id, content, embedding) from stdin (format binary)") as cp:
                    cp.set_types(["text", "text", "bytea"])
                    for r in c:
                        cp.write_row((r.rid, r.content, r.vector))
        return time.perf_counter() - t0

    def single(self, recs: Sequence[Record]) -> float:
        conn = self.conn
        assert conn is not None
        sql = "insert into rec (id, content, embedding) values (%s, %s, %s)"
        t0 = time.perf_counter()
        for r in recs:
            conn.execute(sql, (r.rid, r.content, r.vector))
        return time.perf_counter() - t0


# ---- Redis ----------------------------------------------------------------
class Redis:
    """A primary and one replica, both appendonly with appendfsync always; every
    write (or batch) is followed by WAIT 1, so it is on the replica too."""

    name = "Redis, appendfsync always + 1 replica + WAIT 1"

    def __init__(self, base: Path) -> None:
        self.base = base / "redis"
        self.ports = (free_port(), free_port())
        self.procs: list[subprocess.Popen[bytes]] = []
        self.client: Any = None

    def start(self) -> None:
        import redis

        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server not found on PATH: run ./dev bench-peers (installs Debian's redis-server)")
        for i, port in enumerate(self.ports):
            d = self.base / f"n{i}"
            d.mkdir(parents=True)
            cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--appendonly", "yes",
                   "--appendfsync", "always", "--save", "", "--daemonize", "no", "--protected-mode", "no"]
            if i:
                cmd += ["--replicaof", "127.0.0.1", str(self.ports[0])]
            with open(self.base / f"n{i}.log", "ab") as log:
                self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        self.client = redis.Redis(host="127.0.0.1", port=self.ports[0])
        wait_for(lambda: self._replicas() == 1, 30, "the Redis replica to connect")

    def _replicas(self) -> int:
        try:
            return int(self.client.info("replication").get("connected_slaves", 0))
        except Exception:  # noqa: BLE001 - not up yet
            return 0

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)

    def _wait1(self, pipe) -> None:  # type: ignore[no-untyped-def]
        pipe.execute_command("WAIT", 1, 5000)
        acks = pipe.execute()[-1]
        if acks < 1:
            raise RuntimeError("Redis WAIT 1 timed out: the replica did not acknowledge")

    def batched(self, recs: Sequence[Record], size: int) -> float:
        t0 = time.perf_counter()
        for c in chunks(recs, size):
            pipe = self.client.pipeline(transaction=False)
            for r in c:
                pipe.set(r.rid, r.as_bytes())
            self._wait1(pipe)
        return time.perf_counter() - t0

    def single(self, recs: Sequence[Record]) -> float:
        t0 = time.perf_counter()
        for r in recs:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(r.rid, r.as_bytes())
            self._wait1(pipe)
        return time.perf_counter() - t0


# ---- etcd -----------------------------------------------------------------
class Etcd:
    """One etcd member (it fsyncs its raft log before answering); batches are
    transactions of 128 puts, etcd's default --max-txn-ops."""

    name = "etcd, 1 member (txn of 128 / put)"
    TXN = 128

    def __init__(self, base: Path) -> None:
        self.proc = EtcdProcess(base / "etcd")
        self.client: Any = None

    def start(self) -> None:
        import pyetcd

        self.proc.start()
        self.client = pyetcd.client(self.proc.host, self.proc.client_port, timeout=30)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        self.proc.kill()

    def batched(self, recs: Sequence[Record], size: int) -> float:
        c = self.client
        assert c is not None
        t0 = time.perf_counter()
        for group in chunks(recs, self.TXN):
            c.transaction(compare=[], success=[c.transactions.put(r.rid, r.as_bytes()) for r in group], failure=[])
        return time.perf_counter() - t0

    def single(self, recs: Sequence[Record]) -> float:
        c = self.client
        assert c is not None
        t0 = time.perf_counter()
        for r in recs:
            c.put(r.rid, r.as_bytes())
        return time.perf_counter() - t0


# ---- a bare grpcio server -------------------------------------------------------
ECHO_METHOD = "/bench.Echo/Call"


def serve_echo(port: int, workers: int) -> None:
    """A grpcio server that answers every call with 8 bytes, nothing else: the
    ceiling of a sync Python gRPC server on this machine (run in its own process)."""

    def call(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"\x08\x01" + b"\0" * 6

    handler = grpc.method_handlers_generic_handler("bench.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), handlers=(handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


class EchoServer:
    def __init__(self, workers: int) -> None:
        self.port = free_port()
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("bench_peers.py")),
                                      "--echo-server", str(self.port), "--echo-workers", str(self.workers)],
                                     start_new_session=True)
        ch = grpc.insecure_channel(self.address)
        try:
            grpc.channel_ready_future(ch).result(timeout=30)
        finally:
            ch.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
