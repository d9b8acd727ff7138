"""``sutra-cluster local``: the embedded default cluster on this machine.

``up`` starts the nodes as background processes under one data folder, waits
until they are healthy, writes a little sample data and prints where to point
grpcurl and Prometheus. ``down`` stops them with SIGTERM (graceful).

Secure by default: ``up`` makes a cluster secret in ``<dir>/cluster-secret``
(0600, kept across restarts) and gives it to every node and the router, so the
replication and admin calls need it (see sutra_cluster/auth.py); the commands
it prints pass it on.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from sutra_cluster.client import Association, Concept, SutraClient

STATE_FILE = "cluster.json"
SECRET_FILE = "cluster-secret"
SERVICES = ("etcd", "router", "prometheus")  # every other role in cluster.json is a storage node
T = TypeVar("T")
# The repository's deploy/ folder: the alert rules a local Prometheus loads.
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


@dataclass
class Proc:
    name: str
    role: str
    pid: int
    port: int
    metrics_port: int
    data: str
    log: str


def cluster_secret(root: Path) -> str:
    """The local cluster's secret, made on first use (0600, never world-readable)."""
    path = root / SECRET_FILE
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip()


def _secret_env(root: Path) -> dict[str, str]:
    # The value itself, not the file: an inherited SUTRA_CLUSTER_SECRET must not clash with a _FILE.
    return {"SUTRA_CLUSTER_SECRET": cluster_secret(root), "SUTRA_CLUSTER_SECRET_FILE": ""}


@contextlib.contextmanager
def admin_env(root: Path) -> Iterator[None]:
    """This process's admin calls (status, streaming checks) carry the local cluster's secret."""
    saved = {k: os.environ.get(k) for k in ("SUTRA_CLUSTER_SECRET", "SUTRA_CLUSTER_SECRET_FILE")}
    os.environ.update(_secret_env(root))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_port(preferred: int) -> int:
    if _port_free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        # A child this process started and that has exited stays a zombie (kill 0
        # succeeds on it) until reaped: reap it, so a wait sees the exit at once.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:  # not our child (started by an earlier `local up`)
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _load(root: Path) -> list[Proc]:
    path = root / STATE_FILE
    if not path.exists():
        return []
    return [Proc(**p) for p in json.loads(path.read_text())]


def _save(root: Path, procs: list[Proc]) -> None:
    tmp = root / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps([asdict(p) for p in procs], indent=2))
    os.replace(tmp, root / STATE_FILE)


def _spawn(root: Path, name: str, role: str, port: int, metrics_port: int, env: dict[str, str],
           command: str = "serve") -> Proc:
    data = root / name
    data.mkdir(parents=True, exist_ok=True)
    log = root / f"{name}.log"
    full = dict(os.environ)
    full.update({
        "STORAGE_PATH": str(data), "STORAGE_PORT": str(port), "SUTRA_HOST": "127.0.0.1",
        "SUTRA_NODE_ID": name, "SUTRA_METRICS_PORT": str(metrics_port), "SUTRA_NODE_ROLE": role,
    })
    full.update(_secret_env(root))
    full.update(env)
    with open(log, "ab") as out:
        p = subprocess.Popen([sys.executable, "-m", "sutra_cluster", command], env=full, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
    return Proc(name, role, p.pid, port, metrics_port, str(data), str(log))


def _wait_healthy(proc: Proc, timeout: float = 60.0) -> None:
    def healthy() -> bool:
        if not _alive(proc.pid):
            raise RuntimeError(f"{proc.name} exited; see {proc.log}")
        with SutraClient(f"127.0.0.1:{proc.port}", timeout=1.0) as c:
            return bool(c.health().healthy)

    _until(healthy, timeout, f"{proc.name} healthy (see {proc.log})")


def _until(cond: Callable[[], T], timeout: float, what: str) -> T:
    """ops.waiting's one policy; a timeout is this module's RuntimeError (the CLI prints it)."""
    from sutra_cluster.ops.waiting import wait_until

    try:
        return wait_until(cond, timeout, what)
    except TimeoutError as exc:
        raise RuntimeError(str(exc)) from None


def sample_data(address: str, dim: int) -> int:
    """Write a few concepts and associations through the leader (``address`` is etcd's)."""
    rng = np.random.default_rng(7)
    facts = [
        ("water", "Water is a molecule of two hydrogen atoms and one oxygen atom."),
        ("ice", "Ice is water in its solid state, below 0 degrees Celsius."),
        ("steam", "Steam is water in its gaseous state, above 100 degrees Celsius."),
        ("heat", "Heat is energy transferred between systems by temperature difference."),
        ("melting", "Melting turns a solid into a liquid when heat is added."),
    ]
    concepts = [Concept(cid, text, rng.standard_normal(dim).astype(np.float32), 1.0, 0.9) for cid, text in facts]
    assocs = [Association("ice", "water", 3, 0.9), Association("steam", "water", 3, 0.9),
              Association("heat", "melting", 1, 0.8), Association("melting", "ice", 1, 0.7)]
    from sutra_cluster.client import ClusterClient

    with ClusterClient([address]) as c:
        return c.learn_batch(concepts, assocs)


def _spawn_etcd(root: Path, client_port: int, peer_port: int) -> Proc:
    data = root / "etcd"
    log = root / "etcd.log"
    etcd = Path(sys.executable).parent / "etcd"
    if not etcd.exists():
        raise RuntimeError("the etcd binary is missing from the virtual environment; run ./dev setup")
    cu, pu = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    cmd = [str(etcd), "--name", "sutra-local", "--data-dir", str(data), "--listen-client-urls", cu,
           "--advertise-client-urls", cu, "--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
           "--initial-cluster", f"sutra-local={pu}", "--log-level", "warn"]
    with open(log, "ab") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Proc("etcd", "etcd", p.pid, client_port, 0, str(data), str(log))


def _wait_etcd(proc: Proc, timeout: float = 30.0) -> None:
    from sutra_cluster.failover.etcd import etcd_answers

    def answers() -> bool:
        if not _alive(proc.pid):
            raise RuntimeError(f"etcd exited; see {proc.log}")
        return etcd_answers("127.0.0.1", proc.port)

    _until(answers, timeout, f"etcd answering (see {proc.log})")


def wait_leader(etcd: str, timeout: float = 30.0) -> str:
    from sutra_cluster.admin import etcd_members

    return _until(lambda: etcd_members([etcd], "sutra", 0)[1], timeout, "a leader elected")


def up(root: Path, dim: int = 768, base_port: int = 50051, nodes: int = 3, commit_mode: str = "sync") -> list[Proc]:
    """Start etcd and a ``nodes``-node HA shard under ``root``; returns the processes."""
    root.mkdir(parents=True, exist_ok=True)
    running = [p for p in _load(root) if _alive(p.pid)]
    if running:
        raise RuntimeError(f"a local cluster is already running from {root}; run `sutra-cluster local down`")
    etcd = _spawn_etcd(root, _pick_port(2379), _pick_port(2380))
    procs = [etcd]
    _save(root, procs)
    _wait_etcd(etcd)
    endpoint = f"127.0.0.1:{etcd.port}"
    ports = []
    for i in range(nodes):
        port = _pick_port(base_port + i)
        while port in ports:
            port = _pick_port(0)
        ports.append(port)
    for i, port in enumerate(ports):
        role = "leader" if i == 0 else "replica"
        env = {"VECTOR_DIMENSION": str(dim), "SUTRA_ETCD_ENDPOINTS": endpoint, "SUTRA_COMMIT_MODE": commit_mode,
               "SUTRA_REPLICAS": ",".join(f"127.0.0.1:{p}" for p in ports if p != port),
               "SUTRA_LEADER": f"127.0.0.1:{ports[0]}"}
        procs.append(_spawn(root, f"node-{i + 1}", role, port, _pick_port(9091 + i), env))
        _save(root, procs)
    for p in procs[1:]:
        _wait_healthy(p)
    wait_leader(endpoint)
    with admin_env(root):
        _wait_streaming([f"127.0.0.1:{p}" for p in ports])
    rport = _pick_port(base_port - 1)
    while rport in ports:
        rport = _pick_port(0)
    mports = [p.metrics_port for p in procs]
    router_metrics = _pick_port(9091 + nodes)
    while router_metrics in mports:
        router_metrics = _pick_port(0)
    router = _spawn(root, "router", "router", rport, router_metrics,
                    {"SUTRA_ETCD_ENDPOINTS": endpoint, "SUTRA_SHARDS": "1", "SUTRA_ROUTER_PORT": str(rport),
                     "VECTOR_DIMENSION": str(dim), "SUTRA_NODE_ID": "router"}, command="router")
    procs.append(router)
    _save(root, procs)
    _wait_healthy(router)
    return procs


def prometheus_config(procs: list[Proc]) -> dict[str, object]:
    """deploy/prometheus-local.yml's settings, with the metrics ports ``up`` really
    chose (they move off 9091-9093 when those are taken)."""
    targets = [f"127.0.0.1:{p.metrics_port}" for p in procs if p.role not in SERVICES]
    routers = [f"127.0.0.1:{p.metrics_port}" for p in procs if p.role == "router" and p.metrics_port]
    rules = DEPLOY / "alerts.yml"
    jobs: list[dict[str, object]] = [{"job_name": "sutra", "scrape_timeout": "4s",
                                      "static_configs": [{"targets": targets, "labels": {"shard": "0"}}]}]
    if routers:  # a job of its own: the node alerts count job "sutra" targets
        jobs.append({"job_name": "sutra-router", "static_configs": [{"targets": routers}]})
    return {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s",
                   "external_labels": {"cluster": "sutra-local"}},
        "rule_files": [str(rules)] if rules.exists() else [],
        "scrape_configs": jobs,
    }


def start_prometheus(root: Path, procs: list[Proc], port: int = 9090, timeout: float = 60.0) -> Proc:
    """Start a Prometheus server (the ``prometheus`` program on PATH) scraping this
    local cluster's nodes with the alert rules, on 127.0.0.1:``port`` (or a free port
    when taken); its data goes to ``<root>/prometheus``. Recorded in cluster.json,
    so ``down`` stops it. Raises RuntimeError when the program is missing or it does
    not become ready."""
    import shutil
    import urllib.request

    exe = shutil.which("prometheus")
    if exe is None:
        raise RuntimeError("the prometheus program is not on PATH: `./dev up --prometheus` installs Debian's "
                           "prometheus package, or install Prometheus yourself")
    config = root / "prometheus.yml"
    # JSON is YAML: no YAML library needed at run time.
    config.write_text(json.dumps(prometheus_config(procs), indent=2) + "\n")
    port = _pick_port(port)
    data = root / "prometheus"
    log = root / "prometheus.log"
    cmd = [exe, f"--config.file={config}", f"--storage.tsdb.path={data}", f"--web.listen-address=127.0.0.1:{port}"]
    with open(log, "ab") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc = Proc("prometheus", "prometheus", p.pid, port, 0, str(data), str(log))
    _save(root, [*procs, proc])
    def ready() -> bool:
        if not _alive(proc.pid):
            raise RuntimeError(f"prometheus exited; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1.0) as r:
                return r.status == 200
        except OSError:  # not listening yet (urllib's errors are OSErrors, not all ConnectionErrors)
            return False

    _until(ready, timeout, f"prometheus ready (see {log})")
    return proc


def _wait_streaming(addresses: list[str], timeout: float = 30.0) -> None:
    """Wait until every replica streams from the leader."""
    from sutra_cluster.admin import replication_status

    def streaming() -> bool:
        states = [replication_status(a, 1.0) for a in addresses]
        return all(s.role == "leader" or s.follow_state == "streaming" for s in states)

    _until(streaming, timeout, "every replica streaming")


def kill_leader(root: Path) -> tuple[str, str, float]:
    """SIGKILL the leader, time the failover, restart the killed node (it rejoins
    as a replica). Returns (old leader, new leader, seconds to the first write)."""
    from sutra_cluster.client import ClusterClient

    procs = _load(root)
    etcd = next(p for p in procs if p.role == "etcd")
    endpoint = f"127.0.0.1:{etcd.port}"
    old = wait_leader(endpoint)
    victim = next(p for p in procs if p.role not in SERVICES and f"127.0.0.1:{p.port}" == old)
    dim = int(json.loads((root / "settings.json").read_text())["dim"]) if (root / "settings.json").exists() else 768
    os.kill(victim.pid, signal.SIGKILL)
    t0 = time.monotonic()
    with ClusterClient([endpoint], failover_deadline=30) as c:
        c.learn_concept("failover-probe", "written right after the leader was killed",
                        np.ones(dim, dtype=np.float32))
    rto = time.monotonic() - t0
    new = wait_leader(endpoint)
    env = {"VECTOR_DIMENSION": str(dim), "SUTRA_ETCD_ENDPOINTS": endpoint,
           "SUTRA_COMMIT_MODE": json.loads((root / "settings.json").read_text()).get("commit_mode", "sync")
           if (root / "settings.json").exists() else "sync"}
    restarted = _spawn(root, victim.name, "replica", victim.port, victim.metrics_port, env)
    _save(root, [restarted if p.name == victim.name else p for p in procs])
    _wait_healthy(restarted)
    return old, new, rto


def _gone(pid: int) -> Callable[[], bool]:
    return lambda: not _alive(pid)


def down(root: Path, timeout: float = 30.0) -> int:
    procs = _load(root)
    # Prometheus and the router first, then the nodes (the leader releases its key), etcd last.
    procs = ([p for p in procs if p.role in ("prometheus", "router")] + [p for p in procs if p.role not in SERVICES]
             + [p for p in procs if p.role == "etcd"])
    for p in procs:
        if _alive(p.pid):
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            _until(_gone(p.pid), max(0.0, deadline - time.monotonic()), f"{p.name} to exit")
        except RuntimeError:  # it ignored SIGTERM for the whole budget
            os.kill(p.pid, signal.SIGKILL)
    (root / STATE_FILE).unlink(missing_ok=True)
    return len(procs)


def tool_path(name: str) -> str:
    """How to spell the virtual environment's ``name`` tool (grpcurl, sutra-cluster)
    in a command printed for the user to paste: relative to the current folder
    when the tool lives under it (``.venv/bin/grpcurl`` from the repository),
    absolute otherwise. Never bare: these tools are not on PATH."""
    path = Path(sys.executable).parent / name
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def print_table(procs: list[Proc], sequence: int | None) -> None:
    from sutra_cluster.admin import print_status

    etcd = next(p for p in procs if p.role == "etcd")
    endpoint = f"127.0.0.1:{etcd.port}"
    leader = wait_leader(endpoint)
    nodes = [p for p in procs if p.role not in SERVICES]
    router = next((p for p in procs if p.role == "router"), None)
    prom = next((p for p in procs if p.role == "prometheus"), None)
    print(f"etcd      http://{endpoint}   (data {etcd.data})")
    if router is not None:
        print(f"router    127.0.0.1:{router.port}   (the whole cluster as one StorageService; "
              f"metrics http://127.0.0.1:{router.metrics_port}/metrics)")
    if prom is not None:
        print(f"prometheus http://127.0.0.1:{prom.port}   (scrapes the nodes with deploy/alerts.yml; data {prom.data})")
    print()
    root = Path(etcd.data).parent
    with admin_env(root):
        print_status([f"127.0.0.1:{p.port}" for p in nodes])
    print(f"\n{'NODE':<10} {'PID':>7} {'GRPC':<18} {'PROMETHEUS METRICS':<34} DATA")
    for p in nodes:
        grpc_at, metrics_at = f"127.0.0.1:{p.port}", f"http://127.0.0.1:{p.metrics_port}/metrics"
        print(f"{p.name:<10} {p.pid:>7} {grpc_at:<18} {metrics_at:<34} {p.data}")
    entry = f"127.0.0.1:{router.port}" if router is not None else leader
    if sequence is not None:
        print(f"\nSample data written through the leader (sequence {sequence}). Try:")
    grpcurl, cli = tool_path("grpcurl"), tool_path("sutra-cluster")
    print(f"  {grpcurl} -plaintext {entry} list")
    print(f"  {grpcurl} -plaintext {entry} sutra.storage.StorageService/GetStats")
    print(f"  {grpcurl} -plaintext -d '{{\"concept_id\": \"water\"}}' {entry} sutra.storage.StorageService/QueryConcept")
    print(f"  {grpcurl} -plaintext -d '{{\"start_id\": \"heat\", \"end_id\": \"water\"}}' {entry} "
          "sutra.storage.StorageService/FindPath")
    secret = root / SECRET_FILE
    print(f"  {grpcurl} -plaintext -H \"sutra-cluster-secret: $(cat {secret})\" {leader} "
          "sutra.replication.ReplicationService/GetReplicationStatus   # the leader; needs the cluster secret")
    print(f"  SUTRA_CLUSTER_SECRET_FILE={secret} {cli} status --etcd {endpoint}")
    # The default folder needs no --dir; any other must be named, or the command finds no cluster.
    where = "" if root == Path(".local-cluster").resolve() else f" --dir {root}"
    print(f"  {cli} local kill-leader{where}    # watch a failover")
    if prom is None:
        targets = ", ".join(f"'127.0.0.1:{p.metrics_port}'" for p in nodes)
        print(f"Prometheus: scrape_configs: [{{job_name: sutra, static_configs: [{{targets: [{targets}]}}]}}]"
              "   (or start one with: ./dev up --prometheus)")
    print(f"Stop with: ./dev down   (or: {cli} local down{where})")
