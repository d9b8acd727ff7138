"""storage.hnsw: the HNSW graph of a checkpoint, so a restart starts with a
ready graph instead of rebuilding it (docs/wal_format.md, "Graph file").

Layout: the snapshot file header with magic ``SUTRAHNS``, then frames in
storage.dat's framing (length, CRC32C, kind): a header frame (JSON: the
checkpoint LSN it belongs to, dimension, label count, live labels, a hash of
their keys in label order), one frame of the live-label bitmap, the faiss
index in chunk frames, and an end frame repeating the header.  Version 1
(SUTRA_QUANTIZATION=none) stores links only (``IO_FLAG_SKIP_STORAGE``: the
vectors are storage.dat's); version 2 (sq8, pq) names its quantization in the
header and stores the whole faiss index: codes, trained ranges or codebooks
and links (IVF lists for pq), which cannot be derived without retraining.

The graph is an optimisation, never a source of truth: a file that is torn,
damaged, from another checkpoint or for other keys is refused with a reason,
and the caller rebuilds the graph from storage.dat's vectors instead.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import crc32c
import faiss
import numpy as np

from sutra_cluster.storage import checkpoint as ckpt
from sutra_cluster.storage.flatstore import CHUNK_ROWS
from sutra_cluster.storage.fsio import replace_durably, write_file_synced
from sutra_cluster.storage.quant import quantization_of

log = logging.getLogger(__name__)

GRAPH_FILE = "storage.hnsw"
MAGIC = b"SUTRAHNS"
VERSION = 1  # links only (SUTRA_QUANTIZATION=none)
VERSION_QUANTIZED = 2  # the whole index (sq8, pq); older nodes refuse it by its version
_PART = 64 << 20  # faiss bytes per frame


class GraphFileError(Exception):
    """storage.hnsw cannot be used; ``str()`` says why."""


@dataclass
class GraphCapture:
    """A graph as of a checkpoint's capture: labels below ``count`` whose row
    was live then are ``alive`` (their keys, in label order, hash to ``keys_hash``)."""

    index: Any  # faiss.IndexHNSWFlat; may hold labels >= count added since the capture
    rw: Any  # its RWLock: faiss must not add while we serialise
    count: int
    alive: np.ndarray  # bool, one per label below count
    keys_hash: str
    quantization: str = "none"


@dataclass
class LoadedGraph:
    index: Any  # faiss.IndexHNSWFlat without storage; IndexHNSWSQ or IndexIVFPQ whole
    total: int  # labels in the graph
    alive: np.ndarray  # bool, one per label (False past the captured count)
    keys_hash: str
    quantization: str = "none"


class _Owner:
    """Exposes faiss' code buffer to numpy while holding the faiss index that
    owns it: every view of the array keeps the buffer alive."""

    def __init__(self, owner: Any, address: int, shape: tuple[int, int]) -> None:
        self.owner = owner
        self.__array_interface__ = {"shape": shape, "typestr": "<f4", "data": (address, False), "version": 3}


def _sized_flat(total: int, dim: int) -> tuple[Any, np.ndarray]:
    """A faiss IndexFlatIP with room for ``total`` vectors (zeros), and its
    buffer as a (total, dim) float32 array that keeps the index alive."""
    storage = faiss.IndexFlatIP(dim)
    size = total * dim * 4
    storage.codes.resize(size)  # zero-filled: dead labels stay zeros
    storage.ntotal = total
    if total == 0:
        return storage, np.zeros((0, dim), dtype=np.float32)
    address = faiss.rev_swig_ptr(storage.codes.data(), size).ctypes.data
    return storage, np.asarray(_Owner(storage, address, (total, dim)))


@dataclass
class GraphStorage:
    """The float storage a stored graph (SUTRA_QUANTIZATION=none) will use,
    sized before storage.dat is read, so that a load writes each vector once,
    straight into it: rows ``[c * CHUNK_ROWS, (c + 1) * CHUNK_ROWS)`` whose
    labels are consecutive get ``chunk(c)``, a view of the labels' slots, as
    their flat-store chunk.  At 1M x 768-d this saves a second 3 GB of newly
    touched memory and its copy (most of a start's CPU on a VM).

    Safe only while nothing adds to ``storage`` (an add may move faiss'
    buffer under the views): the views are dropped from the flat store when
    the graph is adopted (its rows are then covered) and no other index adds
    to it when it is not."""

    total: int
    alive: np.ndarray  # bool, one per label, as the graph file says
    labels: np.ndarray  # the live labels, ascending: row i's vector goes to labels[i]
    storage: Any  # faiss.IndexFlatIP with ntotal == total
    flat: np.ndarray  # its buffer, (total, dim) float32

    def chunk(self, c: int) -> np.ndarray | None:
        """The slots of chunk ``c``'s rows, or None when they are not consecutive labels."""
        lo, hi = c * CHUNK_ROWS, (c + 1) * CHUNK_ROWS
        if hi > len(self.labels) or self.labels[hi - 1] - self.labels[lo] != CHUNK_ROWS - 1:
            return None
        first = int(self.labels[lo])
        return self.flat[first : first + CHUNK_ROWS]

    def fits(self, graph: LoadedGraph) -> bool:
        return graph.total == self.total and np.array_equal(graph.alive, self.alive)


def flat_storage(graph: LoadedGraph, labels: np.ndarray, chunks: list[np.ndarray | None], dim: int,
                 reserved: GraphStorage | None = None) -> Any:
    """A faiss IndexFlatIP of the adopted graph's labels (``labels``: its live
    ones, ascending, whose vectors are the first rows of ``chunks``; dead ones
    are zeros and never returned). Its code buffer is sized once and each
    chunk copied straight into it: batches through a zeroed block, a gather,
    a scatter and faiss' growing ``add`` cost 4x the CPU (1.3 vs 0.35 s at
    200K x 768-d), most of a restart's graph adoption.  With ``reserved``
    (sized before the load, ``GraphStorage``) the chunks that are already its
    views are not copied at all."""
    if reserved is not None and reserved.fits(graph):
        storage, flat = reserved.storage, reserved.flat
    else:
        storage, flat = _sized_flat(graph.total, dim)
    row = 0
    for chunk in chunks:
        take = min(len(labels) - row, CHUNK_ROWS)
        if take <= 0:
            break
        assert chunk is not None, f"row {row} is in a freed chunk"
        dst = labels[row : row + take]
        if dst[-1] - dst[0] == take - 1:  # no dead label among them: one block copy, if not in place already
            if chunk.ctypes.data != flat[dst[0]].ctypes.data:
                flat[dst[0] : dst[0] + take] = chunk[:take]
        else:
            flat[dst] = chunk[:take]
        row += take
    return storage


def keys_hash(keys: Iterator[str] | list[str]) -> str:
    """blake2b-128 of every key's UTF-8 followed by a NUL, in order.  Hashed
    64K keys per update (the same bytes as one key per update): a Python step
    per key was ~0.5 s of a 1M start's adoption."""
    h = hashlib.blake2b(digest_size=16)
    it = iter(keys)
    while part := list(itertools.islice(it, 1 << 16)):
        h.update("\0".join(part).encode() + b"\0")
    return h.hexdigest()


def _blocks(cap: GraphCapture, lsn: int, dim: int) -> Iterator[bytes]:
    parts: list[bytes] = []

    def sink(b: Any) -> int:
        parts.append(bytes(b))
        return len(b)

    quantized = cap.quantization != "none"
    with cap.rw.read():
        total = int(cap.index.ntotal)
        writer = faiss.PyCallbackIOWriter(sink)  # type: ignore[attr-defined]
        faiss.write_index(cap.index, writer, 0 if quantized else faiss.IO_FLAG_SKIP_STORAGE)
        del writer  # flushes its buffer into sink
    raw = b"".join(parts)
    fields = {"lsn": lsn, "dim": dim, "total": total, "count": cap.count, "live": int(cap.alive.sum()),
              "keys_hash": cap.keys_hash, "faiss_bytes": len(raw)}
    if quantized:
        fields["quantization"] = cap.quantization
    head = json.dumps(fields, sort_keys=True).encode()
    yield ckpt.FILE_HEADER.pack(MAGIC, VERSION_QUANTIZED if quantized else VERSION, 0)
    yield ckpt._frame(ckpt.KIND_HEADER, head)
    yield ckpt._frame(ckpt.KIND_CHUNK, np.packbits(cap.alive, bitorder="little").tobytes())
    for lo in range(0, len(raw), _PART):
        yield ckpt._frame(ckpt.KIND_CHUNK, raw[lo : lo + _PART])
    yield ckpt._frame(ckpt.KIND_END, head)


def write_graph(directory: Path, cap: GraphCapture, lsn: int, dim: int, fsync: bool = True) -> int:
    """Write storage.hnsw for the checkpoint at ``lsn`` (tmp, fsync, rename,
    fsync dir); returns its size. Raises OSError with no temporary left."""
    tmp = directory / (GRAPH_FILE + ".tmp")
    try:
        size = write_file_synced(tmp, _blocks(cap, lsn, dim), fsync=fsync)
        replace_durably(tmp, directory / GRAPH_FILE, fsync=fsync)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size


def _frames(f: BinaryIO, where: str) -> Iterator[tuple[int, memoryview]]:
    """Frames after the file header, CRC-checked (SnapshotError on damage).
    Each payload is read into one buffer reused frame after frame, so a
    payload is valid only until the next frame is asked for: callers copy
    what they keep.  (A fresh 64 MB bytes object per frame was a fresh
    mapping, page-faulted anew: 1 GB of newly touched memory at 1M under sq8.)"""
    offset = ckpt.FILE_HEADER.size
    buf = bytearray()
    while True:
        head = f.read(ckpt.FRAME.size)
        if len(head) != ckpt.FRAME.size:
            raise ckpt.SnapshotError(where, offset, "truncated frame header")
        length, crc, kind = ckpt.FRAME.unpack(head)
        if length > ckpt.MAX_FRAME:
            raise ckpt.SnapshotError(where, offset, f"bad frame length {length}")
        if len(buf) < length:
            buf = bytearray(length)
        payload = memoryview(buf)[:length]
        if f.readinto(payload) != length:  # type: ignore[attr-defined]
            raise ckpt.SnapshotError(where, offset, "truncated frame")
        if crc32c.crc32c(payload) != crc:
            raise ckpt.SnapshotError(where, offset, "checksum mismatch")
        yield kind, payload
        if kind == ckpt.KIND_END:
            return
        offset += ckpt.FRAME.size + length


def _open(f: BinaryIO, path: Path, lsn: int, dim: int,
          quantization: str) -> tuple[dict[str, Any], bytes, bytes, Iterator[tuple[int, memoryview]]]:
    """Check the file header and header frame against the checkpoint and
    mode; returns (header, its bytes, the live-label bitmap, later frames)."""
    magic, version, _ = ckpt.FILE_HEADER.unpack(f.read(ckpt.FILE_HEADER.size).ljust(ckpt.FILE_HEADER.size))
    if magic != MAGIC or version not in (VERSION, VERSION_QUANTIZED):
        raise GraphFileError(f"{path}: not a graph file of version {VERSION} or {VERSION_QUANTIZED} "
                             f"(magic {magic!r}, version {version})")
    frames = _frames(f, str(path))
    kind, view = next(frames)
    raw_head = bytes(view)
    head = json.loads(raw_head)
    if kind != ckpt.KIND_HEADER:
        raise GraphFileError(f"{path}: first frame is not a header")
    if head["lsn"] != lsn or head["dim"] != dim:
        raise GraphFileError(f"{path} belongs to the checkpoint at LSN {head['lsn']} ({head['dim']}-d), "
                             f"storage.dat is at LSN {lsn} ({dim}-d)")
    stored = head.get("quantization", "none") if version == VERSION_QUANTIZED else "none"
    if stored != quantization:
        raise GraphFileError(f"{path} holds a SUTRA_QUANTIZATION={stored} graph, this node runs "
                             f"SUTRA_QUANTIZATION={quantization}")
    _, view = next(frames)
    return head, raw_head, bytes(view), frames


def _alive(head: dict[str, Any], bits: bytes) -> np.ndarray:
    total, count = int(head["total"]), int(head["count"])
    alive = np.zeros(total, dtype=bool)
    alive[:count] = np.unpackbits(np.frombuffer(bits, dtype=np.uint8), count=count, bitorder="little").astype(bool)
    return alive


class _FaissStream:
    """The faiss bytes of a graph file, handed to faiss' reader frame by frame
    as each is read and CRC-checked: the index is parsed without first
    gathering the whole serialised copy (at 1M x 768-d: 0.3 GB of links
    under none, 1 GB with sq8 codes, all newly touched memory)."""

    def __init__(self, frames: Iterator[tuple[int, memoryview]], where: Path) -> None:
        self._frames, self._where = frames, where
        self._buf = memoryview(b"")
        self._pos = 0
        self.consumed = 0
        self.end: bytes | None = None  # the end frame's payload, once reached
        self.error: str | None = None  # why the stream stopped early

    def _next(self) -> bool:
        """Move to the next frame with bytes; False at the end frame or on damage."""
        while self._pos >= len(self._buf):
            if self.end is not None or self.error is not None:
                return False
            try:
                kind, payload = next(self._frames)
            except ckpt.SnapshotError as exc:
                self.error = str(exc)
                return False
            except (OSError, StopIteration) as exc:
                self.error = f"{self._where}: {exc!r}"
                return False
            if kind == ckpt.KIND_END:
                self.end = bytes(payload)
                return False
            self._buf, self._pos = payload, 0
        return True

    def read(self, size: int) -> bytes:
        if not self._next():
            return b""  # faiss raises: the file ended (or broke) inside the index
        out = bytes(self._buf[self._pos : self._pos + size])
        self._pos += len(out)
        self.consumed += len(out)
        return out

    def finish(self) -> bytes:
        """After faiss is done: nothing may follow the index but the end frame; returns its payload."""
        if self._next():
            raise GraphFileError(f"{self._where}: bytes after the graph")
        if self.end is None:
            raise GraphFileError(self.error or f"{self._where}: no end frame")
        return self.end


def read_graph(directory: Path, lsn: int, dim: int, quantization: str = "none") -> LoadedGraph:
    """The graph stored for the checkpoint at ``lsn`` and SUTRA_QUANTIZATION
    ``quantization``; GraphFileError (with the reason) when there is none or
    it cannot be used."""
    path = directory / GRAPH_FILE
    if not path.exists():
        raise GraphFileError(f"{path} does not exist")
    try:
        with open(path, "rb", buffering=1 << 20) as f:
            head, raw_head, bits, frames = _open(f, path, lsn, dim, quantization)
            stream = _FaissStream(frames, path)
            reader = faiss.PyCallbackIOReader(stream.read)  # type: ignore[attr-defined]
            try:
                index = faiss.read_index(reader, 0 if quantization != "none" else faiss.IO_FLAG_SKIP_STORAGE)
            except RuntimeError as exc:
                raise GraphFileError(stream.error or f"{path}: faiss cannot read the graph: {exc}") from exc
            finally:
                del reader
            if stream.finish() != raw_head:
                raise GraphFileError(f"{path}: end frame does not match the header")
    except ckpt.SnapshotError as exc:
        raise GraphFileError(str(exc)) from exc
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        raise GraphFileError(f"{path}: {exc!r}") from exc
    if stream.consumed != head["faiss_bytes"]:
        raise GraphFileError(f"{path}: {stream.consumed} graph bytes, the header says {head['faiss_bytes']}")
    if quantization_of(index) != quantization:
        raise GraphFileError(f"{path}: holds a faiss {type(index).__name__}, not a SUTRA_QUANTIZATION="
                             f"{quantization} index")
    total, alive = int(head["total"]), _alive(head, bits)
    if index.ntotal != total or int(alive.sum()) != head["live"]:
        raise GraphFileError(f"{path}: graph has {index.ntotal} labels ({int(alive.sum())} live), the header "
                             f"says {total} ({head['live']})")
    return LoadedGraph(index, total, alive, head["keys_hash"], quantization)


def reserve_graph_storage(directory: Path, lsn: int, dim: int, vectors: Any) -> None:
    """Before storage.dat's vectors are read: when storage.hnsw holds a
    SUTRA_QUANTIZATION=none graph for the checkpoint at ``lsn``, size its
    float storage now and let the load write the vectors straight into it
    (``GraphStorage``).  Reads only the file's header and bitmap; any doubt
    reserves nothing (the adoption afterwards checks the whole file and says
    why it refuses it)."""
    if getattr(vectors, "quantization", "none") != "none" or not hasattr(vectors, "reserve_graph_storage"):
        return
    path = directory / GRAPH_FILE
    try:
        with open(path, "rb") as f:
            head, _, bits, _ = _open(f, path, lsn, dim, "none")
            alive = _alive(head, bits)
    except (GraphFileError, ckpt.SnapshotError, OSError, ValueError, KeyError, StopIteration):
        return
    if int(alive.sum()) != head.get("live"):
        return
    storage, flat = _sized_flat(len(alive), dim)
    vectors.reserve_graph_storage(GraphStorage(len(alive), alive, np.flatnonzero(alive), storage, flat))


def remove_graph(directory: Path) -> None:
    """Drop a graph file that no longer matches storage.dat (best effort)."""
    for name in (GRAPH_FILE, GRAPH_FILE + ".tmp"):
        try:
            os.unlink(directory / name)
        except FileNotFoundError:
            pass


def adopt_stored_graph(directory: Path, lsn: int, dim: int, vectors: Any) -> str:
    """Give a freshly loaded VectorIndex the graph stored with the checkpoint
    at ``lsn``; returns where the graph comes from ("storage.hnsw"), or why
    none was taken ("rebuilding: <reason>"), logged either way."""
    try:
        graph = read_graph(directory, lsn, dim, getattr(vectors, "quantization", "none"))
        vectors.adopt_graph(graph)
    except (GraphFileError, ValueError) as exc:
        if hasattr(vectors, "reserve_graph_storage"):  # refused: the WAL tail's rows get chunks of their own
            vectors.reserve_graph_storage(None)
        if len(vectors) > vectors.exact_limit // 2:  # a graph was due: say why it is rebuilt
            log.warning("not using the stored HNSW graph: %s; rebuilding it in the background (searches scan the "
                        "vectors not yet in a graph exactly meanwhile)", exc)
        return f"rebuilding: {exc}"
    return GRAPH_FILE


def persist_graph(directory: Path, cap: GraphCapture | None, lsn: int, dim: int, fsync: bool) -> None:
    """Write storage.hnsw for the checkpoint just written (or drop a stale one
    when there is no graph). A failure costs a rebuild at the next start, not
    data: it is logged, not raised."""
    if cap is None:
        remove_graph(directory)
        return
    try:
        size = write_graph(directory, cap, lsn, dim, fsync)
    except OSError as exc:
        log.warning("checkpoint at LSN %d: %s not written (%s); the next start rebuilds the graph", lsn,
                    GRAPH_FILE, exc)
        return
    log.info("checkpoint at LSN %d: %s %d bytes (%d labels)", lsn, GRAPH_FILE, size, cap.count)
