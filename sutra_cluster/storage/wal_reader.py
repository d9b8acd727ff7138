"""Reader of the Sutra Cluster write-ahead log (docs/wal_format.md section 7).

Reading has three outcomes, never confused: a clean end, a torn tail (only in
``wal.log``, the last segment) and corruption (raised with the file and the
offset). The reader only *finds*: it touches no file, and reports a torn tail
through an optional callback and in its result, like LevelDB's
``log::Reader::Reporter``. Whether to cut the tail or to refuse is the
opener's policy (:class:`sutra_cluster.storage.wal.WriteAheadLog`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from sutra_cluster.storage.fsio import map_readonly, populate
from sutra_cluster.storage.wal_format import (
    ACTIVE_NAME,
    MAX_PAYLOAD,
    RECORD_ALIGN,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    SEALED_DIR,
    SEGMENT_HEADER_SIZE,
    TMP_NAME,
    SegmentHeader,
    WalCorruptionError,
    WalRecord,
    decode_record,
    decode_segment_header,
    padded_len,
    parse_sealed_name,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DropCallback",
    "LogDir",
    "ScanResult",
    "SegmentInfo",
    "TornTail",
    "find_valid_record",
    "iter_file_records",
    "load_log_dir",
    "open_records",
    "scan_segment",
]

#: ``on_dropped(path, offset, nbytes, reason)``: bytes a reader found unusable
DropCallback = Callable[[Path, int, int, str], None]


@dataclass(frozen=True, slots=True)
class ScanResult:
    """Outcome of :func:`scan_segment` for one segment's bytes.

    ``records`` are the valid records (empty when scanned with
    ``keep_records=False``; ``count`` and ``last_lsn`` are always set).
    ``end_offset`` is where the valid log ends. If a zero or torn tail was
    found, ``dropped_offset`` is its start (== ``end_offset``),
    ``dropped_bytes`` its length and ``reason`` says why; otherwise
    ``dropped_offset`` is None, ``dropped_bytes`` 0 and ``reason`` "".
    ``last_lsn`` is ``header.first_lsn - 1`` when there are no records.
    """

    header: SegmentHeader
    records: list[WalRecord]
    end_offset: int
    dropped_offset: int | None
    dropped_bytes: int
    reason: str
    count: int = 0
    last_lsn: int = 0
    #: file offset of each record in ``records`` (only when keep_records)
    offsets: list[int] = field(default_factory=list)


@dataclass(slots=True)
class SegmentInfo:
    """Where a validated segment is and which LSNs it holds."""

    path: Path
    seq: int
    first_lsn: int
    count: int
    size: int

    @property
    def last_lsn(self) -> int:
        """LSN of the last record (``first_lsn - 1`` if the segment is empty)."""
        return self.first_lsn + self.count - 1


@dataclass(frozen=True, slots=True)
class TornTail:
    """A zero or torn tail of ``wal.log``: bytes ``[offset, offset + nbytes)``
    were never acknowledged and may be cut (docs section 7, outcome 2)."""

    path: Path
    offset: int
    nbytes: int
    reason: str


@dataclass(slots=True)
class LogDir:
    """Validated contents of a data directory: sealed segments in log order,
    then ``wal.log`` (None if it is missing, e.g. after a crash mid-rotation).

    ``active.size`` is where the valid log ends; with a ``torn`` tail the file
    is longer by ``torn.nbytes``. ``leftover_tmp`` is a ``wal.log.tmp`` left by
    an interrupted rotation (never installed, safe to delete), or None.
    """

    sealed: list[SegmentInfo]
    active: SegmentInfo | None
    torn: TornTail | None = None
    leftover_tmp: Path | None = None


# ---------------------------------------------------------------------------
# One segment
# ---------------------------------------------------------------------------


def find_valid_record(data: bytes, start: int, after_lsn: int) -> tuple[int, int] | None:
    """First 8-aligned offset >= ``start`` holding a valid record with lsn > ``after_lsn``.

    Returns ``(offset, lsn)`` or None. Used to tell a torn tail (nothing valid
    follows the damage) from corruption (acknowledged records may follow).
    """
    unpack = RECORD_HEADER.unpack_from
    last = len(data) - RECORD_HEADER_SIZE
    off = start + (-start % RECORD_ALIGN)
    while off <= last:
        # Cheap filters first: this loop may visit millions of offsets.
        n, _crc, rtype, _f, _r16, _r32, lsn, _t = unpack(data, off)
        if rtype and lsn > after_lsn and n <= MAX_PAYLOAD:
            rec, _end, _why = decode_record(data, off, -1)
            if rec is not None:
                return off, rec.lsn
        off += RECORD_ALIGN
    return None


def scan_segment(
    data: bytes | memoryview,
    is_last: bool,
    *,
    path: Path | str = "<bytes>",
    keep_records: bool = True,
) -> ScanResult:
    """Classify the bytes of one whole segment file (docs section 7).

    Returns a clean end (``dropped_offset is None``) or, only when
    ``is_last``, a zero/torn tail that may be cut at ``dropped_offset``.
    Raises :class:`WalCorruptionError` naming ``path`` and the offset of the
    damage for a bad header, any bad record in a non-last segment, or a bad
    record in the last segment followed by a valid one. Pure: touches no files.
    """
    header = decode_segment_header(data, path)
    records: list[WalRecord] = []
    offsets: list[int] = []
    expected = header.first_lsn
    off = SEGMENT_HEADER_SIZE
    why = ""
    while off < len(data):
        rec, nxt, why = decode_record(data, off, expected, payload=keep_records)
        if rec is None:
            break
        if keep_records:
            records.append(rec)
            offsets.append(off)
        expected += 1
        off = nxt
    count = expected - header.first_lsn
    last_lsn = expected - 1
    if off == len(data):
        return ScanResult(header, records, off, None, 0, "", count, last_lsn, offsets)
    if not is_last:
        raise WalCorruptionError(path, off, f"{why} in a sealed segment")
    nbytes = len(data) - off
    whole = data if isinstance(data, bytes) else bytes(data)  # the last segment: read whole, as bytes
    if whole.count(0, off) == nbytes:
        reason = f"zero-filled tail ({why})"
    else:
        found = find_valid_record(whole, off, last_lsn)
        if found is not None:
            y, lsn = found
            raise WalCorruptionError(
                path, off, f"{why}, but a valid record (lsn {lsn}) follows at offset {y}"
            )
        reason = f"torn tail: {why}"
    return ScanResult(header, records, off, off, nbytes, reason, count, last_lsn, offsets)


def iter_file_records(
    f: BinaryIO, path: Path | str, after_lsn: int, limit_lsn: int,
    wanted: Callable[[int], bool] | None = None,
) -> Iterator[WalRecord]:
    """Stream the records of an open, already validated segment file.

    Yields records with ``after_lsn < lsn <= limit_lsn``; stops at the first
    record beyond ``limit_lsn`` or at end of file (a record still being
    written past the durable point is never reached). Re-checks every CRC
    and the LSN sequence, raising :class:`WalCorruptionError` on a mismatch
    (the file changed on disk since it was validated at open).

    ``wanted(rtype)`` False: the record's payload is skipped unread and it is
    yielded with an empty one (its header's LSN is still checked). For a scan
    right after the open, which CRC-checked every record, that only needs a
    few kinds of record (``PreparedTxns.rebuild``).
    """
    head = f.read(SEGMENT_HEADER_SIZE)
    header = decode_segment_header(head, path)
    expected = header.first_lsn
    off = SEGMENT_HEADER_SIZE
    while expected <= limit_lsn:
        raw = f.read(RECORD_HEADER_SIZE)
        if len(raw) < RECORD_HEADER_SIZE:
            return
        n, _crc, rtype, _flags, _r16, _r32, lsn, term = RECORD_HEADER.unpack_from(raw, 0)
        if n > MAX_PAYLOAD:
            raise WalCorruptionError(path, off, f"absurd payload length {n} while reading")
        if wanted is not None and not wanted(rtype):
            if lsn != expected:
                raise WalCorruptionError(path, off, f"lsn {lsn} where {expected} was expected while reading")
            f.seek(padded_len(n), os.SEEK_CUR)
            if lsn > after_lsn:
                yield WalRecord(lsn, term, rtype, b"")
            expected += 1
            off += RECORD_HEADER_SIZE + padded_len(n)
            continue
        body = f.read(padded_len(n))
        if len(body) < padded_len(n):
            return
        rec, _end, why = decode_record(raw + body, 0, expected)
        if rec is None:
            raise WalCorruptionError(path, off, f"{why} while reading")
        if rec.lsn > after_lsn:
            yield rec
        expected += 1
        off += RECORD_HEADER_SIZE + len(body)


# ---------------------------------------------------------------------------
# A data directory
# ---------------------------------------------------------------------------


def _check_chain(prev: SegmentInfo | None, header: SegmentHeader, path: Path) -> None:
    if prev is None:
        return
    if header.first_lsn != prev.last_lsn + 1:
        raise WalCorruptionError(
            path, 0, f"segment first_lsn {header.first_lsn} does not continue {prev.path.name} "
            f"(expected {prev.last_lsn + 1})",
        )
    if header.seq <= prev.seq:
        raise WalCorruptionError(path, 0, f"segment seq {header.seq} is not above {prev.seq}")


def _scan_sealed(path: Path) -> tuple[ScanResult, int]:
    """Validate one sealed segment (every record's CRC and LSN) through a
    read-only mapping, and return the scan and the file's size.

    A sealed segment is never written again, only unlinked, so a mapping of it
    stays as it was. Mapped in one call and CRC-checked in place, at 1M
    concepts the ~3 GB a start after the first Flush keeps took 0.31 s against
    1.5 s read through a buffer (the copy out of the page cache) and 3.0 s read
    into a fresh bytes object per segment. A read error on a mapped page
    raises SIGBUS where a read raises OSError: either way the start stops
    (``cli`` enables faulthandler, so the traceback names this scan), as it
    does for a segment that fails its CRC.
    """
    with open(path, "rb", buffering=0) as f:
        mapping = map_readonly(f)
    if mapping is None:  # empty: its header is missing, which the scan reports
        return scan_segment(b"", is_last=False, path=path, keep_records=False), 0
    try:
        populate(mapping, 0, len(mapping))
        return scan_segment(memoryview(mapping), is_last=False, path=path, keep_records=False), len(mapping)
    finally:
        try:
            mapping.close()
        except BufferError:  # a view still held (by an error's traceback): unmapped once it goes
            pass


def load_log_dir(directory: Path, on_dropped: DropCallback | None = None) -> LogDir:
    """Validate every segment of ``directory`` in log order (docs section 7).

    Touches no file. A zero/torn tail of ``wal.log`` is returned as
    ``LogDir.torn`` and reported to ``on_dropped(path, offset, nbytes,
    reason)``; the caller decides whether to cut it. Raises
    :class:`WalCorruptionError` for anything else: damage in a sealed
    segment, a bad header, a name that disagrees with its header, or a broken
    LSN/seq chain. Reads one segment at a time.
    """
    sealed_dir = directory / SEALED_DIR
    tmp = directory / TMP_NAME
    sealed: list[SegmentInfo] = []
    prev: SegmentInfo | None = None
    names = sorted(os.listdir(sealed_dir)) if sealed_dir.is_dir() else []
    for name in names:
        parsed = parse_sealed_name(name)
        path = sealed_dir / name
        if parsed is None:
            logger.warning("WAL %s: ignoring unexpected file %s", sealed_dir, name)
            continue
        res, size = _scan_sealed(path)
        if (res.header.seq, res.header.first_lsn) != parsed:
            raise WalCorruptionError(path, 0, f"header {res.header} disagrees with the file name")
        _check_chain(prev, res.header, path)
        prev = SegmentInfo(path, res.header.seq, res.header.first_lsn, res.count, size)
        sealed.append(prev)
    leftover = tmp if tmp.exists() else None
    active_path = directory / ACTIVE_NAME
    if not active_path.exists():
        return LogDir(sealed, None, None, leftover)
    active_bytes = active_path.read_bytes()
    res = scan_segment(active_bytes, is_last=True, path=active_path, keep_records=False)
    _check_chain(prev, res.header, active_path)
    torn = None
    if res.dropped_offset is not None:
        torn = TornTail(active_path, res.dropped_offset, res.dropped_bytes, res.reason)
        if on_dropped is not None:
            on_dropped(active_path, torn.offset, torn.nbytes, torn.reason)
    active = SegmentInfo(active_path, res.header.seq, res.header.first_lsn, res.count, res.end_offset)
    return LogDir(sealed, active, torn, leftover)


def open_records(segments: list[SegmentInfo], after_lsn: int, limit_lsn: int,
                 wanted: Callable[[int], bool] | None = None) -> Iterator[WalRecord]:
    """Records with ``after_lsn < lsn <= limit_lsn`` from ``segments``, in order.

    The files are opened now, before this returns: a file renamed (rotation)
    or unlinked (segment drop) afterwards still reads as it was. They are
    closed when the iterator is exhausted or closed.
    """
    with ExitStack() as stack:
        files: list[tuple[Path, BinaryIO]] = [
            (seg.path, stack.enter_context(open(seg.path, "rb"))) for seg in segments
        ]
        owned = stack.pop_all()  # on success the iterator owns the files
    return _stream(owned, files, after_lsn, limit_lsn, wanted)


def _stream(
    stack: ExitStack, files: list[tuple[Path, BinaryIO]], after_lsn: int, limit_lsn: int,
    wanted: Callable[[int], bool] | None,
) -> Iterator[WalRecord]:
    with stack:
        for path, f in files:
            yield from iter_file_records(f, path, after_lsn, limit_lsn, wanted)
