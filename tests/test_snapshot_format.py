"""Format tests of the snapshot file (storage.dat, docs/wal_format.md section 12):
golden bytes (version 1: the columnar version 2 is pinned in
tests/test_snapshot_columns.py), the worked example in the document, and one named test per kind
of damage, each asserting the offset the decoder names. A snapshot has no
torn-tail outcome: any damage makes the whole file unusable."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import crc32c
import pytest

from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage import checkpoint as ckpt
from sutra_cluster.storage.state import Concept
from tests.mutators import flip_bit, truncate_to

DOC = Path(__file__).resolve().parents[1] / "docs" / "wal_format.md"
HEADER = wal_pb2.SnapshotHeader(lsn=7, term=2, concepts=1, edges=1, vector_dimension=2, node_id="n1")
CONCEPTS = {"c1": Concept("hi", 1.0, 0.5, {}, struct.pack("<2f", 1.0, 2.0), 1, 2)}
EDGES = [("c1", "c1", 1, 0.5)]

# File header, then frames at 16 (header), 46 (chunk) and 113 (end); 143 bytes.
GOLDEN = (
    "53555452414441540100000000000000"
    "0e0000005b21d13c0100000000000000" "080710021801200128023a026e31"
    "33000000c5401f6b0200000000000000"
    "0a200a026331120268691d0000803f250000003f32080000803f0000004038014002120f0a026331120263311801250000003f"
    "0e0000005b21d13c0300000000000000" "080710021801200128023a026e31"
)
HEADER_FRAME, CHUNK_FRAME, END_FRAME, SIZE = 16, 46, 113, 143
FRAME_HEADER = 16


def golden_file(tmp_path: Path) -> Path:
    path = tmp_path / ckpt.STORAGE_FILE
    path.write_bytes(bytes.fromhex(GOLDEN))
    return path


def decode(path: Path) -> tuple[wal_pb2.SnapshotHeader, list[wal_pb2.SnapshotChunk]]:
    with open(path, "rb") as f:
        dec = ckpt.SnapshotDecoder(f, str(path))
        return dec.header, list(dec)


def damage(path: Path) -> ckpt.SnapshotError:
    with pytest.raises(ckpt.SnapshotError) as ei:
        decode(path)
    assert ei.value.where == str(path) and f"{path}: damaged snapshot at offset {ei.value.offset}: " in str(ei.value)
    return ei.value


# --------------------------------------------------------------------------- golden bytes


def test_golden_bytes_pin_the_snapshot_format() -> None:
    data = b"".join(ckpt.encode_snapshot(HEADER, CONCEPTS, EDGES, version=1))
    assert data.hex() == GOLDEN and len(data) == SIZE
    assert ckpt.FILE_HEADER.size == ckpt.FRAME.size == FRAME_HEADER


def test_golden_file_decodes_to_what_was_encoded(tmp_path: Path) -> None:
    header, chunks = decode(golden_file(tmp_path))
    assert header == HEADER
    (chunk,) = chunks
    (c,) = chunk.concepts
    assert (c.concept_id, c.content, c.strength, c.confidence) == ("c1", "hi", 1.0, 0.5)
    assert (c.embedding_f32, c.created_at_us, c.updated_at_us) == (struct.pack("<2f", 1.0, 2.0), 1, 2)
    (e,) = chunk.edges
    assert (e.source_id, e.target_id, e.assoc_type, e.confidence) == ("c1", "c1", 1, 0.5)


def test_write_checkpoint_installs_the_bytes_and_keeps_the_previous_as_backup(tmp_path: Path) -> None:
    steps: list[str] = []
    first = ckpt.write_checkpoint(tmp_path, ckpt.encode_snapshot(HEADER, CONCEPTS, EDGES, version=1), step=steps.append)
    assert first == SIZE and (tmp_path / ckpt.STORAGE_FILE).read_bytes().hex() == GOLDEN
    assert steps == ["tmp-written", "renamed"]
    newer = wal_pb2.SnapshotHeader(lsn=9, term=2)
    ckpt.write_checkpoint(tmp_path, ckpt.encode_snapshot(newer, {}, []), step=steps.append)
    assert steps[2:] == ["tmp-written", "backup-linked", "renamed"]
    assert (tmp_path / ckpt.BACKUP_FILE).read_bytes().hex() == GOLDEN
    assert decode(tmp_path / ckpt.STORAGE_FILE) == (newer, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.STORAGE_FILE, ckpt.BACKUP_FILE]


def test_doc_worked_example_is_the_golden_file() -> None:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("### Worked example: storage.dat") :]
    out = bytearray()
    for line in section.split("```")[1].strip().splitlines():
        offset, rest = line.split(":", 1)
        assert int(offset, 16) == len(out), line
        out += bytes(int(tok, 16) for tok in re.findall(r"\b[0-9a-f]{2}\b", rest[:49]))
    assert out.hex() == GOLDEN


# --------------------------------------------------------------------------- damage


def _expected_truncation(cut: int) -> tuple[int, str]:
    if cut < HEADER_FRAME:
        return 0, "truncated file header"
    frame = max(f for f in (HEADER_FRAME, CHUNK_FRAME, END_FRAME) if f <= cut)
    if cut < frame + FRAME_HEADER:
        return frame, "truncated frame header"
    return frame + FRAME_HEADER, "truncated frame"


@pytest.mark.parametrize("cut", range(SIZE))
def test_truncated_frame_is_damage(tmp_path: Path, cut: int) -> None:
    path = golden_file(tmp_path)
    truncate_to(path, cut)
    err = damage(path)
    assert (err.offset, err.reason) == _expected_truncation(cut)


def test_missing_end_frame_is_damage(tmp_path: Path) -> None:
    path = golden_file(tmp_path)
    truncate_to(path, END_FRAME)  # every chunk complete, the end frame never written
    err = damage(path)
    assert (err.offset, err.reason) == (END_FRAME, "truncated frame header")


def test_end_frame_mismatch_is_damage(tmp_path: Path) -> None:
    data = b"".join(ckpt.encode_snapshot(HEADER, CONCEPTS, EDGES, version=1))[:END_FRAME]
    other = wal_pb2.SnapshotHeader(lsn=8, term=2, concepts=1, edges=1, vector_dimension=2, node_id="n1")
    payload = other.SerializeToString()
    path = tmp_path / ckpt.STORAGE_FILE
    path.write_bytes(data + ckpt.FRAME.pack(len(payload), crc32c.crc32c(payload), ckpt.KIND_END) + payload)
    err = damage(path)
    assert (err.offset, err.reason) == (END_FRAME, "end frame does not match the header")


@pytest.mark.parametrize("kind", [0, 4, 255])
def test_unknown_kind_is_damage(tmp_path: Path, kind: int) -> None:
    path = golden_file(tmp_path)
    flip_bit(path, CHUNK_FRAME + 8, ckpt.KIND_CHUNK ^ kind)  # the CRC covers the payload only
    err = damage(path)
    assert (err.offset, err.reason) == (CHUNK_FRAME, f"bad frame header (length 51, kind {kind})")


def test_absurd_frame_length_is_damage(tmp_path: Path) -> None:
    path = golden_file(tmp_path)
    flip_bit(path, CHUNK_FRAME + 3, 0x40)  # length 0x40000033 > MAX_FRAME (1 GiB)
    err = damage(path)
    assert (err.offset, err.reason) == (CHUNK_FRAME, f"bad frame header (length {0x40000033}, kind 2)")


def test_flipped_payload_byte_is_checksum_mismatch(tmp_path: Path) -> None:
    path = golden_file(tmp_path)
    flip_bit(path, CHUNK_FRAME + FRAME_HEADER + 5, 0x01)
    err = damage(path)
    assert (err.offset, err.reason) == (CHUNK_FRAME, "checksum mismatch")


def test_bad_magic_is_damage(tmp_path: Path) -> None:
    path = golden_file(tmp_path)
    flip_bit(path, 0, 0x20)  # "sUTRADAT"
    err = damage(path)
    assert (err.offset, err.reason) == (0, "not a snapshot (magic b'sUTRADAT', version 1)")


def test_first_frame_not_a_header_is_damage(tmp_path: Path) -> None:
    path = golden_file(tmp_path)
    flip_bit(path, HEADER_FRAME + 8, ckpt.KIND_HEADER ^ ckpt.KIND_CHUNK)
    err = damage(path)
    assert (err.offset, err.reason) == (CHUNK_FRAME, "first frame is not a header")


def test_second_header_frame_is_damage(tmp_path: Path) -> None:
    path = golden_file(tmp_path)
    flip_bit(path, CHUNK_FRAME + 8, ckpt.KIND_CHUNK ^ ckpt.KIND_HEADER)
    err = damage(path)
    assert (err.offset, err.reason) == (CHUNK_FRAME, "unexpected header frame")
