"""Rotation off the commit path (docs/wal_format.md section 9): the next
segment's header is written and fsynced on a helper thread while the group
that fills wal.log is fsynced, the seal skips an fsync the group already did,
and replication hears of a group before rotation's fsyncs run."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from sutra_cluster.storage import fsio, wal_segments
from sutra_cluster.storage.wal import WriteAheadLog
from sutra_cluster.storage.wal_format import SEGMENT_HEADER_SIZE, TMP_NAME, encode_segment_header, record_size
from tests.helpers import wait_for

WAIT = 10.0
SEGMENT = 1024
BIG = b"b" * 1100  # one record of this fills a segment


def sealed(directory: Path) -> list[str]:
    return sorted(p.name for p in (directory / "wal").iterdir())


def wait_sealed(wal: WriteAheadLog, directory: Path, n: int) -> None:
    """Wait until ``n`` segments are sealed and the last seal has finished: a seal
    holds ``_io`` from its rename to the new wal.log, so taking it after seeing
    the rename waits for the rest."""
    wait_for(lambda: len(sealed(directory)) >= n, WAIT, f"{n} sealed segments")
    with wal._io:
        pass


def test_rotation_fsyncs_on_the_commit_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def fsync(fd: int) -> None:
        calls.append((threading.current_thread().name, "fsync"))
        real_fsync(fd)

    def fdatasync(fd: int) -> None:
        calls.append((threading.current_thread().name, "fdatasync"))
        real_fdatasync(fd)

    with WriteAheadLog(tmp_path, segment_bytes=SEGMENT) as wal:
        assert wal.wait_durable(wal.append(1, b"small", 1), WAIT)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        assert wal.wait_durable(wal.append(1, BIG, 1), WAIT)  # fills wal.log: rotation follows
        wait_sealed(wal, tmp_path, 1)
        monkeypatch.undo()
        assert sealed(tmp_path) == ["0000000000000001-0000000000000001.wal"]
    flusher = [op for name, op in calls if name == "wal-flusher"]
    helper = [op for name, op in calls if name.startswith("wal-prepare")]
    # The group's fdatasync, then the directories: wal/ and the data directory after
    # the rename, the data directory after installing the new wal.log. No fsync of
    # wal.log (the fdatasync covered it) and none of wal.log.tmp (the helper's).
    assert flusher == ["fdatasync", "fsync", "fsync", "fsync"], calls
    assert helper == ["fsync"], calls
    assert (tmp_path / "wal.log").read_bytes() == encode_segment_header(2, 3)


def test_listeners_hear_a_group_before_it_is_sealed(tmp_path: Path) -> None:
    seen: list[tuple[int, list[str]]] = []
    with WriteAheadLog(tmp_path, segment_bytes=SEGMENT) as wal:
        wal.add_durable_listener(lambda lsn: seen.append((lsn, sealed(tmp_path))))
        assert wal.wait_durable(wal.append(1, BIG, 1), WAIT)
        wait_sealed(wal, tmp_path, 1)
        assert sealed(tmp_path) == ["0000000000000001-0000000000000001.wal"]
    assert seen == [(1, [])]


def test_stale_prepared_header_is_rewritten(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, segment_bytes=1 << 20) as wal:
        for i in range(3):
            wal.append(1, bytes([i]) * 10, 1)
        wal.sync()
        with wal._io:
            wal._segs.prepare_next(99)  # as if a group whose write then failed had prepared it
        wal.rotate()
        assert (tmp_path / "wal.log").read_bytes() == encode_segment_header(2, 4)
        assert not (tmp_path / TMP_NAME).exists()
        assert wal.append(1, b"four", 1) == 4
    with WriteAheadLog(tmp_path) as wal:
        assert [r.lsn for r in wal.records()] == [1, 2, 3, 4]


def test_unused_prepared_header_is_removed_at_close(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    with wal._io:
        wal._segs.prepare_next(1)
    wal.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wal", "wal.log"]


def test_failed_preparation_falls_back_to_writing_the_header_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fsio.write_file_synced

    def flaky(path: Path, data: bytes, *, fsync: bool = True) -> int:
        if threading.current_thread().name.startswith("wal-prepare"):
            raise OSError(28, "No space left on device")
        return real(path, data, fsync=fsync)

    monkeypatch.setattr(wal_segments, "write_file_synced", flaky)
    with WriteAheadLog(tmp_path, segment_bytes=SEGMENT) as wal:
        for i in range(6):
            assert wal.wait_durable(wal.append(1, bytes([i]) * 500, 1), WAIT)
        wait_sealed(wal, tmp_path, 3)  # two 500-byte records fill a segment
        assert len(sealed(tmp_path)) == 3
    with WriteAheadLog(tmp_path) as wal:
        assert [r.payload for r in wal.records()] == [bytes([i]) * 500 for i in range(6)]
        assert wal.active_bytes() <= SEGMENT + record_size(500)
        assert wal.total_bytes() > SEGMENT_HEADER_SIZE
