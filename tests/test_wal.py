"""Write-ahead log tests: recovery boundary cases (etcd/LevelDB style), each
asserting both the records recovered and the bytes dropped, plus the writer
(group commit, rotation, failures) and the API the engine relies on.

Deterministic by construction: threads are coordinated with events and
barriers, and every wait has a deadline.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sutra_cluster.storage.wal import (
    WalCorruptionError,
    WalError,
    WalRecord,
    WalWriteError,
    WriteAheadLog,
)
from sutra_cluster.storage.wal_format import (
    SEGMENT_HEADER_SIZE,
    encode_segment_header,
    record_size,
    sealed_name,
)
from sutra_cluster.storage.wal_reader import iter_file_records, scan_segment
from tests.mutators import append_bytes, flip_bit, truncate_to, zero_sector

WAIT = 10.0  # deadline for anything that should happen promptly
Drop = tuple[Path, int, int, str]


# --------------------------------------------------------------------------- helpers


class Opener:
    """Opens logs that record their on_dropped calls; closes them all at teardown."""

    def __init__(self) -> None:
        self.opened: list[WriteAheadLog] = []
        self.drops: list[Drop] = []

    def __call__(self, directory: Path, **kw: object) -> WriteAheadLog:
        wal = WriteAheadLog(directory, on_dropped=lambda *a: self.drops.append(a), **kw)  # type: ignore[arg-type]
        self.opened.append(wal)
        return wal


@pytest.fixture
def opener() -> Iterator[Opener]:
    op = Opener()
    yield op
    for wal in op.opened:
        wal.close()


def build_log(directory: Path, payloads: list[bytes], *, rotate_every: int = 0) -> None:
    """Write ``payloads`` (LSN 1..n, term 1, types cycling 1..3) durably and close."""
    with WriteAheadLog(directory) as wal:
        for i, p in enumerate(payloads):
            wal.append(1 + i % 3, p, 1)
            if rotate_every and (i + 1) % rotate_every == 0:
                wal.rotate()
        wal.sync()


def payloads_of(wal: WriteAheadLog, after: int = 0) -> list[bytes]:
    return [r.payload for r in wal.records(after)]


def offsets_of(path: Path) -> list[int]:
    return scan_segment(path.read_bytes(), is_last=True).offsets


def broken_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("wal.log.*.broken*"))


def only_sealed(directory: Path) -> Path:
    (seg,) = sorted((directory / "wal").iterdir())
    return seg


PAYLOADS = [f"record-{i:03d}-".encode() * (i % 7 + 1) for i in range(10)]


# --------------------------------------------------------------------------- torn tails (file level)

# Three records; the last one is cut at every byte offset inside it.
_CUT_PAYLOADS = [b"a" * 5, b"b" * 13, b"last record payload!"]
_LAST_START = SEGMENT_HEADER_SIZE + record_size(5) + record_size(13)
_LAST_END = _LAST_START + record_size(20)


@pytest.mark.parametrize("cut", range(_LAST_START, _LAST_END + 1))
def test_truncate_at_every_byte_of_last_record(tmp_path: Path, opener: Opener, cut: int) -> None:
    src = tmp_path / "src"
    build_log(src, _CUT_PAYLOADS)
    data = (src / "wal.log").read_bytes()
    assert len(data) == _LAST_END
    d = tmp_path / "cut"
    d.mkdir()
    (d / "wal.log").write_bytes(data)
    assert truncate_to(d / "wal.log", cut) == data[:cut]
    wal = opener(d)
    if cut == _LAST_END:  # the record ends exactly at end of file: clean
        assert payloads_of(wal) == _CUT_PAYLOADS
        assert opener.drops == [] and broken_files(d) == []
        return
    assert payloads_of(wal) == _CUT_PAYLOADS[:2]
    assert wal.last_lsn == wal.durable_lsn == 2
    if cut == _LAST_START:  # cut exactly at a record boundary: nothing dropped
        assert opener.drops == [] and broken_files(d) == []
    else:
        ((path, offset, nbytes, reason),) = opener.drops
        assert (path, offset, nbytes) == (d / "wal.log", _LAST_START, cut - _LAST_START)
        assert "torn" in reason or "zero" in reason
        assert (d / f"wal.log.{_LAST_START}.broken").read_bytes() == data[_LAST_START:cut]
    assert (d / "wal.log").stat().st_size == _LAST_START
    assert wal.append(1, b"next", 1) == 3  # the cut LSN is reused: it was never acknowledged
    wal.sync()
    assert payloads_of(wal) == [*_CUT_PAYLOADS[:2], b"next"]


def _sector_inside(start: int, end: int) -> int:
    """First 512-aligned file offset whose whole sector lies in [start + 32, end)."""
    sector = -(-(start + 32) // 512) * 512
    assert sector + 512 <= end
    return sector


def test_zeroed_sector_in_last_record_is_torn_tail(tmp_path: Path, opener: Opener) -> None:
    payloads = [b"x" * 100, b"y" * 2000]
    build_log(tmp_path, payloads)
    path = tmp_path / "wal.log"
    last = offsets_of(path)[-1]
    data = zero_sector(path, _sector_inside(last, path.stat().st_size))
    wal = opener(tmp_path)
    assert payloads_of(wal) == payloads[:1]
    assert [(d[1], d[2]) for d in opener.drops] == [(last, len(data) - last)]
    assert "crc mismatch" in opener.drops[0][3]
    assert (tmp_path / f"wal.log.{last}.broken").read_bytes() == data[last:]


def test_zeroed_sector_mid_wal_log_with_valid_records_after_is_corruption(tmp_path: Path) -> None:
    payloads = [bytes([i]) * 700 for i in range(1, 11)]
    build_log(tmp_path, payloads)
    path = tmp_path / "wal.log"
    offs = offsets_of(path)
    sector = _sector_inside(offs[3], offs[5])
    damaged = max(o for o in offs if o <= sector)
    data = zero_sector(path, sector)
    with pytest.raises(WalCorruptionError) as ei:
        WriteAheadLog(tmp_path)
    assert (ei.value.path, ei.value.offset) == (path, damaged)
    assert str(path) in str(ei.value) and f"offset {damaged}" in str(ei.value)
    assert path.read_bytes() == data and broken_files(tmp_path) == []  # nothing cut or dropped


def test_zeroed_sector_in_sealed_segment_is_corruption(tmp_path: Path) -> None:
    payloads = [bytes([i]) * 700 for i in range(1, 10)] + [b"z" * 2000]
    build_log(tmp_path, payloads, rotate_every=10)
    seg = only_sealed(tmp_path)
    offs = scan_segment(seg.read_bytes(), is_last=False).offsets
    # The last record of a sealed segment: in wal.log this would be a torn tail.
    data = zero_sector(seg, _sector_inside(offs[-1], seg.stat().st_size))
    with pytest.raises(WalCorruptionError) as ei:
        WriteAheadLog(tmp_path)
    assert (ei.value.path, ei.value.offset) == (seg, offs[-1])
    assert str(seg) in str(ei.value) and "sealed" in str(ei.value)
    assert seg.read_bytes() == data


def test_sealed_segments_are_validated_through_a_mapping(tmp_path: Path) -> None:
    """Sealed segments are scanned mapped (``wal_reader._scan_sealed``): megabytes of
    records open as they did read, and a segment cut short, or emptied, is still
    corruption naming it, with nothing changed on disk."""
    big = [bytes([i]) * 300_000 for i in range(1, 9)]  # 2.4 MB: past populate's 1 MB floor
    build_log(tmp_path, big + [b"tail"], rotate_every=8)
    seg = only_sealed(tmp_path)
    with WriteAheadLog(tmp_path) as wal:
        assert payloads_of(wal) == big + [b"tail"]
    whole = seg.read_bytes()
    offs = scan_segment(whole, is_last=False).offsets
    seg.write_bytes(whole[: offs[-1] + 100])  # the last record cut: a torn tail in wal.log, not here
    with pytest.raises(WalCorruptionError, match="sealed segment") as ei:
        WriteAheadLog(tmp_path)
    assert (ei.value.path, ei.value.offset) == (seg, offs[-1])
    assert seg.read_bytes() == whole[: offs[-1] + 100]
    seg.write_bytes(b"")
    with pytest.raises(WalCorruptionError) as ei:
        WriteAheadLog(tmp_path)
    assert ei.value.path == seg and seg.read_bytes() == b""


def test_flipped_byte_mid_log_is_corruption(tmp_path: Path) -> None:
    build_log(tmp_path, PAYLOADS)
    path = tmp_path / "wal.log"
    offs = offsets_of(path)
    data = flip_bit(path, offs[4] + 33, 0x40)
    with pytest.raises(WalCorruptionError) as ei:
        WriteAheadLog(tmp_path)
    assert ei.value.offset == offs[4] and ei.value.path == path
    assert f"{path} at offset {offs[4]}" in str(ei.value)
    assert path.read_bytes() == data


def test_flipped_byte_in_last_record_is_torn_tail(tmp_path: Path, opener: Opener) -> None:
    build_log(tmp_path, PAYLOADS)
    path = tmp_path / "wal.log"
    last = offsets_of(path)[-1]
    data = flip_bit(path, last + 34, 0x01)
    wal = opener(tmp_path)
    assert payloads_of(wal) == PAYLOADS[:-1]
    assert [(d[0], d[1], d[2]) for d in opener.drops] == [(path, last, len(data) - last)]
    assert (tmp_path / f"wal.log.{last}.broken").read_bytes() == data[last:]


def test_preallocated_zero_tail_is_cut(tmp_path: Path, opener: Opener) -> None:
    build_log(tmp_path, PAYLOADS)
    path = tmp_path / "wal.log"
    end = path.stat().st_size
    append_bytes(path, bytes(1 << 16))
    wal = opener(tmp_path)
    assert payloads_of(wal) == PAYLOADS
    ((_, offset, nbytes, reason),) = opener.drops
    assert (offset, nbytes) == (end, 1 << 16) and reason.startswith("zero-filled tail")
    assert (tmp_path / f"wal.log.{end}.broken").read_bytes() == bytes(1 << 16)
    assert path.stat().st_size == end


def test_record_ending_exactly_at_eof_is_clean(tmp_path: Path, opener: Opener) -> None:
    build_log(tmp_path, PAYLOADS)
    size = (tmp_path / "wal.log").stat().st_size
    wal = opener(tmp_path)
    assert payloads_of(wal) == PAYLOADS and wal.last_lsn == len(PAYLOADS)
    assert opener.drops == [] and broken_files(tmp_path) == []
    assert (tmp_path / "wal.log").stat().st_size == size


def test_empty_wal_log_header_only(tmp_path: Path, opener: Opener) -> None:
    (tmp_path / "wal.log").write_bytes(encode_segment_header(1, 1))
    wal = opener(tmp_path)
    assert payloads_of(wal) == [] and opener.drops == []
    assert (wal.last_lsn, wal.durable_lsn, wal.first_lsn) == (0, 0, 1)
    assert wal.active_bytes() == SEGMENT_HEADER_SIZE == wal.total_bytes()


def test_repeated_cut_at_same_offset_keeps_both_broken_files(tmp_path: Path, opener: Opener) -> None:
    build_log(tmp_path, PAYLOADS[:2])
    path = tmp_path / "wal.log"
    end = path.stat().st_size
    for garbage in (b"\x01torn-one", b"\x02torn-two"):
        append_bytes(path, garbage)
        opener(tmp_path).close()
    assert [(d[1], d[2]) for d in opener.drops] == [(end, 9), (end, 9)]
    assert [p.read_bytes() for p in broken_files(tmp_path)] == [b"\x01torn-one", b"\x02torn-two"]


def test_corrupt_segment_header_is_corruption(tmp_path: Path) -> None:
    build_log(tmp_path, PAYLOADS)
    path = tmp_path / "wal.log"
    data = flip_bit(path, 17, 0xFF)  # seq
    with pytest.raises(WalCorruptionError, match="at offset 0: segment header crc"):
        WriteAheadLog(tmp_path)
    assert path.read_bytes() == data


def test_missing_middle_segment_breaks_the_chain(tmp_path: Path) -> None:
    build_log(tmp_path, PAYLOADS, rotate_every=3)
    segs = sorted((tmp_path / "wal").iterdir())
    assert len(segs) == 3
    segs[1].unlink()
    with pytest.raises(WalCorruptionError, match="does not continue") as ei:
        WriteAheadLog(tmp_path)
    assert ei.value.path == segs[2]


# --------------------------------------------------------------------------- rotation and crashes during it


def _lsns(wal: WriteAheadLog, after: int = 0) -> list[int]:
    return [r.lsn for r in wal.records(after)]


def test_missing_wal_log_with_sealed_segments(tmp_path: Path, opener: Opener) -> None:
    """Crash after wal.log was renamed into wal/ but before a new one was installed."""
    build_log(tmp_path, PAYLOADS[:4], rotate_every=2)
    build_log(tmp_path, [])  # reopen/close: wal.log is a header-only segment, seq 3
    (tmp_path / "wal.log").unlink()
    seg = max((tmp_path / "wal").iterdir())
    assert seg.name == sealed_name(2, 3)
    wal = opener(tmp_path)
    assert payloads_of(wal) == PAYLOADS[:4] and wal.last_lsn == 4
    head = (tmp_path / "wal.log").read_bytes()
    assert head == encode_segment_header(3, 5)
    assert wal.append(1, b"after", 1) == 5


def test_crash_after_rename_before_new_header(tmp_path: Path, opener: Opener) -> None:
    """wal.log moved to wal/ by hand, exactly as rotation step 2 leaves it."""
    build_log(tmp_path, PAYLOADS[:3])
    (tmp_path / "wal.log").replace(tmp_path / "wal" / sealed_name(1, 1))
    (tmp_path / "wal.log.tmp").write_bytes(encode_segment_header(2, 4)[:17])  # torn tmp
    wal = opener(tmp_path)
    assert not (tmp_path / "wal.log.tmp").exists()
    assert payloads_of(wal) == PAYLOADS[:3] and opener.drops == []
    assert wal.append(1, b"four", 1) == 4
    wal.sync()
    assert _lsns(wal) == [1, 2, 3, 4]


def test_leftover_wal_log_tmp_is_deleted(tmp_path: Path, opener: Opener) -> None:
    build_log(tmp_path, PAYLOADS[:3])
    (tmp_path / "wal.log.tmp").write_bytes(encode_segment_header(9, 99))
    wal = opener(tmp_path)
    assert not (tmp_path / "wal.log.tmp").exists()
    assert payloads_of(wal) == PAYLOADS[:3] and wal.last_lsn == 3


def test_lsn_continuity_across_rotate_and_reopen(tmp_path: Path, opener: Opener) -> None:
    wal = opener(tmp_path)
    lsns = [wal.append(1, p, 1) for p in PAYLOADS[:4]]
    wal.rotate()
    wal.rotate()  # nothing new: a no-op, no empty segment
    lsns += [wal.append(1, p, 2) for p in PAYLOADS[4:7]]
    wal.rotate()
    wal.close()
    names = sorted(p.name for p in (tmp_path / "wal").iterdir())
    assert names == [sealed_name(1, 1), sealed_name(2, 5)]
    wal = opener(tmp_path)
    lsns += [wal.append(1, p, 3) for p in PAYLOADS[7:]]
    wal.sync()
    assert lsns == list(range(1, 11))
    recs = list(wal.records())
    assert [r.lsn for r in recs] == lsns and [r.payload for r in recs] == PAYLOADS
    assert [r.term for r in recs] == [1] * 4 + [2] * 3 + [3] * 3
    assert _lsns(wal, 5) == list(range(6, 11))
    assert wal.segment_paths() == [*sorted((tmp_path / "wal").iterdir()), tmp_path / "wal.log"]


def test_automatic_rotation_at_segment_bytes(tmp_path: Path, opener: Opener) -> None:
    wal = opener(tmp_path, segment_bytes=1024)
    for i in range(40):
        assert wal.wait_durable(wal.append(1, bytes([i]) * 100, 1), WAIT)
    assert len(wal.segment_paths()) > 3
    assert wal.active_bytes() <= 1024 + record_size(100)
    assert wal.total_bytes() == sum(p.stat().st_size for p in wal.segment_paths())
    assert [r.payload for r in wal.records()] == [bytes([i]) * 100 for i in range(40)]
    wal.close()
    assert _lsns(opener(tmp_path)) == list(range(1, 41))


def test_start_lsn_on_empty_log(tmp_path: Path, opener: Opener) -> None:
    wal = opener(tmp_path, start_lsn=100)
    assert (wal.last_lsn, wal.first_lsn) == (100, 101)
    assert wal.append(1, b"a", 1) == 101
    wal.close()
    wal = opener(tmp_path)  # start_lsn behind the log: ignored
    assert wal.last_lsn == 101 and wal.append(1, b"b", 1) == 102


def test_start_lsn_ahead_of_header_only_log(tmp_path: Path, opener: Opener) -> None:
    build_log(tmp_path, PAYLOADS[:3], rotate_every=3)  # records sealed, wal.log empty
    wal = opener(tmp_path, start_lsn=3)
    assert (wal.first_lsn, wal.last_lsn) == (1, 3)
    wal.close()
    wal = opener(tmp_path, start_lsn=50)  # checkpoint ahead of every record
    assert (wal.first_lsn, wal.last_lsn) == (51, 50)
    assert wal.segment_paths() == [tmp_path / "wal.log"]
    assert wal.append(1, b"x", 1) == 51


def test_lsns_never_restart_after_drop_segments_through_and_reopen(tmp_path: Path, opener: Opener) -> None:
    build_log(tmp_path, PAYLOADS, rotate_every=5)
    wal = opener(tmp_path)
    sizes = [p.stat().st_size for p in sorted((tmp_path / "wal").iterdir())]
    assert wal.drop_segments_through(4) == 0  # segment 1..5 still holds LSN 5
    assert wal.drop_segments_through(5) == sizes[0]
    assert wal.first_lsn == 6 and _lsns(wal) == list(range(6, 11))
    assert wal.drop_segments_through(10) == sizes[1]
    assert wal.first_lsn == 11 and list(wal.records()) == []
    assert wal.active_bytes() == SEGMENT_HEADER_SIZE  # "ls -lh wal.log" < 1 KB after a checkpoint
    wal.close()
    wal = opener(tmp_path)  # start_lsn 0: the header of wal.log keeps the position
    assert (wal.last_lsn, wal.first_lsn) == (10, 11)
    assert wal.append(1, b"x", 1) == 11


# --------------------------------------------------------------------------- group commit and concurrency


def test_group_commit_shares_fsyncs(tmp_path: Path, opener: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fdatasync
    calls = 0

    def counting(fd: int) -> None:
        nonlocal calls
        calls += 1
        time.sleep(0.001)  # models a device flush, so groups form even on tmpfs
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    wal = opener(tmp_path)
    start = threading.Barrier(8)

    def writer(t: int) -> None:
        start.wait(WAIT)
        for i in range(200):
            lsn = wal.append(1, f"{t}:{i}".encode(), 1)
            assert wal.wait_durable(lsn, WAIT)

    with ThreadPoolExecutor(8) as pool:
        for fut in [pool.submit(writer, t) for t in range(8)]:
            fut.result(60)  # re-raises a writer's failure here
    assert wal.durable_lsn == wal.last_lsn == 1600
    assert calls <= 1600 // 3, f"{calls} fsyncs for 1600 appends"
    recs = list(wal.records())
    assert [r.lsn for r in recs] == list(range(1, 1601))
    per_thread: dict[str, list[int]] = {}
    for r in recs:
        t, i = r.payload.decode().split(":")
        per_thread.setdefault(t, []).append(int(i))
    assert per_thread == {str(t): list(range(200)) for t in range(8)}


def test_records_during_concurrent_appends(tmp_path: Path, opener: Opener) -> None:
    wal = opener(tmp_path, fsync=False, segment_bytes=2048)  # rotations race with readers too
    total = 1500
    done = threading.Event()

    def writer() -> None:
        for i in range(total):
            wal.append(1, i.to_bytes(4, "little") * 10, 1)
            if i % 50 == 0:
                wal.sync()
        wal.sync()
        done.set()

    th = threading.Thread(target=writer)
    th.start()
    reads = 0
    while not done.is_set() or reads < 5:
        before = wal.durable_lsn
        after = max(0, before - 70)
        got = _lsns(wal, after)
        assert got == list(range(after + 1, after + 1 + len(got)))
        assert (got[-1] if got else after) >= before
        assert all(lsn <= wal.durable_lsn for lsn in got)
        reads += 1
    th.join(WAIT)
    assert _lsns(wal) == list(range(1, total + 1))
    assert [int.from_bytes(r.payload[:4], "little") for r in wal.records(total - 3)] == [1497, 1498, 1499]


def test_wait_durable_timeout_and_listeners(tmp_path: Path, opener: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fdatasync
    entered, gate = threading.Event(), threading.Event()

    def gated(fd: int) -> None:
        entered.set()
        gate.wait(WAIT)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", gated)
    wal = opener(tmp_path)
    heard: list[int] = []
    fsyncs: list[float] = []
    notified = threading.Event()

    def listener(lsn: int) -> None:
        assert threading.current_thread().name == "wal-flusher"
        heard.append(lsn)
        notified.set()

    wal.add_durable_listener(listener)
    wal.on_fsync = fsyncs.append
    lsn = wal.append(1, b"slow", 1)
    assert entered.wait(WAIT)
    assert wal.wait_durable(lsn, timeout=0.05) is False
    assert (wal.last_lsn, wal.durable_lsn) == (1, 0)
    with pytest.raises(WalError, match="nothing buffered"):
        wal.truncate_after(0)
    gate.set()
    assert wal.wait_durable(lsn, WAIT) is True
    assert notified.wait(WAIT) and heard == [1]
    assert len(fsyncs) == 1 and fsyncs[0] == wal.fsync_seconds > 0


def test_fsync_off_writes_without_fdatasync(tmp_path: Path, opener: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fdatasync", calls.append)
    wal = opener(tmp_path, fsync=False)
    for p in PAYLOADS:
        wal.append(2, p, 1)
    wal.sync()
    assert calls == [] and wal.durable_lsn == 10 and payloads_of(wal) == PAYLOADS


def test_append_at_close_and_validation(tmp_path: Path, opener: Opener) -> None:
    wal = opener(tmp_path, start_lsn=6)
    with pytest.raises(ValueError, match="next LSN is 7"):
        wal.append_at(9, 1, 1, b"gap")
    wal.append_at(7, 4, 3, b"replica")
    with pytest.raises(ValueError):
        wal.append(0, b"type 0 is reserved", 1)
    assert wal.wait_durable(7, WAIT)
    assert list(wal.records()) == [WalRecord(lsn=7, term=4, rtype=3, payload=b"replica")]
    wal.close()
    wal.close()  # idempotent
    with pytest.raises(WalError, match="closed"):
        wal.append(1, b"late", 1)
    with pytest.raises(WalError, match="closed"):
        wal.wait_durable(8, WAIT)
    assert [r.lsn for r in wal.records()] == [7]  # reads still work


# --------------------------------------------------------------------------- truncate_after


def test_truncate_after_with_keep_file(tmp_path: Path, opener: Opener) -> None:
    d = tmp_path / "data"
    build_log(d, PAYLOADS)
    wal = opener(d)
    keep = tmp_path / "divergent.wal"
    removed = wal.truncate_after(6, keep_file=keep)
    assert [r.lsn for r in removed] == [7, 8, 9, 10] and [r.payload for r in removed] == PAYLOADS[6:]
    kept = scan_segment(keep.read_bytes(), is_last=False)
    assert kept.records == removed and kept.header.first_lsn == 7
    assert (wal.last_lsn, wal.durable_lsn) == (6, 6)
    assert wal.truncate_after(6) == [] and wal.truncate_after(99) == []
    assert wal.append(1, b"new-7", 2) == 7
    wal.close()
    wal = opener(d)
    assert payloads_of(wal) == [*PAYLOADS[:6], b"new-7"]


def test_truncate_after_into_sealed_segment(tmp_path: Path, opener: Opener) -> None:
    build_log(tmp_path, PAYLOADS, rotate_every=3)  # sealed 1-3, 4-6, 7-9; wal.log holds 10
    wal = opener(tmp_path)
    removed = wal.truncate_after(4)
    assert [r.lsn for r in removed] == list(range(5, 11))
    assert [p.name for p in wal.segment_paths()] == [sealed_name(1, 1), sealed_name(2, 4), "wal.log"]
    assert wal.append(1, b"five", 2) == 5
    wal.sync()
    wal.close()
    wal = opener(tmp_path)
    assert payloads_of(wal) == [*PAYLOADS[:4], b"five"] and opener.drops == []
    # At a segment boundary, and below everything on disk.
    assert [r.lsn for r in wal.truncate_after(3)] == [4, 5]
    wal.drop_segments_through(3)
    assert wal.first_lsn == 4
    assert wal.truncate_after(1) == []  # LSNs 2..3 are already gone
    assert (wal.first_lsn, wal.last_lsn) == (2, 1)
    wal.close()
    assert opener(tmp_path).append(1, b"two", 1) == 2


# --------------------------------------------------------------------------- write and fsync failures


def _fail_flusher_write(monkeypatch: pytest.MonkeyPatch, partial: bool) -> None:
    """Make the flusher's next os.write fail with ENOSPC (after writing 10 bytes if ``partial``)."""
    real = os.write
    armed = [True]

    def write(fd: int, data: bytes) -> int:
        if armed[0] and threading.current_thread().name == "wal-flusher":
            if partial and len(data) > 10:
                return real(fd, bytes(data)[:10])
            armed[0] = False
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("partial", [False, True], ids=["nothing-written", "partly-written"])
def test_write_failure_enospc(tmp_path: Path, opener: Opener, monkeypatch: pytest.MonkeyPatch, partial: bool) -> None:
    wal = opener(tmp_path)
    assert wal.wait_durable(wal.append(1, b"durable", 1), WAIT)
    size = wal.active_bytes()
    _fail_flusher_write(monkeypatch, partial)
    doomed = wal.append(1, b"doomed" * 10, 1)
    with pytest.raises(WalWriteError, match="ENOSPC"):
        wal.wait_durable(doomed, WAIT)
    assert (wal.last_lsn, wal.durable_lsn, wal.failed) == (1, 1, False)
    assert wal.active_bytes() == size  # the partial write was truncated away
    again = wal.append(1, b"after space freed", 1)
    assert again == doomed == 2  # the LSN is reused
    assert wal.wait_durable(again, WAIT)
    with pytest.raises(WalWriteError):  # the failed record's own LSN value still reports failure
        wal.wait_durable(doomed, WAIT)
    wal.close()
    assert b"doomed" not in (tmp_path / "wal.log").read_bytes()
    assert payloads_of(opener(tmp_path)) == [b"durable", b"after space freed"] and opener.drops == []


def test_fdatasync_failure_is_permanent(tmp_path: Path, opener: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = opener(tmp_path)
    assert wal.wait_durable(wal.append(1, b"durable", 1), WAIT)

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    lsn = wal.append(1, b"lost", 1)
    with pytest.raises(WalWriteError, match="restart the node"):
        wal.wait_durable(lsn, WAIT)
    assert wal.failed and wal.durable_lsn == 1
    monkeypatch.undo()  # even if the device recovers, the page cache cannot be trusted
    with pytest.raises(WalWriteError, match="restart the node"):
        wal.append(1, b"later", 1)
    with pytest.raises(WalWriteError, match="EIO"):
        wal.sync()
    with pytest.raises(WalWriteError):
        wal.rotate()
    assert wal.wait_durable(1, WAIT) is True  # already durable before the failure
    assert payloads_of(wal) == [b"durable"]
    wal.close()


# --------------------------------------------------------------------------- reading only some payloads


def test_records_skip_the_payloads_not_wanted_and_still_check_the_sequence(tmp_path: Path,
                                                                           opener: Opener) -> None:
    """A start after the first checkpoint reads the WAL before it only for transaction records
    (PreparedTxns.wants): the others come with empty payloads, skipped unread, across segments."""
    wal = opener(tmp_path, segment_bytes=4096)
    for i in range(40):
        wal.wait_durable(wal.append(2 if i % 10 == 3 else 1, bytes([i]) * 300, 1))
    want = {r.lsn: r for r in wal.records(0)}
    seen: list[int] = []

    def wanted(rtype: int) -> bool:
        seen.append(rtype)
        return rtype == 2

    got = list(wal.records(0, wanted=wanted))
    assert [r.lsn for r in got] == list(range(1, 41)) and len(seen) == 40
    assert all(r.payload == (want[r.lsn].payload if r.rtype == 2 else b"") for r in got)
    assert sum(1 for r in got if r.payload) == 4 and [r.term for r in got] == [w.term for w in want.values()]
    assert [r.lsn for r in wal.records(25, wanted=wanted)] == list(range(26, 41))
    wal.close()
    # A record header whose LSN breaks the sequence is damage, even when its payload is skipped.
    seg = sorted((tmp_path / "wal").iterdir())[0]
    data = bytearray(seg.read_bytes())
    at = SEGMENT_HEADER_SIZE + record_size(300) + 16  # the second record's LSN field
    data[at : at + 8] = (999).to_bytes(8, "little")
    seg.write_bytes(bytes(data))
    with open(seg, "rb") as f, pytest.raises(WalCorruptionError, match="lsn 999 where 2 was expected"):
        list(iter_file_records(f, seg, 0, 40, wanted=lambda rtype: False))
