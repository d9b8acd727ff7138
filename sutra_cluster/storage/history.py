"""The engine's operations on its log that come from, or serve, other nodes:
appending a leader's records, feeding a replica from memory, starting a term,
installing a snapshot and cutting a divergent tail. A mixin of ``Engine`` (kept
apart so that engine.py holds the local write and read paths); it uses the
engine's state and locks, declared below for the type checker."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import TYPE_CHECKING

from sutra_cluster.errors import StorageFailure
from sutra_cluster.pb import wal_pb2
from sutra_cluster.roles import MAX_TERM
from sutra_cluster.storage import annfile
from sutra_cluster.storage import checkpoint as ckpt
from sutra_cluster.storage.batch import batch_items, logged_body, request_fingerprint
from sutra_cluster.storage.tail import Entry, WalTail
from sutra_cluster.storage.wal import WalWriteError, WriteAheadLog, wal_files
from sutra_cluster.storage.wal_format import RT_BATCH, RT_TERM, WalRecord

if TYPE_CHECKING:
    from sutra_cluster.storage.engine import ReplicationHooks
    from sutra_cluster.storage.prepared import PreparedTxns
    from sutra_cluster.storage.state import GraphState
    from sutra_cluster.storage.terms import TermHistory
    from sutra_cluster.storage.vectors import VectorIndex

log = logging.getLogger(__name__)


class HistoryOps:
    dir: Path
    wal: WriteAheadLog
    terms: TermHistory
    recent: WalTail
    state: GraphState
    vectors: VectorIndex
    write_failure: str | None
    pending_items: int
    written: int
    applied_lsn: int
    checkpoint_lsn: int
    backup_lsn: int
    request_ids: OrderedDict[str, tuple[int, int]]
    txns: PreparedTxns
    _unapplied: deque[tuple[int, wal_pb2.WalBatch | None, int]]
    _hooks: ReplicationHooks | None
    _append_lock: threading.Lock
    _ckpt_lock: threading.Lock
    _lock: threading.RLock
    _applied: threading.Condition

    if TYPE_CHECKING:
        def _remember(self, request_id: str, lsn: int, fingerprint: int) -> None: ...
        def _on_write_failure(self, exc: WalWriteError) -> None: ...
        def _load_snapshot_file(self, path: Path) -> tuple[int, int]: ...
        def _open_wal(self, start_lsn: int) -> WriteAheadLog: ...
        def _load_checkpoint(self) -> tuple[int, int]: ...
        def _replay(self) -> int: ...

    def append_replicated(self, entries: list[tuple[int, int, int, bytes]]) -> int:
        """Append (lsn, term, rtype, payload) records streamed from the leader and
        make them durable with one fsync; returns the last LSN.

        Raises ValueError when an LSN is not the next one or a term goes
        backwards (the stream is then broken off and the data is unchanged).
        """
        if not entries:
            return self.wal.last_lsn
        with self._append_lock:
            if self.write_failure:
                raise StorageFailure(f"writes are disabled after a storage failure: {self.write_failure}")
            last_term = self.terms.last_term
            appended: list[tuple[int, wal_pb2.WalBatch | None, int]] = []
            for lsn, term, rtype, payload in entries:
                if term < last_term:
                    raise ValueError(f"record {lsn} has term {term}, older than term {last_term} before it")
                self.wal.append_at(lsn, term, rtype, payload, wake=False)  # flushed by our wait below
                if term > self.terms.last_term:
                    self.terms.begin(term, lsn)
                last_term = term
                batch = wal_pb2.WalBatch.FromString(payload) if rtype == RT_BATCH else None
                n = batch_items(batch) if batch is not None else 0
                if batch is not None:
                    self._remember(batch.request_id, lsn, request_fingerprint(logged_body(payload, batch)))
                self.txns.observe(rtype, payload, lsn, batch)  # prepared cross-shard parts (storage/prepared.py)
                self._unapplied.append((lsn, batch, n))
                appended.append((lsn, batch, n))
                self.pending_items += n
                self.recent.append(lsn, term, rtype, payload)
        last = entries[-1][0]
        try:
            self.wal.wait_durable(last)
        except WalWriteError as exc:
            self._on_write_failure(exc)
            raise StorageFailure(f"replicated records not durable: {exc}") from exc
        self.written += sum(n for _, _, n in appended)
        return last

    def read_after(self, lsn: int, max_bytes: int = 4 << 20, max_count: int = 4096,
                   upto: int | None = None) -> list[Entry] | None:
        """Records after ``lsn`` from memory, up to ``upto`` (default: the durable
        LSN); None when memory does not reach back that far (the caller then
        reads the WAL files)."""
        limit = self.wal.durable_lsn if upto is None else upto
        return self.recent.after(lsn, limit, max_bytes, max_count)

    def begin_term(self, term: int) -> int:
        """Start writing in ``term`` (promotion): log a term record and make it
        durable; returns its LSN. The caller has made this node the leader."""
        with self._append_lock:
            if term < self.terms.highest:
                raise ValueError(f"term {term} is older than term {self.terms.highest} already seen")
            if term > MAX_TERM:
                raise ValueError(f"term {term} is above the largest allowed term {MAX_TERM}")
            self.terms.begin(term, self.wal.last_lsn + 1)
            lsn = self.wal.append(RT_TERM, b"", term)
            self.recent.append(lsn, term, RT_TERM, b"")
            self._unapplied.append((lsn, None, 0))
        self.wal.wait_durable(lsn)
        return lsn

    def install_snapshot(self, path: Path) -> int:
        """Replace this node's whole state and history with a snapshot file
        (already fsynced); returns the snapshot's LSN. Used by replicas that
        are new, too far behind, or divergent. Crash-safe: the old WAL goes
        first, so an old tail can never be replayed on top of the snapshot.

        Nothing is deleted: the replaced WAL segments and checkpoints move to
        ``replaced-<time>/`` in the data directory (the previous such folder is
        removed), so a snapshot from a wrong or hostile leader costs no data
        the operator cannot recover, as the divergent-tail cut keeps its tail."""
        with self._ckpt_lock, self._append_lock, self._lock:
            with open(path, "rb") as f:
                header = ckpt.SnapshotDecoder(f, str(path)).header
            self.wal.close()
            # The old graph goes too: it is for the old state (the new one is built
            # in the background; GetStats' vector_index_ready says when it is).
            aside = self._set_aside([*wal_files(self.dir), self.dir / ckpt.STORAGE_FILE, self.dir / ckpt.BACKUP_FILE,
                                     self.dir / annfile.GRAPH_FILE])
            os.replace(path, self.dir / ckpt.STORAGE_FILE)
            ckpt.fsync_dir(self.dir)
            self.state.clear()
            self.vectors.clear()
            self._unapplied.clear()
            self.pending_items = 0
            self.recent.clear()
            self.txns.clear()
            self._load_installed(self.dir / ckpt.STORAGE_FILE)
            self.terms.reset(max(1, header.term), header.lsn)
            self.wal = self._open_wal(header.lsn)
            self.applied_lsn = self.checkpoint_lsn = header.lsn
            self.backup_lsn = 0
            self._applied.notify_all()
        log.info("installed snapshot at LSN %d (term %d); the replaced files are kept in %s", header.lsn,
                 header.term, aside)
        return header.lsn

    def _load_installed(self, path: Path) -> None:
        """Load an installed snapshot as a start loads storage.dat (Engine._load_checkpoint): without
        the cyclic collector walking the growing heap during the load, and frozen after it, so that a
        replica bootstrapped with a million concepts does not walk their two million records at each
        later full collection (pauses of about a second on the replication path)."""
        gc.collect()  # the replaced state's cycles go now: what is frozen below is what lives
        enabled = gc.isenabled()
        gc.disable()
        try:
            self._load_snapshot_file(path)
        finally:
            if enabled:
                gc.enable()
            gc.freeze()

    def _set_aside(self, files: list[Path]) -> Path:
        """Move ``files`` into a new ``replaced-<time>`` folder (fsynced), dropping
        the folder an earlier snapshot install left."""
        for old in self.dir.glob("replaced-*"):
            if old.is_dir():
                for f in old.iterdir():
                    f.unlink()
                old.rmdir()
        aside = self.dir / f"replaced-{time.time_ns()}"
        aside.mkdir()
        for f in files:
            if f.exists():
                os.replace(f, aside / f.name)
        ckpt.fsync_dir(aside)
        ckpt.fsync_dir(self.dir)
        return aside

    def rewind_to(self, lsn: int, keep_file: Path) -> int:
        """Cut every record after ``lsn`` (a divergent tail), keeping them in
        ``keep_file`` for the operator, and rebuild the state from the checkpoint
        and the remaining WAL; returns how many records were cut. Raises
        ValueError when the checkpoint is already past ``lsn`` (only a snapshot
        can help then).

        No rebuild when no cut record was applied and none is part of a
        cross-shard transaction: a sync replica applies only up to its leader's
        commit LSN, so a survivor outside the sync set that is ahead of the new
        leader has its tail appended, not applied. Only what appending did is
        undone then (``_forget_appended``), in O(records cut), where a rebuild
        replays everything since the checkpoint (seconds: docs/HA.md, Failover)."""
        with self._ckpt_lock, self._append_lock, self._lock:
            if self.checkpoint_lsn > lsn:
                raise ValueError(f"checkpoint at LSN {self.checkpoint_lsn} is past LSN {lsn}")
            cut = self.wal.truncate_after(lsn, keep_file)
            self.terms.truncate(lsn)
            # Sync mode only: a replica there applies nothing past its leader's commit LSN as last
            # reported (never lowered), and an acknowledged record is in every winner's log, so a
            # limit at or below the cut means no cut record was applied or is about to be.
            limit = self._hooks.visible_limit() if self._hooks is not None else None
            if limit is not None and limit <= lsn and self.applied_lsn <= lsn and self._forget_appended(lsn, cut):
                if cut:
                    log.warning("cut %d divergent record(s), LSN %d..%d (terms %s), kept in %s; none was "
                                "applied, so the state stays as it was", len(cut), cut[0].lsn, cut[-1].lsn,
                                sorted({r.term for r in cut}), keep_file)
                return len(cut)
            self.state.clear()
            self.vectors.clear()
            self._unapplied.clear()
            self.pending_items = 0
            self.recent.clear()
            self.request_ids.clear()
            self.txns.clear()
            self.applied_lsn = 0
            self.checkpoint_lsn, _ = self._load_checkpoint()
            if self.wal.first_lsn <= self.checkpoint_lsn:  # prepared parts logged before the checkpoint
                self.txns.rebuild(self.wal.records(0, wanted=self.txns.wants), self.checkpoint_lsn)
            self._replay()
            self._applied.notify_all()
        if cut:
            log.warning("cut %d divergent record(s), LSN %d..%d (terms %s), kept in %s; they are not served",
                        len(cut), cut[0].lsn, cut[-1].lsn, sorted({r.term for r in cut}), keep_file)
        return len(cut)

    def _forget_appended(self, lsn: int, cut: list[WalRecord]) -> bool:
        """Undo what appending the ``cut`` records (all after ``lsn``, none applied)
        did: their places in the apply queue and the pending count, their request
        ids (a retry of a cut write must be written again, not answered from its
        cut record), and the in-memory tail replicas are fed from. False, having
        changed nothing, when a cut record is not a plain batch or a term record
        (cross-shard transaction records: the caller rebuilds instead)."""
        for r in cut:
            if r.rtype == RT_TERM:
                continue
            if r.rtype != RT_BATCH or wal_pb2.WalBatch.FromString(r.payload).txn_id:
                return False
        while self._unapplied and self._unapplied[-1][0] > lsn:
            _, batch, n = self._unapplied.pop()
            self.pending_items -= n
            if batch is not None:  # a former leader's own write: the vectors it kept for the apply
                self.state.given.pop(id(batch), None)
        for rid in [rid for rid, (at, _) in self.request_ids.items() if at > lsn]:
            del self.request_ids[rid]
        self.recent.clear()  # a cache: a replica fed from here after the cut reads the WAL files
        return True
