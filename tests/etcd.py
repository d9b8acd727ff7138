"""A real etcd server for tests, on free loopback ports, always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pyetcd

from tests.helpers import free_port, tool, wait_for


class EtcdProcess:
    def __init__(self, data_dir: Path, client_port: int | None = None, peer_port: int | None = None,
                 host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir
        self.host = host
        self.client_port = client_port or free_port(host)
        self.peer_port = peer_port or free_port(host)
        self.log_path = data_dir.parent / f"etcd-{self.client_port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    def start(self, timeout: float = 30.0) -> EtcdProcess:
        cu = f"http://{self.host}:{self.client_port}"
        pu = f"http://{self.host}:{self.peer_port}"
        cmd = [tool("etcd"), "--name", "etcd-test", "--data-dir", str(self.data_dir),
               "--listen-client-urls", cu, "--advertise-client-urls", cu,
               "--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
               "--initial-cluster", f"etcd-test={pu}", "--log-level", "warn"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.healthy, timeout, "etcd to answer")
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"etcd exited: {self.log_path.read_text()[-2000:]}")
        c = pyetcd.client(self.host, self.client_port, timeout=1)
        try:
            c.status()
            return True
        finally:
            c.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)

    def client(self) -> pyetcd.Etcd3Client:
        return pyetcd.client(self.host, self.client_port, timeout=2)
