"""``sutra-cluster local``: the embedded default cluster on this machine.

``up`` starts the nodes as background processes under one data folder, waits
until they are healthy, writes a little sample data and prints where to point
grpcurl and Prometheus. ``down`` stops them with SIGTERM (graceful).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sutra_cluster.client import Association, Concept, SutraClient

STATE_FILE = "cluster.json"


@dataclass
class Proc:
    name: str
    role: str
    pid: int
    port: int
    metrics_port: int
    data: str
    log: str


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


def _spawn(root: Path, name: str, role: str, port: int, metrics_port: int, env: dict[str, str]) -> Proc:
    data = root / name
    data.mkdir(parents=True, exist_ok=True)
    log = root / f"{name}.log"
    full = dict(os.environ)
    full.update({
        "STORAGE_PATH": str(data), "STORAGE_PORT": str(port), "SUTRA_HOST": "127.0.0.1",
        "SUTRA_NODE_ID": name, "SUTRA_METRICS_PORT": str(metrics_port), "SUTRA_NODE_ROLE": role,
    })
    full.update(env)
    with open(log, "ab") as out:
        p = subprocess.Popen([sys.executable, "-m", "sutra_cluster", "serve"], env=full, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
    return Proc(name, role, p.pid, port, metrics_port, str(data), str(log))


def _wait_healthy(proc: Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(proc.pid):
            raise RuntimeError(f"{proc.name} exited; see {proc.log}")
        try:
            with SutraClient(f"127.0.0.1:{proc.port}", timeout=1.0) as c:
                if c.health().healthy:
                    return
        except Exception:  # not listening yet
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not healthy after {timeout:.0f}s; see {proc.log}")


def sample_data(address: str, dim: int) -> int:
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
    with SutraClient(address) as c:
        return c.learn_batch(concepts, assocs)


def up(root: Path, dim: int = 768, base_port: int = 50051) -> list[Proc]:
    root.mkdir(parents=True, exist_ok=True)
    running = [p for p in _load(root) if _alive(p.pid)]
    if running:
        raise RuntimeError(f"a local cluster is already running from {root}; run `sutra-cluster local down`")
    port = _pick_port(base_port)
    metrics = _pick_port(9091)
    env = {"VECTOR_DIMENSION": str(dim)}
    procs = [_spawn(root, "node-1", "leader", port, metrics, env)]
    _save(root, procs)
    for p in procs:
        _wait_healthy(p)
    return procs


def down(root: Path, timeout: float = 30.0) -> int:
    procs = _load(root)
    for p in procs:
        if _alive(p.pid):
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        while _alive(p.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(p.pid):
            os.kill(p.pid, signal.SIGKILL)
    (root / STATE_FILE).unlink(missing_ok=True)
    return len(procs)


def print_table(procs: list[Proc], sequence: int | None) -> None:
    print(f"{'NODE':<10} {'ROLE':<8} {'PID':>7} {'GRPC':<16} {'METRICS':<28} DATA")
    for p in procs:
        print(f"{p.name:<10} {p.role:<8} {p.pid:>7} 127.0.0.1:{p.port:<6} "
              f"http://127.0.0.1:{p.metrics_port}/metrics  {p.data}")
    leader = next(p for p in procs if p.role == "leader")
    if sequence is not None:
        print(f"\nSample data written (sequence {sequence}). Try:")
    print(f"  grpcurl -plaintext 127.0.0.1:{leader.port} list")
    print(f"  grpcurl -plaintext 127.0.0.1:{leader.port} sutra.storage.StorageService/GetStats")
    print(f"  grpcurl -plaintext -d '{{\"concept_id\": \"water\"}}' 127.0.0.1:{leader.port} "
          "sutra.storage.StorageService/QueryConcept")
    print(f"  grpcurl -plaintext -d '{{\"start_id\": \"heat\", \"end_id\": \"water\"}}' 127.0.0.1:{leader.port} "
          "sutra.storage.StorageService/FindPath")
    print(f"Prometheus: scrape http://127.0.0.1:{leader.metrics_port}/metrics")
    print("Stop with: ./dev down   (or: sutra-cluster local down)")
