"""The README's first command: `sutra-cluster local up` starts etcd, three nodes and a
router, writes sample data and prints the table; `kill-leader` shows a failover;
`down` stops everything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port

pytestmark = pytest.mark.slow  # starts a local cluster

CLI = [sys.executable, "-m", "sutra_cluster"]


def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_local_up_kill_leader_down(tmp_path: Path) -> None:
    root = tmp_path / "cluster"
    try:
        up = run("local", "up", "--dir", str(root), "--dim", "8", "--port", str(free_port()))
        assert up.returncode == 0, up.stdout + up.stderr
        out = up.stdout
        assert out.count("streaming") == 2 and out.count(" leader ") >= 1, out
        assert "Sample data written" in out and "grpcurl -plaintext" in out and "/metrics" in out
        procs = json.loads((root / "cluster.json").read_text())
        assert sorted(p["role"] for p in procs) == ["etcd", "leader", "replica", "replica", "router"]
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

        down = run("local", "down", "--dir", str(root))
        assert down.returncode == 0 and "stopped 5 process(es)" in down.stdout, down.stdout + down.stderr
    finally:
        if (root / "cluster.json").exists():  # the test failed before `down`: end every process anyway
            for p in json.loads((root / "cluster.json").read_text()):
                try:
                    os.kill(p["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
