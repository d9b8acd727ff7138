"""The opener's policy on what the reader found (etcd's bootstrap, LevelDB's
reporter): the reader touches no file; the opener cuts a torn tail of wal.log
once, logs it once and reports it, or refuses when strict; corruption stops a
node at start with one line naming the file and the offset."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sutra_cluster.errors import StorageFailure
from sutra_cluster.storage.wal import WalCorruptionError, WalError, WalWriteError, WriteAheadLog, repair_torn_tail
from sutra_cluster.storage.wal_format import SEGMENT_HEADER_SIZE, TMP_NAME, record_size
from sutra_cluster.storage.wal_reader import TornTail, load_log_dir
from tests.helpers import ROOT, free_port
from tests.mutators import append_bytes, flip_bit

PAYLOADS = [b"one", b"two" * 5, b"three" * 9]
END = SEGMENT_HEADER_SIZE + sum(record_size(len(p)) for p in PAYLOADS)
GARBAGE = b"\x07half a record"


def build(directory: Path, payloads: list[bytes] = PAYLOADS) -> Path:
    with WriteAheadLog(directory) as wal:
        for p in payloads:
            wal.append(1, p, 1)
        wal.sync()
    return directory / "wal.log"


def test_reader_reports_torn_tail_and_touches_no_file(tmp_path: Path) -> None:
    path = build(tmp_path)
    data = append_bytes(path, GARBAGE)
    (tmp_path / TMP_NAME).write_bytes(b"left by a rotation")
    reported: list[tuple[Path, int, int, str]] = []
    found = load_log_dir(tmp_path, lambda *a: reported.append(a))
    assert found.torn is not None and found.torn.reason.startswith("torn tail")
    assert found.torn == TornTail(path, END, len(GARBAGE), found.torn.reason)
    assert reported == [(path, END, len(GARBAGE), found.torn.reason)]
    assert found.active is not None and (found.active.count, found.active.size) == (3, END)
    assert found.leftover_tmp == tmp_path / TMP_NAME
    assert path.read_bytes() == data and (tmp_path / TMP_NAME).read_bytes() == b"left by a rotation"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wal", "wal.log", TMP_NAME]


def test_clean_log_reports_nothing(tmp_path: Path) -> None:
    build(tmp_path)
    reported: list[object] = []
    found = load_log_dir(tmp_path, lambda *a: reported.append(a))
    assert (found.torn, found.leftover_tmp, reported) == (None, None, [])


def test_torn_tail_is_cut_once_logged_once_reported_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = build(tmp_path)
    append_bytes(path, GARBAGE)
    drops: list[tuple[Path, int, int, str]] = []
    with caplog.at_level(logging.WARNING):
        wal = WriteAheadLog(tmp_path, on_dropped=lambda *a: drops.append(a))
    try:
        assert [r.payload for r in wal.records()] == PAYLOADS
        assert [(p, o, n) for p, o, n, _ in drops] == [(path, END, len(GARBAGE))]
        cuts = [r for r in caplog.records if "cut" in r.getMessage()]
        assert len(cuts) == 1, [r.getMessage() for r in caplog.records]
        assert f"offset {END}" in cuts[0].getMessage() and f"wal.log.{END}.broken" in cuts[0].getMessage()
        assert (tmp_path / f"wal.log.{END}.broken").read_bytes() == GARBAGE
        assert path.stat().st_size == END
    finally:
        wal.close()


def test_strict_open_refuses_torn_tail_and_touches_nothing(tmp_path: Path) -> None:
    path = build(tmp_path)
    data = append_bytes(path, GARBAGE)
    with pytest.raises(WalCorruptionError, match="strict open does not cut it") as ei:
        WriteAheadLog(tmp_path, strict=True)
    assert (ei.value.path, ei.value.offset) == (path, END)
    assert f"{path} at offset {END}" in str(ei.value)
    assert path.read_bytes() == data and list(tmp_path.glob("*.broken*")) == []
    with WriteAheadLog(tmp_path) as wal:  # the lenient open still repairs it afterwards
        assert [r.payload for r in wal.records()] == PAYLOADS


def test_strict_open_of_a_clean_log_works(tmp_path: Path) -> None:
    build(tmp_path)
    with WriteAheadLog(tmp_path, strict=True) as wal:
        assert wal.last_lsn == 3 and wal.append(1, b"four", 1) == 4


def test_repair_refuses_a_tail_that_changed_since_it_was_read(tmp_path: Path) -> None:
    path = build(tmp_path)
    append_bytes(path, GARBAGE)
    found = load_log_dir(tmp_path)
    assert found.torn is not None
    data = append_bytes(path, b"more")
    with pytest.raises(WalCorruptionError, match="file changed while opening"):
        repair_torn_tail(found.torn)
    assert path.read_bytes() == data and list(tmp_path.glob("*.broken*")) == []


def test_on_dropped_may_refuse_after_the_bytes_are_saved(tmp_path: Path) -> None:
    path = build(tmp_path)
    append_bytes(path, GARBAGE)

    def refuse(*_: object) -> None:
        raise RuntimeError("operator policy: no cuts")

    with pytest.raises(RuntimeError, match="no cuts"):
        WriteAheadLog(tmp_path, on_dropped=refuse)
    assert (tmp_path / f"wal.log.{END}.broken").read_bytes() == GARBAGE


def test_wal_errors_are_storage_failures() -> None:
    for cls in (WalError, WalCorruptionError, WalWriteError):
        assert issubclass(cls, StorageFailure)


@pytest.mark.slow
def test_node_with_corrupt_wal_refuses_to_start_in_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    path = build(data_dir, [bytes([i]) * 64 for i in range(1, 6)])
    bad = SEGMENT_HEADER_SIZE + record_size(64) + 40  # inside record 2, valid records follow
    flip_bit(path, bad, 0x10)
    env = dict(os.environ, STORAGE_PATH=str(data_dir), STORAGE_PORT=str(free_port()), SUTRA_HOST="127.0.0.1",
               VECTOR_DIMENSION="8", SUTRA_NODE_ID="corrupt")
    env.pop("SUTRA_ETCD_ENDPOINTS", None)
    # subprocess.run kills the node if it outlives the timeout.
    proc = subprocess.run([sys.executable, "-m", "sutra_cluster", "serve"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("sutra-cluster:")]
    at = SEGMENT_HEADER_SIZE + record_size(64)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"sutra-cluster: cannot start: WAL corruption in {path} at offset {at}: crc mismatch")
