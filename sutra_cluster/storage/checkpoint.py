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
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import crc32c
import numpy as np

from sutra_cluster.errors import StorageFailure, Unavailable
from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage.fsio import fsync_dir as fsync_dir  # kept importable from here
from sutra_cluster.storage.fsio import replace_durably, write_file_synced
from sutra_cluster.storage.state import Concept

log = logging.getLogger(__name__)

MAGIC = b"SUTRADAT"
VERSION = 1
FILE_HEADER = struct.Struct("<8sII")  # magic, version, reserved
FRAME = struct.Struct("<IIB7x")  # payload length, crc32c(payload), kind
KIND_HEADER, KIND_CHUNK, KIND_END = 1, 2, 3
CHUNK_CONCEPTS = 512
CHUNK_EDGES = 8192
MAX_FRAME = 1 << 30

STORAGE_FILE = "storage.dat"
BACKUP_FILE = "storage.dat.backup"


class SnapshotError(Exception):
    """A snapshot file or stream is damaged or incomplete; names where."""

    def __init__(self, where: str, offset: int, reason: str) -> None:
        super().__init__(f"{where}: damaged snapshot at offset {offset}: {reason}")
        self.where, self.offset, self.reason = where, offset, reason


def _frame(kind: int, payload: bytes) -> bytes:
    return FRAME.pack(len(payload), crc32c.crc32c(payload), kind) + payload


VectorBatches = Iterable[tuple[list[str], np.ndarray, np.ndarray]]


def encode_snapshot(
    header: wal_pb2.SnapshotHeader,
    concepts: dict[str, Concept],
    edges: list[tuple[str, str, int, float]],
    vectors: VectorBatches | None = None,
) -> Iterator[bytes]:
    """Yield the snapshot as byte blocks: file header, header frame, chunks, end frame.

    ``vectors``: the concepts' vectors in stored form, ``(keys, normalised rows,
    norms)`` batches captured with ``concepts`` (VectorIndex.stored_batches);
    those concepts are written first, each with ``embedding_norm``. Without it,
    each concept's ``embedding`` (its original) is written. Raises
    StorageFailure when the batches and the concepts disagree (a checkpoint
    must never drop a vector silently).
    """
    yield FILE_HEADER.pack(MAGIC, VERSION, 0)
    yield _frame(KIND_HEADER, header.SerializeToString())
    chunk = wal_pb2.SnapshotChunk()
    with_vector = 0
    for keys, rows, norms in vectors or ():
        for key, row, norm in zip(keys, rows, norms):
            c = concepts.get(key)
            if c is None or not c.vector:
                raise StorageFailure(f"snapshot: the vector index holds {key!r}, the captured state has no vector "
                                     "for it; checkpoint not written")
            with_vector += 1
            chunk.concepts.add(
                concept_id=key, content=c.content, strength=c.strength, confidence=c.confidence,
                attributes=c.attributes, embedding_f32=row.astype("<f4").tobytes(), embedding_norm=float(norm),
                created_at_us=c.created_us, updated_at_us=c.updated_us,
            )
            if len(chunk.concepts) >= CHUNK_CONCEPTS:
                yield _frame(KIND_CHUNK, chunk.SerializeToString())
                chunk = wal_pb2.SnapshotChunk()
    for cid, c in concepts.items():
        if vectors is not None:
            if c.vector:
                continue
            emb = b""
        else:
            emb = c.embedding
        chunk.concepts.add(
            concept_id=cid, content=c.content, strength=c.strength, confidence=c.confidence,
            attributes=c.attributes, embedding_f32=emb,
            created_at_us=c.created_us, updated_at_us=c.updated_us,
        )
        if len(chunk.concepts) >= CHUNK_CONCEPTS:
            yield _frame(KIND_CHUNK, chunk.SerializeToString())
            chunk = wal_pb2.SnapshotChunk()
    if vectors is not None:
        expected = sum(1 for c in concepts.values() if c.vector)
        if with_vector != expected:
            raise StorageFailure(f"snapshot: {expected} captured concepts have a vector, the vector index gave "
                                 f"{with_vector}; checkpoint not written")
    for i in range(0, len(edges), CHUNK_EDGES):
        for s, d, t, conf in edges[i : i + CHUNK_EDGES]:
            chunk.edges.add(source_id=s, target_id=d, assoc_type=t, confidence=conf)
        yield _frame(KIND_CHUNK, chunk.SerializeToString())
        chunk = wal_pb2.SnapshotChunk()
    if len(chunk.concepts):
        yield _frame(KIND_CHUNK, chunk.SerializeToString())
    yield _frame(KIND_END, header.SerializeToString())


class SnapshotDecoder:
    """Decode a snapshot from a file-like object, validating every frame.

    Iterating yields SnapshotChunk messages; ``header`` is set once the first
    frame is read. Raises SnapshotError on any damage or a missing end frame.
    """

    def __init__(self, stream: BinaryIO, where: str) -> None:
        self.stream, self.where, self.offset = stream, where, 0
        head = self._read(FILE_HEADER.size, "file header")
        magic, version, _ = FILE_HEADER.unpack(head)
        if magic != MAGIC or version != VERSION:
            raise SnapshotError(where, 0, f"not a snapshot (magic {magic!r}, version {version})")
        kind, payload = self._next()
        if kind != KIND_HEADER:
            raise SnapshotError(where, self.offset, "first frame is not a header")
        self.header = wal_pb2.SnapshotHeader.FromString(payload)

    def _read(self, n: int, what: str) -> bytes:
        data = self.stream.read(n)
        if len(data) != n:
            raise SnapshotError(self.where, self.offset, f"truncated {what}")
        self.offset += n
        return data

    def _next(self) -> tuple[int, bytes]:
        at = self.offset
        length, crc, kind = FRAME.unpack(self._read(FRAME.size, "frame header"))
        if length > MAX_FRAME or kind not in (KIND_HEADER, KIND_CHUNK, KIND_END):
            raise SnapshotError(self.where, at, f"bad frame header (length {length}, kind {kind})")
        payload = self._read(length, "frame")
        if crc32c.crc32c(payload) != crc:
            raise SnapshotError(self.where, at, "checksum mismatch")
        return kind, payload

    def __iter__(self) -> Iterator[wal_pb2.SnapshotChunk]:
        while True:
            at = self.offset
            kind, payload = self._next()
            if kind == KIND_END:
                if wal_pb2.SnapshotHeader.FromString(payload) != self.header:
                    raise SnapshotError(self.where, at, "end frame does not match the header")
                return
            if kind != KIND_CHUNK:
                raise SnapshotError(self.where, at, "unexpected header frame")
            yield wal_pb2.SnapshotChunk.FromString(payload)


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
