"""Progress bars (rich on a terminal, plain lines elsewhere, both with rate and
ETA) and the operator tools' one wait policy (ops/waiting.py)."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from sutra_cluster.failover.coordinator import CoordinatorUnavailable
from sutra_cluster.ops.progress import Progress
from sutra_cluster.ops.waiting import retryable, wait_until
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc
from tests.helpers import NodeProcess, tool


class _Rpc(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, reason: str = "") -> None:
        self._code, self._reason = code, reason

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"{self._code.name} for the test"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("sutra-reason", self._reason),) if self._reason else ()


# ---- the wait policy -------------------------------------------------------------------------
def test_retryable_is_the_clients_rule_plus_unreachable_store_and_refused_connections() -> None:
    assert retryable(_Rpc(grpc.StatusCode.UNAVAILABLE))
    assert retryable(_Rpc(grpc.StatusCode.FAILED_PRECONDITION, "not-leader"))
    assert not retryable(_Rpc(grpc.StatusCode.FAILED_PRECONDITION))
    assert not retryable(_Rpc(grpc.StatusCode.INVALID_ARGUMENT))
    assert not retryable(_Rpc(grpc.StatusCode.PERMISSION_DENIED))
    assert retryable(CoordinatorUnavailable("etcd unreachable")) and retryable(ConnectionRefusedError())
    assert not retryable(RuntimeError("node exited"))


def test_wait_until_retries_through_retryable_errors_and_falsy_answers() -> None:
    answers: list[Callable[[], object]] = [
        lambda: (_ for _ in ()).throw(_Rpc(grpc.StatusCode.UNAVAILABLE)),
        lambda: None, lambda: (_ for _ in ()).throw(CoordinatorUnavailable("x")), lambda: "leader",
    ]
    calls = iter(answers)
    assert wait_until(lambda: next(calls)(), 10, "a leader") == "leader"


def test_wait_until_stops_at_once_on_a_final_error_and_names_the_wait_at_its_deadline() -> None:
    n = 0

    def refused() -> bool:
        nonlocal n
        n += 1
        raise _Rpc(grpc.StatusCode.PERMISSION_DENIED)

    with pytest.raises(grpc.RpcError):
        wait_until(refused, 10, "never")
    assert n == 1
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"etcd answering: not within 0.3 s \(last: UNAVAILABLE: UNAVAILABLE for"):
        wait_until(lambda: (_ for _ in ()).throw(_Rpc(grpc.StatusCode.UNAVAILABLE)), 0.3, "etcd answering")
    assert 0.3 <= time.monotonic() - t0 < 2.0
    with pytest.raises(TimeoutError, match=r"^a leader: not within 0.2 s$"):
        wait_until(lambda: False, 0.2, "a leader")


# ---- progress ------------------------------------------------------------------------------------
def test_plain_progress_lines_carry_rate_and_eta_and_nothing_when_disabled() -> None:
    out = io.StringIO()
    p = Progress("backup n1", 1000, out=out)
    p.last -= 10  # as if the plain interval had passed
    p.update(250, 4_000_000)
    p.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "25.0%" in lines[0] and "ETA " in lines[0] and "items/s" in lines[0]
    assert "100.0%" in lines[1] and "MB/s" in lines[1] and "\x1b" not in out.getvalue()
    quiet = io.StringIO()
    q = Progress("x", 10, enabled=False, out=quiet)
    q.update(5, 5)
    q.finish()
    assert quiet.getvalue() == ""


def test_backup_on_a_terminal_draws_a_rich_bar_with_rate_and_eta(tmp_path: Path,
                                                                  node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory()
    with grpc.insecure_channel(node.address) as ch:
        stub = storage_pb2_grpc.StorageServiceStub(ch)
        stub.LearnBatch(pb.LearnBatchRequest(concepts=[
            pb.LearnConceptRequest(concept_id=f"c{i}", content="x" * 200, embedding=[0.5] * 8) for i in range(2000)
        ]), timeout=30)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([tool("sutra-cluster"), "backup", "--node", node.address, "--out",
                                 str(tmp_path / "bk")], stdout=subprocess.PIPE, stderr=slave, text=False,
                                env={**os.environ, "COLUMNS": "160", "TERM": "xterm"})
        os.close(slave)
        slave = -1
        seen = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the other side closed (the process ended)
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=30) == 0, seen.decode(errors="replace")
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    text = seen.decode(errors="replace")
    assert "\x1b[" in text, "no terminal control sequences: not drawn by rich"
    assert "backup " in text and "100%" in text and "MB/s" in text and "items/s" in text and "ETA" in text, text
