"""Fixtures of the chaos suite: a managed cluster that is always ended, a ledger,
and the session's JSON report (SUTRA_CHAOS_REPORT, default chaos-report.json in
pytest's base temporary folder), printed at the end of the run."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.checker import Ledger, Report
from tests.chaos.cluster import ManagedCluster

_REPORT: Report | None = None


@pytest.fixture(scope="session")
def chaos_report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    global _REPORT
    if _REPORT is None:
        path = os.environ.get("SUTRA_CHAOS_REPORT") or str(tmp_path_factory.getbasetemp() / "chaos-report.json")
        _REPORT = Report(Path(path))
    return _REPORT


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., ManagedCluster]]:
    """Start a managed cluster (etcd + 3 nodes); every process is ended and
    every iptables rule deleted when the test ends, pass or fail. On failure
    the nodes' last log lines are printed."""
    started: list[ManagedCluster] = []

    def make(mode: str = "sync", env: dict[str, str] | None = None) -> ManagedCluster:
        c = ManagedCluster(tmp_path / f"cluster{len(started)}", mode, env=env)
        started.append(c)
        return c.start()

    yield make
    errors = []
    for c in started:
        try:
            c.stop_all()
        except Exception as exc:  # noqa: BLE001 - keep ending the others, report at the end
            errors.append(str(exc))
    assert not errors, errors


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        base = item.funcargs.get("tmp_path") if hasattr(item, "funcargs") else None
        if base is not None:
            tails = []
            for log in sorted(Path(base).glob("cluster*/n*.log")):
                lines = log.read_text(errors="replace").splitlines()[-25:]
                tails.append(f"--- {log.parent.name}/{log.name} ---\n" + "\n".join(lines))
            if tails:
                rep.sections.append(("node logs (last lines)", "\n".join(tails)))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _REPORT is not None and _REPORT.data.get("faults"):
        terminalreporter.section("chaos report")
        terminalreporter.write_line(f"written to {_REPORT.path}")
        terminalreporter.write_line(_REPORT.text())
