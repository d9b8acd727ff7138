"""Process-level test helpers: free ports, node processes that are always
ended, and waiting on conditions with deadlines (never sleep-and-hope)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import grpc

from sutra_cluster.client import SutraClient
from sutra_cluster.pb import storage_pb2 as pb

if TYPE_CHECKING:
    from sutra_cluster.replication.manager import ReplicationManager
    from sutra_cluster.storage.engine import Engine

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# The suite runs the secure way: every node and router it starts inherits this
# cluster secret, and so do the admin calls it makes in-process (admin.*, backup.*),
# which read it from the environment as the command-line tools do.
os.environ.pop("SUTRA_CLUSTER_SECRET_FILE", None)
CLUSTER_SECRET = os.environ.setdefault("SUTRA_CLUSTER_SECRET", secrets.token_hex(16))
SECRET_METADATA = (("sutra-cluster-secret", CLUSTER_SECRET),)
T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class GiveUp(AssertionError):
    """Raised by a condition to end ``wait_for`` at once (say, the process died)."""


def wait_for(cond: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll ``cond`` until it returns a truthy value; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except GiveUp:
            raise
        except Exception as exc:  # the condition may fail while a process starts
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")
        time.sleep(interval)


def tool(name: str) -> str:
    """Path of a binary the project's set-up installs; a missing one fails the test."""
    path = VENV_BIN / name
    assert path.exists(), f"{name} is not installed in the virtual environment; run ./dev setup"
    return str(path)


class NodeProcess:
    """A real ``sutra-cluster serve`` process on a free loopback port."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, port: int | None = None,
                 log_path: Path | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env = dict(env or {})
        self.log_path = log_path or data_dir.parent / f"node-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait: bool = True, timeout: float = 60.0) -> NodeProcess:
        env = dict(os.environ)
        env.update({
            "STORAGE_PATH": str(self.data_dir), "STORAGE_PORT": str(self.port), "SUTRA_HOST": "127.0.0.1",
            "SUTRA_NODE_ID": f"node-{self.port}", "VECTOR_DIMENSION": "8", "SUTRA_LOG_LEVEL": "info",
        })
        env.update(self.env)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sutra_cluster", "serve"], env=env, cwd=ROOT,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise GiveUp(f"node exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            with SutraClient(self.address, timeout=1.0) as c:
                return bool(c.health().healthy)

        try:
            wait_for(ready, timeout, f"node on port {self.port} to become healthy")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- log ---\n{self.log_tail()}") from None

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def client(self, timeout: float = 10.0) -> SutraClient:
        return SutraClient(self.address, timeout=timeout, retry_deadline=0.0)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, and SIGKILL if it does not exit; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.terminate()
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stats(self) -> pb.GetStatsResponse:
        with self.client() as c:
            return c.stats()


def rpc_code(exc: BaseException) -> grpc.StatusCode:
    assert isinstance(exc, grpc.RpcError), exc
    return exc.code()  # type: ignore[attr-defined,no-any-return]


@contextmanager
def in_process_leader(env: dict[str, str]) -> Iterator[tuple[Engine, ReplicationManager]]:
    """An engine and its replication manager started in process from ``env``
    (a node's settings), stopped and closed on the way out."""
    from sutra_cluster import config
    from sutra_cluster.replication.manager import ReplicationManager
    from sutra_cluster.storage.engine import Engine

    cfg = config.load(env)
    eng = Engine(cfg)
    m = ReplicationManager(eng, cfg)
    m.start()
    try:
        yield eng, m
    finally:
        m.stop()
        eng.close()
