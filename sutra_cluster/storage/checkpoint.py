"""storage.dat: the checkpoint file (format in docs/wal_format.md, "Snapshot file").

The same framed stream is what a leader sends a new replica and what a backup
holds, so one encoder and one decoder serve all three.

Writing follows the classic recipe: write ``storage.dat.tmp``, fsync it, keep the
current file as ``storage.dat.backup`` (a hard link, replaced atomically), rename
the new file over ``storage.dat``, fsync the directory. A crash at any point
leaves either the old or the new checkpoint complete, never half of one.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import crc32c
import numpy as np

from sutra_cluster.errors import StorageFailure, Unavailable
from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage import columns
from sutra_cluster.storage.fsio import fsync_dir as fsync_dir  # kept importable from here
from sutra_cluster.storage.fsio import map_readonly, populate, replace_durably, write_file_synced
from sutra_cluster.storage.state import Concept, VectorRef, stored_forms
from sutra_cluster.storage.vecform import FINGERPRINT_VERSION, fingerprints, fingerprints_v1

log = logging.getLogger(__name__)

MAGIC = b"SUTRADAT"
VERSION = 3  # what is written; 1 (a protobuf message per concept) and 2 are still read
READABLE_VERSIONS = (1, 2, 3)
# The fingerprint version (vecform.py) a file version's columns frames hold: 2 holds
# blake2b's, 3 the vectorised hash's; otherwise the two are the same format.
FILE_FINGERPRINTS = {2: 1, 3: 2}
FILE_HEADER = struct.Struct("<8sII")  # magic, version, reserved
FRAME = struct.Struct("<IIB7x")  # payload length, crc32c(payload), kind
KIND_HEADER, KIND_CHUNK, KIND_END, KIND_COLUMNS = 1, 2, 3, 4
KINDS = {1: (KIND_HEADER, KIND_CHUNK, KIND_END), 2: (KIND_HEADER, KIND_CHUNK, KIND_END, KIND_COLUMNS)}
KINDS[3] = KINDS[2]
# Concepts per frame. Version 2: 4,096 x 768-d is a 12.6 MB vector block, large
# enough that per-frame costs vanish, small enough to stream to a replica.
CHUNK_CONCEPTS = 4096
CHUNK_CONCEPTS_V1 = 512
CHUNK_EDGES = 8192
MAX_FRAME = 1 << 30

STORAGE_FILE = "storage.dat"
BACKUP_FILE = "storage.dat.backup"


class SnapshotError(Exception):
    """A snapshot file or stream is damaged or incomplete; names where."""

    def __init__(self, where: str, offset: int, reason: str) -> None:
        super().__init__(f"{where}: damaged snapshot at offset {offset}: {reason}")
        self.where, self.offset, self.reason = where, offset, reason


class DamagedVector(StorageFailure):
    """A stored vector no longer hashes to the fingerprint it was loaded or
    written with: a data file changed under the running node (``verify``)."""


def _frame(kind: int, payload: bytes) -> bytes:
    return FRAME.pack(len(payload), crc32c.crc32c(payload), kind) + payload


VectorBatches = Iterable[tuple[list[str], np.ndarray, np.ndarray]]
Chunk = wal_pb2.SnapshotChunk | columns.ColumnChunk


def encode_snapshot(
    header: wal_pb2.SnapshotHeader,
    concepts: dict[str, Concept],
    edges: list[tuple[str, str, int, float]],
    vectors: VectorBatches | None = None,
    version: int = VERSION,
    verify: bool = False,
) -> Iterator[bytes]:
    """Yield the snapshot as byte blocks: file header, header frame, chunks, end frame.

    ``vectors``: the concepts' vectors in stored form, ``(keys, normalised rows,
    norms)`` batches captured with ``concepts`` (VectorIndex.stored_batches);
    those concepts are written first, in that order (a stored graph's labels
    follow it). Without it, each concept's own vector is used (its VectorRef's
    stored form, or raw original bytes normalised here). Version 3 (the
    default) writes concepts as columns frames with version 2 fingerprints
    (vecform.py); ``version=2`` writes the same frames with the blake2b
    fingerprints older nodes read, ``version=1`` the old one-message-per-concept
    chunks (kept to test that old files still load).
    Raises StorageFailure when the batches and the concepts disagree (a
    checkpoint must never drop a vector silently). ``verify``: hash every
    stored row again and refuse (StorageFailure) when one no longer matches the
    fingerprint it was loaded or written with: under ``mmap`` storage the rows
    are file pages (storage.dat itself, mapped at the start, and vectors.map/),
    read back from disk whenever the kernel dropped them, so damage done to a
    file after it was checked would otherwise be written into the next
    checkpoint with a fresh, valid CRC, and sent to replicas.
    """
    if version not in READABLE_VERSIONS:
        raise ValueError(f"snapshot version {version} is not one of {READABLE_VERSIONS}")
    yield FILE_HEADER.pack(MAGIC, version, 0)
    yield _frame(KIND_HEADER, header.SerializeToString())
    if version == 1:
        yield from _encode_v1(concepts, edges, vectors)
    else:
        yield from _column_frames(concepts, _own_vectors(concepts) if vectors is None else vectors, verify, version)
        for i in range(0, len(edges), CHUNK_EDGES):
            chunk = wal_pb2.SnapshotChunk()
            for s, d, t, conf in edges[i : i + CHUNK_EDGES]:
                chunk.edges.add(source_id=s, target_id=d, assoc_type=t, confidence=conf)
            yield _frame(KIND_CHUNK, chunk.SerializeToString())
    yield _frame(KIND_END, header.SerializeToString())


def _own_vectors(concepts: dict[str, Concept], batch: int = CHUNK_CONCEPTS) -> VectorBatches:
    """Stored-form batches from the concepts themselves (no vector index given)."""
    keys, rows, norms = [], [], []
    for cid, c in concepts.items():
        v = c.vector
        if isinstance(v, VectorRef):
            got = v.store.stored(cid) if v.store is not None else None
            if got is None:
                raise StorageFailure(f"snapshot: concept {cid!r} has a vector its index no longer holds")
            row, norm = got
        elif v:
            (row, norm, _), = stored_forms([v])
        else:
            continue
        keys.append(cid)
        rows.append(row)
        norms.append(norm)
    for lo in range(0, len(keys), batch):
        yield keys[lo : lo + batch], np.stack(rows[lo : lo + batch]), np.asarray(norms[lo : lo + batch])


def _fingerprints(picked: list[Concept], rows: np.ndarray, norms: np.ndarray, verify: bool = False,
                  version: int = FINGERPRINT_VERSION) -> np.ndarray:
    """Each vector's fingerprint of ``version`` (vecform.py): its VectorRef's
    (the state captured with the rows), or computed from the stored rows (a
    hand-made concept, or version 1 for a version 2 file). ``verify``: a
    VectorRef's must also be the fingerprint of the row about to be written
    (one vectorised pass over the block; raises DamagedVector)."""
    refs = [c.vector.fingerprint if isinstance(c.vector, VectorRef) else 0 for c in picked]
    held = np.array(refs, dtype=np.uint64)
    computed = fingerprints(rows, norms) if verify or not all(refs) else held
    if verify:
        bad = np.flatnonzero((held != computed) & (held != 0))
        if len(bad):
            v = picked[int(bad[0])].vector
            assert isinstance(v, VectorRef)
            raise DamagedVector(
                f"snapshot not written: the stored vector of concept {v.key!r} no longer matches the "
                "fingerprint it was loaded or written with: its bytes changed in a data file after they were "
                "checked (storage.dat or vectors.map/ edited or damaged on disk while the node ran). The previous "
                "checkpoint and the WAL are kept; this node takes no more writes (its replicas hold good copies): "
                "restart it to load its files again")
    if version != FINGERPRINT_VERSION:
        return fingerprints_v1(rows, norms)
    return np.where(held != 0, held, computed)


def _column_frames(concepts: dict[str, Concept], vectors: VectorBatches, verify: bool = False,
                   version: int = VERSION) -> Iterator[bytes]:
    """Versions 2 and 3: concepts with a vector in the batches' order, then the rest."""
    def block(keys: list[str], picked: list[Concept], **vec: object) -> bytes:
        return _frame(KIND_COLUMNS, columns.pack(
            keys, [c.content for c in picked], [c.strength for c in picked], [c.confidence for c in picked],
            [c.created_us for c in picked], [c.updated_us for c in picked], [c.attributes for c in picked],
            **vec))  # type: ignore[arg-type]

    with_vector = 0
    for keys, rows, norms in vectors:
        picked = [_with_vector(concepts, key) for key in keys]
        with_vector += len(keys)
        rows32 = np.asarray(rows, dtype=np.float32)
        yield block(list(keys), picked, vectors=rows32, norms=norms,
                    fingerprints=_fingerprints(picked, rows32, np.asarray(norms), verify, FILE_FINGERPRINTS[version]))
    _check_count(concepts, with_vector)
    rest = [cid for cid, c in concepts.items() if not c.vector]
    for lo in range(0, len(rest), CHUNK_CONCEPTS):
        keys = rest[lo : lo + CHUNK_CONCEPTS]
        yield block(keys, [concepts[k] for k in keys])


def _with_vector(concepts: dict[str, Concept], key: str) -> Concept:
    c = concepts.get(key)
    if c is None or not c.vector:
        raise StorageFailure(f"snapshot: the vector index holds {key!r}, the captured state has no vector "
                             "for it; checkpoint not written")
    return c


def _check_count(concepts: dict[str, Concept], with_vector: int) -> None:
    expected = sum(1 for c in concepts.values() if c.vector)
    if with_vector != expected:
        raise StorageFailure(f"snapshot: {expected} captured concepts have a vector, the vector index gave "
                             f"{with_vector}; checkpoint not written")


def _encode_v1(
    concepts: dict[str, Concept], edges: list[tuple[str, str, int, float]], vectors: VectorBatches | None,
) -> Iterator[bytes]:
    """Version 1's chunk frames, as version 1 wrote them: one ConceptState per
    concept (stored form with ``embedding_norm`` from ``vectors``, else each
    concept's original), 512 per frame, the last concepts sharing the first
    edge frame."""
    chunk = wal_pb2.SnapshotChunk()
    with_vector = 0
    for keys, rows, norms in vectors or ():
        for key, row, norm in zip(keys, rows, norms):
            c = _with_vector(concepts, key)
            with_vector += 1
            chunk.concepts.add(
                concept_id=key, content=c.content, strength=c.strength, confidence=c.confidence,
                attributes=c.attributes, embedding_f32=row.astype("<f4").tobytes(), embedding_norm=float(norm),
                created_at_us=c.created_us, updated_at_us=c.updated_us,
            )
            if len(chunk.concepts) >= CHUNK_CONCEPTS_V1:
                yield _frame(KIND_CHUNK, chunk.SerializeToString())
                chunk = wal_pb2.SnapshotChunk()
    for cid, c in concepts.items():
        if vectors is not None and c.vector:
            continue
        chunk.concepts.add(
            concept_id=cid, content=c.content, strength=c.strength, confidence=c.confidence,
            attributes=c.attributes, embedding_f32=b"" if vectors is not None else c.embedding,
            created_at_us=c.created_us, updated_at_us=c.updated_us,
        )
        if len(chunk.concepts) >= CHUNK_CONCEPTS_V1:
            yield _frame(KIND_CHUNK, chunk.SerializeToString())
            chunk = wal_pb2.SnapshotChunk()
    if vectors is not None:
        _check_count(concepts, with_vector)
    for i in range(0, len(edges), CHUNK_EDGES):
        for s, d, t, conf in edges[i : i + CHUNK_EDGES]:
            chunk.edges.add(source_id=s, target_id=d, assoc_type=t, confidence=conf)
        yield _frame(KIND_CHUNK, chunk.SerializeToString())
        chunk = wal_pb2.SnapshotChunk()
    if len(chunk.concepts):
        yield _frame(KIND_CHUNK, chunk.SerializeToString())


class SnapshotDecoder:
    """Decode a snapshot (version 1, 2 or 3) from a file-like object, validating every frame.

    Iterating yields chunks in file order: SnapshotChunk messages (version 1
    concepts, and edges in every version) and ColumnChunk blocks (versions 2
    and 3 concepts); ``header`` is set once the first frame is read. Raises
    SnapshotError on any damage, a malformed columns block or a missing end frame.
    A ColumnChunk's fingerprints are of ``fingerprint_version`` (vecform.py):
    those of a file holding another version are computed again from its rows
    (the frame's CRC has covered those rows), so a version 2 file, whose
    fingerprints are blake2b's, loads with this build's and its next
    checkpoint rewrites them.
    """

    def __init__(self, stream: BinaryIO, where: str, reuse_buffer: bool = False, mapped: bool = False,
                 fingerprint_version: int = FINGERPRINT_VERSION, transient: bool = False) -> None:
        """``reuse_buffer``: read columns frames into one buffer reused frame after
        frame (a start then touches no fresh memory per frame: 3 GB less at 1M
        concepts); a yielded ColumnChunk's arrays are then valid only until the
        next iteration, so the caller must copy what it keeps (the engine does).
        ``mapped`` (a file stream): map the file read-only instead and yield
        columns frames as views of the mapping, CRC-checked in place, so their
        vectors are read-only arrays over the page cache that stay valid as long
        as they are referenced (the mapping outlives the decoder; the file is
        never rewritten in place, only replaced by rename).  ``self.mapped``
        says whether it was (a stream without a file descriptor, or an empty
        file, is read as with ``reuse_buffer``).  ``transient`` (with ``mapped``):
        the caller copies what it keeps, as with ``reuse_buffer``, so each
        frame's pages leave this process's page tables once the next frame is
        read (the page cache keeps them, and a view read again maps them again):
        a start under ``memory`` storage then does not carry the whole file in
        its resident memory while it loads (3 GB at 1M concepts)."""
        self.stream, self.where, self.offset = stream, where, 0
        self._buf: bytearray | None = bytearray() if reuse_buffer or mapped else None
        self._map: mmap.mmap | None = map_readonly(stream) if mapped else None
        self.mapped = self._map is not None
        self._transient = transient and self.mapped
        self._held = 0  # transient: where the pages not yet dropped begin
        head = self._read(FILE_HEADER.size, "file header")
        magic, version, _ = FILE_HEADER.unpack(head)
        if magic != MAGIC:
            raise SnapshotError(where, 0, f"not a snapshot (magic {magic!r}, version {version})")
        if version not in READABLE_VERSIONS:
            raise SnapshotError(where, 0, f"snapshot version {version} is not readable by this build (it reads "
                                          f"versions {', '.join(map(str, READABLE_VERSIONS))})")
        self.version = version
        self.fingerprint_version = fingerprint_version
        kind, payload = self._next()
        if kind != KIND_HEADER:
            raise SnapshotError(where, self.offset, "first frame is not a header")
        self.header = wal_pb2.SnapshotHeader.FromString(payload)

    def _read(self, n: int, what: str) -> bytes:
        if self._map is not None:
            return bytes(self._mapped(n, what))
        data = self.stream.read(n)
        if len(data) != n:
            raise SnapshotError(self.where, self.offset, f"truncated {what}")
        self.offset += n
        return data

    def _mapped(self, n: int, what: str) -> memoryview:
        assert self._map is not None
        if self.offset + n > len(self._map):
            raise SnapshotError(self.where, self.offset, f"truncated {what}")
        view = memoryview(self._map)[self.offset : self.offset + n]
        populate(self._map, self.offset, n)
        self.offset += n
        return view

    def _read_reused(self, n: int) -> memoryview:
        if self._map is not None:
            return self._mapped(n, "frame")
        assert self._buf is not None
        if len(self._buf) < n:
            self._buf = bytearray(n)
        view = memoryview(self._buf)[:n]
        if self.stream.readinto(view) != n:  # type: ignore[attr-defined]
            raise SnapshotError(self.where, self.offset, "truncated frame")
        self.offset += n
        return view

    def _drop_read(self, last: bool = False) -> None:
        """``transient``: unmap the pages of the frames already read (not the page
        the next frame starts in; all of them after the last frame)."""
        assert self._map is not None
        end = len(self._map) if last else self.offset - self.offset % mmap.PAGESIZE
        if end - self._held >= (1 << 20) or (last and end > self._held):
            try:
                self._map.madvise(mmap.MADV_DONTNEED, self._held, end - self._held)
            except (OSError, ValueError):
                pass
            self._held = end

    def _next(self) -> tuple[int, bytes | memoryview]:
        if self._transient:
            self._drop_read()
        at = self.offset
        length, crc, kind = FRAME.unpack(self._read(FRAME.size, "frame header"))
        if length > MAX_FRAME or kind not in KINDS[self.version]:
            raise SnapshotError(self.where, at, f"bad frame header (length {length}, kind {kind})")
        reuse = self._buf is not None and kind == KIND_COLUMNS
        payload = self._read_reused(length) if reuse else self._read(length, "frame")
        if crc32c.crc32c(payload) != crc:
            raise SnapshotError(self.where, at, "checksum mismatch")
        return kind, payload

    def __iter__(self) -> Iterator[Chunk]:
        while True:
            at = self.offset
            kind, payload = self._next()
            if kind == KIND_END:
                if wal_pb2.SnapshotHeader.FromString(payload) != self.header:
                    raise SnapshotError(self.where, at, "end frame does not match the header")
                if self._transient:
                    self._drop_read(last=True)
                return
            if kind == KIND_COLUMNS:
                try:
                    block = columns.unpack(payload, self.header.vector_dimension)
                except columns.ColumnsError as exc:
                    raise SnapshotError(self.where, at, str(exc)) from exc
                yield self._with_fingerprints(block)
                continue
            if kind != KIND_CHUNK:
                raise SnapshotError(self.where, at, "unexpected header frame")
            yield wal_pb2.SnapshotChunk.FromString(payload)


    def _with_fingerprints(self, block: columns.ColumnChunk) -> columns.ColumnChunk:
        if block.vectors is None or block.norms is None or FILE_FINGERPRINTS[self.version] == self.fingerprint_version:
            return block
        again = fingerprints if self.fingerprint_version == FINGERPRINT_VERSION else fingerprints_v1
        block.fingerprints = again(block.vectors, block.norms).tolist()
        return block


def write_checkpoint(
    directory: Path, blocks: Iterable[bytes], fsync: bool = True, step: Callable[[str], None] = lambda s: None
) -> int:
    """Atomically install a new storage.dat from ``blocks``; returns its size.

    The previous storage.dat becomes storage.dat.backup. Raises Unavailable
    (disk full) or OSError with nothing replaced and no temporary file left if
    writing or syncing the new file fails. ``step`` is
    called between steps (crash tests pause there).
    """
    tmp = directory / (STORAGE_FILE + ".tmp")
    try:
        size = write_file_synced(tmp, blocks, fsync=fsync)
    except OSError as exc:
        # A half-written checkpoint on a full disk would keep it full until a
        # restart: remove it, and say which disk (review L5).
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise Unavailable(
                f"checkpoint not written: {tmp}: {os.strerror(exc.errno)} ({errno.errorcode[exc.errno]}); free space "
                f"on the disk holding {directory}: the previous checkpoint and the WAL still hold every write"
            ) from exc
        raise
    except BaseException:  # the encoder refused (StorageFailure) or the writer was stopped: no half file kept
        tmp.unlink(missing_ok=True)
        raise
    step("tmp-written")
    current = directory / STORAGE_FILE
    if current.exists():
        link_tmp = directory / (BACKUP_FILE + ".tmp")
        link_tmp.unlink(missing_ok=True)
        os.link(current, link_tmp)
        os.replace(link_tmp, directory / BACKUP_FILE)
        step("backup-linked")
    replace_durably(tmp, current, fsync=fsync)
    step("renamed")
    return size


def set_aside_damaged(directory: Path) -> Path | None:
    """Rename a damaged storage.dat to storage.dat.damaged (kept for the operator);
    returns the new path, or None when it could not be moved.

    Called after a start fell back to storage.dat.backup: the next checkpoint
    then finds no storage.dat and keeps the good backup, instead of turning the
    damaged file into the new backup (review M3)."""
    current, kept = directory / STORAGE_FILE, directory / (STORAGE_FILE + ".damaged")
    try:
        os.replace(current, kept)
        fsync_dir(directory)
    except OSError as exc:
        log.error("cannot move the damaged %s aside (%s); the next checkpoint will replace the backup with it",
                  current, exc)
        return None
    log.warning("moved the damaged %s to %s; %s stays the backup until a new checkpoint is written",
                current, kept, BACKUP_FILE)
    return kept


def clean_temporaries(directory: Path) -> None:
    """Remove files a crash in the middle of a checkpoint may leave behind."""
    for name in (STORAGE_FILE + ".tmp", BACKUP_FILE + ".tmp"):
        p = directory / name
        if p.exists():
            log.warning("removing %s left by an interrupted checkpoint", p)
            p.unlink()
