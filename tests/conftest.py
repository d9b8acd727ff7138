from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sutra_cluster.replication.manager import ReplicationManager
from sutra_cluster.storage.engine import Engine
from tests.helpers import NodeProcess, in_process_leader


@pytest.fixture
def leader(tmp_path: Path) -> Iterator[tuple[Engine, ReplicationManager]]:
    """A sync-mode leader in process, without etcd (any connected replica counts).
    A test module may define its own ``leader`` (tests/chaos/test_demote_race.py does)."""
    env = {"STORAGE_PATH": str(tmp_path / "n"), "VECTOR_DIMENSION": "4", "SUTRA_NODE_ID": "n1",
           "SUTRA_NODE_ROLE": "leader", "SUTRA_COMMIT_MODE": "sync", "SUTRA_SYNC_TIMEOUT_MS": "30000"}
    with in_process_leader(env) as pair:
        yield pair


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Start real node processes; every one is ended when the test ends, pass or fail."""
    started: list[NodeProcess] = []

    def make(name: str = "n1", env: dict[str, str] | None = None, start: bool = True,
             port: int | None = None) -> NodeProcess:
        node = NodeProcess(tmp_path / name, env=env, port=port, log_path=tmp_path / f"{name}.log")
        started.append(node)
        if start:
            node.start()
        return node

    yield make
    for node in started:
        node.stop(timeout=10)
