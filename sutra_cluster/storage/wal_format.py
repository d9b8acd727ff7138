"""Constants and codecs of the Sutra Cluster write-ahead log.

The format is specified in ``docs/wal_format.md``. Like LevelDB's
``log_format.h``, this module holds only what the reader
(:mod:`sutra_cluster.storage.wal_reader`) and the writer
(:mod:`sutra_cluster.storage.wal`) must agree on: byte layouts, record types,
file names, value types and errors. It does no file I/O.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Self

import crc32c

from sutra_cluster.errors import StorageFailure

__all__ = [
    "ACTIVE_NAME",
    "BROKEN_SUFFIX",
    "MAX_PAYLOAD",
    "RECORD_ALIGN",
    "RECORD_HEADER",
    "RECORD_HEADER_SIZE",
    "RT_BATCH",
    "RT_PREPARE",
    "RT_TERM",
    "RT_TXN_ABORT",
    "SEALED_DIR",
    "SEGMENT_HEADER",
    "SEGMENT_HEADER_SIZE",
    "SEGMENT_MAGIC",
    "SEGMENT_VERSION",
    "TMP_NAME",
    "Lsn",
    "RecordType",
    "SegmentHeader",
    "WalCorruptionError",
    "WalError",
    "WalRecord",
    "WalWriteError",
    "broken_name",
    "decode_record",
    "decode_segment_header",
    "encode_record",
    "encode_segment_header",
    "padded_len",
    "parse_sealed_name",
    "record_size",
    "sealed_name",
]

# ---------------------------------------------------------------------------
# Layout (docs/wal_format.md sections 2-4)
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


class RecordType(IntEnum):
    """Every record type the engine writes (docs/wal_format.md section 11).

    The WAL itself only rejects type 0; a new type is added here, and to the
    document, before anything writes it.
    """

    #: payload: a ``sutra.wal.WalBatch`` protobuf, one atomic batch of writes
    BATCH = 1
    #: payload: empty; the first record a leader writes in a new term
    TERM = 2
    #: payload: a ``sutra.wal.WalPrepare``: one shard's part of a cross-shard
    #: transaction, durable but not applied (its commit is an RT_BATCH with txn_id)
    PREPARE = 3
    #: payload: a ``sutra.wal.WalTxnAbort``: the prepared part is dropped
    TXN_ABORT = 4


# Plain ints: they travel in protobuf fields and through pickling unchanged.
RT_BATCH = RecordType.BATCH.value
RT_TERM = RecordType.TERM.value
RT_PREPARE = RecordType.PREPARE.value
RT_TXN_ABORT = RecordType.TXN_ABORT.value


# ---------------------------------------------------------------------------
# Value types and errors
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


class WalError(StorageFailure):
    """Base class of every error the WAL raises.

    A :class:`~sutra_cluster.errors.StorageFailure`, so a node that cannot
    open its log refuses to start with one line, and a servicer answers
    UNAVAILABLE, without either knowing the WAL's classes.
    """


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


# ---------------------------------------------------------------------------
# Codecs
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


def decode_segment_header(data: bytes | memoryview, path: Path | str = "<bytes>") -> SegmentHeader:
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


def decode_record(data: bytes | memoryview, off: int, expected_lsn: int,
                  payload: bool = True) -> tuple[WalRecord | None, int, str]:
    """Decode and validate the record at ``off`` of ``data`` (docs section 7).

    Returns ``(record, next_offset, "")`` when it is valid and has
    ``expected_lsn`` (pass -1 to accept any LSN), else ``(None, off, why)``
    with ``why`` the first rule it breaks. Never raises on bad bytes.
    ``payload`` False: the record is checked in full but its payload is not
    copied out (``b""``), for a scan that only validates.
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
    return WalRecord(lsn, term, rtype, bytes(mv[start : start + n]) if payload else b""), end, ""


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


def broken_name(offset: int, n: int = 0) -> str:
    """Name of the file a torn tail of wal.log cut at ``offset`` is saved to;
    ``n`` > 0 when an earlier, different cut at that offset holds the plain name."""
    base = f"{ACTIVE_NAME}.{offset}{BROKEN_SUFFIX}"
    return f"{base}.{n}" if n else base
