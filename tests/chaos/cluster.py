"""A managed cluster as real processes: one etcd and three nodes that elect
their leader through it, a leader-following write load that fills the ledger,
and the fault tools (signals, iptables).

Addresses. Every node listens on all addresses of its port and advertises its
own loopback address (127.0.0.11, .12, .13): peers, etcd's member records and
the load's ClusterClient use that one, while the test itself talks to a node
through 127.0.0.1 (``side``). So a test can drop what a node sends from its
advertised address (its replication stream, say) and still reach it.

etcd partitions. A node's outgoing connections to etcd leave from 127.0.0.1
whatever address it advertises (the kernel picks the source address of a
loopback route), so the source address cannot single it out. Instead etcd
listens on one extra client port per node, each node is given only its own,
and cutting a node from etcd drops every packet to and from that port.

Everything started here is ended by ``stop_all`` (paused processes get SIGCONT
first) and every iptables rule added is deleted, pass or fail.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from sutra_cluster import admin
from sutra_cluster.client import ClusterClient, SutraClient
from sutra_cluster.failover.coordinator import ClusterSnapshot
from sutra_cluster.failover.etcd import EtcdCoordinator, shard_prefix
from sutra_cluster.pb import replication_pb2 as rpb
from sutra_cluster.pb import storage_pb2 as pb
from tests.chaos.checker import (
    Ack,
    CheckResult,
    Ledger,
    LogRecord,
    check,
    read_divergent,
    read_log,
    term_owners,
)
from tests.etcd import EtcdProcess
from tests.helpers import NodeProcess, free_port, tool, wait_for

PREFIX = shard_prefix("sutra", 0)
DIM = 8
HOSTS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
# Default failover timing, as the product ships it (asserted against, not set).
LEASE_TTL_S = 2.0
FENCE_MARGIN_S = 0.5
COMMON_ENV = {
    "VECTOR_DIMENSION": str(DIM),
    # No automatic checkpoint during a test: every WAL reaches back to LSN 1, so the
    # checker can read the term of every acknowledged record from disk.
    "MEMORY_THRESHOLD": str(1 << 40),
}


def vector(seed: int) -> np.ndarray:
    return np.full(DIM, 0.1 + (seed % 97) / 100.0, dtype=np.float32)


def content_of(cid: str) -> str:
    return f"content of {cid}"


# ---- processes ---------------------------------------------------------------------
class ChaosEtcd(EtcdProcess):
    """etcd with one extra client port per node (see the module docstring)."""

    def __init__(self, data_dir: Path, nodes: int) -> None:
        super().__init__(data_dir)
        self.node_ports: list[int] = []
        while len(self.node_ports) < nodes:
            p = free_port(self.host)
            if p not in (self.client_port, self.peer_port, *self.node_ports):
                self.node_ports.append(p)

    def node_endpoint(self, i: int) -> str:
        return f"{self.host}:{self.node_ports[i]}"

    def start(self, timeout: float = 30.0) -> ChaosEtcd:
        cu = f"http://{self.host}:{self.client_port}"
        listen = ",".join([cu, *(f"http://{self.host}:{p}" for p in self.node_ports)])
        pu = f"http://{self.host}:{self.peer_port}"
        cmd = [tool("etcd"), "--name", "etcd-chaos", "--data-dir", str(self.data_dir),
               "--listen-client-urls", listen, "--advertise-client-urls", cu,
               "--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
               "--initial-cluster", f"etcd-chaos={pu}", "--log-level", "warn"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.healthy, timeout, "etcd to answer")
        return self


class ChaosNode(NodeProcess):
    def __init__(self, name: str, index: int, base: Path, env: dict[str, str], port: int) -> None:
        self.name = name
        self.host = HOSTS[index]
        env = {"SUTRA_NODE_ID": name, "SUTRA_HOST": "0.0.0.0", "SUTRA_ADVERTISE": f"{self.host}:{port}", **env}
        super().__init__(base / name, env=env, port=port, log_path=base / f"{name}.log")
        self.paused = False

    def __repr__(self) -> str:
        return f"{self.name}@{self.address}"

    @property
    def address(self) -> str:
        """The advertised address: what etcd, peers and the load's clients use."""
        return f"{self.host}:{self.port}"

    @property
    def side(self) -> str:
        """The test's own way in (see the module docstring)."""
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            with SutraClient(self.side, timeout=1.0, retry_deadline=0.0) as c:
                return bool(c.health().healthy)

        wait_for(ready, timeout, f"{self.name} to answer HealthCheck")

    def client(self, timeout: float = 10.0) -> SutraClient:
        return SutraClient(self.side, timeout=timeout, retry_deadline=0.0)

    def status(self, timeout: float = 2.0) -> rpb.ReplicationStatus:
        return admin.replication_status(self.side, timeout=timeout)

    def query(self, cid: str, timeout: float = 2.0) -> pb.QueryConceptResponse:
        """QueryConcept on this node; raises grpc.RpcError (UNAVAILABLE while it must not serve reads)."""
        with self.client(timeout) as c:
            return c.stub.QueryConcept(pb.QueryConceptRequest(concept_id=cid), timeout=timeout)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        self.paused = False
        return super().stop(timeout)


# ---- iptables ------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Firewall:
    """iptables DROP rules added by a test; ``clear`` deletes every one still in place."""

    def __init__(self) -> None:
        self.tag = f"sutra-chaos-{os.getpid()}"
        self.rules: list[list[str]] = []

    @staticmethod
    def require() -> None:
        exe = shutil.which("iptables")
        assert exe, "iptables is not installed: run ./dev setup (it installs the Debian package iptables)"
        r = subprocess.run([exe, "-w", "-S", "OUTPUT"], check=False, capture_output=True, text=True)
        assert r.returncode == 0, f"iptables does not work here (root is needed): {r.stderr.strip()}"
        Firewall._sweep(r.stdout)
        # ``reject`` adds its rules to INPUT: sweep that chain too.
        r = subprocess.run([exe, "-w", "-S", "INPUT"], check=False, capture_output=True, text=True)
        assert r.returncode == 0, f"iptables -S INPUT failed: {r.stderr.strip()}"
        Firewall._sweep(r.stdout)

    @staticmethod
    def _sweep(rules: str) -> None:
        """Delete rules left by a chaos run whose process died before its cleanup ran."""
        for line in rules.splitlines():
            m = re.search(r'--comment "?sutra-chaos-(\d+)"?', line)
            if m is None or not line.startswith("-A ") or _pid_alive(int(m.group(1))):
                continue
            subprocess.run(["iptables", "-w", "-D", *shlex.split(line)[1:]], check=False, capture_output=True)

    def drop(self, *match: str) -> list[str]:
        spec = ["OUTPUT", *match, "-m", "comment", "--comment", self.tag, "-j", "DROP"]
        subprocess.run(["iptables", "-w", "-I", *spec], check=True, capture_output=True)
        self.rules.append(spec)
        return spec

    def reject(self, *match: str) -> list[str]:
        """Answer matching incoming TCP segments with a reset: a connection to a
        live process is refused (as a firewall or a proxy in front of it would),
        and established connections that match are reset."""
        spec = ["INPUT", *match, "-m", "comment", "--comment", self.tag, "-j", "REJECT", "--reject-with", "tcp-reset"]
        subprocess.run(["iptables", "-w", "-I", *spec], check=True, capture_output=True)
        self.rules.append(spec)
        return spec

    def remove(self, spec: list[str]) -> None:
        if spec in self.rules:
            self.rules.remove(spec)
            subprocess.run(["iptables", "-w", "-D", *spec], check=True, capture_output=True)

    def clear(self) -> None:
        errors = []
        for spec in list(self.rules):
            try:
                self.remove(spec)
            except subprocess.CalledProcessError as exc:
                errors.append(f"{spec}: {exc.stderr}")
        assert not errors, f"could not delete iptables rules: {errors}"


# ---- the cluster ---------------------------------------------------------------------
class ManagedCluster:
    """etcd and three nodes; ``n0`` is the initial leader preference."""

    def __init__(self, base: Path, mode: str, n: int = 3, env: dict[str, str] | None = None) -> None:
        self.base = base
        self.mode = mode
        base.mkdir(parents=True, exist_ok=True)
        self.etcd = ChaosEtcd(base / "etcd", n)
        self.firewall = Firewall()
        # Every node listens on all addresses: its port must differ from every other node's and etcd's.
        # The kernel may hand the same free port to two probes made before either is bound (a node on
        # a port taken by another exits at start), so the ports are picked distinct here.
        taken = {self.etcd.client_port, self.etcd.peer_port, *self.etcd.node_ports}
        ports: list[int] = []
        while len(ports) < n:
            p = free_port("0.0.0.0")
            if p not in taken:
                taken.add(p)
                ports.append(p)
        self.nodes = [
            ChaosNode(f"n{i}", i, base, {
                **COMMON_ENV, "SUTRA_COMMIT_MODE": mode, "SUTRA_NODE_ROLE": "leader" if i == 0 else "replica",
                "SUTRA_ETCD_ENDPOINTS": self.etcd.node_endpoint(i), **(env or {}),
            }, ports[i]) for i in range(n)
        ]
        self._coord: EtcdCoordinator | None = None
        self.t0 = time.monotonic()

    # ---- lifecycle ---------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> ManagedCluster:
        self.etcd.start()
        for n in self.nodes:
            n.start(wait=False)
        for n in self.nodes:
            n.wait_ready(timeout)
        self.wait_healthy(timeout)
        return self

    def stop_all(self) -> None:
        """End every process (SIGCONT first), delete every iptables rule. Idempotent."""
        errors = []
        try:
            self.firewall.clear()
        except AssertionError as exc:
            errors.append(str(exc))
        if self._coord is not None:
            self._coord.close()
            self._coord = None
        for n in self.nodes:
            try:
                n.stop(timeout=15)
            except Exception as exc:  # noqa: BLE001 - keep ending the others, report at the end
                errors.append(f"{n}: {exc}")
        try:
            self.etcd.stop()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"etcd: {exc}")
        assert not errors, errors

    # ---- views -------------------------------------------------------------------
    @property
    def coord(self) -> EtcdCoordinator:
        if self._coord is None:
            self._coord = EtcdCoordinator([self.etcd.endpoint], PREFIX, "chaos-test", timeout=1.0)
        return self._coord

    def snapshot(self) -> ClusterSnapshot:
        return self.coord.snapshot()

    def node(self, name: str) -> ChaosNode:
        return next(n for n in self.nodes if n.name == name)

    def name_of(self, address: str) -> str:
        return next((n.name for n in self.nodes if address in (n.address, n.side)), address)

    def others(self, node: ChaosNode) -> list[ChaosNode]:
        return [n for n in self.nodes if n is not node]

    def leader(self) -> ChaosNode | None:
        """The node etcd names as leader, if it also says it leads at that term."""
        snap = self.snapshot()
        if snap.leader is None:
            return None
        n = self.node(snap.leader.node_id)
        st = n.status()
        return n if st.role == "leader" and st.term == snap.leader.term else None

    def wait_leader(self, timeout: float = 30.0, exclude: Sequence[ChaosNode] = ()) -> ChaosNode:
        def found() -> ChaosNode | None:
            n = self.leader()
            return n if n is not None and n not in exclude else None

        lead = wait_for(found, timeout, f"a leader other than {list(exclude)}", interval=0.02)
        assert lead is not None
        return lead

    def healthy(self) -> ChaosNode | None:
        """The leader, when every node runs, every replica streams from it, and
        in sync mode a published sync set names a streaming replica."""
        if not all(n.alive() for n in self.nodes):
            return None
        snap = self.snapshot()
        lead = self.leader()
        if lead is None:
            return None
        st = lead.status()
        states = {r.node_id: r for r in st.replicas}
        for n in self.others(lead):
            r = states.get(n.name)
            if r is None or r.state != "streaming":
                return None
            nst = n.status()
            if nst.role != "replica" or nst.term != st.term or nst.follow_state != "streaming":
                return None
        if self.mode == "sync":
            if snap.sync is None or snap.sync.term != st.term or not snap.sync.members:
                return None
            if not all(states[m].state == "streaming" and states[m].sync for m in snap.sync.members if m in states):
                return None
        return lead

    def wait_healthy(self, timeout: float = 30.0) -> ChaosNode:
        try:
            lead = wait_for(self.healthy, timeout, "a healthy cluster (leader elected, replicas streaming)",
                            interval=0.05)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.describe()}") from None
        assert lead is not None
        return lead

    def wait_caught_up(self, nodes: Sequence[ChaosNode] | None = None, timeout: float = 30.0) -> int:
        """Until every node has applied the leader's durable LSN; returns it."""
        lead = self.wait_leader(timeout)
        lsn = lead.status().durable_lsn
        nodes = list(nodes or self.nodes)

        def done() -> bool:
            return all(n.status().applied_lsn >= lsn for n in nodes)

        wait_for(done, timeout, f"every node to apply LSN {lsn}", interval=0.05)
        return lsn

    def steady_sync_roles(self, load: WriteLoad) -> tuple[ChaosNode, ChaosNode, ChaosNode]:
        """Once a leader is healthy, every node caught up and ``load`` acknowledged by it
        again: (the leader, its one sync-set member, the other replica)."""
        lead = self.wait_healthy(60)
        self.wait_caught_up(timeout=60)
        load.wait_acks(10, since=time.monotonic(), node=lead.name)
        snap = self.snapshot()
        assert snap.sync is not None and len(snap.sync.members) == 1, f"expected one sync member: {snap.sync}"
        member = self.node(snap.sync.members[0])
        other = next(n for n in self.others(lead) if n is not member)
        return lead, member, other

    def assert_same_digest(self, lsn: int) -> str:
        got = {}
        for n in self.nodes:
            with n.client(timeout=30) as c:
                d = c.digest(lsn)
            got[n.name] = (d.lsn, d.digest)
        assert len({v[1] for v in got.values()}) == 1 and all(v[0] >= lsn for v in got.values()), \
            f"digests differ at LSN {lsn}: {got}"
        return next(iter(got.values()))[1]

    def describe(self) -> str:
        lines = []
        for n in self.nodes:
            try:
                st = n.status(timeout=1.0)
                lines.append(f"{n.name} {n.address}: role {st.role} term {st.term} durable {st.durable_lsn} "
                             f"applied {st.applied_lsn} follow {st.follow_state or '-'} "
                             f"replicas {[(r.node_id, r.state, r.sync) for r in st.replicas]}")
            except Exception as exc:  # noqa: BLE001 - a description for a failure message
                lines.append(f"{n.name} {n.address}: {'paused' if n.paused else 'alive' if n.alive() else 'dead'}"
                             f" ({type(exc).__name__})")
        try:
            snap = self.snapshot()
            lines.append(f"etcd: leader {snap.leader} term {snap.term} sync {snap.sync}")
        except Exception as exc:  # noqa: BLE001 - a description for a failure message
            lines.append(f"etcd: {type(exc).__name__}: {exc}")
        return "\n".join(lines)

    def logs(self, n: int = 40) -> str:
        return "\n".join(f"--- {x.name} ---\n{x.log_tail(n)}" for x in self.nodes)

    # ---- after the test ------------------------------------------------------------
    def read_logs(self) -> tuple[dict[str, dict[int, LogRecord]], dict[str, list[LogRecord]]]:
        """Every node's log and divergent records from disk (stop the nodes first)."""
        assert not any(n.alive() for n in self.nodes), "stop the nodes before reading their logs"
        return ({n.name: read_log(n.data_dir) for n in self.nodes},
                {n.name: read_divergent(n.data_dir) for n in self.nodes})


# ---- the load --------------------------------------------------------------------
class _TracingStub:
    """Wraps a stub: each call's start time, address and outcome go to ``trace``."""

    def __init__(self, stub: object, address: str, trace: list[tuple[float, str, str]]) -> None:
        self._stub, self._address, self._trace = stub, address, trace

    def __getattr__(self, method: str) -> Callable[..., object]:
        fn = getattr(self._stub, method)

        def call(request: object, **kw: object) -> object:
            t = time.monotonic()
            try:
                r = fn(request, **kw)
            except grpc.RpcError as exc:
                details = (exc.details() or "")[:120]  # type: ignore[attr-defined]
                self._trace.append((t, self._address, f"{exc.code().name}: {details}"))  # type: ignore[attr-defined]
                raise
            self._trace.append((t, self._address, "OK"))
            return r

        return call


class _Traced:
    def __init__(self, stub: _TracingStub) -> None:
        self.stub = stub


class RecordingClusterClient(ClusterClient):
    """The product's ClusterClient (its leader lookup, retries and request ids
    untouched), noting each attempt's address, start time and outcome, so the
    ledger knows which node acknowledged. One per load thread."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.trace: list[tuple[float, str, str]] = []
        super().__init__(*args, **kw)

    def begin(self) -> None:
        self.trace = []

    def _client(self, address: str) -> _Traced:  # type: ignore[override]
        return _Traced(_TracingStub(super()._client(address).stub, address, self.trace))


class WriteLoad:
    """``threads`` writers, each a ClusterClient following the leader through
    etcd, writing one new concept per request (retries reuse the request id)."""

    def __init__(self, cluster: ManagedCluster, ledger: Ledger, threads: int = 3, prefix: str = "w",
                 timeout: float = 1.0, failover_deadline: float = 30.0, interval: float = 0.01) -> None:
        self.cluster = cluster
        self.interval = interval  # each thread starts at most one write per interval
        self.ledger = ledger
        self.timeout = timeout
        self.failover_deadline = failover_deadline
        self.stop_event = threading.Event()
        self.errors: list[str] = []
        self.traces: dict[str, list[tuple[float, str, str]]] = {}  # rid -> attempts, for writes retried
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(f"{prefix}{t}",), daemon=True,
                                          name=f"load-{prefix}{t}") for t in range(threads)]

    def start(self) -> WriteLoad:
        for t in self._threads:
            t.start()
        return self

    def _run(self, prefix: str) -> None:
        try:
            cc = RecordingClusterClient([self.cluster.etcd.endpoint], timeout=self.timeout,
                                        failover_deadline=self.failover_deadline)
        except Exception as exc:  # noqa: BLE001 - reported by WriteLoad.stop
            self.errors.append(f"{prefix}: client: {exc!r}")
            return
        try:
            i = 0
            while not self.stop_event.is_set():
                t = self._write(cc, prefix, i)
                i += 1
                self.stop_event.wait(max(0.0, t + self.interval - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - a bug in the load itself: reported by WriteLoad.stop
            self.errors.append(f"{prefix}: {exc!r}")
        finally:
            cc.close()

    def _write(self, cc: RecordingClusterClient, prefix: str, i: int) -> float:
        """One write, recorded in the ledger; returns when it was sent."""
        cid = f"{prefix}-{i}"
        rid = f"rid-{cid}"
        cc.begin()
        t = time.monotonic()
        try:
            lsn = cc.learn_concept(cid, content_of(cid), vector(i), request_id=rid)
        except (grpc.RpcError, TimeoutError) as exc:
            # Not acknowledged (it may still be applied: the checker only counts acknowledgements).
            code = exc.code().name if isinstance(exc, grpc.RpcError) else "TIMEOUT"  # type: ignore[attr-defined]
            self.ledger.fail(rid, cid, code, t)
        else:
            sent, address, _ = cc.trace[-1]
            if len(cc.trace) > 1:
                with self._lock:
                    self.traces[rid] = [(round(x - self.cluster.t0, 3), self.cluster.name_of(a), o)
                                        for x, a, o in cc.trace]
            self.ledger.ack(rid, cid, lsn, self.cluster.name_of(address), sent, len(cc.trace))
        return t

    def stop(self) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + self.failover_deadline + self.timeout + 10
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        assert not stuck, f"load threads did not end: {stuck}"
        assert not self.errors, self.errors

    def first_ack(self, since: float, exclude: Sequence[ChaosNode] = (), timeout: float = 30.0,
                  what: str = "the first write acknowledged by a new leader") -> Ack:
        """Until a write is acknowledged after ``since`` by a node not in ``exclude``."""
        names = [n.name for n in exclude]
        found = wait_for(lambda: self.ledger.first_after(since, exclude=names), timeout, what, interval=0.01)
        assert found is not None
        return found

    def wait_acks(self, n: int, since: float, node: str | None = None, timeout: float = 30.0) -> None:
        """Until ``n`` acknowledgements arrived after ``since`` (from ``node``, if given)."""
        def enough() -> bool:
            got = self.ledger.after(since)
            return len([a for a in got if node is None or a.node == node]) >= n

        wait_for(enough, timeout, f"{n} acknowledged writes{' from ' + node if node else ''}", interval=0.02)


@dataclass
class Pinned:
    cid: str
    sent: float
    done: float = 0.0
    outcome: str = ""  # "ok" or the status code's name
    lsn: int = 0


class PinnedWriter:
    """Sends a write to ONE node every ``interval`` without waiting for answers
    (futures), bypassing etcd: what a client that still believes in an old
    leader does. Each request's send time, answer time and outcome are kept."""

    def __init__(self, node: ChaosNode, prefix: str, interval: float = 0.05, timeout: float = 20.0) -> None:
        from sutra_cluster.pb import storage_pb2_grpc

        self.node = node
        self.prefix = prefix
        self.interval = interval
        self.timeout = timeout
        self.requests: list[Pinned] = []
        self._futures: list[grpc.Future] = []
        self._stop = threading.Event()
        self._channel = grpc.insecure_channel(node.side)
        self._stub = storage_pb2_grpc.StorageServiceStub(self._channel)
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"pinned-{prefix}")

    def start(self) -> PinnedWriter:
        self._thread.start()
        return self

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(self.interval):
            cid = f"{self.prefix}-{i}"
            req = pb.LearnConceptRequest(concept_id=cid, content=content_of(cid), request_id=f"rid-{cid}",
                                         embedding_f32=vector(i).tobytes())
            p = Pinned(cid, time.monotonic())
            fut = self._stub.LearnConcept.future(req, timeout=self.timeout)
            fut.add_done_callback(lambda f, p=p: self._done(p, f))
            self.requests.append(p)
            self._futures.append(fut)
            i += 1

    @staticmethod
    def _done(p: Pinned, fut: grpc.Future) -> None:
        p.done = time.monotonic()
        try:
            p.lsn = int(fut.result().sequence)
            p.outcome = "ok"
        except grpc.RpcError as exc:
            p.outcome = exc.code().name  # type: ignore[attr-defined]
        except grpc.FutureCancelledError as exc:
            p.outcome = type(exc).__name__

    def halt(self) -> None:
        """Stop sending, without waiting for answers (a failing test's cleanup)."""
        self._stop.set()

    def stop(self) -> list[Pinned]:
        """Stop sending and wait for every answer (bounded by the timeout)."""
        self._stop.set()
        self._thread.join(10)
        deadline = time.monotonic() + self.timeout + 5
        wait_for(lambda: all(p.outcome for p in self.requests) or time.monotonic() > deadline,
                 self.timeout + 10, "answers to the pinned writes")
        self._channel.close()
        return self.requests

    def record(self, ledger: Ledger) -> None:
        """Put the acknowledged ones in the ledger (attempt 1, this node)."""
        for p in self.requests:
            if p.outcome == "ok":
                ledger.ack(f"rid-{p.cid}", p.cid, p.lsn, self.node.name, p.sent, 1, acked=p.done)

    def outcomes(self, since: float = 0.0) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.requests:
            if p.sent >= since:
                out[p.outcome] = out.get(p.outcome, 0) + 1
        return out


@contextmanager
def managed_cluster(base: Path, mode: str, env: dict[str, str] | None = None) -> Iterator[ManagedCluster]:
    c = ManagedCluster(base, mode, env=env)
    try:
        c.start()
        yield c
    finally:
        c.stop_all()


def finish(cluster: ManagedCluster, load: WriteLoad | None, ledger: Ledger) -> CheckResult:
    """End of a test: stop the load, wait until every node applied the leader's
    last LSN and compare digests there, read etcd's term grants, stop the nodes
    (replicas first, so no new term starts) and run the checker on their logs."""
    if load is not None:
        load.stop()
    lead = cluster.wait_healthy(60)
    lsn = cluster.wait_caught_up(timeout=60)
    cluster.assert_same_digest(lsn)
    owners = term_owners(cluster.etcd.endpoint, PREFIX)
    for n in cluster.others(lead):
        n.stop(timeout=15)
    lead.stop(timeout=15)
    logs, divergent = cluster.read_logs()
    return check(ledger.all(), logs, divergent, owners, lead.name, cluster.mode, cluster.t0)
