from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import NodeProcess


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
