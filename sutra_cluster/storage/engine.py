"""The storage engine of one node: WAL, in-memory graph, vector index,
reconciler and checkpoints.

Write path: validate (api layer) -> append to the WAL -> wait for the group
fsync -> (replication's commit gate, in sync mode) -> acknowledge with the LSN.
The reconciler makes durable records visible to reads every
RECONCILE_INTERVAL_MS, in LSN order. Checkpoints write storage.dat and cut the WAL.

Over 450 lines, knowingly: the local write path, applying and reconciling,
checkpoints and reads all work under the same three locks and state, and
splitting them would spread that locking over modules. What comes from or
serves other nodes (replicated appends, terms, snapshot installs, divergent-tail
cuts) lives in ``history.py``.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from sutra_cluster.config import Config
from sutra_cluster.errors import InvalidArgument, NoLeader, NotLeader, NotVisible, StorageFailure, Unavailable
from sutra_cluster.metrics import NodeMetrics
from sutra_cluster.pb import wal_pb2
from sutra_cluster.roles import Role
from sutra_cluster.storage import annfile, lagtrace
from sutra_cluster.storage import checkpoint as ckpt
from sutra_cluster.storage.batch import batch_items, logged_body, request_fingerprint, same_request
from sutra_cluster.storage.history import HistoryOps
from sutra_cluster.storage.maintainer import release_free_heap
from sutra_cluster.storage.prepared import PreparedTxns, TxnOps
from sutra_cluster.storage.quant import vector_modes
from sutra_cluster.storage.state import DIGEST_VERSIONS, ApplyResult, Concept, GraphState, PathBound, iter_vectors
from sutra_cluster.storage.tail import WalTail
from sutra_cluster.storage.terms import TermHistory
from sutra_cluster.storage.vecstats import VectorCollector, vector_stats
from sutra_cluster.storage.vectors import VectorIndex
from sutra_cluster.storage.wal import WalRecord, WalWriteError, WriteAheadLog
from sutra_cluster.storage.wal_format import RT_BATCH

log = logging.getLogger(__name__)
RECORDS_MEMORY_TTL_S = 5.0  # how long records_memory keeps its estimate

REQUEST_IDS_KEPT = 200_000


class ReplicationHooks(Protocol):
    """What the engine asks of the layer above it (replication implements it).

    Declared here so that storage imports nothing above itself."""

    def wait_commit(self, lsn: int) -> None:
        """Block until ``lsn`` may be acknowledged (sync replicas, lease fence);
        raise ``Unavailable`` when it may not."""

    def visible_limit(self) -> int | None:
        """Highest LSN reads may see now (sync mode); None: whatever is durable."""

    def retain_floor(self, backup_lsn: int) -> int:
        """Highest LSN whose WAL a checkpoint may delete, given the backup's LSN."""


@dataclass(frozen=True)
class Leadership:
    """One term of leading. A write captures it when it is logged and is
    acknowledged only if the engine still holds the very same object."""

    term: int



class Engine(HistoryOps, TxnOps):
    """One node's storage. Thread-safe; every public method may be called from
    any gRPC worker thread."""

    def __init__(self, cfg: Config, metrics: NodeMetrics | None = None) -> None:
        self.cfg = cfg
        self.dir = Path(cfg.storage_path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics = metrics or NodeMetrics()
        self.state = GraphState()
        self.vectors = VectorIndex(cfg.vector_dimension, exact_limit=cfg.ann_threshold, index_yield=cfg.index_yield,
                                   index_quiet=cfg.index_quiet_ms / 1000, index_max_tail=cfg.index_max_tail,
                                   **vector_modes(cfg))  # SUTRA_VECTOR_STORAGE, SUTRA_QUANTIZATION
        self.state.store = self.vectors  # concepts read their one vector copy there
        self.graph_source = "none"  # where the HNSW graph came from at start (GetStats)
        self._lock = threading.RLock()  # guards state, vectors' consistency with applied_lsn
        self._applied = threading.Condition(self._lock)
        self._append_lock = threading.Lock()
        self._ckpt_lock = threading.Lock()
        self._unapplied: deque[tuple[int, wal_pb2.WalBatch | None, int]] = deque()
        self._stop = threading.Event()
        self._kick = threading.Event()
        self.started = time.monotonic()
        self._leadership: Leadership | None = None
        self._leader_address = cfg.leader
        self.recent = WalTail()
        self._records_memory: tuple[float, int] | None = None  # (when, bytes): records_memory's last estimate
        # Recent client request ids -> LSN, so a write retried across a failover applies once.
        self.request_ids: OrderedDict[str, tuple[int, int]] = OrderedDict()  # id -> (LSN, request fingerprint)
        self.terms = TermHistory(self.dir)
        self.txns = PreparedTxns()  # cross-shard parts prepared here and not yet decided
        self.durable_listeners: list[Callable[[int], None]] = []
        # Told each group's last LSN once it is in the log file, before its fsync:
        # a managed leader streams it to replicas while that fsync runs.
        self.written_listeners: list[Callable[[int], None]] = []
        self.applied_lsn = 0
        self.checkpoint_lsn = 0
        self.backup_lsn = 0
        self.written = 0
        self.dropped = 0
        self.reconciliations = 0
        self.flushes = 0
        self.pending_items = 0
        self.inflight = 0
        self._since_checkpoint = 0
        self._ckpt_thread: threading.Thread | None = None
        self.write_failure: str | None = None
        self.write_pause: str | None = None  # e.g. a switchover in progress
        # Called with every batch under the append lock, just before it is logged
        # (the shard guard installs it: resharding's fence, api/shard_guard.py).
        self.admit: Callable[[wal_pb2.WalBatch], None] | None = None
        self._read_fence: str | None = None  # reads refused (a rejoining node's history is unchecked)
        self._hooks: ReplicationHooks | None = None
        self._recover()
        self.metrics.add_gauges(self._gauges)
        self.metrics.registry.register(VectorCollector(self.vectors, self.records_memory))
        self._reconciler = threading.Thread(target=self._reconcile_loop, name="reconciler", daemon=True)
        self._reconciler.start()

    # ---- start-up -------------------------------------------------------
    def _recover(self) -> None:
        t0 = time.monotonic()
        ckpt.clean_temporaries(self.dir)
        self.checkpoint_lsn, ckpt_term = self._load_checkpoint()
        self.terms.observe(ckpt_term)
        self.wal = self._open_wal(self.checkpoint_lsn)
        if self.wal.last_lsn > self.checkpoint_lsn and self.wal.first_lsn > self.checkpoint_lsn + 1:
            raise StorageFailure(
                f"{self.dir}: the WAL starts at LSN {self.wal.first_lsn} but the checkpoint is at "
                f"{self.checkpoint_lsn}; records {self.checkpoint_lsn + 1}..{self.wal.first_lsn - 1} are missing"
            )
        if self.wal.first_lsn <= self.checkpoint_lsn:  # a prepare before the checkpoint is not in storage.dat
            self.txns.rebuild(self.wal.records(0, wanted=self.txns.wants), self.checkpoint_lsn)
        replayed = self._replay()
        log.info(
            "node %s recovered in %.2fs: checkpoint LSN %d, %d WAL records replayed, last LSN %d, term %d",
            self.cfg.node_id, time.monotonic() - t0, self.checkpoint_lsn, replayed, self.wal.last_lsn, self.term,
        )

    def _replay(self) -> int:
        """Apply every WAL record after the checkpoint; returns how many."""
        replayed = 0
        batch: list[WalRecord] = []
        for rec in self.wal.records(self.checkpoint_lsn):
            batch.append(rec)
            if len(batch) >= 1024:
                replayed += self._apply_records(batch)
                batch = []
        replayed += self._apply_records(batch)
        self.applied_lsn = max(self.applied_lsn, self.checkpoint_lsn, self.wal.last_lsn)
        return replayed

    def _open_wal(self, start_lsn: int) -> WriteAheadLog:
        wal = WriteAheadLog(
            self.dir, fsync=self.cfg.wal_fsync, segment_bytes=self.cfg.wal_segment_bytes,
            start_lsn=start_lsn,  # the WAL logs a cut tail itself, once
        )
        wal.on_fsync = self._on_fsync
        self._last_durable = wal.durable_lsn
        wal.add_durable_listener(self._on_durable)
        wal.add_written_listener(self._on_written)
        return wal

    def _on_durable(self, lsn: int) -> None:
        group = lsn - self._last_durable
        if group > 0:
            self.metrics.group_size.observe(group)  # records made durable by one fsync
        self._last_durable = lsn
        for fn in self.durable_listeners:
            fn(lsn)

    def _on_written(self, lsn: int) -> None:
        for fn in self.written_listeners:
            fn(lsn)

    @property
    def term(self) -> int:
        """The highest term this node has seen; a leader writes in it."""
        return self.terms.highest

    # ---- role: changed only through attach / lead / step_down / follow_leader ----
    def attach(self, hooks: ReplicationHooks) -> None:
        """Install the replication layer's hooks (once, before the node serves)."""
        self._hooks = hooks

    @property
    def role(self) -> Role:
        return Role.LEADER if self._leadership is not None else Role.REPLICA

    @property
    def leader_address(self) -> str:
        return self._leader_address

    @property
    def read_fence(self) -> str | None:
        """Why reads are refused now (a history not yet checked), or None."""
        return self._read_fence

    def lead(self, address: str) -> Leadership:
        """Acknowledge writes from now on, in the current term (a promotion has
        logged its term record with ``begin_term`` first); reads are served."""
        with self._append_lock:
            self._leadership = Leadership(self.term)
            self._leader_address = address
            self._read_fence = None
            return self._leadership

    def step_down(self, leader_address: str = "", fence_reads: str | None = None) -> bool:
        """Stop acknowledging writes at once; writes in flight fail their commit
        check. A former leader may hold a divergent tail, so its reads are fenced
        (``fence_reads`` says why) until a leader has checked its history.
        Returns whether this node was leading."""
        with self._append_lock:
            was = self._leadership is not None
            self._leadership = None
            self._leader_address = leader_address
            if fence_reads:
                self._read_fence = fence_reads
        return was

    def follow_leader(self, address: str) -> None:
        """Remember which leader this replica follows (for redirects)."""
        self._leader_address = address

    def fence_reads(self, reason: str) -> None:
        self._read_fence = reason

    def lift_read_fence(self) -> None:
        """A leader accepted this node's history: it is a prefix of the leader's."""
        self._read_fence = None

    def _load_checkpoint(self) -> tuple[int, int]:
        # A load makes a few objects per concept and frees none: the cyclic collector would walk the
        # growing heap again and again (~30 % of a 200K load's CPU). Frozen afterwards, the loaded
        # records also stay out of later full collections (pauses on the request path).
        enabled = gc.isenabled()
        gc.disable()
        try:
            with self.vectors.held():  # the maintainer must not build what a stored graph will give
                return self._load_checkpoint_files()
        finally:
            if enabled:
                gc.enable()
            gc.freeze()
            # The file's frames and the flat-store chunks an adopted graph replaced are free heap now;
            # the maintainer trimmed while the load held it, and with no work left it would not again
            # (measured: 430 MB kept at 100K, 2.6x raw instead of 1.6x).
            release_free_heap()

    def _load_checkpoint_files(self) -> tuple[int, int]:
        errors = []
        for name in (ckpt.STORAGE_FILE, ckpt.BACKUP_FILE):
            path = self.dir / name
            if not path.exists():
                continue
            try:
                loaded = self._load_snapshot_file(path)
            except (ckpt.SnapshotError, OSError) as exc:
                errors.append(str(exc))
                log.error("cannot load %s: %s; trying the previous checkpoint", path, exc)
                self.state.clear()
                self.vectors.clear()
                continue
            if errors:  # storage.dat is damaged and the backup loaded: keep the backup the backup
                ckpt.set_aside_damaged(self.dir)
            else:  # the graph stored with storage.dat, when it matches: no rebuild
                self.graph_source = annfile.adopt_stored_graph(self.dir, loaded[0], self.cfg.vector_dimension,
                                                               self.vectors)
            return loaded
        if errors:
            if not (self.dir / ckpt.BACKUP_FILE).exists() and len(errors) == 1:
                raise StorageFailure(errors[0])
            raise StorageFailure("no usable checkpoint: " + "; ".join(errors))
        return 0, 1

    def _load_snapshot_file(self, path: Path) -> tuple[int, int]:
        with open(path, "rb", buffering=1 << 20) as f:
            # The file is mapped and its frames are CRC-checked in place. Under SUTRA_VECTOR_STORAGE=mmap its
            # vector blocks become the flat store's chunks (no copy); under memory they are copied out of the
            # page cache once, into the chunks (a stored graph's storage), each frame's pages leave the
            # process once read (transient) and the mapping goes with the decoder: read through a reused
            # buffer instead, 3 GB at 1M concepts was copied twice.
            memory = getattr(self.vectors, "storage", "memory") != "mmap"
            dec = ckpt.SnapshotDecoder(f, str(path), reuse_buffer=True, mapped=True, transient=memory)
            if path.name == ckpt.STORAGE_FILE:  # its stored graph's storage receives the vectors: one copy
                annfile.reserve_graph_storage(self.dir, dec.header.lsn, self.cfg.vector_dimension, self.vectors)
            self._load_snapshot(dec)
        log.info("loaded %s at LSN %d (%d concepts, %d edges)", path, dec.header.lsn,
                 len(self.state.concepts), self.state.edges)
        return dec.header.lsn, max(1, dec.header.term)

    def _load_snapshot(self, dec: ckpt.SnapshotDecoder) -> None:
        dim = self.cfg.vector_dimension
        if dec.header.vector_dimension and dec.header.vector_dimension != dim:
            raise StorageFailure(
                f"{dec.where} holds {dec.header.vector_dimension}-dimension vectors, VECTOR_DIMENSION is {dim}"
            )
        for chunk in dec:
            vec = ApplyResult({}, set())
            self.state.load_chunk(chunk, vec)
            for keys, mat, norms in vec.blocks:  # storage.dat v2's columns: views of the mapped file, if mapped
                self.vectors.upsert(keys, mat, norms, mapped=dec.mapped)
            for keys, mat, norms in iter_vectors(vec.upserts, dim):
                self.vectors.upsert(keys, mat, norms)

    def _on_fsync(self, seconds: float) -> None:
        self.metrics.fsync_latency.observe(seconds)

    # ---- applying records ------------------------------------------------
    def _apply_records(self, records: list[WalRecord]) -> int:
        """Apply durable records (recovery, replicas); returns how many."""
        if not records:
            return 0
        entries = []
        for r in records:
            if r.rtype == RT_BATCH:
                b = wal_pb2.WalBatch.FromString(r.payload)
                entries.append((r.lsn, b, batch_items(b)))
                self._remember(b.request_id, r.lsn, request_fingerprint(logged_body(r.payload, b)))
                if b.txn_id:
                    self.txns.observe(r.rtype, r.payload, r.lsn, b)
            else:
                entries.append((r.lsn, None, 0))
                self.txns.observe(r.rtype, r.payload, r.lsn)
            if r.term > self.terms.last_term:
                self.terms.begin(r.term, r.lsn)
        self._apply_entries(entries)
        return len(records)

    def _apply_entries(self, entries: list[tuple[int, wal_pb2.WalBatch | None, int]]) -> None:
        vec = ApplyResult({}, set())
        with self._lock:
            self.state.apply_batches([batch for _lsn, batch, _n in entries if batch is not None], vec)
            items = sum(n for _lsn, _batch, n in entries)
            if vec.removes:
                self.vectors.remove(vec.removes)
            for keys, mat, norms in iter_vectors(vec.upserts, self.cfg.vector_dimension):
                self.vectors.upsert(keys, mat, norms)
            self.applied_lsn = entries[-1][0]
            self._since_checkpoint += items
            self._applied.notify_all()
        if lagtrace.ON:
            lagtrace.mark("visible", entries[-1][0])

    def reconcile_once(self) -> int:
        """Make every committed record visible; returns how many were applied.

        Each entry is asked by its own LSN (which carries the write generation)
        whether it is durable, failed or still pending: a failed record's LSN may
        already be reused by a later, durable one.
        """
        limit = self._hooks.visible_limit() if self._hooks is not None else None
        entries = []
        dropped_items = 0
        with self._append_lock:
            while self._unapplied:
                lsn, _, n = self._unapplied[0]
                if limit is not None and lsn > limit:
                    break
                try:
                    if not self.wal.wait_durable(lsn, timeout=0):
                        break
                except WalWriteError:
                    dropped_items += n
                    self._unapplied.popleft()
                    continue
                entries.append(self._unapplied.popleft())
            self.pending_items -= dropped_items + sum(e[2] for e in entries)
        if not entries:
            return 0
        self._apply_entries(entries)
        self.reconciliations += 1
        return len(entries)

    def _reconcile_loop(self) -> None:
        interval = self.cfg.reconcile_interval_ms / 1000.0
        while not self._stop.is_set():
            self._kick.wait(interval)
            self._kick.clear()
            try:
                self.reconcile_once()
                if self._since_checkpoint >= self.cfg.memory_threshold and not self.write_failure:
                    self._start_background_checkpoint()
            except Exception:  # a bug here must not silently stop visibility
                log.exception("reconciler failed")

    def _start_background_checkpoint(self) -> None:
        if self._ckpt_thread is not None and self._ckpt_thread.is_alive():
            return
        self._ckpt_thread = threading.Thread(target=self._auto_checkpoint, name="checkpoint", daemon=True)
        self._ckpt_thread.start()

    def _auto_checkpoint(self) -> None:
        try:
            self.checkpoint()
        except Exception:
            log.exception("automatic checkpoint failed; the WAL still holds every write")

    # ---- writes ----------------------------------------------------------
    def check_writable(self) -> None:
        if self._leadership is None:
            if not self.leader_address:
                raise NoLeader(f"this node ({self.cfg.node_id}) is a replica and no leader is known yet "
                               "(an election or an etcd outage); retry")
            raise NotLeader(
                f"this node ({self.cfg.node_id}) is a replica; send writes to the leader at {self.leader_address}")
        if self.write_failure:
            raise StorageFailure(f"writes are disabled after a storage failure: {self.write_failure}")
        if self._stop.is_set():
            raise Unavailable("node is shutting down")
        if self.write_pause:
            raise Unavailable(f"writes paused for {self.write_pause}; retry shortly")

    def pause_writes(self, why: str) -> None:
        with self._append_lock:
            self.write_pause = why

    def resume_writes(self) -> None:
        with self._append_lock:
            self.write_pause = None

    def submit(self, batch: wal_pb2.WalBatch, raw: bytes | None = None, vectors: np.ndarray | None = None) -> int:
        """Log a validated batch and return its LSN once it is committed.

        Raises NotLeader on a replica, Unavailable when the write could
        not be made durable (it is then not acknowledged and may be retried).
        ``raw``, when given, is ``batch`` as serialized bytes: it is logged as it
        is, with the timestamp field appended (protobuf keeps the last value).
        ``vectors``: the (concepts, dim) float32 matrix of every concept's
        ``embedding_f32``, in order, as validation read it (GraphState.give_vectors).
        """
        t0 = time.perf_counter()
        self.check_writable()
        with self._append_lock:
            self.inflight += 1
        try:
            return self._submit(batch, t0, raw, vectors)
        finally:
            with self._append_lock:
                self.inflight -= 1

    def _remember(self, request_id: str, lsn: int, fingerprint: int) -> None:
        if request_id:
            self.request_ids[request_id] = (lsn, fingerprint)
            if len(self.request_ids) > REQUEST_IDS_KEPT:
                self.request_ids.popitem(last=False)

    def _submit(self, batch: wal_pb2.WalBatch, t0: float, raw: bytes | None,
                vectors: np.ndarray | None = None) -> int:
        rid = batch.request_id
        ts = time.time_ns() // 1000
        body = raw or batch.SerializeToString()  # the request as logged, before the timestamp
        fp = request_fingerprint(body)
        batch.timestamp_us = ts
        payload = body + wal_pb2.WalBatch(timestamp_us=ts).SerializeToString()
        items = batch_items(batch)
        with self._append_lock:
            self.check_writable()
            self.txns.check(batch)  # a concept held by a prepared cross-shard part: TxnLocked
            if self.admit is not None:
                self.admit(batch)  # a key frozen for a reshard's cutover, or no longer this shard's
            # The leadership this write is logged under: it is acknowledged only
            # if the engine still holds this very term when the commit is done.
            lead = self._leadership
            assert lead is not None  # check_writable ran under the same lock
            term = lead.term
            earlier = same_request(rid, self.request_ids.get(rid), fp) if rid else None
            if earlier is None:
                lsn = self.wal.append(RT_BATCH, payload, term, wake=False)  # we wait below: this thread flushes
                self._remember(rid, lsn, fp)
                self.recent.append(lsn, term, RT_BATCH, payload)
                if vectors is not None:
                    self.state.give_vectors(batch, vectors)
                self._unapplied.append((lsn, batch, items))
                self.pending_items += items
        if earlier is not None:
            # A retry of a write this cluster already logged (perhaps by a former
            # leader): answer with its LSN once committed, and log nothing new.
            self.wal.wait_durable(earlier)
            self._commit(earlier, lead)
            return earlier
        try:
            self.wal.wait_durable(lsn)
        except WalWriteError as exc:
            self._on_write_failure(exc)
            self.dropped += items
            self.metrics.write_errors.labels("wal").inc(items)
            raise Unavailable(f"write not acknowledged: {exc}") from exc
        try:
            self._commit(lsn, lead)
        except Unavailable:
            self.dropped += items
            self.metrics.write_errors.labels("replication").inc(items)
            raise
        self.written += items
        self.metrics.writes.inc(items)
        self.metrics.write_latency.observe(time.perf_counter() - t0)
        return lsn

    def _commit(self, lsn: int, lead: Leadership) -> None:
        """Everything between durability and the acknowledgement: replication's
        commit wait (sync replicas and the lease fence), then a last check that
        this node still holds the leadership the write was logged under."""
        if self._hooks is not None:
            self._hooks.wait_commit(lsn)
        if self._leadership is not lead:
            raise Unavailable(f"leadership changed before LSN {lsn} was acknowledged (term {lead.term} -> "
                              f"{self.term}, role {self.role}); the write was NOT acknowledged: retry it")

    def _on_write_failure(self, exc: WalWriteError) -> None:
        # Fail-stop, as PostgreSQL does: after a WAL write failure the node takes
        # no more writes until restarted (reads go on). So failed LSNs are never
        # reused, and replication and the reconciler can trust LSN numbers.
        # The reconciler discards the failed records themselves (see reconcile_once).
        self.write_failure = str(exc)
        log.error("node %s: WAL write failed, write not acknowledged: %s", self.cfg.node_id, exc)

    # ---- checkpoints -----------------------------------------------------
    def checkpoint(self, drain: bool = False) -> int:
        """Write storage.dat at the applied LSN and cut the WAL; returns that LSN.

        With ``drain``, everything committed so far is applied first, so the new
        wal.log holds nothing but its header (the guide's "< 1 KB after flush").
        """
        with self._ckpt_lock:
            if drain:
                self.reconcile_once()
            graph: list[annfile.GraphCapture | None] = []
            header, blocks = self.snapshot_blocks(graph)
            lsn = header.lsn
            self.wal.rotate()
            self._fault_step("wal-rotated")
            size = ckpt.write_checkpoint(self.dir, blocks, self.cfg.wal_fsync, self._fault_step)
            annfile.persist_graph(self.dir, graph[0], lsn, self.cfg.vector_dimension, self.cfg.wal_fsync)
            previous = self.checkpoint_lsn
            self.backup_lsn, self.checkpoint_lsn = previous, lsn
            self._since_checkpoint = 0
            floor = previous if self._hooks is None else self._hooks.retain_floor(previous)
            if self.txns.oldest_lsn():  # keep the segment of an undecided prepare
                floor = min(floor, self.txns.oldest_lsn() - 1)
            freed = self.wal.drop_segments_through(floor)
            self._fault_step("segments-dropped")
            self.flushes += 1
            self.metrics.flushes.inc()
            log.info("checkpoint at LSN %d: storage.dat %d bytes, %d WAL bytes freed", lsn, size, freed)
            return lsn

    def _fault_step(self, step: str) -> None:
        """Fault injection for crash tests: SUTRA_FAULT_CHECKPOINT_PAUSE=step:ms
        pauses the checkpoint at that step so a test can SIGKILL the process there."""
        spec = os.environ.get("SUTRA_FAULT_CHECKPOINT_PAUSE", "")
        name, _, ms = spec.partition(":")
        if name == step:
            log.warning("fault injection: checkpoint paused at step %s for %s ms", step, ms)
            time.sleep(int(ms or "0") / 1000.0)

    def snapshot_blocks(
        self, graph_out: list[annfile.GraphCapture | None] | None = None,
    ) -> tuple[wal_pb2.SnapshotHeader, Iterator[bytes]]:
        """A consistent snapshot of the applied state, for a replica or a backup.
        With ``graph_out``, the HNSW graph captured with it is appended there."""
        with self._lock:
            lsn = self.applied_lsn
            concepts, edges = self.state.capture()
            vectors = self.vectors.stored_batches(ckpt.CHUNK_CONCEPTS)  # captured with the state, read later
            if graph_out is not None:
                graph_out.append(self.vectors.capture_graph())
            term = self.terms.term_at(lsn) or self.term
        header = wal_pb2.SnapshotHeader(
            lsn=lsn, term=term, concepts=len(concepts), edges=len(edges),
            vector_dimension=self.cfg.vector_dimension, created_at_us=time.time_ns() // 1000,
            node_id=self.cfg.node_id,
        )
        # Under mmap the rows are file pages, read back from disk after the kernel drops them: hash
        # them again rather than write damage done to a file since it was checked (tests/test_review_s20_mapped.py).
        verify = getattr(self.vectors, "storage", "memory") == "mmap"
        return header, self._fail_stop_on_damage(ckpt.encode_snapshot(header, concepts, edges, vectors, verify=verify))

    def _fail_stop_on_damage(self, blocks: Iterator[bytes]) -> Iterator[bytes]:
        """Pass ``blocks`` on; a vector found damaged while they are encoded
        makes this node fail-stop for writes, as a WAL write failure does: it is
        then unhealthy to the HA loop, so a replica with good copies takes over
        its leadership, and no automatic checkpoint retries the refused one."""
        try:
            yield from blocks
        except ckpt.DamagedVector as exc:
            self.write_failure = str(exc)
            log.error("node %s: %s", self.cfg.node_id, exc)
            raise

    # ---- reads -----------------------------------------------------------
    def wait_visible(self, sequence: int, timeout_s: float | None = None) -> None:
        """Return once ``sequence`` is visible to reads; raise NotVisible (a DeadlineExceeded) otherwise,
        and Unavailable while this node may hold a divergent history."""
        if self.read_fence:
            raise Unavailable(f"{self.cfg.node_id} serves no reads yet: {self.read_fence}")
        if sequence <= self.applied_lsn:
            return
        wait = self.cfg.read_wait_ms / 1000.0 if timeout_s is None else timeout_s
        self._kick.set()
        with self._applied:
            if not self._applied.wait_for(lambda: self.applied_lsn >= sequence, wait):
                raise NotVisible(
                    f"sequence {sequence} is not visible on {self.cfg.node_id} after {wait * 1000:.0f} ms "
                    f"(applied LSN {self.applied_lsn}); SUTRA_READ_WAIT_MS is {self.cfg.read_wait_ms}"
                )

    def get_concept(self, cid: str) -> Concept | None:
        self.wait_txns((cid,))  # a concept of a cross-shard transaction being committed: its outcome
        return self.state.concepts.get(cid)

    def embedding(self, cid: str) -> bytes:
        """A concept's original vector as little-endian float32 (within float
        rounding: one normalised copy and its norm are kept), b"" when none."""
        vec = self.vectors.get(cid)
        return b"" if vec is None else vec.astype("<f4").tobytes()

    def neighbors(self, cid: str, outgoing: bool = True, incoming: bool = True) -> list[tuple[str, int, float, bool]]:
        self.wait_txns((cid,))  # its edges may be in a cross-shard transaction being committed
        with self._lock:
            return self.state.neighbors(cid, outgoing, incoming)

    def neighbor_count(self, ids: list[str], outgoing: bool, incoming: bool) -> int:
        """How many neighbours ``neighbors`` would return for all of ``ids`` (cheap: no copies)."""
        with self._lock:
            return sum(self.state.neighbor_count(cid, outgoing, incoming) for cid in ids)

    def find_path(self, start: str, end: str, depth: int, max_visits: int | None = None,
                  max_ms: int | None = None) -> list[str] | None:
        """GraphState.find_path, bounded by ``max_visits`` and ``max_ms`` (ResourceExhausted
        past them). The search lets go of the state lock every few hundred steps, so a
        long search never holds back visibility of writes or other reads."""
        visits = self.cfg.max_path_visits if max_visits is None else max_visits
        ms = self.cfg.max_path_ms if max_ms is None else max_ms
        lock = self._lock

        def pause() -> None:
            lock.release()
            time.sleep(0)  # let a thread waiting on the lock take it now
            lock.acquire()

        bound = PathBound(visits, ms, time.monotonic() + ms / 1000.0, pause)
        with lock:
            return self.state.find_path(start, end, depth, bound)

    def search(
        self, query: np.ndarray, k: int, ef_search: int = 0, *,
        where: Mapping[str, Collection[str]] | None = None, score_threshold: float | None = None,
    ) -> tuple[list[tuple[str, float]], bool]:
        """Top-k ``[(concept_id, cosine)]`` and whether the answer is exact.

        ``where`` keeps only concepts whose attributes match: for every key the
        concept's value is one of the listed values (ANDed across keys; a str
        value counts as one value; an empty list matches nothing; None or {}
        means no filter). The answer is the top-k *among matching concepts*,
        not a filtered global top-k. ``score_threshold`` drops hits below that
        cosine. Raises ValueError for a bad query vector.
        """
        self.wait_txns_all()  # no shard's part of a cross-shard transaction shown without this one's
        if not where:
            return self.vectors.search(query, k, ef_search, score_threshold=score_threshold)
        with self._lock:
            allowed = self.state.matching(where)
        hits, exact = self.vectors.search(query, k, ef_search, allowed=allowed, score_threshold=score_threshold)
        with self._lock:  # a concept re-attributed meanwhile must not slip through
            return [h for h in hits if self.state.matches(h[0], where)], exact

    def digest(self, sequence: int = 0, version: int | None = None) -> tuple[int, str, int, int]:
        """(applied LSN, sha256 hex, concepts, edges) of the state, consistent.
        ``version``: the digest version (GraphState.digest; None: this build's).
        Raises InvalidArgument for a version this build does not know."""
        self.wait_visible(sequence)
        if version is not None and version not in DIGEST_VERSIONS:
            raise InvalidArgument(f"digest_version {version} is not one of {', '.join(map(str, DIGEST_VERSIONS))}")
        with self._lock:
            return self.applied_lsn, self.state.digest(version), len(self.state.concepts), self.state.edges

    def stats(self) -> dict[str, int | str]:
        return {
            "concepts": len(self.state.concepts), "edges": self.state.edges, "written": self.written,
            "dropped": self.dropped, "pending": max(0, self.pending_items),
            "reconciliations": self.reconciliations, "uptime_seconds": int(time.monotonic() - self.started),
            "vectors": len(self.vectors), "last_lsn": self.wal.last_lsn, "durable_lsn": self.wal.durable_lsn,
            "applied_lsn": self.applied_lsn, "checkpoint_lsn": self.checkpoint_lsn, "role": self.role,
            "term": self.term, "node_id": self.cfg.node_id, "wal_bytes": self.wal.total_bytes(),
            "flushes": self.flushes, "leader": self.leader_address, "shard": self.cfg.shard,
            **vector_stats(self.vectors, self.graph_source, self.records_memory()),
        }

    def records_memory(self) -> int:
        """Estimated heap bytes of the concept records, associations and attribute
        index (GraphState.memory_estimate): part of GetStats' metadata. Kept for
        RECORDS_MEMORY_TTL_S: the estimate takes several ms under the lock the
        apply path needs, and every GetStats and every scrape asks for it."""
        now = time.monotonic()
        if self._records_memory is None or now - self._records_memory[0] > RECORDS_MEMORY_TTL_S:
            with self._lock:
                self._records_memory = (now, self.state.memory_estimate())
        return self._records_memory[1]

    def _gauges(self) -> dict[str, tuple[str, float]]:
        return {
            "sutra_concepts": ("Concepts visible to reads", len(self.state.concepts)),
            "sutra_edges": ("Associations visible to reads", self.state.edges),
            "sutra_vectors": ("Vectors in the search index", len(self.vectors)),
            "sutra_vector_index_pending": ("Vectors not yet in the ANN index (searched exactly meanwhile)",
                                           self.vectors.stats().get("pending", 0)),
            "sutra_pending_writes": ("Acknowledged writes not yet visible to reads", max(0, self.pending_items)),
            "sutra_wal_size_bytes": ("Bytes in all WAL segments", self.wal.total_bytes()),
            "sutra_wal_active_size_bytes": ("Bytes in wal.log, the active segment", self.wal.active_bytes()),
            "sutra_last_lsn": ("Highest LSN in the WAL", self.wal.last_lsn),
            "sutra_applied_lsn": ("Highest LSN visible to reads", self.applied_lsn),
            "sutra_checkpoint_lsn": ("LSN of storage.dat", self.checkpoint_lsn),
            "sutra_term": ("Current term", self.term),
            "sutra_is_leader": ("1 when this node takes writes", 1 if self.role == Role.LEADER else 0),
        }

    # ---- shutdown --------------------------------------------------------
    def close(self) -> None:
        """Stop background work after flushing every buffered WAL record."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._kick.set()
        self._reconciler.join(timeout=10)
        if self._ckpt_thread is not None:
            self._ckpt_thread.join(timeout=60)
        self.wal.close()
        self.vectors.close()
        log.info("node %s closed at LSN %d", self.cfg.node_id, self.wal.last_lsn)
