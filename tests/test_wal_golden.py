"""Format-level WAL tests: golden bytes, the pure segment scanner, and the
worked example in docs/wal_format.md.

The doc test keeps the document honest: if the format changes, it fails until
the hex dump (and so the document) is updated too. File-level recovery and
writer tests are in test_wal.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sutra_cluster.storage.wal import WalCorruptionError, WalRecord, WriteAheadLog
from sutra_cluster.storage.wal_format import (
    SEGMENT_HEADER_SIZE,
    encode_record,
    encode_segment_header,
    record_size,
)
from sutra_cluster.storage.wal_reader import scan_segment

DOC = Path(__file__).resolve().parents[1] / "docs" / "wal_format.md"
PAYLOADS = [f"record-{i:03d}-".encode() * (i % 7 + 1) for i in range(10)]


# --------------------------------------------------------------------------- golden bytes

GOLDEN_HEADER = "535554524157414c010000000000000001000000000000000100000000000000793cbbe700000000"
GOLDEN_RECORD = "05000000ec91fe5e01000000000000000100000000000000010000000000000068656c6c6f000000"


def test_golden_bytes_pin_the_format() -> None:
    assert encode_segment_header(1, 1).hex() == GOLDEN_HEADER
    assert encode_record(lsn=1, term=1, rtype=1, payload=b"hello").hex() == GOLDEN_RECORD
    assert encode_record(2, 1, 2, b"").hex() == "00000000290f405d" + "02" + "00" * 7 + "02" + "00" * 7 + "01" + "00" * 7
    assert record_size(0) == 32 and record_size(1) == 40 and record_size(8) == 40 and record_size(9) == 48


def test_writer_produces_golden_bytes(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path) as wal:
        wal.append(1, b"hello", 1)
        wal.sync()
    assert (tmp_path / "wal.log").read_bytes().hex() == GOLDEN_HEADER + GOLDEN_RECORD


# --------------------------------------------------------------------------- pure scanner


def _segment(payloads: list[bytes], first_lsn: int = 1) -> bytes:
    return encode_segment_header(1, first_lsn) + b"".join(
        encode_record(first_lsn + i, 1, 1, p) for i, p in enumerate(payloads)
    )


def test_scan_every_cut_of_last_record() -> None:
    data = _segment(PAYLOADS[:3])
    start = SEGMENT_HEADER_SIZE + record_size(len(PAYLOADS[0])) + record_size(len(PAYLOADS[1]))
    assert start + record_size(len(PAYLOADS[2])) == len(data)
    for cut in range(start + 1, len(data)):
        res = scan_segment(data[:cut], is_last=True)
        assert [r.payload for r in res.records] == PAYLOADS[:2], cut
        assert (res.dropped_offset, res.dropped_bytes, res.end_offset) == (start, cut - start, start), cut
        with pytest.raises(WalCorruptionError):
            scan_segment(data[:cut], is_last=False)
    res = scan_segment(data, is_last=True)
    assert [r.payload for r in res.records] == PAYLOADS[:3]
    assert (res.dropped_offset, res.dropped_bytes, res.last_lsn) == (None, 0, 3)


def test_scan_valid_record_beyond_damage_is_corruption() -> None:
    data = bytearray(_segment(PAYLOADS[:4]))
    second = SEGMENT_HEADER_SIZE + record_size(len(PAYLOADS[0]))
    data[second + 40] ^= 0x01  # payload byte of record 2; records 3 and 4 stay valid
    with pytest.raises(WalCorruptionError) as ei:
        scan_segment(bytes(data), is_last=True, path="seg")
    assert ei.value.offset == second and "valid record (lsn 3)" in str(ei.value)


def test_scan_rejects_type_zero_absurd_length_and_wrong_lsn() -> None:
    good = _segment(PAYLOADS[:1])
    absurd = (1 << 31).to_bytes(4, "little") + bytes(28)
    res = scan_segment(good + absurd, is_last=True)
    assert res.count == 1 and res.dropped_bytes == 32 and "absurd" in res.reason
    zero_type = bytearray(encode_record(2, 1, 1, b"abc"))
    zero_type[8] = 0
    res = scan_segment(good + bytes(zero_type), is_last=True)
    assert res.count == 1 and "type 0" in res.reason
    # A valid record whose LSN skips ahead is a gap, not a torn write.
    with pytest.raises(WalCorruptionError, match="lsn 7 where 2 was expected"):
        scan_segment(good + encode_record(7, 1, 1, b"abc"), is_last=True)
    # A stale duplicate (LSN not above the last good one) cannot hide acknowledged data.
    res = scan_segment(good + encode_record(1, 1, 1, b"abc"), is_last=True)
    assert res.count == 1 and res.dropped_bytes == record_size(3) and "lsn 1 where 2" in res.reason


# --------------------------------------------------------------------------- the document


def doc_example_bytes() -> bytes:
    """Bytes of the first hex dump after the "Worked example" heading."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## 6. Worked example") :]
    block = section.split("```")[1]
    out = bytearray()
    for line in block.strip().splitlines():
        offset, rest = line.split(":", 1)
        assert int(offset, 16) == len(out), line
        out += bytes(int(tok, 16) for tok in re.findall(r"\b[0-9a-f]{2}\b", rest[:49]))
    return bytes(out)


def test_doc_worked_example_matches_writer(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path) as wal:
        wal.append(1, b"hello", 1)
        wal.append(2, b"", 1)
        wal.sync()
    written = (tmp_path / "wal.log").read_bytes()
    example = doc_example_bytes()
    assert len(example) == 112
    assert written == example


def test_doc_worked_example_scans_clean() -> None:
    res = scan_segment(doc_example_bytes(), is_last=True)
    assert res.records == [WalRecord(1, 1, 1, b"hello"), WalRecord(2, 1, 2, b"")]
    assert (res.end_offset, res.dropped_offset, res.header.seq, res.header.first_lsn) == (112, None, 1, 1)
