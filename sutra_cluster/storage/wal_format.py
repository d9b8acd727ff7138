"""Byte format and reader of the Sutra Cluster write-ahead log.

The format is specified in ``docs/wal_format.md``; this module is its only
implementation and the writer (:mod:`sutra_cluster.storage.wal`) imports
every constant from here. Contents:

* constants, encoders and decoders;
* :func:`scan_segment`, a pure function classifying one segment's bytes as a
  clean end, a zero/torn tail, or corruption;
* the reader on top: :func:`load_log_dir` validates a data directory's
  segments in order and repairs a torn tail of ``wal.log`` (:func:`cut_tail`).
"""

from __future__ import annotations

import logging
import os
import re
import struct
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Self

import crc32c

logger = logging.getLogger(__name__)

__all__ = [
    "ACTIVE_NAME",
    "BROKEN_SUFFIX",
    "MAX_PAYLOAD",
    "RECORD_ALIGN",
    "RECORD_HEADER",
    "RECORD_HEADER_SIZE",
    "SEALED_DIR",
    "SEGMENT_HEADER",
    "SEGMENT_HEADER_SIZE",
    "SEGMENT_MAGIC",
    "SEGMENT_VERSION",
    "TMP_NAME",
    "LogDir",
    "Lsn",
    "ScanResult",
    "SegmentHeader",
    "SegmentInfo",
    "WalCorruptionError",
    "WalError",
    "WalRecord",
    "WalWriteError",
    "cut_tail",
    "decode_segment_header",
    "encode_record",
    "encode_segment_header",
    "find_valid_record",
    "fsync_dir",
    "iter_file_records",
    "load_log_dir",
    "open_records",
    "padded_len",
    "parse_sealed_name",
    "record_size",
    "scan_segment",
    "sealed_name",
    "write_file_synced",
]

# ---------------------------------------------------------------------------
# Constants (docs/wal_format.md sections 2-4)
# ---------------------------------------------------------------------------

SEGMENT_MAGIC = b"SUTRAWAL"
SEGMENT_VERSION = 1
#: magic, version, reserved, seq, first_lsn, header_crc, reserved
SEGMENT_HEADER = struct.Struct("<8sIIQQII")
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size  # 40
#: the header CRC covers the 32 bytes before it (magic .. first_lsn)
_SEGMENT_CRC_SPAN = 32
#: payload_len, crc, type, flags, reserved16, reserved32, lsn, term
RECORD_HEADER = struct.Struct("<IIBBHIQQ")
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 32
#: the record CRC covers header bytes [8:32] and then the unpadded payload
_RECORD_CRC_START = 8
_RECORD_TAIL = struct.Struct("<BBHIQQ")
RECORD_ALIGN = 8
MAX_PAYLOAD = 256 << 20
MAX_U64 = (1 << 64) - 1

ACTIVE_NAME = "wal.log"
TMP_NAME = "wal.log.tmp"
SEALED_DIR = "wal"
SEALED_SUFFIX = ".wal"
BROKEN_SUFFIX = ".broken"
_SEALED_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")

assert SEGMENT_HEADER_SIZE == 40 and RECORD_HEADER_SIZE == 32
assert SEGMENT_HEADER.size - 8 == _SEGMENT_CRC_SPAN  # crc + reserved follow the span
assert SEGMENT_HEADER_SIZE % RECORD_ALIGN == 0  # keeps every record 8-aligned


# ---------------------------------------------------------------------------
# Public value types and errors
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WalRecord:
    """One log record as appended: its LSN, term, type (1..255) and payload."""

    lsn: int
    term: int
    rtype: int
    payload: bytes


class Lsn(int):
    """The LSN returned by :meth:`WriteAheadLog.append`: an ``int`` that also
    remembers the write generation it was assigned in.

    After a write failure LSNs are reused, so a bare number cannot tell the
    failed record from the later one that got the same LSN; passing this value
    to :meth:`WriteAheadLog.wait_durable` can. It pickles as a plain int.
    """

    generation: int

    def __new__(cls, value: int, generation: int) -> Self:
        obj = super().__new__(cls, value)
        obj.generation = generation
        return obj

    def __reduce__(self) -> tuple[type[int], tuple[int]]:
        return int, (int(self),)


class WalError(Exception):
    """Base class of every error the WAL raises."""


class WalCorruptionError(WalError):
    """The log on disk is damaged in a way that may have lost durable data.

    ``path`` is the segment file (or ``"<bytes>"`` for an in-memory scan) and
    ``offset`` the byte offset of the damage inside it; both are in the
    message. Raised instead of dropping anything: an operator must decide.
    """

    def __init__(self, path: Path | str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"WAL corruption in {path} at offset {offset}: {reason}")


class WalWriteError(WalError):
    """Writing or fsyncing a record failed; that record is NOT durable."""


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    """Decoded 40-byte segment header."""

    seq: int
    first_lsn: int


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


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


def padded_len(n: int) -> int:
    """``n`` rounded up to the record alignment (8)."""
    return (n + RECORD_ALIGN - 1) & ~(RECORD_ALIGN - 1)


def record_size(payload_len: int) -> int:
    """Bytes a record with a payload of ``payload_len`` occupies on disk."""
    return RECORD_HEADER_SIZE + padded_len(payload_len)


def encode_segment_header(seq: int, first_lsn: int) -> bytes:
    """The 40-byte header of a segment with sequence ``seq``."""
    head = SEGMENT_HEADER.pack(SEGMENT_MAGIC, SEGMENT_VERSION, 0, seq, first_lsn, 0, 0)
    crc = crc32c.crc32c(head[:_SEGMENT_CRC_SPAN], value=0)
    return head[:_SEGMENT_CRC_SPAN] + struct.pack("<II", crc, 0)


def decode_segment_header(data: bytes, path: Path | str = "<bytes>") -> SegmentHeader:
    """Validate and decode the header at the start of ``data``.

    Raises :class:`WalCorruptionError` (offset 0) on a short file, wrong magic
    or version, non-zero reserved fields or a CRC mismatch.
    """
    if len(data) < SEGMENT_HEADER_SIZE:
        raise WalCorruptionError(path, 0, f"segment header is short ({len(data)} bytes)")
    magic, version, res1, seq, first_lsn, crc, res2 = SEGMENT_HEADER.unpack_from(data, 0)
    if magic != SEGMENT_MAGIC:
        raise WalCorruptionError(path, 0, f"bad segment magic {magic!r}")
    want = crc32c.crc32c(bytes(data[:_SEGMENT_CRC_SPAN]), value=0)
    if crc != want:
        raise WalCorruptionError(path, 0, f"segment header crc {crc:#010x} != {want:#010x}")
    if version != SEGMENT_VERSION:
        raise WalCorruptionError(path, 0, f"unsupported segment version {version}")
    if res1 or res2:
        raise WalCorruptionError(path, 0, "non-zero reserved field in segment header")
    if first_lsn == 0:
        raise WalCorruptionError(path, 0, "segment first_lsn is 0")
    return SegmentHeader(seq=seq, first_lsn=first_lsn)


def encode_record(lsn: int, term: int, rtype: int, payload: bytes) -> bytes:
    """Encode one record (header, payload, zero padding).

    Raises ValueError for a type outside 1..255, an LSN or term outside
    u64 (LSN 0 included), or a payload above ``MAX_PAYLOAD``.
    """
    if not 1 <= rtype <= 255:
        raise ValueError(f"record type must be 1..255, got {rtype}")
    if not 1 <= lsn <= MAX_U64 or not 0 <= term <= MAX_U64:
        raise ValueError(f"lsn/term out of range: lsn={lsn} term={term}")
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise ValueError(f"payload of {n} bytes exceeds MAX_PAYLOAD ({MAX_PAYLOAD})")
    tail = _RECORD_TAIL.pack(rtype, 0, 0, 0, lsn, term)
    crc = crc32c.crc32c(payload, value=crc32c.crc32c(tail, value=0))
    return b"".join(
        (struct.pack("<II", n, crc), tail, payload, bytes(padded_len(n) - n))
    )


# ---------------------------------------------------------------------------
# File names
# ---------------------------------------------------------------------------


def sealed_name(seq: int, first_lsn: int) -> str:
    """File name of a sealed segment; names sort in log order."""
    return f"{seq:016x}-{first_lsn:016x}{SEALED_SUFFIX}"


def parse_sealed_name(name: str) -> tuple[int, int] | None:
    """``(seq, first_lsn)`` from a sealed segment name, None if not one."""
    m = _SEALED_RE.match(name)
    if m is None:
        return None
    return int(m.group(1), 16), int(m.group(2), 16)


# ---------------------------------------------------------------------------
# Scanning
# ---------------------------------------------------------------------------


def _check_record(data: bytes, off: int, expected_lsn: int) -> tuple[WalRecord | None, int, str]:
    """Parse the record at ``off``.

    Returns ``(record, next_offset, "")`` when it is valid and has
    ``expected_lsn`` (pass -1 to accept any LSN), else ``(None, off, why)``.
    """
    size = len(data)
    if size - off < RECORD_HEADER_SIZE:
        return None, off, f"short record header ({size - off} of {RECORD_HEADER_SIZE} bytes)"
    n, crc, rtype, flags, res16, res32, lsn, term = RECORD_HEADER.unpack_from(data, off)
    if n > MAX_PAYLOAD:
        return None, off, f"absurd payload length {n}"
    if rtype == 0:
        return None, off, "record type 0"
    start = off + RECORD_HEADER_SIZE
    end = start + padded_len(n)
    if end > size:
        return None, off, f"short payload ({size - start} of {padded_len(n)} bytes)"
    mv = memoryview(data)
    want = crc32c.crc32c(mv[start : start + n], value=crc32c.crc32c(mv[off + _RECORD_CRC_START : start], value=0))
    if crc != want:
        return None, off, f"crc mismatch (stored {crc:#010x}, computed {want:#010x})"
    if flags or res16 or res32:
        return None, off, "non-zero flags or reserved field"
    if any(mv[start + n : end]):
        return None, off, "non-zero padding"
    if expected_lsn >= 0 and lsn != expected_lsn:
        return None, off, f"lsn {lsn} where {expected_lsn} was expected"
    return WalRecord(lsn, term, rtype, bytes(mv[start : start + n])), end, ""


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
            rec, _end, _why = _check_record(data, off, -1)
            if rec is not None:
                return off, rec.lsn
        off += RECORD_ALIGN
    return None


def scan_segment(
    data: bytes,
    is_last: bool,
    *,
    path: Path | str = "<bytes>",
    keep_records: bool = True,
) -> ScanResult:
    """Classify the bytes of one whole segment file (docs section 7).

    Returns a clean end (``dropped_offset is None``) or, only when
    ``is_last``, a zero/torn tail to be cut at ``dropped_offset``. Raises
    :class:`WalCorruptionError` naming ``path`` and the offset of the damage
    for a bad header, any bad record in a non-last segment, or a bad record in
    the last segment followed by a valid one. Pure: touches no files.
    """
    header = decode_segment_header(data, path)
    records: list[WalRecord] = []
    offsets: list[int] = []
    expected = header.first_lsn
    off = SEGMENT_HEADER_SIZE
    why = ""
    while off < len(data):
        rec, nxt, why = _check_record(data, off, expected)
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
    if data.count(0, off) == nbytes:
        reason = f"zero-filled tail ({why})"
    else:
        found = find_valid_record(data, off, last_lsn)
        if found is not None:
            y, lsn = found
            raise WalCorruptionError(
                path, off, f"{why}, but a valid record (lsn {lsn}) follows at offset {y}"
            )
        reason = f"torn tail: {why}"
    return ScanResult(header, records, off, off, nbytes, reason, count, last_lsn, offsets)


def iter_file_records(
    f: BinaryIO, path: Path | str, after_lsn: int, limit_lsn: int
) -> Iterator[WalRecord]:
    """Stream the records of an open, already validated segment file.

    Yields records with ``after_lsn < lsn <= limit_lsn``; stops at the first
    record beyond ``limit_lsn`` or at end of file (a record still being
    written past the durable point is never reached). Re-checks every CRC
    and the LSN sequence, raising :class:`WalCorruptionError` on a mismatch
    (the file changed on disk since it was validated at open).
    """
    head = f.read(SEGMENT_HEADER_SIZE)
    header = decode_segment_header(head, path)
    expected = header.first_lsn
    off = SEGMENT_HEADER_SIZE
    while expected <= limit_lsn:
        raw = f.read(RECORD_HEADER_SIZE)
        if len(raw) < RECORD_HEADER_SIZE:
            return
        n = RECORD_HEADER.unpack_from(raw, 0)[0]
        if n > MAX_PAYLOAD:
            raise WalCorruptionError(path, off, f"absurd payload length {n} while reading")
        body = f.read(padded_len(n))
        if len(body) < padded_len(n):
            return
        rec, _end, why = _check_record(raw + body, 0, expected)
        if rec is None:
            raise WalCorruptionError(path, off, f"{why} while reading")
        if rec.lsn > after_lsn:
            yield rec
        expected += 1
        off += RECORD_HEADER_SIZE + len(body)


# ---------------------------------------------------------------------------
# Reading a data directory (file I/O from here on)
# ---------------------------------------------------------------------------

DropCallback = Callable[[Path, int, int, str], None]


def fsync_dir(path: Path) -> None:
    """fsync a directory, making renames/creations/unlinks in it durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_synced(path: Path, data: bytes) -> None:
    """Create or overwrite ``path`` with ``data`` and fsync it (not its directory)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


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


@dataclass(slots=True)
class LogDir:
    """Validated contents of a data directory: sealed segments in log order,
    then ``wal.log`` (None if it is missing, e.g. after a crash mid-rotation)."""

    sealed: list[SegmentInfo]
    active: SegmentInfo | None


def cut_tail(path: Path, data: bytes, result: ScanResult, on_dropped: DropCallback | None) -> Path:
    """Repair a zero/torn tail found by :func:`scan_segment` in ``path``.

    Copies ``data[X:]`` to ``<dir>/wal.log.<X>.broken`` and fsyncs it, then
    truncates ``path`` to X and fsyncs it, logs a WARNING, and finally calls
    ``on_dropped(path, X, nbytes, reason)`` (which may raise to refuse the
    open; the bytes are safe by then). Returns the ``.broken`` path.
    """
    offset = result.end_offset
    tail = data[offset:]
    broken = path.parent / f"{path.name}.{offset}{BROKEN_SUFFIX}"
    n = 0
    # A repeated cut (crash during an earlier repair) reuses an identical
    # file; anything else gets a fresh name so no evidence is overwritten.
    while broken.exists() and broken.read_bytes() != tail:
        n += 1
        broken = path.parent / f"{path.name}.{offset}{BROKEN_SUFFIX}.{n}"
    write_file_synced(broken, tail)
    fsync_dir(path.parent)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    logger.warning(
        "WAL %s: cut %d bytes at offset %d (%s); saved to %s",
        path, len(tail), offset, result.reason, broken.name,
    )
    if on_dropped is not None:
        on_dropped(path, offset, len(tail), result.reason)
    return broken


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


def load_log_dir(directory: Path, on_dropped: DropCallback | None = None) -> LogDir:
    """Validate every segment of ``directory`` in log order (docs section 7).

    Deletes a leftover ``wal.log.tmp``, cuts a zero/torn tail of ``wal.log``
    with :func:`cut_tail`, and raises :class:`WalCorruptionError` for anything
    else: damage in a sealed segment, a bad header, a name that disagrees with
    its header, or a broken LSN/seq chain. Reads one segment at a time.
    """
    sealed_dir = directory / SEALED_DIR
    tmp = directory / TMP_NAME
    if tmp.exists():
        logger.warning("WAL %s: deleting leftover %s from an interrupted rotation", directory, TMP_NAME)
        tmp.unlink()
        fsync_dir(directory)
    sealed: list[SegmentInfo] = []
    prev: SegmentInfo | None = None
    names = sorted(os.listdir(sealed_dir)) if sealed_dir.is_dir() else []
    for name in names:
        parsed = parse_sealed_name(name)
        path = sealed_dir / name
        if parsed is None:
            logger.warning("WAL %s: ignoring unexpected file %s", sealed_dir, name)
            continue
        data = path.read_bytes()
        res = scan_segment(data, is_last=False, path=path, keep_records=False)
        if (res.header.seq, res.header.first_lsn) != parsed:
            raise WalCorruptionError(path, 0, f"header {res.header} disagrees with the file name")
        _check_chain(prev, res.header, path)
        prev = SegmentInfo(path, res.header.seq, res.header.first_lsn, res.count, len(data))
        sealed.append(prev)
    active_path = directory / ACTIVE_NAME
    if not active_path.exists():
        return LogDir(sealed, None)
    data = active_path.read_bytes()
    res = scan_segment(data, is_last=True, path=active_path, keep_records=False)
    _check_chain(prev, res.header, active_path)
    if res.dropped_offset is not None:
        cut_tail(active_path, data, res, on_dropped)
    active = SegmentInfo(active_path, res.header.seq, res.header.first_lsn, res.count, res.end_offset)
    return LogDir(sealed, active)


def open_records(segments: list[SegmentInfo], after_lsn: int, limit_lsn: int) -> Iterator[WalRecord]:
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
    return _stream(owned, files, after_lsn, limit_lsn)


def _stream(
    stack: ExitStack, files: list[tuple[Path, BinaryIO]], after_lsn: int, limit_lsn: int
) -> Iterator[WalRecord]:
    with stack:
        for path, f in files:
            yield from iter_file_records(f, path, after_lsn, limit_lsn)
