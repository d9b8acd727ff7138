"""The segment files of one write-ahead log, and every change made to them:
appending a group, sealing (rotation), dropping, resetting, truncating and
repairing (docs/wal_format.md sections 2, 7, 9 and 10).

:class:`SegmentFiles` does the file I/O and keeps the segment bookkeeping;
:class:`~sutra_cluster.storage.wal.WriteAheadLog` owns it and decides when
each step runs. Every change keeps the directory a valid log at each
intermediate step, so a crash anywhere recovers (section 9).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from sutra_cluster.storage.fsio import fsync_dir, replace_durably, write_file_synced
from sutra_cluster.storage.wal_format import (
    ACTIVE_NAME,
    SEALED_DIR,
    SEGMENT_HEADER_SIZE,
    TMP_NAME,
    WalCorruptionError,
    WalRecord,
    WalWriteError,
    broken_name,
    encode_segment_header,
    sealed_name,
)
from sutra_cluster.storage.wal_reader import LogDir, SegmentInfo, TornTail, open_records, scan_segment

logger = logging.getLogger(__name__)

__all__ = ["SegmentFiles", "repair_torn_tail", "wal_files"]

#: ``fatal(exc, what)``: the owner enters its failed state and returns the error to raise
FatalHook = Callable[[Exception, str], WalWriteError]


def _fdatasync(fd: int) -> None:
    # Looked up at call time so tests (and platforms without fdatasync) work.
    sync = getattr(os, "fdatasync", None) or os.fsync
    sync(fd)


class SegmentFiles:
    """The sealed segments and ``wal.log`` of one directory, with ``wal.log`` open
    for appending.

    Not thread-safe: the owner calls every method with its I/O lock held (or
    before other threads exist). Methods raise OSError when a file operation
    fails; when an fsync fails they call ``fatal(exc, what)`` and raise what it
    returns, because after a failed fsync the page cache can no longer be
    trusted (docs section 8).
    """

    def __init__(self, directory: Path, *, fsync: bool, fatal: FatalHook) -> None:
        self.dir = directory
        self.sealed_dir = directory / SEALED_DIR
        self.active_path = directory / ACTIVE_NAME
        self._fsync = fsync
        self._fatal = fatal
        self.sealed: list[SegmentInfo] = []
        #: ``active.size`` is the durable end of wal.log: a failed write is cut back to it
        self.active = SegmentInfo(self.active_path, 0, 0, 0, 0)
        self._fd: int | None = None
        # True while wal.log may hold a change no fsync has covered (fsync off, a
        # failed write truncated away, or not yet synced by this process):
        # sealing must fsync it first.
        self._unsynced = True
        # The next segment's header, written to wal.log.tmp and fsynced by a
        # helper thread while the group that fills wal.log is being fsynced.
        self._prep_pool: ThreadPoolExecutor | None = None
        self._prepared: Future[tuple[int, int]] | None = None
        self._prepared_for = (0, 0)

    # ------------------------------------------------------------------ open

    def adopt(self, found: LogDir, start_lsn: int) -> None:
        """Take over a directory the reader validated (and the opener repaired):
        delete a leftover wal.log.tmp, recreate a missing wal.log, discard a log
        the checkpoint at ``start_lsn`` is ahead of, and open wal.log."""
        if found.leftover_tmp is not None:
            logger.warning("WAL %s: deleting leftover %s from an interrupted rotation", self.dir, TMP_NAME)
            found.leftover_tmp.unlink()
            fsync_dir(self.dir)
        self.sealed = found.sealed
        if found.active is not None:
            self.active = found.active
        elif self.sealed:
            prev = self.sealed[-1]
            logger.warning("WAL %s: %s missing (interrupted rotation?); starting a new one", self.dir, ACTIVE_NAME)
            self._install_active(prev.seq + 1, prev.last_lsn + 1)
        else:
            self._install_active(1, start_lsn + 1)
        if start_lsn > self.active.last_lsn:
            if any(s.count for s in self.sealed) or self.active.count:
                logger.warning(
                    "WAL %s: start_lsn %d is ahead of the last record %d; discarding the log",
                    self.dir, start_lsn, self.active.last_lsn,
                )
            self.reset(start_lsn + 1)
        self._open_active()

    def close(self) -> None:
        """Close wal.log and stop the helper thread; an unused prepared header is removed."""
        self._close_active()
        if self._take_prepared() is not None:
            (self.dir / TMP_NAME).unlink(missing_ok=True)  # never installed; tidy, not needed
        if self._prep_pool is not None:
            self._prep_pool.shutdown()

    # ------------------------------------------------------------------ views

    @property
    def first_lsn(self) -> int:
        """Lowest LSN still on disk; ``active.first_lsn`` when nothing is sealed."""
        return self.sealed[0].first_lsn if self.sealed else self.active.first_lsn

    def paths(self) -> list[Path]:
        """Sealed segments in log order, then wal.log."""
        return [s.path for s in self.sealed] + [self.active_path]

    def total_bytes(self) -> int:
        """Size of all segment files."""
        return sum(s.size for s in self.sealed) + self.active_bytes()

    def active_bytes(self) -> int:
        """Size of wal.log on disk (0 if it is missing)."""
        try:
            return self.active_path.stat().st_size
        except FileNotFoundError:
            return 0

    def records(self, after_lsn: int, limit: int,
                wanted: Callable[[int], bool] | None = None) -> Iterator[WalRecord]:
        """Records with ``after_lsn < lsn <= limit``; the files are opened before this returns.
        ``wanted``: see ``wal_reader.iter_file_records``."""
        segs = [s for s in self.sealed if s.count and s.last_lsn > after_lsn]
        if limit > after_lsn and limit >= self.active.first_lsn:
            segs.append(self.active)
        return open_records(segs, after_lsn, limit, wanted)

    # --------------------------------------------------------- group commits

    def write(self, data: bytes) -> None:
        """Append ``data`` to wal.log (not yet durable). Raises OSError; undo with
        :meth:`undo_write`."""
        self.ensure_active()
        assert self._fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def sync_data(self) -> None:
        """fdatasync wal.log: every byte written so far, and the size, are durable."""
        fd = self._fd
        assert fd is not None
        self._sync_or_fail(lambda: _fdatasync(fd), "fdatasync")
        self._unsynced = False

    def committed(self, nbytes: int, count: int) -> None:
        """Record that the last ``count`` records (``nbytes``) written are durable."""
        self.active.size += nbytes
        self.active.count += count

    def undo_write(self) -> None:
        """Cut wal.log back to its durable end after a failed write. Raises OSError."""
        if self._fd is not None:
            self._unsynced = True
            os.ftruncate(self._fd, self.active.size)

    # -------------------------------------------------------------- rotation

    def prepare_next(self, first_lsn: int) -> None:
        """Start writing and fsyncing wal.log.tmp for the segment after wal.log,
        starting at ``first_lsn``, on the helper thread (rotation step 4, ahead
        of time)."""
        seq = self.active.seq + 1
        if self._prepared is not None:
            if self._prepared_for == (seq, first_lsn):
                return
            self._take_prepared()  # stale (a failed write reused its LSNs): redo it
        if self._prep_pool is None:
            self._prep_pool = ThreadPoolExecutor(1, thread_name_prefix="wal-prepare")
        tmp = self.dir / TMP_NAME

        def prepare() -> tuple[int, int]:
            write_file_synced(tmp, encode_segment_header(seq, first_lsn))
            return seq, first_lsn

        self._prepared = self._prep_pool.submit(prepare)
        self._prepared_for = (seq, first_lsn)

    def seal(self) -> None:
        """Rotation (docs section 9): seal wal.log into ``wal/`` and start the next
        one. Raises OSError; fsync errors are fatal."""
        self.ensure_active()
        fd = self._fd
        assert fd is not None
        if self._unsynced:  # else the last group's fdatasync already made every byte durable
            self._sync_or_fail(lambda: os.fsync(fd), "fsync before rotation")
            self._unsynced = not self._fsync
        old = self.active
        dest = self.sealed_dir / sealed_name(old.seq, old.first_lsn)
        self._close_active()
        try:
            os.replace(self.active_path, dest)
        except OSError:
            self._open_active()
            raise
        self._sync_or_fail(self._sync_dirs, "directory fsync during rotation")
        self.sealed.append(SegmentInfo(dest, old.seq, old.first_lsn, old.count, old.size))
        # Bookkeeping moves on first: if installing fails, ensure_active
        # retries the install before the next write.
        self.active = SegmentInfo(self.active_path, old.seq + 1, old.last_lsn + 1, 0, SEGMENT_HEADER_SIZE)
        try:
            self._install_active(old.seq + 1, old.last_lsn + 1)
        except OSError as exc:
            logger.error("WAL %s: creating a new %s failed: %s; will retry", self.dir, ACTIVE_NAME, exc)
            return
        self._open_active()
        logger.info("WAL %s: sealed %s", self.dir, dest.name)

    # ------------------------------------------------------ removing records

    def drop_through(self, lsn: int) -> list[SegmentInfo]:
        """Delete sealed segments whose records all have LSN <= ``lsn``; returns them."""
        dropped = []
        while self.sealed and self.sealed[0].last_lsn <= lsn:
            seg = self.sealed.pop(0)
            self._delete_sealed(seg)
            dropped.append(seg)
        return dropped

    def reset(self, first_lsn: int) -> None:
        """Delete every segment and start an empty log at ``first_lsn``.

        Oldest segments go first and wal.log is replaced last, so every
        intermediate state is a valid log.
        """
        self._close_active()
        next_seq = max([s.seq for s in self.sealed] + [self.active.seq]) + 1
        while self.sealed:
            self._delete_sealed(self.sealed.pop(0))
        self._install_active(next_seq, first_lsn)

    def truncate_from(self, target: int) -> None:
        """Make ``target`` the next LSN, removing every record >= ``target`` (docs section 10)."""
        if target < self.first_lsn:
            self.reset(target)
        elif target >= self.active.first_lsn:
            self.ensure_active()
            fd = self._fd
            assert fd is not None
            res = scan_segment(self.active_path.read_bytes(), True, path=self.active_path)
            offset = res.offsets[target - self.active.first_lsn]
            os.ftruncate(fd, offset)
            self._sync_or_fail(lambda: os.fsync(fd), "fsync after truncation")
            self.active.count, self.active.size = target - self.active.first_lsn, offset
        else:
            idx = next(i for i, s in enumerate(self.sealed) if s.last_lsn >= target)
            seg = self.sealed[idx]
            res = scan_segment(seg.path.read_bytes(), False, path=seg.path)
            offset = res.offsets[target - seg.first_lsn]
            # Newest first, so every intermediate state is a valid log that
            # ends somewhere at or after ``target - 1``.
            self._close_active()
            self.active_path.unlink(missing_ok=True)
            fsync_dir(self.dir)
            while len(self.sealed) > idx + 1:
                self._delete_sealed(self.sealed.pop())
            os.truncate(seg.path, offset)
            seg_fd = os.open(seg.path, os.O_WRONLY)
            try:
                self._sync_or_fail(lambda: os.fsync(seg_fd), "fsync after truncation")
            finally:
                os.close(seg_fd)
            seg.count, seg.size = target - seg.first_lsn, offset
            self._install_active(seg.seq + 1, target)
        self.ensure_active()

    # --------------------------------------------------------------- helpers

    def _open_active(self) -> None:
        self._fd = os.open(self.active_path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))

    def _close_active(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _install_active(self, seq: int, first_lsn: int) -> None:
        """Atomically install an empty wal.log (tmp, fsync, rename, fsync dir),
        using wal.log.tmp as prepared ahead when its header is the right one."""
        tmp = self.dir / TMP_NAME
        if self._take_prepared() != (seq, first_lsn):
            write_file_synced(tmp, encode_segment_header(seq, first_lsn))
        replace_durably(tmp, self.active_path)
        self.active = SegmentInfo(self.active_path, seq, first_lsn, 0, SEGMENT_HEADER_SIZE)

    def ensure_active(self) -> None:
        """Reopen, or recreate, wal.log after an interrupted rotation."""
        if self._fd is not None:
            return
        if not self.active_path.exists():
            self._install_active(self.active.seq, self.active.first_lsn)
        self._open_active()

    def _take_prepared(self) -> tuple[int, int] | None:
        """Wait for a pending preparation; the ``(seq, first_lsn)`` now durable in
        wal.log.tmp, or None. Every writer of wal.log.tmp calls this first, so
        the helper thread never writes it at the same time."""
        fut, self._prepared = self._prepared, None
        if fut is None:
            return None
        try:
            return fut.result()
        except OSError as exc:  # the seal writes the header itself, and reports a failure there
            logger.warning("WAL %s: preparing %s failed: %s", self.dir, TMP_NAME, exc)
            return None

    def _delete_sealed(self, seg: SegmentInfo) -> None:
        try:
            os.unlink(seg.path)
        except FileNotFoundError:
            logger.warning("WAL %s: segment already gone", seg.path)
        fsync_dir(self.sealed_dir)

    def _sync_or_fail(self, action: Callable[[], None], what: str) -> None:
        try:
            action()
        except OSError as exc:
            raise self._fatal(exc, what) from exc

    def _sync_dirs(self) -> None:
        fsync_dir(self.sealed_dir)
        fsync_dir(self.dir)


def repair_torn_tail(torn: TornTail) -> Path:
    """Cut the zero/torn tail ``torn`` off ``wal.log`` (docs section 7).

    Copies bytes ``[offset, EOF)`` to ``wal.log.<offset>.broken`` and fsyncs
    it and the directory, then truncates the file to ``offset`` and fsyncs it.
    Returns the ``.broken`` path. A repeated cut (a crash during an earlier
    repair) reuses an identical file; different bytes get a fresh name, so no
    evidence is overwritten. Raises WalCorruptionError if the file no longer
    has the size the reader saw, OSError if a step fails.
    """
    path = torn.path
    with open(path, "rb") as f:
        f.seek(torn.offset)
        tail = f.read()
    if len(tail) != torn.nbytes:
        raise WalCorruptionError(path, torn.offset, f"file changed while opening: {len(tail)} bytes after the "
                                 f"valid log, the reader found {torn.nbytes}")
    n = 0
    broken = path.parent / broken_name(torn.offset)
    while broken.exists() and broken.read_bytes() != tail:
        n += 1
        broken = path.parent / broken_name(torn.offset, n)
    write_file_synced(broken, tail)
    fsync_dir(path.parent)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, torn.offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return broken


def wal_files(directory: str | Path) -> list[Path]:
    """Every WAL file of a data directory (sealed segments and wal.log); for
    replacing a node's whole history with a snapshot."""
    d = Path(directory)
    files = sorted((d / SEALED_DIR).glob("*.wal")) if (d / SEALED_DIR).is_dir() else []
    return files + [p for p in (d / ACTIVE_NAME, d / TMP_NAME) if p.exists()]
