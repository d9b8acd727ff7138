"""A real full disk: a node whose STORAGE_PATH is a 4 MB tmpfs is written to
until a write fails. The failing write must be refused (UNAVAILABLE, naming
ENOSPC) and not acknowledged; the node must keep serving reads and stats.
After SIGKILL, the tmpfs is grown (none of the node's files is touched) and the
node restarted: every acknowledged write is there, the refused one is there
in full or not at all, and writes work again.

Needs root (mount). Run as another user it fails rather than skips: CI runs
as root, and a disk-full test that silently does not run proves nothing."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from sutra_cluster.client import SutraClient
from tests.helpers import NodeProcess, free_port, rpc_code, wait_for

pytestmark = pytest.mark.slow  # mounts a small file system and starts a node

DIM = 8
CONTENT_BYTES = 32 * 1024  # ~125 writes fill 4 MB
MAX_WRITES = 1000  # 32 MB: far past a 4 MB disk; reaching it means ENOSPC never came


def run(*cmd: str) -> None:
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs mounted on tmp_path/small, unmounted afterwards whatever happens."""
    assert os.geteuid() == 0, "this test mounts a tmpfs and must run as root (CI does)"
    mnt = tmp_path / "small"
    mnt.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt))
    try:
        yield mnt
    finally:
        res = subprocess.run(["umount", str(mnt)], check=False, capture_output=True, text=True, timeout=60)
        if res.returncode != 0:  # still busy: detach it so no mount outlives the test, then fail
            subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True, timeout=60)
            raise AssertionError(f"umount {mnt} failed: {res.stderr.strip()}")


def content(cid: str) -> str:
    head = f"content of {cid} "
    return head + "x" * (CONTENT_BYTES - len(head))


def vector(i: int) -> np.ndarray:
    return np.arange(1, DIM + 1, dtype=np.float32) + i


def test_disk_full_refuses_the_write_keeps_serving_and_loses_nothing_acknowledged(
        tmp_path: Path, small_disk: Path) -> None:
    data = small_disk / "data"
    port = free_port()
    env = {"VECTOR_DIMENSION": str(DIM)}
    # The logs are not on the tmpfs.
    node = NodeProcess(data, env=env, port=port, log_path=tmp_path / "first.log")
    restarted: NodeProcess | None = None
    try:
        node.start()
        acked: list[str] = []
        failed_id = ""
        failure: grpc.RpcError | None = None
        with SutraClient(node.address, timeout=20, retry_deadline=0) as c:
            for i in range(MAX_WRITES):
                cid = f"c{i}"
                try:
                    c.learn_concept(cid, content(cid), vector(i))
                except grpc.RpcError as exc:
                    failed_id, failure = cid, exc
                    break
                acked.append(cid)
        assert failure is not None, f"{MAX_WRITES} writes of {CONTENT_BYTES} B all succeeded on a 4 MB disk"
        assert len(acked) > 10, f"the disk was full after only {len(acked)} writes"
        code, details = rpc_code(failure), failure.details()  # type: ignore[attr-defined]
        print(f"write #{len(acked)} failed: {code.name}: {details}")
        assert code == grpc.StatusCode.UNAVAILABLE, f"{code.name}: {details}"
        assert "ENOSPC" in details and "not acknowledged" in details, details

        # Still up, still reading: the acknowledged writes are all visible, the refused one is not.
        assert node.alive(), node.log_tail()
        with node.client() as c:
            assert c.health().healthy
            wait_for(lambda: c.stats().concepts == len(acked), 30, f"{len(acked)} concepts visible")
            for cid in (acked[0], acked[len(acked) // 2], acked[-1]):
                got = c.query_concept(cid)
                assert got is not None and got.content == content(cid), cid
            assert c.query_concept(failed_id) is None, "a refused write became visible"
            hits = c.vector_search(vector(0), k=1)
            assert hits and hits[0][0] == acked[0]
            stats = c.stats()
            assert stats.concepts == len(acked), stats
            assert (stats.written, stats.dropped) == (len(acked), 1), stats
            # The disk is still full: another write is refused the same way, and the node survives it.
            with pytest.raises(grpc.RpcError) as again:
                c.learn_concept("still-full", content("still-full"), vector(-1))
            assert rpc_code(again.value) == grpc.StatusCode.UNAVAILABLE, again.value
            assert c.query_concept(acked[-1]) is not None
        assert node.alive(), node.log_tail()

        node.kill()
        # Free space without touching any of the node's files.
        run("mount", "-o", "remount,size=64m", str(small_disk))
        restarted = NodeProcess(data, env=env, port=port, log_path=tmp_path / "restart.log").start()
        with restarted.client() as c:
            missing = [cid for cid in acked
                       if (got := c.query_concept(cid)) is None or got.content != content(cid)]
            assert not missing, f"{len(missing)} acknowledged writes lost after disk full: {missing[:10]}"
            for cid in (failed_id, "still-full"):
                got = c.query_concept(cid)
                assert got is None or got.content == content(cid), f"refused write {cid} is there but torn"
            stats = c.stats()
            assert len(acked) <= stats.concepts <= len(acked) + 2, stats
            # With space again, writes work again.
            seq = c.learn_concept("after", content("after"), vector(999))
            got = c.query_concept("after", sequence=seq)
            assert got is not None and got.content == content("after")
    finally:
        node.stop()
        if restarted is not None:
            restarted.stop()
