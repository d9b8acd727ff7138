"""deploy/systemd: the guide's unit adapted to ``sutra-cluster serve``, and its
example settings file.

The unit's keys are checked by parsing it, and, where systemd-analyze is
installed (it is on this project's machines: Debian's systemd package), by
``systemd-analyze verify`` in a scratch root that holds the unit, a stand-in
for the ExecStart program and the system's own units: it must report nothing
(verify exits 0 even on unknown keys, so its output is checked too)."""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from sutra_cluster import config
from sutra_cluster.server import Node
from tests.helpers import ROOT

UNIT = ROOT / "deploy" / "systemd" / "sutra-storage.service"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "sutra.env.example"
GUIDE_HARDENING = {"NoNewPrivileges": "true", "PrivateTmp": "true", "ProtectSystem": "strict",
                   "ProtectHome": "true", "ReadWritePaths": "/var/lib/sutra"}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values]}}: systemd keys may repeat (Environment=)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out[section] = {}
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=value: {line!r}"
        out[section].setdefault(key, []).append(value)
    return out


def test_unit_has_the_guides_settings_and_hardening() -> None:
    unit = parse_unit(UNIT)
    svc = {k: v[-1] for k, v in unit["Service"].items()}
    assert re.fullmatch(r"/\S+/bin/sutra-cluster serve", svc["ExecStart"]), svc["ExecStart"]
    assert svc["EnvironmentFile"] == "/etc/sutra/sutra.env"
    assert (svc["User"], svc["Group"], svc["Type"], svc["Restart"]) == ("sutra", "sutra", "simple", "always")
    for key, value in GUIDE_HARDENING.items():
        assert svc.get(key) == value, f"{key}={svc.get(key)}"
    assert svc["KillSignal"] == "SIGTERM" and int(svc["LimitNOFILE"]) >= 65536
    grace = inspect.signature(Node.stop).parameters["grace"].default
    assert int(svc["TimeoutStopSec"]) > grace, "systemd would SIGKILL a node during its graceful stop"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in unit["Unit"]["After"][0]
    env = dict(e.split("=", 1) for e in unit["Service"]["Environment"])
    assert env["STORAGE_PATH"].startswith(svc["ReadWritePaths"]), "the data folder must be writable"


@pytest.mark.slow
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: ./dev test installs Debian's systemd package"
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system" / UNIT.name)
    exe = root / parse_unit(UNIT)["Service"]["ExecStart"][-1].split()[0].lstrip("/")
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    r = subprocess.run([analyze, "verify", "--man=no", f"--root={root}", f"/etc/systemd/system/{UNIT.name}"],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_example_env_file_is_a_valid_node_configuration(tmp_path: Path) -> None:
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), line
            env[key] = value
    # The secret file the example names exists on a real host; here, one like it.
    assert env["SUTRA_CLUSTER_SECRET_FILE"] == "/etc/sutra/cluster-secret"
    (tmp_path / "cluster-secret").write_text("0123456789abcdef" * 4 + "\n")
    env["SUTRA_CLUSTER_SECRET_FILE"] = str(tmp_path / "cluster-secret")
    cfg = config.load(env)  # raises ConfigError naming every bad setting
    assert cfg.cluster_secret == "0123456789abcdef" * 4
    assert cfg.etcd_endpoints and cfg.metrics_port and cfg.storage_path == "/var/lib/sutra/knowledge"
    # Every setting named there is one the node reads.
    known = set(re.findall(r"# ([A-Z][A-Z0-9_]+)", (ROOT / "sutra_cluster" / "config.py").read_text()))
    known |= set(re.findall(r'"([A-Z][A-Z0-9_]+)"', (ROOT / "sutra_cluster" / "config.py").read_text()))
    # The secret and the etcd options are read in credentials.py (the tools read them too).
    known |= set(re.findall(r'"([A-Z][A-Z0-9_]+)"', (ROOT / "sutra_cluster" / "credentials.py").read_text()))
    commented = re.findall(r"^# ([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE)
    assert not (set(env) | set(commented)) - known, (set(env) | set(commented)) - known


def _install_steps() -> list[str]:
    """The unit header's install commands (`#   ...` lines), trailing comments dropped."""
    steps = []
    for line in UNIT.read_text().splitlines():
        if line.startswith("#   "):
            steps.append(line[4:].split("  #")[0].strip())
    return steps


def test_install_steps_build_a_wheel_from_the_repository(tmp_path: Path) -> None:
    """No index serves sutra-cluster: the header installs from a checkout or a wheel built
    there. Its wheel command runs verbatim in a copy of the checkout's package sources, and
    the install line's glob and constraints file name what that produces."""
    steps = _install_steps()
    assert not any(re.search(r"pip install (-\S+ )*sutra-cluster\b", s) for s in steps), steps
    build = next(s for s in steps if "pip wheel" in s)
    install = next(s for s in steps if "/opt/sutra/venv/bin/pip install" in s)
    checkout = tmp_path / "sutra-cluster"
    checkout.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, checkout / name)
    shutil.copytree(ROOT / "sutra_cluster", checkout / "sutra_cluster",
                    ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run(["bash", "-c", build], cwd=checkout, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    wheel_glob = next(w for w in install.split() if w.endswith(".whl"))
    wheels = list(checkout.glob(wheel_glob))
    assert len(wheels) == 1, (wheel_glob, list((checkout / "dist").iterdir()))
    with zipfile.ZipFile(wheels[0]) as whl:
        names = whl.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "sutra-cluster = " in whl.read(entry_points).decode()
        assert "sutra_cluster/pb/storage_pb2.py" in names
    constraints = install.split("-c ", 1)[1].split()[0]
    assert (ROOT / constraints).is_file(), constraints
    assert UNIT_EXEC in UNIT.read_text()


UNIT_EXEC = "ExecStart=/opt/sutra/venv/bin/sutra-cluster serve"  # the venv the install steps make
