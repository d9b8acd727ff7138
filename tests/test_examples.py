"""The examples in examples/ run verbatim against a real local node, and the
API reference generates from the client's docstrings (scripts/api_docs.sh)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, NodeProcess

pytestmark = pytest.mark.slow  # a real node, the examples and pdoc as processes

EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    base = tmp_path_factory.mktemp("examples")
    # The node's default VECTOR_DIMENSION (768): the examples ask the cluster for it.
    n = NodeProcess(base / "n1", env={"VECTOR_DIMENSION": "768"}, log_path=base / "n1.log")
    try:
        n.start()
        yield n
    finally:
        n.stop(timeout=10)


def run(script: str, url: str) -> str:
    p = subprocess.run([sys.executable, str(EXAMPLES / script), url], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, f"{script} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p.stdout


def test_quickstart(node: NodeProcess) -> None:
    out = run("quickstart.py", f"sutra://{node.address}")
    assert "get: qs-axum 'Axum is a web framework on Tokio' embedding (768,)" in out
    assert "neighbors of qs-tokio: ['qs-axum', 'qs-rust']" in out
    assert "path qs-axum -> qs-rust: ['qs-axum', 'qs-tokio', 'qs-rust']" in out
    assert "search: qs-axum 1.000 Axum is a web framework on Tokio" in out
    assert "libraries: 2" in out and "scroll: ['qs-axum', 'qs-rust', 'qs-tokio']" in out


def test_filtered_search(node: NodeProcess) -> None:
    out = run("filtered_search.py", f"sutra://{node.address}")
    en = [line for line in out.splitlines() if line.startswith("en: ")]
    assert len(en) == 5 and all(line.endswith(" en") for line in en) and en[0].startswith("en: fx-008 ")
    assert "gold hits: 10 of 16 gold concepts" in out
    assert "german gold: ['fx-025', 'fx-125', 'fx-225', 'fx-325']" in out
    assert "refused: filter has 17 conditions, the limit is 16" in out


def test_async_client(node: NodeProcess) -> None:
    out = run("async_client.py", f"sutra://{node.address}")
    assert "multi-get: ['ax-00', 'ax-07', None]" in out
    assert "nearest even: ['ax-00', " in out and "count even: 10" in out
    assert "iterate: ['ax-01', 'ax-03', 'ax-05', 'ax-07', 'ax-09']" in out


def test_api_reference_generates(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}  # the interpreter running the tests, as gen_proto.sh's PYTHON
    p = subprocess.run(["bash", str(ROOT / "scripts" / "api_docs.sh"), str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    page = (tmp_path / "sutra_cluster" / "client.html").read_text()
    for name in ("SutraClient", "vector_search", "get_concepts", "scroll", "count", "AsyncSutraClient"):
        assert name in page, name
    assert "applied inside" in page  # a docstring's text, not only the names
    for sub in ("aio", "types", "errors", "options"):
        assert (tmp_path / "sutra_cluster" / "client" / f"{sub}.html").exists(), sub
