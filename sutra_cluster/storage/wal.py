"""Write-ahead log: the opener and the group-committing writer.

Format and crash-recovery rules: ``docs/wal_format.md``. Constants and
codecs: :mod:`sutra_cluster.storage.wal_format`; the reader, which only
finds: :mod:`sutra_cluster.storage.wal_reader`; the segment files and every
change to them: :mod:`sutra_cluster.storage.wal_segments`. This module
decides: what to do with what the reader found (repair a torn tail once, or
refuse when strict), when a group is written and acknowledged, and when a
segment is sealed.

Locking: ``_io`` serialises every file mutation (flush, rotation, drops,
truncation) and guards the segment files; ``_mu`` guards the in-memory state
(buffer, LSNs, failures) and backs both condition variables. ``_io`` is
always taken before ``_mu`` and ``_mu`` is never held across I/O, so appends
never wait for a disk write. ``_notify_mu`` orders the durable listeners.
Written listeners run under ``_io``, between a group's write and its fsync:
one group at a time, in order, and a managed leader's feeders send the group
while its fsync runs (``written_lsn``).

Group commit without a thread hop: a writer that appended with ``wake=False``
and then blocks in :meth:`wait_durable` writes and fsyncs the whole buffered
group itself when no flush is running (LevelDB's writer queue does the same),
instead of waking the flusher thread and sleeping until it is done. Writers
arriving during that fsync wait, and the first of them flushes the next group.
Waiting writers are woken one by one, only when their record is durable or
they are to write the next group (:mod:`sutra_cluster.storage.wal_waiters`).
The flusher thread still writes whatever nobody waits for (``wake=True``
appends, a timer as the safety net) and handles close.

About 500 lines on purpose: the writer's two locks, two condition variables
and write generations are one discipline, best read in one place.
"""

from __future__ import annotations

import errno as errno_mod
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

from sutra_cluster.storage import lagtrace
from sutra_cluster.storage.fsio import fsync_dir, write_file_synced
from sutra_cluster.storage.wal_format import (
    SEALED_DIR,
    Lsn,
    WalCorruptionError,
    WalError,
    WalRecord,
    WalWriteError,
    encode_record,
    encode_segment_header,
)
from sutra_cluster.storage.wal_reader import DropCallback, LogDir, load_log_dir, scan_segment
from sutra_cluster.storage.wal_segments import SegmentFiles, repair_torn_tail, wal_files
from sutra_cluster.storage.wal_waiters import Waiters

FSYNC_GATE = "fsync.gate"  # see WriteAheadLog._hold_at_gate

__all__ = [
    "Lsn",
    "WalCorruptionError",
    "WalError",
    "WalRecord",
    "WalWriteError",
    "WriteAheadLog",
    "repair_torn_tail",
    "scan_segment",
    "wal_files",
]

logger = logging.getLogger(__name__)

# The flusher thread's check for records nobody waits for (appended with
# wake=False by a writer that then failed before waiting): they become durable
# at most this late. A record someone waits for is flushed at once.
_IDLE_FLUSH_S = 0.05


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
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._on_dropped = on_dropped
        self._strict = strict
        #: duration of the last fsync of a record group, in seconds
        self.fsync_seconds = 0.0
        #: optional metrics hook, called with each group fsync's duration
        self.on_fsync: Callable[[float], None] | None = None
        # Fault injection for crash tests: see _hold_at_gate.
        self._gate = self._dir / FSYNC_GATE if os.environ.get("SUTRA_FAULT_FSYNC_GATE") == "1" else None

        self._io = threading.Lock()
        self._mu = threading.Lock()
        self._notify_mu = threading.Lock()
        self._notified = 0  # highest durable LSN the listeners were told
        self._flushing = False  # a group is being written (by the flusher or a waiting writer)
        self._work_cv = threading.Condition(self._mu)
        self._durable_cv = threading.Condition(self._mu)  # the flusher's wait at close
        self._waiters = Waiters()
        self._buf: list[bytes] = []
        self._gen = 0
        # generation -> (first failed LSN, error) for each write failure
        self._failures: dict[int, tuple[int, WalWriteError]] = {}
        self._last_failure: tuple[int, int, WalWriteError] | None = None
        self._fatal: WalWriteError | None = None
        self._stopping = False
        self._closed = False
        self._listeners: list[Callable[[int], None]] = []
        self._written_listeners: list[Callable[[int], None]] = []

        self._segs = SegmentFiles(self._dir, fsync=fsync, fatal=self._enter_fatal)  # guarded by _io
        self._recover(start_lsn)
        self._last_lsn = self._durable_lsn = self._written_lsn = self._segs.active.last_lsn
        self._thread = threading.Thread(target=self._run, name="wal-flusher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ open

    def _recover(self, start_lsn: int) -> None:
        created = not self._dir.exists()
        (self._dir / SEALED_DIR).mkdir(parents=True, exist_ok=True)
        if created:
            fsync_dir(self._dir.parent)
        self._segs.adopt(self._load_repaired(), start_lsn)

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

    # --------------------------------------------------------------- failure

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
            self._wake_writers(everyone=True)
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
                while (not self._buf or self._flushing) and not self._stopping:
                    # The timer flushes records appended with wake=False whose
                    # writer never came to wait (it failed between append and wait).
                    self._work_cv.wait(_IDLE_FLUSH_S)
                if self._stopping:
                    while self._flushing:  # a writer's group is in flight: it finishes first
                        self._durable_cv.wait()
                if not self._buf:
                    return
                self._flushing = True
            try:
                self._flush_group()
            finally:
                with self._mu:
                    self._flushing = False
                    self._wake_writers()

    def _flush_group(self) -> None:
        """Write and fsync the buffered group, tell the listeners, and seal a
        full wal.log. Called with ``_flushing`` set (one group at a time)."""
        with self._io:
            durable = self._flush()
        if durable is None:
            return
        # Replication hears of the group before rotation's fsyncs, not after.
        self._notify_listeners(durable)
        with self._io:
            if self._segs.active.size > self._segment_bytes and not self.failed:
                try:
                    self._segs.seal()
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
        segs = self._segs
        if segs.active.size + len(data) > self._segment_bytes:
            # This group fills wal.log: write the next header while it is fsynced.
            segs.prepare_next(last + 1)
        try:
            segs.write(data)
        except OSError as exc:
            self._write_failed(exc, first)
            return None
        with self._mu:
            self._written_lsn = last
            written = list(self._written_listeners)
        for fn in written:  # in the file now: only an fsync failure (fatal) or power loss can undo it
            try:
                fn(last)
            except Exception:
                logger.exception("WAL written listener %r failed", fn)
        if self._gate is not None:
            self._hold_at_gate(first, last)
        if self._fsync:
            t0 = time.monotonic()
            try:
                segs.sync_data()
            except WalWriteError:
                return None
            self.fsync_seconds = time.monotonic() - t0
            hook = self.on_fsync
            if hook is not None:
                try:
                    hook(self.fsync_seconds)
                except Exception:
                    logger.exception("WAL on_fsync hook failed")
        segs.committed(len(data), len(batch))
        with self._mu:
            self._durable_lsn = last
            self._wake_writers()
        return last

    def _hold_at_gate(self, first: int, last: int) -> None:
        """Fault injection for crash tests (``SUTRA_FAULT_FSYNC_GATE=1``): while a
        file ``fsync.gate`` is in the log's folder, a written group waits before its
        fsync, and ``fsync.gate.json`` says where the log file's durable bytes end,
        so a test can SIGKILL the process and cut the file there, as losing the
        machine would (``_io`` is held: no later group is written meanwhile)."""
        gate = self._gate
        if gate is None or not gate.exists():
            return
        where = {"path": str(self._segs.active_path), "durable_size": self._segs.active.size,
                 "first_lsn": first, "last_lsn": last}
        gate.with_name(FSYNC_GATE + ".json").write_text(json.dumps(where))
        logger.warning("fault injection: WAL %s: records %d..%d written, fsync held while %s exists",
                       self._dir, first, last, gate.name)
        while gate.exists():
            time.sleep(0.01)

    def _write_failed(self, exc: OSError, first: int) -> None:
        """Undo a failed group write; its records and later ones fail."""
        try:
            self._segs.undo_write()
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
            self._wake_writers(everyone=True)
        logger.error("%s", err)

    def _notify_listeners(self, durable: int) -> None:
        # Groups may be flushed by different threads: listeners hear of each
        # durable LSN once, in order, one call at a time.
        with self._notify_mu:
            if durable <= self._notified:
                return
            self._notified = durable
            if lagtrace.ON:
                lagtrace.mark("durable", durable)
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
    def written_lsn(self) -> int:
        """Highest LSN written to the log file, fsynced or not. A failed write is
        undone and its LSNs reused; a written record is lost only with the
        process's machine (power, kernel) or a failed fsync, which is fatal."""
        with self._mu:
            return self._written_lsn  # set before each fsync, with durable_lsn when the log is cut

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
            return self._segs.first_lsn

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

    def append(self, rtype: int, payload: bytes, term: int, *, wake: bool = True) -> int:
        """Buffer a record with the next LSN and return that LSN (an :class:`Lsn`).

        Not durable yet: use :meth:`wait_durable`. ``wake=False``: the caller
        is about to wait for it, and then writes the group itself (see the
        module docstring); the flusher thread is not woken. Raises ValueError
        for a bad type/term/size, WalWriteError if the log has failed, WalError
        if closed.
        """
        # The CRC pass and copy run outside the lock, for the LSN this append
        # will most likely get (the engine serialises its appends); re-encoded
        # under the lock if another append took it first.
        guess = self._last_lsn + 1
        record = encode_record(guess, term, rtype, payload)
        with self._mu:
            self._check_writable()
            lsn = self._last_lsn + 1
            if lsn != guess:
                record = encode_record(lsn, term, rtype, payload)
            self._buf.append(record)
            self._last_lsn = lsn
            if wake:
                self._work_cv.notify()
            return Lsn(lsn, self._gen)

    def append_at(self, lsn: int, term: int, rtype: int, payload: bytes, *, wake: bool = True) -> None:
        """Buffer a record at a given LSN (replicas); ValueError unless it is
        last_lsn + 1. ``wake``: as for :meth:`append`."""
        record = encode_record(lsn, term, rtype, payload)
        with self._mu:
            self._check_writable()
            if lsn != self._last_lsn + 1:
                raise ValueError(f"append_at lsn {lsn}, but the next LSN is {self._last_lsn + 1}")
            self._buf.append(record)
            self._last_lsn = lsn
            if wake:
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
                if timeout is None and self._buf and not self._flushing and not self._stopping:
                    self._flush_as_writer()  # releases and re-takes _mu
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._waiters.sleep(self._mu, lsn, timeout is None, remaining)

    def _wake_writers(self, everyone: bool = False) -> None:
        """(``_mu`` held) Wake the writers whose record is durable, the first one
        that may write a buffered group nobody writes, or (``everyone``) all."""
        self._durable_cv.notify_all()
        if self._waiters:
            self._waiters.wake(self._durable_lsn, bool(self._buf) and not self._flushing, everyone)

    def _flush_as_writer(self) -> None:
        """Flush the buffered group from a waiting writer's thread (``_mu`` held
        on entry and on return, released meanwhile). Only blocking waits do
        this: a poll (timeout 0, e.g. the reconciler under the engine's append
        lock) must never end up in an fsync."""
        self._flushing = True
        self._mu.release()
        try:
            self._flush_group()
        except Exception as exc:
            # As in the flusher thread: a bug must not leave waiters blocked.
            logger.exception("WAL %s: a writer's group flush failed", self._dir)
            self._enter_fatal(exc, "group flush")
        finally:
            self._mu.acquire()
            self._flushing = False
            self._wake_writers()  # and the first writer waiting for the next group writes it

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

    def add_written_listener(self, fn: Callable[[int], None]) -> None:
        """Call ``fn(written_lsn)`` from the flushing thread once a group is in the
        log file, before its fsync (which it delays by as long as ``fn`` takes)."""
        with self._mu:
            self._written_listeners.append(fn)

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
                if self._segs.active.count:
                    self._segs.seal()
                else:
                    self._segs.ensure_active()
            except OSError as exc:
                raise WalWriteError(f"WAL rotation failed in {self._dir}: {exc}") from exc

    def drop_segments_through(self, lsn: int) -> int:
        """Delete sealed segments whose records all have LSN <= ``lsn``.

        wal.log is never deleted (its header keeps the LSN position). Returns
        the bytes freed; the directory is fsynced.
        """
        with self._io:
            dropped = self._segs.drop_through(lsn)
        for seg in dropped:
            logger.info("WAL %s: dropped %s", self._dir, seg.path.name)
        return sum(seg.size for seg in dropped)

    def segment_paths(self) -> list[Path]:
        """Sealed segments in log order, then wal.log."""
        with self._io:
            return self._segs.paths()

    def total_bytes(self) -> int:
        """Size of all segment files."""
        with self._io:
            return self._segs.total_bytes()

    def active_bytes(self) -> int:
        """Size of wal.log."""
        with self._io:
            return self._segs.active_bytes()

    # ------------------------------------------------------------------ read

    def records(self, after_lsn: int = 0, wanted: Callable[[int], bool] | None = None) -> Iterator[WalRecord]:
        """Every durable record with ``lsn > after_lsn``, in order, read from disk.

        Bounded by ``durable_lsn`` at call time, so it is safe during appends
        and rotation (files are opened here, before returning). Records below
        ``first_lsn`` are gone; callers needing a gap-free stream check that.
        ``wanted(rtype)`` False: that record comes with an empty payload, skipped
        unread and not CRC-checked again (``wal_reader.iter_file_records``).
        """
        with self._io:
            with self._mu:
                limit = self._durable_lsn
            return self._segs.records(after_lsn, limit, wanted)

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
            removed = list(self._segs.records(lsn, last))
            if keep_file is not None:
                keep = Path(keep_file)
                body = b"".join(encode_record(r.lsn, r.term, r.rtype, r.payload) for r in removed)
                write_file_synced(keep, encode_segment_header(0, lsn + 1) + body)
                fsync_dir(keep.parent)
            try:
                self._segs.truncate_from(lsn + 1)
            except OSError as exc:
                raise WalWriteError(f"WAL truncate_after({lsn}) failed in {self._dir}: {exc}") from exc
            with self._mu:
                self._last_lsn = self._durable_lsn = self._written_lsn = lsn
            logger.warning("WAL %s: removed %d records after lsn %d", self._dir, len(removed), lsn)
            return removed

    def _check_quiescent(self) -> int:
        """Raise unless every appended record is durable; returns last_lsn."""
        with self._mu:
            self._check_writable()
            if self._buf or self._last_lsn != self._durable_lsn:
                raise WalError("truncate_after needs nothing buffered: stop appends and sync() first")
            return self._last_lsn

    # ----------------------------------------------------------------- close

    def close(self) -> None:
        """Flush pending records, stop the flusher and close files. Idempotent."""
        with self._mu:
            self._stopping = True
            self._work_cv.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()
        with self._io:
            self._segs.close()
        with self._mu:
            self._closed = True
            self._wake_writers(everyone=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
