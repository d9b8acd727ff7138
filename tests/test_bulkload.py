"""`sutra-cluster load`: a JSON-lines bulk load through one stream, with a progress bar."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import ROOT, NodeProcess

pytestmark = pytest.mark.slow  # starts a node and the load command

DIM = 8


def test_load_streams_a_file_with_progress(tmp_path: Path, node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory()
    path = tmp_path / "data.jsonl"
    with open(path, "w") as f:
        for i in range(2000):
            f.write(json.dumps({"concept_id": f"c{i}", "content": f"concept {i}",
                                "embedding": [0.1 + (i % 7)] * DIM, "confidence": 0.5}) + "\n")
        for i in range(1999):
            f.write(json.dumps({"source_id": f"c{i}", "target_id": f"c{i + 1}", "assoc_type": 1}) + "\n")
    r = subprocess.run([sys.executable, "-m", "sutra_cluster", "load", "--node", node.address, "--file", str(path),
                        "--batch", "300"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "loaded 2000 concepts and 1999 associations" in r.stdout, r.stdout
    assert "load data.jsonl [" in r.stderr and "100.0%" in r.stderr, r.stderr  # the progress bar
    seq = int(r.stdout.rsplit("sequence", 1)[1].strip())
    with node.client() as c:
        assert c.query_concept("c1999", sequence=seq) is not None
        assert c.find_path("c0", "c5") == [f"c{i}" for i in range(6)]
        assert c.stats().edges == 1999

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"concept_id": "ok", "content": "fine"}\n{"nothing": 1}\n')
    r = subprocess.run([sys.executable, "-m", "sutra_cluster", "load", "--node", node.address, "--file", str(bad),
                        "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "bad.jsonl:2: neither a concept" in r.stderr, r.stderr
