"""A sharded cluster as real processes, for process-level tests and the benchmark.

``sharded_cluster`` starts etcd, publishes the shard map, starts ``per_shard``
``sutra-cluster serve`` nodes for each shard (etcd-managed leadership, each
shard its own replication group and election), and ``routers`` router
processes (``sutra-cluster router``), all on free loopback ports with data in
``base``. Every process it started is ended when the block exits, pass or fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sutra_cluster import admin
from sutra_cluster.client import SutraClient
from sutra_cluster.sharding import shardmap
from sutra_cluster.sharding.hashing import shard_for
from sutra_cluster.sharding.shardmap import ShardMap
from tests.cluster import DIM, Node, free_ports
from tests.etcd import EtcdProcess
from tests.helpers import ROOT, free_port, wait_for


class RouterProcess:
    """A real ``sutra-cluster router`` process on a free loopback port."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait: bool = True, timeout: float = 60.0) -> RouterProcess:
        env = dict(os.environ)
        env.update({"SUTRA_ROUTER_PORT": str(self.port), "SUTRA_HOST": "127.0.0.1", "SUTRA_NODE_ID": self.name,
                    "SUTRA_LOG_LEVEL": "info"})
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "sutra_cluster", "router"], env=env, cwd=ROOT,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"router exited with {self.proc.returncode}:\n{self.log_tail()}")
            with SutraClient(self.address, timeout=5.0) as c:
                return bool(c.health().healthy)

        try:
            wait_for(up, timeout, f"router {self.name} to report every shard healthy")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- log ---\n{self.log_tail()}") from None

    def client(self, timeout: float = 30.0) -> SutraClient:
        return SutraClient(self.address, timeout=timeout, retry_deadline=0.0)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


@dataclass
class ShardedCluster:
    base: Path
    name: str
    etcd: EtcdProcess
    smap: ShardMap
    shards: list[list[Node]]
    routers: list[RouterProcess] = field(default_factory=list)

    @property
    def nodes(self) -> list[Node]:
        return [n for group in self.shards for n in group]

    @property
    def router(self) -> RouterProcess:
        return self.routers[0]

    def owner(self, concept_id: str) -> int:
        return shard_for(concept_id, self.smap.shards)

    def ids_on(self, shard: int, n: int, prefix: str = "k", start: int = 0) -> list[str]:
        """``n`` ids that shard ``shard`` owns (deterministic)."""
        out: list[str] = []
        i = start
        while len(out) < n:
            cid = f"{prefix}{i}"
            if self.owner(cid) == shard:
                out.append(cid)
            i += 1
        return out

    def leader_address(self, shard: int) -> str:
        return admin.etcd_members([self.etcd.endpoint], self.name, shard)[1]

    def leader(self, shard: int) -> Node:
        addr = wait_for(lambda: self.leader_address(shard), 30, f"a leader of shard {shard} in etcd")
        return next(n for n in self.shards[shard] if n.address == addr)

    def wait_shard_healthy(self, shard: int, timeout: float = 60.0) -> Node:
        """Until the shard has a leader that answers healthy and every node of it runs and answers."""
        def ok() -> Node | None:
            node = self.leader(shard)
            with node.client(timeout=2.0) as c:
                h = c.health()
                if not (h.healthy and h.role == "leader"):
                    return None
            for n in self.shards[shard]:
                with n.client(timeout=2.0) as c:
                    c.health()
            return node

        node = wait_for(ok, timeout, f"shard {shard} to have a healthy leader and every node up", interval=0.1)
        assert node is not None
        return node

    def add_router(self, name: str, env: dict[str, str] | None = None, start: bool = True) -> RouterProcess:
        r = RouterProcess(name, {"SUTRA_ETCD_ENDPOINTS": self.etcd.endpoint, "SUTRA_CLUSTER_NAME": self.name,
                                 **(env or {})}, self.base / f"{name}.log")
        self.routers.append(r)
        if start:
            r.start()
        return r

    def logs(self, n: int = 30) -> str:
        parts = [f"--- {x.name} ({x.address}) ---\n{x.log_tail(n)}" for x in self.nodes]
        parts += [f"--- {r.name} ---\n{r.log_tail(n)}" for r in self.routers]
        return "\n".join(parts)

    def stop_all(self) -> None:
        errors = []
        for r in self.routers:
            try:
                r.stop()
            except Exception as exc:  # noqa: BLE001 - keep ending the others
                errors.append(f"{r.name}: {exc}")
        for n in self.nodes:
            try:
                n.stop(timeout=10)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{n}: {exc}")
        try:
            self.etcd.stop()
        except Exception as exc:  # noqa: BLE001
            errors.append(f"etcd: {exc}")
        assert not errors, errors


@contextmanager
def sharded_cluster(base: Path, shards: int = 2, per_shard: int = 3, mode: str = "sync",
                    env: dict[str, str] | None = None, routers: int = 1, name: str = "sutra",
                    dim: int = DIM) -> Iterator[ShardedCluster]:
    base.mkdir(parents=True, exist_ok=True)
    etcd = EtcdProcess(base / "etcd")
    c = ShardedCluster(base, name, etcd, ShardMap(shards=shards), [])
    try:
        etcd.start()
        shardmap.publish([etcd.endpoint], name, c.smap)
        ports = free_ports(shards * per_shard)
        common = {"VECTOR_DIMENSION": str(dim), "SUTRA_COMMIT_MODE": mode, "SUTRA_ETCD_ENDPOINTS": etcd.endpoint,
                  "SUTRA_CLUSTER_NAME": name, **(env or {})}
        for s in range(shards):
            group = []
            for i in range(per_shard):
                nm = f"s{s}n{i}"
                group.append(Node(nm, base / nm, {**common, "SUTRA_SHARD": str(s),
                                                  "SUTRA_NODE_ROLE": "leader" if i == 0 else "replica"},
                                  ports[s * per_shard + i], 0, base / f"{nm}.log"))
            c.shards.append(group)
        for n in c.nodes:
            n.start(wait=False)
        for n in c.nodes:
            n.wait_ready(90)
        for s in range(shards):
            c.wait_shard_healthy(s, 60)
        for i in range(routers):
            c.add_router(f"router{i}", {"VECTOR_DIMENSION": str(dim)})
        yield c
    finally:
        c.stop_all()


def vec(rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v if np.any(v) else np.ones(dim, dtype=np.float32)
