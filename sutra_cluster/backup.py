"""Online backup and restore.

A backup streams ``ReplicationService/GetSnapshot`` from any node, leader or
replica, while writes go on. The node captures its applied state and the LSN of
that state under one lock, so the stream is the state at exactly one LSN: the
same framed format as ``storage.dat`` (docs/wal_format.md, "Snapshot file").
Every frame is checked (length, CRC32C, header/end match) as it is written, and
the state's digest (the one ``GetDigest`` reports) is computed from the frames,
so a finished backup is known to be whole and says which state it holds.

A backup goes into a folder as ``storage.dat`` plus ``manifest.json`` (LSN,
term, digest, node, time, size, sha256 of the file), or, for a name ending in
``.dat``/``.snap``, to one bare snapshot file.

Restore turns a backup into a node's data directory: ``storage.dat`` (fsynced)
and ``terms.json`` (the term history reset to the snapshot's term and LSN), and
no WAL, so ``sutra-cluster serve`` on that folder starts at the backup's LSN.
Other nodes of a new cluster then bootstrap from that node by snapshot.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import grpc

from sutra_cluster.ops.progress import Progress  # noqa: F401 - also bulkload's import path
from sutra_cluster.pb import replication_pb2 as rpb
from sutra_cluster.pb import replication_pb2_grpc
from sutra_cluster.storage import checkpoint as ckpt
from sutra_cluster.storage.state import DIGEST_VERSIONS, ApplyResult, GraphState
from sutra_cluster.storage.terms import FILE as TERMS_FILE
from sutra_cluster.storage.terms import TermHistory
from sutra_cluster.storage.vecform import FINGERPRINT_VERSION
from sutra_cluster.storage.wal import wal_files

MANIFEST = "manifest.json"
# `--out` names ending in these are one bare snapshot file; any other name is a backup folder.
FILE_SUFFIXES = (".dat", ".snap")
SNAPSHOT_FILE = ckpt.STORAGE_FILE  # a folder backup's data file has the name a node's data folder uses
PARTIAL = ".partial"
# Files of a node's data folder that ``restore --force`` replaces (WAL files come from wal_files()).
NODE_FILES = (ckpt.STORAGE_FILE, ckpt.BACKUP_FILE, ckpt.STORAGE_FILE + ".tmp", ckpt.BACKUP_FILE + ".tmp",
              TERMS_FILE, "terms.tmp")


class BackupError(RuntimeError):
    """A backup or restore could not be made; nothing was left half-written."""


@dataclass
class BackupInfo:
    """What a backup holds; written as manifest.json for folder backups."""

    file: str
    lsn: int
    term: int
    digest: str
    node: str
    source: str
    time: str
    created_at_us: int
    bytes: int
    sha256: str
    concepts: int
    edges: int
    vector_dimension: int
    seconds: float = 0.0
    # The version of ``digest`` (GetDigest's digest_version); manifests written
    # before version 2 existed have none: their digests are version 1.
    digest_version: int = FINGERPRINT_VERSION


def _fsync_file(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


class _Tee:
    """A read()-able view of a byte-block iterator that writes every byte it
    hands out to ``sink`` and hashes it, so the decoder checks exactly what is
    stored."""

    def __init__(self, blocks: Iterator[bytes], sink: BinaryIO | None) -> None:
        self.blocks, self.sink = blocks, sink
        self.buf = b""
        self.pos = 0
        self.nbytes = 0
        self.sha = hashlib.sha256()

    def _fill(self, n: int) -> None:
        while len(self.buf) - self.pos < n:
            try:
                block = next(self.blocks)
            except StopIteration:
                return
            self.buf = self.buf[self.pos:] + block
            self.pos = 0

    def read(self, n: int) -> bytes:
        self._fill(n)
        data = self.buf[self.pos:self.pos + n]
        self.pos += len(data)
        if self.pos > (1 << 22):
            self.buf, self.pos = self.buf[self.pos:], 0
        if self.sink is not None:
            self.sink.write(data)
        self.sha.update(data)
        self.nbytes += len(data)
        return data

    def at_end(self) -> bool:
        self._fill(1)
        return len(self.buf) - self.pos == 0


def _decode(tee: _Tee, where: str, progress: Progress, digest: bool, total_of: str = "items",
            digest_version: int = FINGERPRINT_VERSION) -> tuple[ckpt.SnapshotDecoder, int, int, str]:
    """Read and check every frame; returns (decoder, concepts, edges, digest of ``digest_version``)."""
    dec = ckpt.SnapshotDecoder(tee, where, fingerprint_version=digest_version)  # type: ignore[arg-type]
    h = dec.header
    if total_of == "items":
        progress.total = h.concepts + h.edges
    state = GraphState(fingerprint_version=digest_version) if digest else None
    concepts = edges = 0
    for chunk in dec:
        concepts += len(chunk.concepts)
        edges += len(chunk.edges)
        if state is not None:
            state.load_chunk(chunk, ApplyResult({}, set()))
        progress.update(concepts + edges if total_of == "items" else tee.nbytes, tee.nbytes)
    if not tee.at_end():
        raise ckpt.SnapshotError(where, tee.nbytes, "data after the end frame")
    if (concepts, edges) != (h.concepts, h.edges):
        raise ckpt.SnapshotError(where, tee.nbytes, f"header promises {h.concepts} concepts and {h.edges} edges, "
                                 f"the frames hold {concepts} and {edges}")
    return dec, concepts, edges, state.digest() if state is not None else ""


def _snapshot_stream(node: str, timeout: float | None) -> tuple[grpc.Channel, Iterator[rpb.SnapshotBlock]]:
    """GetSnapshot over a channel with the admin tools' TLS settings and cluster
    secret (from the environment, as tlsutil.env_channel reads them) and no limit
    on a block's size (one frame may be as large as a batch)."""
    from sutra_cluster.tlsutil import env_channel

    ch = env_channel(node, options=[("grpc.max_receive_message_length", -1)])  # with the cluster secret too
    stub = replication_pb2_grpc.ReplicationServiceStub(ch)
    return ch, stub.GetSnapshot(rpb.SnapshotRequest(node_id=f"backup@{socket.gethostname()}"), timeout=timeout)


def backup(node: str, out: str | Path, *, timeout: float | None = None, digest: bool = True,
           progress: bool = True) -> BackupInfo:
    """Stream a consistent snapshot from ``node`` (host:port) to ``out``.

    ``out`` is a folder (made if missing, with or without a trailing "/"),
    which gets storage.dat and manifest.json, as the handbook says. Only a name
    ending in ``.dat`` or ``.snap`` (and not an existing folder) is written as
    one bare snapshot file without a manifest. The data goes to a ``.partial``
    file first and is renamed only once every frame has checked out and the
    file is fsynced. Raises BackupError."""
    out_s = str(out)
    out = Path(out)
    folder = out.is_dir() or out_s.endswith(("/", os.sep)) or out.suffix not in FILE_SUFFIXES
    if folder:
        out.mkdir(parents=True, exist_ok=True)
        if (out / MANIFEST).exists() or (out / SNAPSHOT_FILE).exists():
            raise BackupError(f"{out} already holds a backup; give a new folder")
        target = out / SNAPSHOT_FILE
    else:
        if out.exists():
            raise BackupError(f"{out} exists; give a new file name")
        out.parent.mkdir(parents=True, exist_ok=True)
        target = out
    partial = target.with_name(target.name + PARTIAL)
    t0 = time.monotonic()
    bar = Progress(f"backup {node}", 0, progress)
    ch, stream = _snapshot_stream(node, timeout)
    first: list[rpb.SnapshotBlock] = []

    def blocks() -> Iterator[bytes]:
        for b in stream:
            if not first:
                first.append(b)
            yield b.data

    try:
        with open(partial, "wb", buffering=1 << 20) as f:
            tee = _Tee(blocks(), f)
            dec, concepts, edges, dig = _decode(tee, f"snapshot from {node}", bar, digest)
            _fsync_file(f)
        h = dec.header
        if first and (first[0].lsn, first[0].term) != (h.lsn, h.term):
            raise BackupError(f"{node} announced LSN {first[0].lsn} term {first[0].term} but the snapshot header "
                              f"says LSN {h.lsn} term {h.term}")
        os.replace(partial, target)
        ckpt.fsync_dir(target.parent)
    except grpc.RpcError as exc:
        partial.unlink(missing_ok=True)
        raise BackupError(f"GetSnapshot from {node}: {exc.code().name}: {exc.details()}") from None  # type: ignore[attr-defined]
    except (ckpt.SnapshotError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise BackupError(str(exc)) from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        ch.close()
    bar.finish()
    info = BackupInfo(
        file=target.name, lsn=h.lsn, term=h.term, digest=dig, node=h.node_id, source=node,
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(h.created_at_us / 1e6)),
        created_at_us=h.created_at_us, bytes=tee.nbytes, sha256=tee.sha.hexdigest(), concepts=concepts,
        edges=edges, vector_dimension=h.vector_dimension, seconds=round(time.monotonic() - t0, 3),
    )
    if folder:
        tmp = out / (MANIFEST + ".tmp")
        with open(tmp, "w") as mf:
            json.dump(asdict(info), mf, indent=2)
            mf.write("\n")
            mf.flush()
            os.fsync(mf.fileno())
        os.replace(tmp, out / MANIFEST)
        ckpt.fsync_dir(out)
    return info


def read_manifest(folder: Path) -> dict[str, object] | None:
    """The folder's manifest.json, checked; None when there is none. Raises
    BackupError naming the file when it is not a manifest this tool wrote."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise BackupError(f"{path}: not a valid manifest ({exc})") from None
    if not isinstance(data, dict):
        raise BackupError(f"{path}: not a valid manifest (a JSON object is expected, not {type(data).__name__})")
    for key, kind in (("file", str), ("lsn", int), ("sha256", str), ("digest", str)):
        if key in data and (not isinstance(data[key], kind) or isinstance(data[key], bool)):
            raise BackupError(f"{path}: {key!r} is {data[key]!r}, a {kind.__name__} is expected")
    return data


def _manifest_file(folder: Path, manifest: dict[str, object]) -> Path:
    """The snapshot a manifest names, which must be a file directly inside the
    backup folder: a manifest is data, and must not make restore read elsewhere."""
    name = str(manifest.get("file") or SNAPSHOT_FILE)
    if Path(name).is_absolute() or len(Path(name).parts) != 1 or name in (".", ".."):
        raise BackupError(f"{folder / MANIFEST}: 'file' is {name!r}, not a file name inside {folder}; "
                          "refusing to read outside the backup folder")
    path = folder / name
    if path.resolve().parent != folder.resolve():
        raise BackupError(f"{path} leads outside {folder}; refusing to read outside the backup folder")
    return path


def _clear_node_files(target: Path) -> list[str]:
    removed = []
    for p in wal_files(target):
        p.unlink()
        removed.append(str(p.relative_to(target)))
    sealed = target / "wal"
    if sealed.is_dir() and not any(sealed.iterdir()):
        sealed.rmdir()
    for name in NODE_FILES:
        p = target / name
        if p.exists():
            p.unlink()
            removed.append(name)
    return removed


@dataclass
class RestoreInfo:
    data_dir: str
    lsn: int
    term: int
    digest: str
    concepts: int
    edges: int
    vector_dimension: int
    bytes: int
    sha256: str
    seconds: float


def restore(source: str | Path, data_dir: str | Path, *, force: bool = False, progress: bool = True) -> RestoreInfo:
    """Build a node's data folder from a backup file or folder.

    Checks every frame (and the manifest's sha256 and digest, when there is
    one) before anything in ``data_dir`` is replaced. Refuses a non-empty
    ``data_dir`` unless ``force``, which replaces the node's own files there
    (storage.dat*, terms.json, the WAL) and leaves anything else. Raises BackupError."""
    t0 = time.monotonic()
    src = Path(source)
    manifest = None
    if src.is_dir():
        manifest = read_manifest(src)
        src = _manifest_file(src, manifest) if manifest else src / SNAPSHOT_FILE
    if not src.is_file():
        raise BackupError(f"{src}: no such backup file")
    version = int(manifest.get("digest_version", 1)) if manifest else FINGERPRINT_VERSION  # type: ignore[call-overload]
    if version not in DIGEST_VERSIONS:
        raise BackupError(f"{source}: the manifest's digest_version {version} is not one this build computes "
                          f"({', '.join(map(str, DIGEST_VERSIONS))})")
    target = Path(data_dir)
    if target.exists() and not target.is_dir():
        raise BackupError(f"{target} is not a folder")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise BackupError(f"{target} is not empty; restore into a new folder, or give --force to replace the "
                          "node files there (storage.dat, terms.json, the WAL)")
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / (ckpt.STORAGE_FILE + ".restore")
    size = src.stat().st_size
    bar = Progress("restore", size, progress)
    try:
        with open(src, "rb", buffering=1 << 20) as inp, open(tmp, "wb", buffering=1 << 20) as f:
            tee = _Tee(iter(lambda: inp.read(1 << 20), b""), f)
            dec, concepts, edges, dig = _decode(tee, str(src), bar, True, total_of="bytes", digest_version=version)
            _fsync_file(f)
        sha = tee.sha.hexdigest()
        if manifest:
            if manifest.get("sha256") and manifest["sha256"] != sha:
                raise BackupError(f"{src}: sha256 {sha} differs from the manifest's {manifest['sha256']}")
            if manifest.get("digest") and manifest["digest"] != dig:
                raise BackupError(f"{src}: state digest {dig} differs from the manifest's {manifest['digest']}")
            if int(manifest.get("lsn", dec.header.lsn)) != dec.header.lsn:  # type: ignore[call-overload]
                raise BackupError(f"{src}: LSN {dec.header.lsn} differs from the manifest's {manifest['lsn']}")
    except (ckpt.SnapshotError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise BackupError(f"not restoring: {exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    h = dec.header
    if force:
        _clear_node_files(target)
    # The term history first, then storage.dat: its rename is the moment the folder becomes a node.
    TermHistory(target).reset(max(1, h.term), h.lsn)
    os.replace(tmp, target / ckpt.STORAGE_FILE)
    ckpt.fsync_dir(target)
    bar.finish()
    return RestoreInfo(str(target), h.lsn, h.term, dig, concepts, edges, h.vector_dimension, size, sha,
                       round(time.monotonic() - t0, 3))
