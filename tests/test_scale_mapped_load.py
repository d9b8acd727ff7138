"""A start under SUTRA_VECTOR_STORAGE=mmap maps storage.dat read-only and keeps
its whole 4,096-row vector blocks as the flat store's chunks (no copy into a
fresh mapping); the partial last block, the WAL tail and every later write get
chunks of their own. Whatever is then updated, removed, compacted or
checkpointed (also after the mapped file has been rotated out of the
directory), the state and the stored vectors are those of an unmapped start;
a version 1 storage.dat (older nodes) still starts; damage is still refused."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from sutra_cluster.config import Config
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage import checkpoint as ckpt
from sutra_cluster.storage import columns
from sutra_cluster.storage.engine import Engine
from sutra_cluster.storage.flatstore import CHUNK_ROWS
from tests.mutators import flip_bit

DIM = 16
N = 2 * CHUNK_ROWS + 500  # two whole blocks and a partial one


def _cfg(path: Path, storage: str = "mmap") -> Config:
    return Config(storage_path=str(path), vector_dimension=DIM, reconcile_interval_ms=1, node_id="mapped",
                  memory_threshold=1 << 30, vector_storage=storage, quantization="sq8", ann_threshold=1 << 20)


def _learn(engine: Engine, ids: range, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for lo in range(ids.start, ids.stop, 1000):
        batch = wal_pb2.WalBatch()
        for i in range(lo, min(ids.stop, lo + 1000)):
            batch.concepts.append(pb.LearnConceptRequest(
                concept_id=f"c{i}", content=f"t{i}", embedding_f32=rng.standard_normal(DIM).astype("<f4").tobytes()))
        engine.wait_visible(engine.submit(batch))


def _stored(engine: Engine, keys: list[str]) -> list[bytes]:
    out = []
    for key in keys:
        got = engine.vectors.stored(key)
        assert got is not None, key
        out.append(got[0].tobytes() + struct.pack("<d", got[1]))
    return out


def _seeded(path: Path, version: int = 2) -> tuple[str, list[bytes], list[tuple[str, float]]]:
    """A data directory holding N concepts in storage.dat (of ``version``), nothing in the WAL
    after it; returns the digest, some stored vectors and an exact search's answer."""
    engine = Engine(_cfg(path, "memory"))
    engine.lead("single-node")
    try:
        _learn(engine, range(N), seed=1)
        if version == 2:
            engine.checkpoint(drain=True)
        else:
            with engine._lock:
                concepts, edges = engine.state.capture()
                header = wal_pb2.SnapshotHeader(lsn=engine.applied_lsn, term=1, concepts=len(concepts),
                                                vector_dimension=DIM)
                blocks = ckpt.encode_snapshot(header, concepts, edges, engine.vectors.stored_batches(), version=1)
            ckpt.write_checkpoint(path, blocks)
        query = np.random.default_rng(9).standard_normal(DIM)
        return engine.digest()[1], _stored(engine, _probe()), engine.search(query, 10)[0]
    finally:
        engine.close()


def _probe() -> list[str]:
    return ["c0", "c4095", "c4096", f"c{2 * CHUNK_ROWS - 1}", f"c{2 * CHUNK_ROWS}", f"c{N - 1}"]


def test_whole_blocks_are_views_of_the_file_and_answer_as_before(tmp_path: Path) -> None:
    digest, stored, hits = _seeded(tmp_path)
    engine = Engine(_cfg(tmp_path))
    try:
        chunks = engine.vectors._chunks
        assert len(chunks) == 3
        assert [c is not None and c.flags.writeable for c in chunks] == [False, False, True]
        assert engine.digest()[1] == digest and _stored(engine, _probe()) == stored
        query = np.random.default_rng(9).standard_normal(DIM)
        assert engine.search(query, 10)[0] == hits
        assert engine.vectors.stats()["mapped_vector_bytes"] == 3 * CHUNK_ROWS * DIM * 4
    finally:
        engine.close()


def test_writes_after_a_mapped_start_never_touch_the_mapping_and_survive_rotation(tmp_path: Path) -> None:
    """Updates and removals of mapped rows, new rows, a compaction, and three checkpoints (so the
    mapped storage.dat is no longer in the directory at all) give the state an unmapped start gives."""
    _seeded(tmp_path)
    engine = Engine(_cfg(tmp_path))
    engine.lead("single-node")
    try:
        first = engine.vectors._chunks[0]
        before = first.copy()
        _learn(engine, range(0, 100), seed=2)  # updates of mapped rows: new rows, old ones tombstoned
        _learn(engine, range(N, N + 300), seed=3)
        batch = wal_pb2.WalBatch()
        batch.delete_concept_ids.extend(f"c{i}" for i in range(100, 3000))  # past a quarter dead: compaction
        engine.wait_visible(engine.submit(batch))
        assert np.array_equal(first, before)
        for _ in range(3):
            engine.checkpoint(drain=True)
        digest, stored = engine.digest()[1], _stored(engine, _probe()[1:] + ["c5", f"c{N + 7}"])
    finally:
        engine.close()
    for storage in ("mmap", "memory"):
        again = Engine(_cfg(tmp_path, storage))
        try:
            assert again.digest()[1] == digest
            assert _stored(again, _probe()[1:] + ["c5", f"c{N + 7}"]) == stored
            assert again.vectors.get("c150") is None
        finally:
            again.close()


def test_version_1_storage_dat_starts_under_mmap(tmp_path: Path) -> None:
    digest, stored, _ = _seeded(tmp_path, version=1)
    assert (tmp_path / ckpt.STORAGE_FILE).read_bytes()[8:12] == struct.pack("<I", 1)
    engine = Engine(_cfg(tmp_path))
    try:
        assert engine.digest()[1] == digest and _stored(engine, _probe()) == stored
        assert all(c is None or c.flags.writeable for c in engine.vectors._chunks)  # no columns: copies
    finally:
        engine.close()


@pytest.mark.parametrize("where", ["vectors", "strings"])
def test_damaged_mapped_block_is_a_checksum_mismatch(tmp_path: Path, where: str) -> None:
    _seeded(tmp_path)
    path = tmp_path / ckpt.STORAGE_FILE
    with open(path, "rb") as f:
        dec = ckpt.SnapshotDecoder(f, str(path), mapped=True)
        assert dec.mapped
        first = dec.offset  # the first columns frame's header
    at = first + ckpt.FRAME.size + 16 + (5 if where == "vectors" else CHUNK_ROWS * DIM * 4 + 100)
    flip_bit(path, at, 0x10)
    with open(path, "rb") as f, pytest.raises(ckpt.SnapshotError) as ei:
        list(ckpt.SnapshotDecoder(f, str(path), mapped=True))
    assert (ei.value.offset, ei.value.reason) == (first, "checksum mismatch")


@pytest.mark.parametrize("keep", [0, 10, 40, 5000, -7])
def test_truncated_mapped_file_is_damage(tmp_path: Path, keep: int) -> None:
    _seeded(tmp_path)
    path = tmp_path / ckpt.STORAGE_FILE
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with open(path, "rb") as f, pytest.raises(ckpt.SnapshotError) as ei:
        list(ckpt.SnapshotDecoder(f, str(path), mapped=True))
    assert ei.value.reason.startswith("truncated"), ei.value.reason


def _mapped_files(directory: Path) -> list[str]:
    """Files of ``directory`` this process maps now (earlier tests' mappings may live on)."""
    with open("/proc/self/maps") as f:
        return [line.split(None, 5)[-1].strip() for line in f if str(directory) in line]


def test_memory_start_reads_storage_dat_mapped_and_keeps_no_mapping(tmp_path: Path) -> None:
    """Under SUTRA_VECTOR_STORAGE=memory a start reads storage.dat through a mapping too
    (one copy of the vectors, out of the page cache into the chunks, where a reused
    buffer took two); nothing it keeps is a view of it, so the mapping is gone once the
    start is done, and the state is the one that was written."""
    digest, stored, hits = _seeded(tmp_path)
    seen: list[bool] = []
    decoder = ckpt.SnapshotDecoder

    class Spy(decoder):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            seen.append(self.mapped)

    ckpt.SnapshotDecoder = Spy  # type: ignore[misc]
    try:
        engine = Engine(_cfg(tmp_path, "memory"))
    finally:
        ckpt.SnapshotDecoder = decoder  # type: ignore[misc]
    try:
        assert seen == [True]
        assert _mapped_files(tmp_path) == []
        assert engine.digest()[1] == digest
        assert _stored(engine, _probe()) == stored
        query = np.random.default_rng(9).standard_normal(DIM)
        assert engine.search(query, 10)[0] == hits
    finally:
        engine.close()


def _mapped_rss(path: Path) -> int | None:
    """Resident bytes of this process's mapping of ``path`` (None: not mapped)."""
    rss, inside = None, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:  # a mapping's first line
                inside = len(head) >= 6 and head[5] == str(path)
                if inside:
                    rss = rss or 0
            elif inside and head[0] == "Rss:":
                rss = (rss or 0) + int(head[1]) * 1024
    return rss


@pytest.mark.parametrize("transient", [True, False])
def test_a_transient_mapped_decode_leaves_no_pages_resident(tmp_path: Path, transient: bool) -> None:
    """``transient``: frames read are unmapped from the process (the page cache keeps
    them), so a memory-storage start does not hold the whole file resident while it
    loads; without it every page read stays resident until the mapping goes."""
    dim = 256
    engine = Engine(Config(storage_path=str(tmp_path), vector_dimension=dim, reconcile_interval_ms=1,
                           node_id="transient", memory_threshold=1 << 30, ann_threshold=1 << 20))
    engine.lead("single-node")
    try:
        rng = np.random.default_rng(3)
        for lo in range(0, 13_000, 1000):
            batch = wal_pb2.WalBatch()
            for i in range(lo, lo + 1000):
                batch.concepts.append(pb.LearnConceptRequest(
                    concept_id=f"c{i}", content="t", embedding_f32=rng.standard_normal(dim).astype("<f4").tobytes()))
            engine.wait_visible(engine.submit(batch))
        engine.checkpoint(drain=True)
    finally:
        engine.close()
    path = tmp_path / ckpt.STORAGE_FILE
    size = path.stat().st_size
    assert size > 8 << 20
    with open(path, "rb") as f:
        dec = ckpt.SnapshotDecoder(f, str(path), reuse_buffer=True, mapped=True, transient=transient)
        rows = sum(len(chunk.ids) for chunk in dec if isinstance(chunk, columns.ColumnChunk))
        assert rows == 13_000
        resident = _mapped_rss(path)
        assert resident is not None  # still mapped: the decoder holds it
        if transient:
            assert resident < 1 << 20, resident
        else:
            assert resident > size // 2, resident
