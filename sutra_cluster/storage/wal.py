"""Write-ahead log: segment files, recovery, and a group-committing writer.

Format and crash-recovery rules: ``docs/wal_format.md``; constants and
codecs: :mod:`sutra_cluster.storage.wal_format`; the reader:
:mod:`sutra_cluster.storage.wal_reader`. This module is the writer and the
opener, which decides what to do with what the reader found (repair a torn
tail once, or refuse when strict).

Over 450 lines on purpose: the locking below is one discipline that
:class:`WriteAheadLog` as a whole must follow, and splitting the class would
hide it.

Locking: ``_io`` serialises every file mutation (flush, rotation, drops,
truncation) and guards the segment bookkeeping; ``_mu`` guards the in-memory
state (buffer, LSNs, failures) and backs both condition variables. ``_io`` is
always taken before ``_mu`` and ``_mu`` is never held across I/O, so appends
never wait for a disk write.
"""

from __future__ import annotations

import errno as errno_mod
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Self

from sutra_cluster.storage.fsio import fsync_dir, replace_durably, write_file_synced
from sutra_cluster.storage.wal_format import (
    ACTIVE_NAME,
    SEALED_DIR,
    SEGMENT_HEADER_SIZE,
    TMP_NAME,
    Lsn,
    WalCorruptionError,
    WalError,
    WalRecord,
    WalWriteError,
    broken_name,
    encode_record,
    encode_segment_header,
    sealed_name,
)
from sutra_cluster.storage.wal_reader import (
    DropCallback,
    LogDir,
    SegmentInfo,
    TornTail,
    load_log_dir,
    open_records,
    scan_segment,
)

__all__ = [
    "Lsn",
    "WalCorruptionError",
    "WalError",
    "WalRecord",
    "WalWriteError",
    "WriteAheadLog",
    "repair_torn_tail",
    "scan_segment",
]

logger = logging.getLogger(__name__)


def _fdatasync(fd: int) -> None:
    # Looked up at call time so tests (and platforms without fdatasync) work.
    sync = getattr(os, "fdatasync", None) or os.fsync
    sync(fd)


def _errno_name(exc: OSError) -> str:
    return errno_mod.errorcode.get(exc.errno or 0, str(exc.errno))


class WriteAheadLog:
    """A segmented, CRC-checked, group-committing write-ahead log.

    Opening runs recovery: every segment is validated, a torn tail of
    ``wal.log`` is cut once (reported through ``on_dropped``) unless the log
    is opened ``strict``, and corruption raises :class:`WalCorruptionError`.
    Appends return at once; durability is awaited with :meth:`wait_durable`
    and achieved by one flusher thread that writes and fsyncs whole groups.
    All public methods are thread-safe.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        fsync: bool = True,
        segment_bytes: int = 64 << 20,
        on_dropped: DropCallback | None = None,
        start_lsn: int = 0,
        strict: bool = False,
    ) -> None:
        """Open (creating if needed) the log in ``directory`` and recover it.

        ``start_lsn``: if no record on disk has an LSN above it (e.g. the
        checkpoint is ahead of an empty log), the next LSN is ``start_lsn + 1``.
        A zero or torn tail of ``wal.log`` (never acknowledged) is copied to a
        ``.broken`` file and cut, then ``on_dropped(path, offset, nbytes,
        reason)`` is called; if it raises, the open fails (the bytes are
        already saved). ``strict``: refuse such a tail instead of cutting it,
        leaving every file as it was (for forensics). Raises
        :class:`WalCorruptionError` on corruption, or on a torn tail when strict.
        """
        self._dir = Path(directory)
        self._sealed_dir = self._dir / SEALED_DIR
        self._active_path = self._dir / ACTIVE_NAME
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._on_dropped = on_dropped
        self._strict = strict
        #: duration of the last fsync of a record group, in seconds
        self.fsync_seconds = 0.0
        #: optional metrics hook, called with each group fsync's duration
        self.on_fsync: Callable[[float], None] | None = None

        self._io = threading.Lock()
        self._mu = threading.Lock()
        self._work_cv = threading.Condition(self._mu)
        self._durable_cv = threading.Condition(self._mu)
        self._buf: list[bytes] = []
        self._gen = 0
        # generation -> (first failed LSN, error) for each write failure
        self._failures: dict[int, tuple[int, WalWriteError]] = {}
        self._last_failure: tuple[int, int, WalWriteError] | None = None
        self._fatal: WalWriteError | None = None
        self._stopping = False
        self._closed = False
        self._listeners: list[Callable[[int], None]] = []

        # Segment bookkeeping, guarded by _io. _active.size is the durable
        # end of wal.log: a failed write is truncated back to it.
        self._sealed: list[SegmentInfo] = []
        self._active = SegmentInfo(self._active_path, 0, 0, 0, 0)
        self._fd: int | None = None
        # True while wal.log may hold a change no fsync has covered (fsync off,
        # or a failed write truncated away): rotation must fsync it first.
        self._unsynced = True  # until this process's first fdatasync covers wal.log
        # The next segment's header, written to wal.log.tmp and fsynced by a
        # helper thread while the group that fills wal.log is being fsynced.
        self._prep_pool: ThreadPoolExecutor | None = None
        self._prepared: Future[tuple[int, int]] | None = None
        self._prepared_for = (0, 0)
        self._recover(start_lsn)
        self._last_lsn = self._durable_lsn = self._active.last_lsn
        self._thread = threading.Thread(target=self._run, name="wal-flusher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ open

    def _recover(self, start_lsn: int) -> None:
        created = not self._dir.exists()
        self._sealed_dir.mkdir(parents=True, exist_ok=True)
        if created:
            fsync_dir(self._dir.parent)
        found = self._load_repaired()
        if found.leftover_tmp is not None:
            logger.warning("WAL %s: deleting leftover %s from an interrupted rotation", self._dir, TMP_NAME)
            found.leftover_tmp.unlink()
            fsync_dir(self._dir)
        self._sealed = found.sealed
        if found.active is not None:
            self._active = found.active
        elif self._sealed:
            prev = self._sealed[-1]
            logger.warning("WAL %s: %s missing (interrupted rotation?); starting a new one", self._dir, ACTIVE_NAME)
            self._install_active(prev.seq + 1, prev.last_lsn + 1)
        else:
            self._install_active(1, start_lsn + 1)
        if start_lsn > self._active.last_lsn:
            if any(s.count for s in self._sealed) or self._active.count:
                logger.warning(
                    "WAL %s: start_lsn %d is ahead of the last record %d; discarding the log",
                    self._dir, start_lsn, self._active.last_lsn,
                )
            self._reset(start_lsn + 1)
        self._open_active()

    def _load_repaired(self) -> LogDir:
        """Read the directory; cut a torn tail of wal.log at most once.

        As etcd's bootstrap: only a torn tail is repairable, and never twice
        (a tail still torn after one cut means something else is wrong).
        """
        found = load_log_dir(self._dir)
        torn = found.torn
        if torn is None:
            return found
        if self._strict:
            raise WalCorruptionError(
                torn.path, torn.offset, f"{torn.reason}, {torn.nbytes} bytes; a strict open does not cut it"
            )
        broken = repair_torn_tail(torn)
        found = load_log_dir(self._dir)
        if found.torn is not None:
            again = found.torn
            raise WalCorruptionError(again.path, again.offset, f"{again.reason} right after a repair; not repairing twice")
        logger.warning(
            "WAL %s: cut %d bytes at offset %d (%s); saved to %s",
            torn.path, torn.nbytes, torn.offset, torn.reason, broken.name,
        )
        if self._on_dropped is not None:
            self._on_dropped(torn.path, torn.offset, torn.nbytes, torn.reason)
        return found

    # ------------------------------------------------------- segment helpers
    # All of these run with _io held (or before the flusher exists).

    def _open_active(self) -> None:
        self._fd = os.open(self._active_path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))

    def _close_active(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _install_active(self, seq: int, first_lsn: int) -> None:
        """Atomically install an empty wal.log (tmp, fsync, rename, fsync dir),
        using wal.log.tmp as prepared ahead when its header is the right one."""
        tmp = self._dir / TMP_NAME
        if self._take_prepared() != (seq, first_lsn):
            write_file_synced(tmp, encode_segment_header(seq, first_lsn))
        replace_durably(tmp, self._active_path)
        self._active = SegmentInfo(self._active_path, seq, first_lsn, 0, SEGMENT_HEADER_SIZE)

    def _ensure_active(self) -> None:
        """Reopen, or recreate, wal.log after an interrupted rotation."""
        if self._fd is not None:
            return
        if not self._active_path.exists():
            self._install_active(self._active.seq, self._active.first_lsn)
        self._open_active()

    def _delete_sealed(self, seg: SegmentInfo) -> None:
        try:
            os.unlink(seg.path)
        except FileNotFoundError:
            logger.warning("WAL %s: segment already gone", seg.path)
        fsync_dir(self._sealed_dir)

    def _reset(self, first_lsn: int) -> None:
        """Delete every segment and start an empty log at ``first_lsn``.

        Oldest segments go first and wal.log is replaced last, so every
        intermediate state is a valid log.
        """
        self._close_active()
        next_seq = max([s.seq for s in self._sealed] + [self._active.seq]) + 1
        while self._sealed:
            self._delete_sealed(self._sealed.pop(0))
        self._install_active(next_seq, first_lsn)

    def _prepare_next(self, seq: int, first_lsn: int) -> None:
        """Start writing and fsyncing wal.log.tmp for the segment after this one
        on the helper thread (rotation step 4, ahead of time)."""
        if self._prepared is not None:
            if self._prepared_for == (seq, first_lsn):
                return
            self._take_prepared()  # stale (a failed write reused its LSNs): redo it
        if self._prep_pool is None:
            self._prep_pool = ThreadPoolExecutor(1, thread_name_prefix="wal-prepare")
        tmp = self._dir / TMP_NAME

        def prepare() -> tuple[int, int]:
            write_file_synced(tmp, encode_segment_header(seq, first_lsn))
            return seq, first_lsn

        self._prepared = self._prep_pool.submit(prepare)
        self._prepared_for = (seq, first_lsn)

    def _take_prepared(self) -> tuple[int, int] | None:
        """Wait for a pending preparation; the ``(seq, first_lsn)`` now durable in
        wal.log.tmp, or None. Every writer of wal.log.tmp calls this first, so
        the helper thread never writes it at the same time (``_io`` held)."""
        fut, self._prepared = self._prepared, None
        if fut is None:
            return None
        try:
            return fut.result()
        except OSError as exc:  # rotation writes the header itself, and reports a failure there
            logger.warning("WAL %s: preparing %s failed: %s", self._dir, TMP_NAME, exc)
            return None

    def _seal(self) -> None:
        """Rotation (docs section 9). Raises OSError; fsync errors are fatal."""
        self._ensure_active()
        fd = self._fd
        assert fd is not None
        if self._unsynced:  # else the last group's fdatasync already made every byte durable
            self._sync_or_fail(lambda: os.fsync(fd), "fsync before rotation")
            self._unsynced = not self._fsync
        old = self._active
        dest = self._sealed_dir / sealed_name(old.seq, old.first_lsn)
        self._close_active()
        try:
            os.replace(self._active_path, dest)
        except OSError:
            self._open_active()
            raise
        self._sync_or_fail(self._sync_dirs, "directory fsync during rotation")
        self._sealed.append(SegmentInfo(dest, old.seq, old.first_lsn, old.count, old.size))
        # Bookkeeping moves on first: if installing fails, _ensure_active
        # retries the install before the next write.
        self._active = SegmentInfo(self._active_path, old.seq + 1, old.last_lsn + 1, 0, SEGMENT_HEADER_SIZE)
        try:
            self._install_active(old.seq + 1, old.last_lsn + 1)
        except OSError as exc:
            logger.error("WAL %s: creating a new %s failed: %s; will retry", self._dir, ACTIVE_NAME, exc)
            return
        self._open_active()
        logger.info("WAL %s: sealed %s", self._dir, dest.name)

    def _sync_or_fail(self, action: Callable[[], None], what: str) -> None:
        """Run an fsync ``action``; any failure puts the log in the failed state."""
        try:
            action()
        except OSError as exc:
            raise self._enter_fatal(exc, what) from exc

    def _sync_dirs(self) -> None:
        fsync_dir(self._sealed_dir)
        fsync_dir(self._dir)

    def _enter_fatal(self, exc: Exception, what: str) -> WalWriteError:
        name = _errno_name(exc) if isinstance(exc, OSError) else type(exc).__name__
        err = WalWriteError(
            f"WAL {what} failed in {self._dir} ({name}: {exc}); the page cache can no "
            "longer be trusted, the log refuses further writes: restart the node"
        )
        logger.critical("%s", err)
        with self._mu:
            if self._fatal is None:
                self._fatal = err
            self._buf.clear()
            self._durable_cv.notify_all()
        return self._fatal or err

    # --------------------------------------------------------------- flusher

    def _run(self) -> None:
        try:
            self._run_groups()
        except Exception as exc:
            # A bug must not leave waiters blocked forever on a dead thread.
            logger.exception("WAL %s: flusher thread crashed", self._dir)
            self._enter_fatal(exc, "flusher thread")

    def _run_groups(self) -> None:
        while True:
            with self._mu:
                while not self._buf and not self._stopping:
                    self._work_cv.wait()
                if not self._buf:
                    return
            with self._io:
                durable = self._flush()
            if durable is None:
                continue
            # Replication hears of the group before rotation's fsyncs, not after.
            self._notify_listeners(durable)
            with self._io:
                if self._active.size > self._segment_bytes and not self.failed:
                    try:
                        self._seal()
                    except WalWriteError:
                        pass  # already fatal and logged
                    except OSError as exc:
                        logger.error("WAL %s: rotation failed: %s", self._dir, exc)

    def _flush(self) -> int | None:
        """Write and fsync everything buffered as one group (``_io`` held).

        Returns the new durable LSN, or None if nothing was made durable.
        """
        with self._mu:
            if not self._buf or self._fatal is not None:
                return None
            batch, self._buf = self._buf, []
            first, last = self._durable_lsn + 1, self._last_lsn
        data = b"".join(batch)
        if self._active.size + len(data) > self._segment_bytes:
            # This group fills wal.log: write the next header while it is fsynced.
            self._prepare_next(self._active.seq + 1, last + 1)
        try:
            self._ensure_active()
            assert self._fd is not None
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self._write_failed(exc, first)
            return None
        if self._fsync:
            t0 = time.monotonic()
            try:
                fd = self._fd
                self._sync_or_fail(lambda: _fdatasync(fd), "fdatasync")
            except WalWriteError:
                return None
            self._unsynced = False
            self.fsync_seconds = time.monotonic() - t0
            hook = self.on_fsync
            if hook is not None:
                try:
                    hook(self.fsync_seconds)
                except Exception:
                    logger.exception("WAL on_fsync hook failed")
        self._active.size += len(data)
        self._active.count += len(batch)
        with self._mu:
            self._durable_lsn = last
            self._durable_cv.notify_all()
        return last

    def _write_failed(self, exc: OSError, first: int) -> None:
        """Undo a failed group write; its records and later ones fail."""
        if self._fd is not None:
            self._unsynced = True
            try:
                os.ftruncate(self._fd, self._active.size)
            except OSError as trunc_exc:
                # Garbage would stay in front of every later record.
                self._enter_fatal(trunc_exc, f"truncate after a failed write ({exc})")
                return
        with self._mu:
            last = self._last_lsn
            err = WalWriteError(
                f"WAL write failed in {self._dir} ({_errno_name(exc)}: {exc}); "
                f"records {first}..{last} are not durable"
            )
            self._failures[self._gen] = (first, err)
            self._last_failure = (first, last, err)
            self._gen += 1
            self._buf.clear()
            self._last_lsn = self._durable_lsn
            self._durable_cv.notify_all()
        logger.error("%s", err)

    def _notify_listeners(self, durable: int) -> None:
        with self._mu:
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(durable)
            except Exception:
                logger.exception("WAL durable listener %r failed", fn)

    # ------------------------------------------------------------ properties

    @property
    def last_lsn(self) -> int:
        """Highest LSN appended, durable or not."""
        with self._mu:
            return self._last_lsn

    @property
    def durable_lsn(self) -> int:
        """Highest LSN known written and (unless fsync is off) fsynced."""
        with self._mu:
            return self._durable_lsn

    @property
    def first_lsn(self) -> int:
        """Lowest LSN the log can still return; ``last_lsn + 1`` if it is empty.

        ``records(after_lsn)`` is gap-free only for ``after_lsn >= first_lsn - 1``.
        """
        with self._io:
            return self._sealed[0].first_lsn if self._sealed else self._active.first_lsn

    @property
    def failed(self) -> bool:
        """True once an fsync failed: the log refuses writes until a restart."""
        with self._mu:
            return self._fatal is not None

    # ----------------------------------------------------------------- write

    def _check_writable(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._stopping:
            raise WalError(f"WAL {self._dir} is closed")

    def append(self, rtype: int, payload: bytes, term: int) -> int:
        """Buffer a record with the next LSN and return that LSN (an :class:`Lsn`).

        Not durable yet: use :meth:`wait_durable`. Raises ValueError for a bad
        type/term/size, WalWriteError if the log has failed, WalError if closed.
        """
        with self._mu:
            self._check_writable()
            lsn = self._last_lsn + 1
            self._buf.append(encode_record(lsn, term, rtype, payload))
            self._last_lsn = lsn
            self._work_cv.notify()
            return Lsn(lsn, self._gen)

    def append_at(self, lsn: int, term: int, rtype: int, payload: bytes) -> None:
        """Buffer a record at a given LSN (replicas); ValueError unless it is last_lsn + 1."""
        with self._mu:
            self._check_writable()
            if lsn != self._last_lsn + 1:
                raise ValueError(f"append_at lsn {lsn}, but the next LSN is {self._last_lsn + 1}")
            self._buf.append(encode_record(lsn, term, rtype, payload))
            self._last_lsn = lsn
            self._work_cv.notify()

    def wait_durable(self, lsn: int, timeout: float | None = None) -> bool:
        """Block until ``durable_lsn >= lsn``; False on timeout.

        Raises WalWriteError if that record's write or fsync failed. Pass the
        value :meth:`append` returned: after a write failure LSNs are reused,
        and only that value tells the failed record from its successor. For a
        plain int, a failed LSN raises only until it is reused.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        gen = getattr(lsn, "generation", None)
        with self._mu:
            while True:
                if gen is not None and gen < self._gen:
                    first_failed, err = self._failures[gen]
                    if lsn >= first_failed:
                        raise err
                    return True
                if gen is None and self._last_failure is not None:
                    first_failed, last_failed, err = self._last_failure
                    if first_failed <= lsn <= last_failed and lsn > self._last_lsn:
                        raise err
                if self._durable_lsn >= lsn:
                    return True
                if self._fatal is not None:
                    raise self._fatal
                if self._closed:
                    raise WalError(f"WAL {self._dir} is closed; lsn {int(lsn)} is not durable")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._durable_cv.wait(remaining)

    def sync(self) -> None:
        """Flush everything appended so far and wait until it is durable."""
        with self._mu:
            self._check_writable()
            target = Lsn(self._last_lsn, self._gen)
            self._work_cv.notify()
        self.wait_durable(target)

    def add_durable_listener(self, fn: Callable[[int], None]) -> None:
        """Call ``fn(durable_lsn)`` from the flusher thread after each successful group."""
        with self._mu:
            self._listeners.append(fn)

    # -------------------------------------------------------------- segments

    def rotate(self) -> None:
        """Flush buffered records, seal wal.log and start a new one.

        A no-op if wal.log holds no records. Records whose write fails (e.g.
        ENOSPC) are not sealed but do not stop the rotation, so a checkpoint
        can still free space. Raises WalWriteError if the log has failed or
        the rotation itself fails.
        """
        with self._mu:
            self._check_writable()
            target = Lsn(self._last_lsn, self._gen)
            self._work_cv.notify()
        try:
            # The flusher writes the group, so durable listeners keep being
            # called from that one thread, in order.
            self.wait_durable(target)
        except WalWriteError:
            if self.failed:
                raise
        with self._io:
            with self._mu:
                self._check_writable()
            try:
                if self._active.count:
                    self._seal()
                else:
                    self._ensure_active()
            except OSError as exc:
                raise WalWriteError(f"WAL rotation failed in {self._dir}: {exc}") from exc

    def drop_segments_through(self, lsn: int) -> int:
        """Delete sealed segments whose records all have LSN <= ``lsn``.

        wal.log is never deleted (its header keeps the LSN position). Returns
        the bytes freed; the directory is fsynced.
        """
        freed = 0
        with self._io:
            while self._sealed and self._sealed[0].last_lsn <= lsn:
                seg = self._sealed.pop(0)
                self._delete_sealed(seg)
                freed += seg.size
                logger.info("WAL %s: dropped %s", self._dir, seg.path.name)
        return freed

    def segment_paths(self) -> list[Path]:
        """Sealed segments in log order, then wal.log."""
        with self._io:
            return [s.path for s in self._sealed] + [self._active_path]

    def total_bytes(self) -> int:
        """Size of all segment files."""
        with self._io:
            return sum(s.size for s in self._sealed) + self._active_file_size()

    def active_bytes(self) -> int:
        """Size of wal.log."""
        with self._io:
            return self._active_file_size()

    def _active_file_size(self) -> int:
        try:
            return self._active_path.stat().st_size
        except FileNotFoundError:
            return 0

    # ------------------------------------------------------------------ read

    def records(self, after_lsn: int = 0) -> Iterator[WalRecord]:
        """Every durable record with ``lsn > after_lsn``, in order, read from disk.

        Bounded by ``durable_lsn`` at call time, so it is safe during appends
        and rotation (files are opened here, before returning). Records below
        ``first_lsn`` are gone; callers needing a gap-free stream check that.
        """
        with self._io:
            with self._mu:
                limit = self._durable_lsn
            return self._iter_records(after_lsn, limit)

    def _iter_records(self, after_lsn: int, limit: int) -> Iterator[WalRecord]:
        segs = [s for s in self._sealed if s.count and s.last_lsn > after_lsn]
        if limit > after_lsn and limit >= self._active.first_lsn:
            segs.append(self._active)
        return open_records(segs, after_lsn, limit)

    # ---------------------------------------------------------------- repair

    def truncate_after(self, lsn: int, keep_file: Path | None = None) -> list[WalRecord]:
        """Remove every record with LSN > ``lsn`` and return them (oldest first).

        If ``keep_file`` is given they are first written there, fsynced, in
        the segment format (seq 0, first_lsn ``lsn + 1``). Requires nothing
        buffered or in flight (call :meth:`sync` first, and stop appending);
        raises WalError otherwise. Afterwards ``last_lsn == lsn``. Iterators
        from :meth:`records` that are still running may end early.
        """
        self._check_quiescent()  # fail fast rather than wait behind an fsync
        with self._io:
            last = self._check_quiescent()
            lsn = max(lsn, 0)
            if lsn >= last:
                return []
            removed = list(self._iter_records(lsn, last))
            if keep_file is not None:
                keep = Path(keep_file)
                body = b"".join(encode_record(r.lsn, r.term, r.rtype, r.payload) for r in removed)
                write_file_synced(keep, encode_segment_header(0, lsn + 1) + body)
                fsync_dir(keep.parent)
            try:
                self._truncate_files(lsn + 1)
            except OSError as exc:
                raise WalWriteError(f"WAL truncate_after({lsn}) failed in {self._dir}: {exc}") from exc
            with self._mu:
                self._last_lsn = self._durable_lsn = lsn
            logger.warning("WAL %s: removed %d records after lsn %d", self._dir, len(removed), lsn)
            return removed

    def _check_quiescent(self) -> int:
        """Raise unless every appended record is durable; returns last_lsn."""
        with self._mu:
            self._check_writable()
            if self._buf or self._last_lsn != self._durable_lsn:
                raise WalError("truncate_after needs nothing buffered: stop appends and sync() first")
            return self._last_lsn

    def _truncate_files(self, target: int) -> None:
        """Make ``target`` the next LSN, removing records >= target (``_io`` held)."""
        first_on_disk = self._sealed[0].first_lsn if self._sealed else self._active.first_lsn
        if target < first_on_disk:
            self._reset(target)
        elif target >= self._active.first_lsn:
            self._ensure_active()
            fd = self._fd
            assert fd is not None
            res = scan_segment(self._active_path.read_bytes(), True, path=self._active_path)
            offset = res.offsets[target - self._active.first_lsn]
            os.ftruncate(fd, offset)
            self._sync_or_fail(lambda: os.fsync(fd), "fsync after truncation")
            self._active.count, self._active.size = target - self._active.first_lsn, offset
        else:
            idx = next(i for i, s in enumerate(self._sealed) if s.last_lsn >= target)
            seg = self._sealed[idx]
            res = scan_segment(seg.path.read_bytes(), False, path=seg.path)
            offset = res.offsets[target - seg.first_lsn]
            # Newest first, so every intermediate state is a valid log that
            # ends somewhere at or after ``target - 1``.
            self._close_active()
            self._active_path.unlink(missing_ok=True)
            fsync_dir(self._dir)
            while len(self._sealed) > idx + 1:
                self._delete_sealed(self._sealed.pop())
            os.truncate(seg.path, offset)
            seg_fd = os.open(seg.path, os.O_WRONLY)
            try:
                self._sync_or_fail(lambda: os.fsync(seg_fd), "fsync after truncation")
            finally:
                os.close(seg_fd)
            seg.count, seg.size = target - seg.first_lsn, offset
            self._install_active(seg.seq + 1, target)
        self._ensure_active()

    # ----------------------------------------------------------------- close

    def close(self) -> None:
        """Flush pending records, stop the flusher and close files. Idempotent."""
        with self._mu:
            self._stopping = True
            self._work_cv.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()
        with self._io:
            self._close_active()
            if self._take_prepared() is not None:
                (self._dir / TMP_NAME).unlink(missing_ok=True)  # never installed; tidy, not needed
            if self._prep_pool is not None:
                self._prep_pool.shutdown()
        with self._mu:
            self._closed = True
            self._durable_cv.notify_all()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
