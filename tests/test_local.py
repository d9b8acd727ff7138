"""The README's first command: `sutra-cluster local up` starts etcd, three nodes and a
router, writes sample data and prints the table; `kill-leader` shows a failover;
`down` stops everything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port, wait_for

pytestmark = pytest.mark.slow  # starts a local cluster

CLI = [sys.executable, "-m", "sutra_cluster"]


def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def dev(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The README's entry point, as a user types it."""
    return subprocess.run([str(ROOT / "dev"), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_local_up_kill_leader_down(tmp_path: Path) -> None:
    root = tmp_path / "cluster"
    try:
        up = dev("up", "--prometheus", "--dir", str(root), "--dim", "8", "--port", str(free_port()))
        assert up.returncode == 0, up.stdout + up.stderr
        out = up.stdout
        assert out.count("streaming") == 2 and out.count(" leader ") >= 1, out
        assert "Sample data written" in out and ".venv/bin/grpcurl -plaintext" in out and "/metrics" in out
        procs = json.loads((root / "cluster.json").read_text())
        assert sorted(p["role"] for p in procs) == ["etcd", "leader", "prometheus", "replica", "replica", "router"]

        # Every command `up` prints runs as printed, in a shell from the repository (no bare grpcurl).
        printed = [line.split("   #")[0].strip() for line in out.splitlines()
                   if line.startswith("  ") and ("grpcurl" in line or "sutra-cluster status" in line)]
        assert len(printed) == 6, out
        user = {k: v for k, v in os.environ.items() if not k.startswith("SUTRA_")}  # a user's shell, not the suite's
        for cmd in printed:
            assert not cmd.startswith("grpcurl"), cmd
            r = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=user, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0 and r.stdout.strip(), f"{cmd}: {r.stdout}{r.stderr}"
            if "QueryConcept" in cmd:
                assert '"found": true' in r.stdout, r.stdout

        # --prometheus: a real Prometheus scrapes the three nodes (the ports `up` chose) with the alert rules.
        prom = next(p for p in procs if p["role"] == "prometheus")
        assert f"http://127.0.0.1:{prom['port']}" in out
        nodes = {f"127.0.0.1:{p['metrics_port']}" for p in procs if p["role"] in ("leader", "replica")}
        router_metrics = next(f"127.0.0.1:{p['metrics_port']}" for p in procs if p["role"] == "router")

        def targets_up() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{prom['port']}/api/v1/targets", timeout=5) as r:
                active = json.load(r)["data"]["activeTargets"]
            up = {(t["labels"]["job"], t["labels"]["instance"]) for t in active if t["health"] == "up"}
            return up == {("sutra", n) for n in nodes} | {("sutra-router", router_metrics)}

        wait_for(targets_up, 60, "prometheus scraping the three nodes and the router")
        with urllib.request.urlopen(f"http://127.0.0.1:{prom['port']}/api/v1/rules", timeout=5) as r:
            rules = [rule["name"] for g in json.load(r)["data"]["groups"] for rule in g["rules"]]
        assert "SutraNodeDown" in rules, rules
        # Secure by default: a cluster secret of its own (0600), needed for the node plane.
        secret = root / "cluster-secret"
        assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_text().strip()) == 64
        assert f"sutra-cluster-secret: $(cat {secret})" in out and f"SUTRA_CLUSTER_SECRET_FILE={secret}" in out
        leader = next(p for p in procs if p["role"] == "leader")
        grpcurl = Path(sys.executable).parent / "grpcurl"
        status = [str(grpcurl), "-plaintext", f"127.0.0.1:{leader['port']}",
                  "sutra.replication.ReplicationService/GetReplicationStatus"]
        refused = subprocess.run(status, capture_output=True, text=True, timeout=30)
        assert refused.returncode != 0 and "Unauthenticated" in refused.stderr, refused.stdout + refused.stderr
        allowed = subprocess.run([*status[:2], "-H", f"sutra-cluster-secret: {secret.read_text().strip()}",
                                  *status[2:]], capture_output=True, text=True, timeout=30)
        assert allowed.returncode == 0 and '"role"' in allowed.stdout, allowed.stderr

        router = next(p for p in procs if p["role"] == "router")
        got = subprocess.run([str(grpcurl), "-plaintext", "-d", '{"concept_id": "water"}', f"127.0.0.1:{router['port']}",
                              "sutra.storage.StorageService/QueryConcept"], capture_output=True, text=True, timeout=30)
        assert got.returncode == 0 and '"found": true' in got.stdout, got.stdout + got.stderr

        kill = run("local", "kill-leader", "--dir", str(root))
        assert kill.returncode == 0, kill.stdout + kill.stderr
        assert "took over" in kill.stdout and "first acknowledged write after" in kill.stdout

        procs = json.loads((root / "cluster.json").read_text())  # kill-leader restarted a node
        down = dev("down", "--dir", str(root))
        assert down.returncode == 0 and "stopped 6 process(es)" in down.stdout, down.stdout + down.stderr
        for p in procs:
            with pytest.raises(ProcessLookupError):
                os.kill(p["pid"], 0)
    finally:
        if (root / "cluster.json").exists():  # the test failed before `down`: end every process anyway
            for p in json.loads((root / "cluster.json").read_text()):
                try:
                    os.kill(p["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_handbook_from_zero_commands_name_the_tools_where_dev_installs_them() -> None:
    """docs/HA.md's "From zero" block runs from the repository as written: no bare
    grpcurl or sutra-cluster (they are in .venv/bin, not on PATH), and Prometheus
    comes from `./dev up --prometheus`, which `./dev down` stops."""
    text = (ROOT / "docs" / "HA.md").read_text()
    start = text.index("## From zero to a monitored, backed-up cluster")
    block = text[text.index("```bash\n", start) + 8:text.index("```", text.index("```bash\n", start) + 8)]
    commands = [line for line in block.replace("\\\n", " ").splitlines() if line and not line.startswith(" ")]
    assert commands[0].startswith("./dev up --prometheus") and commands[-1].startswith("./dev down"), commands
    for cmd in commands:
        program = next(w for w in cmd.split() if "=" not in w)  # past VAR=value prefixes
        assert program.startswith(("./dev", ".venv/bin/")), f"not runnable as written from the repository: {cmd}"
