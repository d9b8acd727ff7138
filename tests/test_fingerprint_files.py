"""Fingerprint version 2 in files and digests: storage.dat version 3 (golden
bytes), version 2 files (blake2b fingerprints, written by older nodes) still
loading and rewritten at the next checkpoint, the mapped snapshot's damage
check over both, and a digest of version 1 equal to what older nodes report."""

from __future__ import annotations

import hashlib
import io
import json
import struct
from pathlib import Path
from typing import Any

import crc32c
import grpc
import numpy as np
import pytest

from sutra_cluster import backup
from sutra_cluster.config import Config
from sutra_cluster.errors import StorageFailure
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc as pbg
from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage import checkpoint as ckpt
from sutra_cluster.storage.columns import ColumnChunk
from sutra_cluster.storage.engine import Engine
from sutra_cluster.storage.flatstore import CHUNK_ROWS
from sutra_cluster.storage.state import ApplyResult, GraphState, iter_vectors
from sutra_cluster.storage.vecform import fingerprints, fingerprints_v1
from sutra_cluster.storage.vectors import VectorIndex
from tests.helpers import NodeProcess
from tests.test_fingerprint_v2 import PINNED_SMALL
from tests.test_review_s20_mapped import _first_vector_byte, _flip_in_place
from tests.test_snapshot_columns import CONCEPTS, EDGES, GOLDEN, HEADER

DIM = 16


def test_version_3_golden_is_version_2_with_the_new_fingerprint() -> None:
    """The same frames as storage.dat version 2 (tests/test_snapshot_columns.py's
    golden bytes), but for the version word, the fingerprint and its frame's CRC."""
    want = bytearray(bytes.fromhex(GOLDEN))
    want[8] = 3
    frame, fp_at = 46, 46 + 16 + 16 + 8 + 8  # first columns frame; its head, the vector, the norm
    assert want[fp_at : fp_at + 8].hex() == "0bd0b33d78ef3e3e"  # version 1 (blake2b) of [0.6, 0.8], norm 5
    want[fp_at : fp_at + 8] = struct.pack("<Q", PINNED_SMALL)
    length = struct.unpack_from("<I", want, frame)[0]
    struct.pack_into("<I", want, frame + 4, crc32c.crc32c(bytes(want[frame + 16 : frame + 16 + length])))
    assert b"".join(ckpt.encode_snapshot(HEADER, CONCEPTS, EDGES)) == bytes(want)
    assert ckpt.VERSION == 3 and ckpt.FILE_FINGERPRINTS == {2: 1, 3: 2}


def test_decoder_gives_the_asked_fingerprint_version_of_either_file() -> None:
    for version in (2, 3):
        data = b"".join(ckpt.encode_snapshot(HEADER, CONCEPTS, EDGES, version=version))
        for asked, fn in ((1, fingerprints_v1), (2, fingerprints)):
            dec = ckpt.SnapshotDecoder(io.BytesIO(data), "mem", fingerprint_version=asked)
            block = next(iter(dec))
            assert block.vectors is not None and block.norms is not None  # type: ignore[union-attr]
            assert block.fingerprints == fn(block.vectors, block.norms).tolist(), (version, asked)  # type: ignore


def _cfg(path: Path, storage: str = "memory") -> Config:
    return Config(storage_path=str(path), vector_dimension=DIM, reconcile_interval_ms=1, node_id="fp",
                  memory_threshold=1 << 30, vector_storage=storage, quantization="sq8", ann_threshold=1 << 20)


def _old_data_dir(path: Path, n: int) -> str:
    """A data directory whose storage.dat is version 2 (blake2b fingerprints), as an
    older node leaves it, and nothing in the WAL after it; returns the state digest."""
    engine = Engine(_cfg(path))
    engine.lead("single-node")
    try:
        rng = np.random.default_rng(4)
        for lo in range(0, n, 1000):
            batch = wal_pb2.WalBatch()
            for i in range(lo, min(n, lo + 1000)):
                batch.concepts.append(pb.LearnConceptRequest(
                    concept_id=f"c{i}", content=f"t{i}", attributes={"a": "1"} if i % 9 == 0 else {},
                    embedding_f32=rng.standard_normal(DIM).astype("<f4").tobytes()))
            engine.wait_visible(engine.submit(batch))
        with engine._lock:
            concepts, edges = engine.state.capture()
            header = wal_pb2.SnapshotHeader(lsn=engine.applied_lsn, term=1, concepts=len(concepts),
                                            vector_dimension=DIM)
            blocks = ckpt.encode_snapshot(header, concepts, edges, engine.vectors.stored_batches(), version=2)
            ckpt.write_checkpoint(path, blocks)
        return engine.digest()[1]
    finally:
        engine.close()


def _file_fingerprints(path: Path) -> tuple[int, list[int], list[int], list[int]]:
    """(file version, fingerprints as stored, version 1 and version 2 of its rows)."""
    stored: list[int] = []
    v1: list[int] = []
    v2: list[int] = []
    with open(path, "rb") as f:
        dec = ckpt.SnapshotDecoder(f, str(path), fingerprint_version=ckpt.FILE_FINGERPRINTS.get(
            struct.unpack_from("<I", path.read_bytes(), 8)[0], 2))
        for block in dec:
            if isinstance(block, ColumnChunk) and block.vectors is not None and block.norms is not None:
                stored += block.fingerprints or []
                v1 += fingerprints_v1(block.vectors, block.norms).tolist()
                v2 += fingerprints(block.vectors, block.norms).tolist()
        return dec.version, stored, v1, v2


def test_version_2_storage_dat_loads_and_its_next_checkpoint_is_version_3(tmp_path: Path) -> None:
    digest = _old_data_dir(tmp_path, 1500)
    path = tmp_path / ckpt.STORAGE_FILE
    version, stored, v1, _ = _file_fingerprints(path)
    assert version == 2 and stored == v1 and len(stored) == 1500  # blake2b's, as older nodes write them
    engine = Engine(_cfg(tmp_path))
    try:
        assert engine.digest()[1] == digest and len(engine.vectors) == 1500
        refs = [engine.state.concepts[f"c{i}"].vector for i in range(1500)]
        _, _, _, v2 = _file_fingerprints(path)
        assert [r.fingerprint for r in refs] == v2  # type: ignore[union-attr]
        engine.checkpoint(drain=True)
    finally:
        engine.close()
    version, stored, _, v2 = _file_fingerprints(path)
    assert version == 3 and stored == v2
    again = Engine(_cfg(tmp_path))
    try:
        assert again.digest()[1] == digest
    finally:
        again.close()


@pytest.mark.parametrize("old", [True, False], ids=["version-2-file", "version-3-file"])
def test_mapped_snapshot_still_finds_one_flipped_bit(tmp_path: Path, old: bool) -> None:
    """Under SUTRA_VECTOR_STORAGE=mmap storage.dat's rows are the node's vectors: a
    snapshot hashes them again (version 2, one pass per block) and refuses one
    flipped bit, whether the file was written by an older node or by this one."""
    _old_data_dir(tmp_path, CHUNK_ROWS + 100)  # one whole block: mapped, not copied
    if not old:
        engine = Engine(_cfg(tmp_path))
        try:
            engine.checkpoint(drain=True)
        finally:
            engine.close()
    path = tmp_path / ckpt.STORAGE_FILE
    assert _file_fingerprints(path)[0] == (2 if old else 3)
    engine = Engine(_cfg(tmp_path, "mmap"))
    engine.lead("single-node")
    try:
        b"".join(engine.snapshot_blocks()[1])  # whole: the check passes on undamaged rows
        _flip_in_place(path, _first_vector_byte(path))
        with pytest.raises(StorageFailure, match=r"concept 'c0' no longer matches"):
            b"".join(engine.snapshot_blocks()[1])
        assert engine.write_failure and "no longer matches" in engine.write_failure
    finally:
        engine.close()


# What an older node (fingerprint version 1) reports for _digest_state(), computed
# by that code (commit 8547675): a node of this build gives it with digest(version=1).
OLD_DIGEST = "9b10852df6fd8f681e4d7e90f14ec4ada5caeec5a81aed3876d29c9fb3cbfb89"
NEW_DIGEST = "82c3cf4f7fe770ebbe5a02613a8a19b58ef7eebe78b5177490878850f60b438d"


def _digest_state() -> GraphState:
    store = VectorIndex(8, background=False)
    state = GraphState(store)
    x = np.random.default_rng(13).standard_normal((50, 8)).astype("<f4")
    batch = wal_pb2.WalBatch(timestamp_us=1000)
    for i, v in enumerate(x):
        batch.concepts.append(pb.LearnConceptRequest(concept_id=f"c{i}", content=f"t{i}", embedding_f32=v.tobytes(),
                                                     attributes={"k": "v"} if i % 7 == 0 else {}))
    batch.concepts.append(pb.LearnConceptRequest(concept_id="plain", content="no vector"))
    batch.associations.append(pb.LearnAssociationRequest(source_id="c1", target_id="c2", assoc_type=1,
                                                         confidence=0.5))
    vec = ApplyResult({}, set())
    state.apply_batch(batch, vec)
    for keys, mat, norms in iter_vectors(vec.upserts, 8):
        store.upsert(keys, mat, norms)
    return state


def test_digest_of_version_1_is_what_older_nodes_report() -> None:
    state = _digest_state()
    assert state.digest() == state.digest(version=2) == NEW_DIGEST
    assert state.digest(version=1) == OLD_DIGEST
    with pytest.raises(ValueError, match="digest version 3 is not one of"):
        state.digest(version=3)
    unbacked = GraphState()
    unbacked.concepts = dict(state.concepts)
    with pytest.raises(ValueError, match="needs the vector index"):
        unbacked.digest(version=1)


def test_state_loaded_at_version_1_digests_as_older_nodes() -> None:
    """What a restore does to check an older backup's manifest: load its frames keeping
    version 1 fingerprints, and digest them as the node that wrote them did."""
    state = _digest_state()
    concepts, edges = state.capture()
    assert state.store is not None
    header = wal_pb2.SnapshotHeader(lsn=1, term=1, concepts=len(concepts), edges=len(edges), vector_dimension=8)
    for version in (1, 2, 3):  # 1: a message per concept, each vector's fingerprint computed at load
        data = b"".join(ckpt.encode_snapshot(header, concepts, edges, state.store.stored_batches(), version=version))
        for asked, want in ((1, OLD_DIGEST), (2, NEW_DIGEST)):
            loaded = GraphState(fingerprint_version=asked)
            for chunk in ckpt.SnapshotDecoder(io.BytesIO(data), "mem", fingerprint_version=asked):
                loaded.load_chunk(chunk, ApplyResult({}, set()))
            assert loaded.digest() == want, (version, asked)


def test_restore_checks_an_older_backups_manifest_with_its_digest_version(tmp_path: Path) -> None:
    """A backup folder an older build made: storage.dat version 2 and a manifest whose
    digest (version 1) has no digest_version. Restore checks it against that version,
    and still refuses a manifest whose digest does not match."""
    _old_data_dir(tmp_path / "node", 1200)
    engine = Engine(_cfg(tmp_path / "node"))
    try:
        old_digest = engine.digest(version=1)[1]
        lsn = engine.applied_lsn
        assert old_digest != engine.digest()[1]
    finally:
        engine.close()
    folder = tmp_path / "old-backup"
    folder.mkdir()
    data = (tmp_path / "node" / ckpt.STORAGE_FILE).read_bytes()
    assert data[8] == 2
    (folder / backup.SNAPSHOT_FILE).write_bytes(data)
    manifest = {"file": backup.SNAPSHOT_FILE, "lsn": lsn, "sha256": hashlib.sha256(data).hexdigest(),
                "digest": old_digest}
    (folder / backup.MANIFEST).write_text(json.dumps(manifest))
    info = backup.restore(folder, tmp_path / "restored", progress=False)
    assert info.digest == old_digest
    again = Engine(_cfg(tmp_path / "restored"))
    try:
        assert again.digest(version=1)[1] == old_digest and again.digest()[1] != old_digest
    finally:
        again.close()
    (folder / backup.MANIFEST).write_text(json.dumps({**manifest, "digest": "0" * 64}))
    with pytest.raises(backup.BackupError, match="differs from the manifest's"):
        backup.restore(folder, tmp_path / "refused", progress=False)
    (folder / backup.MANIFEST).write_text(json.dumps({**manifest, "digest_version": 9}))
    with pytest.raises(backup.BackupError, match="digest_version 9 is not one this build computes"):
        backup.restore(folder, tmp_path / "refused-2", progress=False)


def test_get_digest_answers_either_version_and_says_which(tmp_path: Path) -> None:
    """GetDigest on a node: its own version (2) by default, version 1 (what older
    builds report) when asked, an unknown version refused with INVALID_ARGUMENT."""
    node = NodeProcess(tmp_path / "data", env={"VECTOR_DIMENSION": str(DIM)})
    try:
        node.start()
        with grpc.insecure_channel(node.address) as ch:
            stub = pbg.StorageServiceStub(ch)
            rng = np.random.default_rng(3)
            lsn = stub.LearnBatch(pb.LearnBatchRequest(concepts=[
                pb.LearnConceptRequest(concept_id=f"c{i}", content="x",
                                       embedding_f32=rng.standard_normal(DIM).astype("<f4").tobytes())
                for i in range(50)]), timeout=30).sequence
            own = stub.GetDigest(pb.GetDigestRequest(sequence=lsn), timeout=30)  # once the batch is visible
            v2 = stub.GetDigest(pb.GetDigestRequest(sequence=lsn, digest_version=2), timeout=30)
            v1 = stub.GetDigest(pb.GetDigestRequest(sequence=lsn, digest_version=1), timeout=30)
            assert (own.digest_version, v2.digest_version, v1.digest_version) == (2, 2, 1)
            assert own.digest == v2.digest != v1.digest and own.concepts == v1.concepts == 50
            with pytest.raises(grpc.RpcError) as ei:
                stub.GetDigest(pb.GetDigestRequest(digest_version=7), timeout=30)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "digest_version 7 is not one of 1, 2" in (ei.value.details() or "")
    finally:
        node.stop()


class _TwoBuilds:
    """Two shard leaders for ShardSet.digest: shard 0 of this build, shard 1 of an
    older one (it ignores digest_version and answers 0, meaning version 1)."""

    shards = 2

    def __init__(self) -> None:
        self.asked: list[tuple[int, int]] = []

    def _parallel(self, shards: range, fn: Any) -> tuple[dict[int, pb.GetDigestResponse], list[int]]:
        return {s: fn(s) for s in shards}, []

    def _read(self, shard: int, method: str, request: pb.GetDigestRequest, pref: int) -> pb.GetDigestResponse:
        assert method == "GetDigest"
        self.asked.append((shard, request.digest_version))
        if shard == 1:
            return pb.GetDigestResponse(digest="old-1", concepts=1)
        version = request.digest_version or 2
        return pb.GetDigestResponse(digest=f"new-{version}", concepts=2, digest_version=version)


def test_router_digest_over_two_builds_asks_every_shard_for_the_older_version() -> None:
    from sutra_cluster.sharding.core import ShardSet

    two = _TwoBuilds()
    got = ShardSet.digest(two, {})  # type: ignore[arg-type]
    assert two.asked == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert got.digest_version == 1 and got.concepts == 3
    want = hashlib.sha256(b"0:new-1\n1:old-1\n").hexdigest()
    assert got.digest == want
    one = _TwoBuilds()
    one._read = lambda s, m, r, p: pb.GetDigestResponse(digest=f"d{s}", digest_version=2)  # type: ignore[method-assign,assignment]
    assert ShardSet.digest(one, {}).digest_version == 2  # type: ignore[arg-type]
