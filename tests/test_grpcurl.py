"""The operator's guide's grpcurl commands, run verbatim with the real grpcurl binary."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest

from tests.helpers import NodeProcess, tool

pytestmark = pytest.mark.slow  # starts a node and runs grpcurl


def grpcurl(node: NodeProcess, *args: str, data: dict | None = None) -> dict:
    cmd = [tool("grpcurl"), "-plaintext"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    cmd += [node.address, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"{' '.join(cmd)} failed: {out.stderr}"
    return json.loads(out.stdout) if out.stdout.strip().startswith("{") else {"text": out.stdout}


def test_guide_commands(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(env={"VECTOR_DIMENSION": "4"})
    listed = grpcurl(node, "list")["text"].split()
    assert "sutra.storage.StorageService" in listed
    assert "grpc.health.v1.Health" in listed

    health = grpcurl(node, "sutra.storage.StorageService/HealthCheck")
    assert health["healthy"] is True

    wrote = grpcurl(node, "sutra.storage.StorageService/LearnConcept", data={
        "concept_id": "c1", "content": "water boils at 100 C", "embedding": [0.1, 0.2, 0.3, 0.4],
        "strength": 1.0, "confidence": 0.9,
    })
    seq = int(wrote["sequence"])
    assert seq >= 1
    got = grpcurl(node, "sutra.storage.StorageService/QueryConcept", data={"concept_id": "c1", "sequence": seq})
    assert got["found"] is True and got["content"] == "water boils at 100 C"
    assert abs(got["confidence"] - 0.9) < 1e-6

    stats = grpcurl(node, "sutra.storage.StorageService/GetStats")
    for key in ("concepts", "written", "uptime_seconds"):
        assert key in stats, stats
    assert stats["concepts"] == "1" and stats["written"] == "1"

    flushed = grpcurl(node, "sutra.storage.StorageService/Flush")
    assert flushed["success"] is True
    assert (node.data_dir / "storage.dat").exists()
    assert (node.data_dir / "wal.log").stat().st_size < 1024

    hc = grpcurl(node, "grpc.health.v1.Health/Check")
    assert hc["status"] == "SERVING"
