"""A replication group as real processes, for process-level tests.

``running_cluster`` starts a leader and N replicas (``sutra-cluster serve``)
on free loopback ports, each with its own data folder, log and metrics port,
and always ends every process it started (SIGCONT first, so a paused node can
still be stopped), pass or fail. Helpers wait on conditions with deadlines:
until nodes reach an LSN, until digests agree; and drive manual promotion.
``WriteLoad`` is a concurrent LearnBatch load that keeps a ledger of which
batches were acknowledged, at which LSN and when.
"""

from __future__ import annotations

import random
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import grpc
import numpy as np

from sutra_cluster import admin
from sutra_cluster.client import Association, Concept, SutraClient
from sutra_cluster.pb import replication_pb2 as rpb
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.storage.identity import IDENTITY_FILE
from tests.helpers import NodeProcess, free_port, wait_for

DIM = 8


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports."""
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


class Node(NodeProcess):
    """A node of a test cluster: a NodeProcess with a name and a metrics port."""

    def __init__(self, name: str, data_dir: Path, env: dict[str, str], port: int, metrics_port: int,
                 log_path: Path) -> None:
        env = {"SUTRA_NODE_ID": name, "SUTRA_METRICS_PORT": str(metrics_port), **env}
        super().__init__(data_dir, env=env, port=port, log_path=log_path)
        self.name = name
        self.metrics_port = metrics_port
        self.paused = False

    def __repr__(self) -> str:
        return f"Node({self.name}@{self.address})"

    # ---- signals ---------------------------------------------------------
    def pause(self) -> None:
        import signal

        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        import signal

        self.signal(signal.SIGCONT)
        self.paused = False

    def restart(self, timeout: float = 60.0) -> Node:
        """Start again with the same data folder, port and settings (after kill/stop)."""
        assert not self.alive(), f"{self} is still running"
        self.start(timeout=timeout)
        return self

    # ---- state -----------------------------------------------------------
    def status(self, timeout: float = 5.0) -> rpb.ReplicationStatus:
        return admin.replication_status(self.address, timeout=timeout)

    def digest(self, sequence: int = 0, timeout: float = 30.0) -> pb.GetDigestResponse:
        with SutraClient(self.address, timeout=timeout, retry_deadline=0) as c:
            return c.digest(sequence)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Cluster:
    base: Path
    leader: Node
    replicas: list[Node]
    extra: list[Node] = field(default_factory=list)  # nodes added later, also ended at the end
    etcd_pid: int | None = None  # the cluster's own etcd (running_managed_cluster)

    @property
    def nodes(self) -> list[Node]:
        return [self.leader, *self.replicas, *self.extra]

    def add_node(self, name: str, env: dict[str, str], start: bool = True) -> Node:
        port, mport = free_ports(2)
        node = Node(name, self.base / name, {"VECTOR_DIMENSION": str(DIM), **env}, port, mport,
                    self.base / f"{name}.log")
        self.extra.append(node)
        if start:
            node.start()
        return node

    def stop_all(self) -> None:
        errors = []
        for n in self.nodes:
            try:
                n.stop(timeout=10)  # sends SIGCONT first: a paused node can still exit
            except Exception as exc:  # noqa: BLE001 - keep ending the others
                errors.append(f"{n}: {exc}")
        assert not errors, errors

    def logs(self, n: int = 40) -> str:
        return "\n".join(f"--- {x.name} ({x.address}) ---\n{x.log_tail(n)}" for x in self.nodes)


def _start_all(nodes: Sequence[Node], timeout: float = 60.0) -> None:
    for n in nodes:
        n.start(wait=False)
    for n in nodes:
        n.wait_ready(timeout)


@contextmanager
def running_cluster(base: Path, replicas: int = 2, mode: str = "async", env: dict[str, str] | None = None,
                    leader_env: dict[str, str] | None = None,
                    replica_env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """A leader named ``leader`` and replicas ``r1``.. in ``base``; every process is
    ended when the block exits, whatever happens inside it."""
    base.mkdir(parents=True, exist_ok=True)
    ports = free_ports(2 * (replicas + 1))
    addr = [f"127.0.0.1:{p}" for p in ports[: replicas + 1]]
    common = {"VECTOR_DIMENSION": str(DIM), "SUTRA_COMMIT_MODE": mode, **(env or {})}
    leader = Node("leader", base / "leader",
                  {**common, "SUTRA_NODE_ROLE": "leader", "SUTRA_REPLICAS": ",".join(addr[1:]), **(leader_env or {})},
                  ports[0], ports[replicas + 1], base / "leader.log")
    reps = [Node(f"r{i}", base / f"r{i}",
                 {**common, "SUTRA_NODE_ROLE": "replica", "SUTRA_LEADER": addr[0], **(replica_env or {})},
                 ports[i], ports[replicas + 1 + i], base / f"r{i}.log") for i in range(1, replicas + 1)]
    c = Cluster(base, leader, reps)
    try:
        _start_all(c.nodes)
        yield c
    finally:
        c.stop_all()


@contextmanager
def running_managed_cluster(base: Path, replicas: int = 2, mode: str = "sync",
                            env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """As ``running_cluster``, with etcd deciding who leads (the HA deployment):
    an etcd of its own, and nodes named as there, ``leader`` being the initial
    leader preference. Yields once a node leads and every other one streams from
    it; ``Cluster.leader`` is the node that leads. etcd is ended too."""
    from tests.etcd import EtcdProcess

    base.mkdir(parents=True, exist_ok=True)
    etcd = EtcdProcess(base / "etcd")
    c: Cluster | None = None
    try:
        etcd.start()
        ports = free_ports(2 * (replicas + 1))
        common = {"VECTOR_DIMENSION": str(DIM), "SUTRA_COMMIT_MODE": mode,
                  "SUTRA_ETCD_ENDPOINTS": etcd.endpoint, **(env or {})}
        names = ["leader", *(f"r{i}" for i in range(1, replicas + 1))]
        nodes = [Node(nm, base / nm, {**common, "SUTRA_NODE_ROLE": "leader" if i == 0 else "replica"},
                      ports[i], ports[replicas + 1 + i], base / f"{nm}.log") for i, nm in enumerate(names)]
        c = Cluster(base, nodes[0], nodes[1:])
        _start_all(nodes)

        def led() -> Node | None:
            for n in nodes:
                st = n.status()
                if st.role == "leader" and all(
                        r.state == "streaming" for r in st.replicas) and len(st.replicas) == replicas:
                    return n
            return None

        lead = wait_for(led, 60, "a leader elected through etcd, with every other node streaming from it")
        assert lead is not None
        c.leader, c.replicas = lead, [n for n in nodes if n is not lead]
        c.etcd_pid = etcd.proc.pid if etcd.proc is not None else None
        yield c
    finally:
        try:
            if c is not None:
                c.stop_all()
        finally:
            etcd.stop()


# ---- waiting and comparing ----------------------------------------------------
def wait_streaming(leader: Node, names: Sequence[str], timeout: float = 30.0) -> rpb.ReplicationStatus:
    """Until the leader reports every named replica connected and streaming, and
    each (its data directory beside the leader's, as running_cluster lays them
    out) has taken the leader's cluster id. A leader counts a stream from the
    replica's hello, before the replica has had a message back; a replica
    promoted before its first message would found a cluster of its own, which
    the other replicas then refuse."""
    def adopted(name: str) -> bool:
        mine = leader.data_dir / IDENTITY_FILE
        theirs = leader.data_dir.parent / name / IDENTITY_FILE
        return not mine.exists() or (theirs.exists() and theirs.read_bytes() == mine.read_bytes())

    def ok() -> rpb.ReplicationStatus | None:
        st = leader.status()
        states = {r.node_id: r.state for r in st.replicas}
        return st if all(states.get(n) == "streaming" and adopted(n) for n in names) else None

    st = wait_for(ok, timeout, f"replicas {list(names)} streaming from {leader.name}")
    assert st is not None
    return st


def wait_lsn(nodes: Sequence[Node], lsn: int, timeout: float = 60.0) -> None:
    """Until every node has flushed and applied ``lsn`` (polls GetReplicationStatus)."""
    def behind() -> list[str]:
        out = []
        for n in nodes:
            st = n.status(timeout=2.0)
            if st.durable_lsn < lsn or st.applied_lsn < lsn:
                out.append(f"{n.name}: durable {st.durable_lsn} applied {st.applied_lsn}")
        return out

    last: list[str] = []

    def done() -> bool:
        nonlocal last
        last = behind()
        return not last

    try:
        wait_for(done, timeout, f"nodes to reach LSN {lsn}", interval=0.02)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still behind: {last}") from None


def digests(nodes: Sequence[Node], lsn: int, timeout: float = 60.0) -> dict[str, pb.GetDigestResponse]:
    """Each node's digest once it has applied ``lsn`` (GetDigest waits for it)."""
    wait_lsn(nodes, lsn, timeout)
    return {n.name: n.digest(lsn) for n in nodes}


def assert_same_digest(nodes: Sequence[Node], lsn: int, timeout: float = 60.0) -> pb.GetDigestResponse:
    """Every node holds exactly the same state at ``lsn`` (no writes may be running)."""
    got = digests(nodes, lsn, timeout)
    table = {k: (v.lsn, v.digest[:16], v.concepts, v.edges) for k, v in got.items()}
    assert all(v.lsn == lsn for v in got.values()), f"not all digests are at LSN {lsn}: {table}"
    assert len({v.digest for v in got.values()}) == 1, f"digests differ at LSN {lsn}: {table}"
    return next(iter(got.values()))


def most_advanced(nodes: Sequence[Node], timeout: float = 30.0) -> tuple[Node, int]:
    """The replica with the highest flushed LSN once the dead leader's stream has
    ended on every one (records it sent before dying may still be in a replica's
    receive buffer: an LSN read too early is not final), as an operator picks
    whom to promote."""
    def settled() -> list[rpb.ReplicationStatus] | None:
        sts = [n.status() for n in nodes]
        return sts if all(s.follow_state != "streaming" and s.last_lsn == s.durable_lsn for s in sts) else None

    sts = wait_for(settled, timeout, "the dead leader's streams to end on every replica")
    assert sts is not None
    i = max(range(len(nodes)), key=lambda k: sts[k].durable_lsn)
    return nodes[i], sts[i].durable_lsn


def promote(node: Node, followers: Sequence[Node]) -> rpb.PromoteResponse:
    """Manual promotion, as ``sutra-cluster promote --node A --followers B,C`` does."""
    return admin.promote(node.address, [f.address for f in followers])


def lag_samples(text: str, name: str) -> dict[str, float]:
    """{replica label: value} of one metric in a /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[s.labels.get("replica", "")] = s.value
    return out


# ---- a write load with a ledger ------------------------------------------------
PER_BATCH = 5


@dataclass
class Batch:
    batch_id: str
    ids: list[str]
    sent: float  # time.monotonic() when sent
    lsn: int = 0
    acked: float = 0.0  # time.monotonic() when the acknowledgement arrived


def content_of(cid: str) -> str:
    return f"content of {cid}"


def make_batch(batch_id: str, rng: random.Random, per_batch: int = PER_BATCH) -> tuple[list[Concept], list[Association]]:
    ids = [f"{batch_id}-c{j}" for j in range(per_batch)]
    concepts = [Concept(cid, content_of(cid), np.asarray([rng.random() + 0.1 for _ in range(DIM)], dtype=np.float32),
                        strength=rng.random(), confidence=rng.random()) for cid in ids]
    assocs = [Association(ids[j], ids[j + 1], j % 5, 0.5) for j in range(per_batch - 1)]
    return concepts, assocs


class WriteLoad:
    """``threads`` clients sending LearnBatch to ``address`` until stopped, until
    ``per_thread`` batches each, or until their first error (a killed leader).
    Every batch is either in ``acked`` (with its LSN and times) or in ``failed``."""

    def __init__(self, address: str, threads: int = 4, per_thread: int | None = None, seed: int = 0,
                 prefix: str = "w", timeout: float = 30.0) -> None:
        self.address = address
        self.per_thread = per_thread
        self.timeout = timeout
        self.lock = threading.Lock()
        self.acked: dict[str, Batch] = {}
        self.failed: dict[str, tuple[Batch, grpc.StatusCode, str]] = {}
        self.deleted: set[str] = set()  # concept ids a later batch (acknowledged or not) deletes
        self.stop_event = threading.Event()
        rng = random.Random(seed)
        self._threads = [threading.Thread(target=self._run, args=(f"{prefix}{t}", rng.randrange(1 << 30)),
                                          name=f"load-{prefix}{t}", daemon=True) for t in range(threads)]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def _run(self, prefix: str, seed: int) -> None:
        rng = random.Random(seed)
        with SutraClient(self.address, timeout=self.timeout, retry_deadline=0) as c:
            i = 0
            while not self.stop_event.is_set() and (self.per_thread is None or i < self.per_thread):
                b = Batch(f"{prefix}-b{i}", [], time.monotonic())
                i += 1
                concepts, assocs = make_batch(b.batch_id, rng)
                b.ids = [x.concept_id for x in concepts]
                deletes = [f"{prefix}-b{i - 3}-c0"] if i % 7 == 0 and i > 3 else []
                if deletes:  # before sending: an unacknowledged batch may still be applied
                    with self.lock:
                        self.deleted.add(deletes[0])
                try:
                    b.lsn = c.learn_batch(concepts, assocs, deletes)
                except grpc.RpcError as exc:
                    with self.lock:
                        self.failed[b.batch_id] = (b, exc.code(), exc.details() or "")  # type: ignore[attr-defined]
                    return
                b.acked = time.monotonic()
                with self.lock:
                    self.acked[b.batch_id] = b

    def stop(self, timeout: float = 60.0) -> None:
        self.stop_event.set()
        self.join(timeout)

    def join(self, timeout: float = 60.0) -> None:
        for t in self._threads:
            if t.is_alive():
                t.join(timeout)
        stuck = [t.name for t in self._threads if t.is_alive()]
        assert not stuck, f"load threads did not end: {stuck}"

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def last_lsn(self) -> int:
        with self.lock:
            return max((b.lsn for b in self.acked.values()), default=0)

    def errors(self) -> list[str]:
        with self.lock:
            return [f"{k}: {code.name}: {d}" for k, (_, code, d) in self.failed.items()]


def missing(address: str, batches: Sequence[Batch], deleted: set[str] | None = None,
            sequence: int = 0) -> list[str]:
    """Batches not fully present on the node at ``address``: the Jepsen-style
    checker (every acknowledged write is read back). Ids that a later batch
    deleted are skipped."""
    deleted = deleted or set()
    with SutraClient(address, timeout=30, retry_deadline=0) as c:
        def check(b: Batch) -> str | None:
            for cid in b.ids:
                if cid in deleted:
                    continue
                got = c.query_concept(cid, sequence=sequence)
                if got is None or got.content != content_of(cid):
                    return f"{b.batch_id} (LSN {b.lsn}): {cid} missing"
            return None

        with ThreadPoolExecutor(4) as pool:
            return [m for m in pool.map(check, batches) if m]
