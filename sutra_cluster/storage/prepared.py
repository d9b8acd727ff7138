"""Prepared cross-shard transactions on one node: the table, its locks, and
the leader's prepare / commit / abort.

A cross-shard batch is split by the router into one part per shard. Each
participant's leader logs its part in an ``RT_PREPARE`` record (durable and
replicated per the commit mode, but not applied), then, once the decision is
durable in etcd, either an ``RT_BATCH`` with ``txn_id`` set (commit: applied
and visible like any batch) or an ``RT_TXN_ABORT``. See docs/HA.md
"Cross-shard atomic writes" and docs/wal_format.md section 11.

The table is rebuilt from the WAL on every node (leader, replica, restart), by
the same hooks that apply records, so a replica that becomes leader holds the
same in-doubt transactions its old leader held.

Locks: while a part is prepared, the concept ids it names (concepts, both ends
of associations, deletes) are locked. A later write that names one is refused
with ``TxnLocked`` (UNAVAILABLE, reason ``txn-locked``, naming the transaction):
routers and clients retry it, so in practice it waits the few milliseconds the
commit takes. A prepare that names a locked id is refused with ``TxnConflict``
(not retried by the router's links, so two transactions never wait on each
other: the router aborts and the caller retries).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sutra_cluster.errors import FailedPrecondition, NotFound, Unavailable
from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage.batch import batch_items, logged_body, request_fingerprint
from sutra_cluster.storage.wal import WalRecord, WalWriteError, WriteAheadLog
from sutra_cluster.storage.wal_format import RT_BATCH, RT_PREPARE, RT_TXN_ABORT

if TYPE_CHECKING:
    from sutra_cluster.config import Config
    from sutra_cluster.storage.engine import Leadership
    from sutra_cluster.storage.tail import WalTail

log = logging.getLogger(__name__)

DECIDED_KEPT = 100_000  # outcomes remembered, so a repeated decide answers with the same LSN


class TxnLocked(Unavailable):
    """A write names a concept id held by a prepared transaction; retry it shortly."""

    reason = "txn-locked"


class TxnConflict(FailedPrecondition):
    """A prepare names a concept id another prepared transaction holds."""

    reason = "txn-conflict"


@dataclass(frozen=True)
class Prepared:
    txn_id: str
    lsn: int
    batch: wal_pb2.WalBatch
    shards: tuple[int, ...]
    keys: frozenset[str]
    since: float  # time.monotonic() when this node saw the prepare


def batch_keys(batch: wal_pb2.WalBatch) -> frozenset[str]:
    """The concept ids a batch writes: concepts, both ends of each association, deletes."""
    keys = {c.concept_id for c in batch.concepts}
    for a in batch.associations:
        keys.add(a.source_id)
        keys.add(a.target_id)
    keys.update(batch.delete_concept_ids)
    return frozenset(keys)


class PreparedTxns:
    """The prepared (undecided) transactions of one node and their locks.

    Mutated under the engine's append lock (or single-threaded at recovery);
    readers take a copy."""

    def __init__(self) -> None:
        self.open: dict[str, Prepared] = {}
        self.locks: dict[str, str] = {}  # concept id -> txn id
        self.decided: OrderedDict[str, tuple[bool, int]] = OrderedDict()  # txn id -> (committed, LSN)
        self._mu = threading.Lock()
        self._resolved = threading.Condition(self._mu)  # readers waiting for a held concept

    def __len__(self) -> int:
        return len(self.open)

    def clear(self) -> None:
        with self._mu:
            self.open.clear()
            self.locks.clear()
            self.decided.clear()
            self._resolved.notify_all()

    def wait_released(self, keys: Iterable[str], timeout_s: float) -> int:
        """Wait until no prepared part holds any of ``keys``; returns the LSN of
        the outcome (commit or abort record) of the last part that held one, 0
        when none did. Raises TxnLocked after ``timeout_s``."""
        keys = list(keys)
        deadline = time.monotonic() + timeout_s
        outcome = 0
        with self._mu:
            while True:
                held = next((t for k in keys if (t := self.locks.get(k)) is not None), None)
                if held is None:
                    return outcome
                left = deadline - time.monotonic()
                if left <= 0 or not self._resolved.wait(left):
                    raise TxnLocked(f"a concept this read names is held by the prepared cross-shard transaction "
                                    f"{held} for over {timeout_s * 1000:.0f} ms (SUTRA_READ_WAIT_MS); retry shortly")
                done = self.decided.get(held)
                if done is not None:
                    outcome = max(outcome, done[1])

    def wait_open_resolved(self, timeout_s: float) -> int:
        """Wait until every part prepared at the call has its outcome; returns the
        LSN of the last outcome, 0 when none was open. Raises TxnLocked after
        ``timeout_s``. Parts prepared after the call are not waited for, so a
        steady stream of transactions cannot starve the caller."""
        deadline = time.monotonic() + timeout_s
        with self._mu:
            waiting = set(self.open)
            outcome = 0
            while True:
                for txn in [t for t in waiting if t not in self.open]:
                    waiting.discard(txn)
                    done = self.decided.get(txn)
                    if done is not None:
                        outcome = max(outcome, done[1])
                if not waiting:
                    return outcome
                left = deadline - time.monotonic()
                if left <= 0 or not self._resolved.wait(left):
                    raise TxnLocked(f"the prepared cross-shard transaction {min(waiting)} is undecided for over "
                                    f"{timeout_s * 1000:.0f} ms (SUTRA_READ_WAIT_MS); retry shortly")

    # ---- what the log says -------------------------------------------------
    def observe(self, rtype: int, payload: bytes, lsn: int, batch: wal_pb2.WalBatch | None = None) -> None:
        """Follow one appended or replayed record (any type; cheap for plain batches)."""
        if rtype == RT_BATCH:
            if batch is not None and batch.txn_id:
                self.resolve(batch.txn_id, True, lsn)
        elif rtype == RT_PREPARE:
            self.add(wal_pb2.WalPrepare.FromString(payload), lsn)
        elif rtype == RT_TXN_ABORT:
            self.resolve(wal_pb2.WalTxnAbort.FromString(payload).txn_id, False, lsn)

    def add(self, prep: wal_pb2.WalPrepare, lsn: int) -> None:
        keys = batch_keys(prep.batch)
        with self._mu:
            old = self.open.pop(prep.txn_id, None)
            if old is not None:
                self._unlock(old)
            self.decided.pop(prep.txn_id, None)  # prepared again after an abort without a decision
            self.open[prep.txn_id] = Prepared(prep.txn_id, lsn, prep.batch, tuple(prep.shards), keys,
                                              time.monotonic())
            for k in keys:
                self.locks[k] = prep.txn_id

    def resolve(self, txn_id: str, committed: bool, lsn: int) -> None:
        with self._mu:
            p = self.open.pop(txn_id, None)
            if p is not None:
                self._unlock(p)
            self.decided[txn_id] = (committed, lsn)
            self.decided.move_to_end(txn_id)
            while len(self.decided) > DECIDED_KEPT:
                self.decided.popitem(last=False)
            if p is not None:
                self._resolved.notify_all()

    def _unlock(self, p: Prepared) -> None:
        for k in p.keys:
            if self.locks.get(k) == p.txn_id:
                del self.locks[k]

    # ---- questions ---------------------------------------------------------
    def holder(self, batch: wal_pb2.WalBatch, own: str = "") -> str | None:
        """The transaction (other than ``own``) holding a concept id ``batch`` writes, or None."""
        if not self.locks:
            return None
        for k in batch_keys(batch):
            t = self.locks.get(k)
            if t is not None and t != own:
                return t
        return None

    def check(self, batch: wal_pb2.WalBatch) -> None:
        """Raise TxnLocked when a plain write names a locked concept id (O(1) with nothing prepared)."""
        if not self.locks:
            return
        t = self.holder(batch, batch.txn_id)
        if t is not None:
            raise TxnLocked(f"a concept this write names is locked by the prepared cross-shard transaction {t}; "
                            "retry shortly (it commits or aborts within SUTRA_TXN_TIMEOUT_MS)")

    def oldest_lsn(self) -> int:
        """LSN of the oldest undecided prepare (0: none): a checkpoint keeps its WAL segment."""
        with self._mu:
            return min((p.lsn for p in self.open.values()), default=0)

    def snapshot(self) -> list[Prepared]:
        with self._mu:
            return sorted(self.open.values(), key=lambda p: p.lsn)

    def wants(self, rtype: int) -> bool:
        """The records ``rebuild`` reads the payload of (the others it only passes):
        at a start after the first checkpoint, the WAL before it is all bulk
        batches, whose payloads need not be read again (3 GB at 1M concepts)."""
        return rtype in (RT_PREPARE, RT_TXN_ABORT) or (rtype == RT_BATCH and bool(self.open))

    def rebuild(self, records: Iterable[WalRecord], upto: int) -> int:
        """Follow the transaction records at or below ``upto`` (the checkpoint LSN):
        a prepare before the checkpoint is not in storage.dat. Returns how many were read."""
        n = 0
        for r in records:
            if r.lsn > upto:
                break
            if r.rtype in (RT_PREPARE, RT_TXN_ABORT):
                self.observe(r.rtype, r.payload, r.lsn)
                n += 1
            elif r.rtype == RT_BATCH and self.open:
                b = wal_pb2.WalBatch.FromString(r.payload)
                if b.txn_id:
                    self.observe(r.rtype, r.payload, r.lsn, b)
        return n


class TxnOps:
    """The leader's side: prepare, commit, abort. A mixin of ``Engine`` (as
    ``HistoryOps`` is): it logs through the engine's WAL, locks and commit gate."""

    wal: WriteAheadLog
    txns: PreparedTxns
    recent: WalTail
    _append_lock: threading.Lock
    _unapplied: deque[tuple[int, wal_pb2.WalBatch | None, int]]
    _leadership: Leadership | None
    pending_items: int

    cfg: Config

    if TYPE_CHECKING:
        def wait_visible(self, sequence: int, timeout_s: float | None = None) -> None: ...
        def check_writable(self) -> None: ...
        def _remember(self, request_id: str, lsn: int, fingerprint: int) -> None: ...
        def _commit(self, lsn: int, lead: Leadership) -> None: ...
        def _on_write_failure(self, exc: WalWriteError) -> None: ...

    def prepare_txn(self, prep: wal_pb2.WalPrepare) -> int:
        """Log ``prep`` as prepared and return its LSN once committed (durable,
        and acknowledged by the sync replicas in sync mode). A repeated prepare
        of an open transaction answers with the first LSN, of a committed one
        with the commit's LSN (nothing is logged). Raises TxnConflict
        when another prepared transaction holds one of its concept ids, and what
        ``submit`` raises (NotLeader, Unavailable) otherwise."""
        self.check_writable()
        if not prep.prepared_at_us:
            prep.prepared_at_us = time.time_ns() // 1000
        with self._append_lock:
            self.check_writable()
            lead = self._leadership
            assert lead is not None  # check_writable ran under the same lock
            got = self.txns.open.get(prep.txn_id)
            if got is not None:
                lsn = got.lsn
            else:
                done = self.txns.decided.get(prep.txn_id)
                if done is not None and done[0]:
                    return done[1]  # a retry of a committed transaction: nothing to log
                admit = getattr(self, "admit", None)  # the shard guard's fence (resharding), if installed
                if admit is not None:
                    # Concepts and edge sources only: a delete may be the purge of another shard's concept.
                    admit(wal_pb2.WalBatch(concepts=prep.batch.concepts, associations=prep.batch.associations))
                holder = self.txns.holder(prep.batch, prep.txn_id)
                if holder is not None:
                    raise TxnConflict(f"transaction {prep.txn_id}: a concept it writes is locked by the prepared "
                                      f"transaction {holder}; retry the batch")
                payload = prep.SerializeToString()
                lsn = self._log(RT_PREPARE, payload, lead.term)
                self.txns.add(prep, lsn)
        self._durable_and_committed(lsn, lead)
        return lsn

    def decide_txn(self, txn_id: str, commit: bool, reason: str = "", wait: bool = True) -> int:
        """Commit (apply) or abort (drop) a prepared part; returns the LSN of the
        commit or abort record once committed (a commit without ``wait``: once
        logged). The caller made the decision durable first. A repeated decide answers with the first outcome's LSN;
        the opposite outcome for a decided transaction raises FailedPrecondition,
        and a commit of a transaction this node never prepared raises NotFound."""
        self.check_writable()
        got = self.txns.open.get(txn_id)
        if got is None:
            done = self.txns.decided.get(txn_id)
            if done is None:
                if not commit:
                    return 0  # nothing prepared here: aborting it changes nothing
                raise NotFound(f"transaction {txn_id} is not prepared on this node; it cannot be committed here")
            if done[0] != commit:
                raise FailedPrecondition(f"transaction {txn_id} is already {'committed' if done[0] else 'aborted'} "
                                         f"here at sequence {done[1]}")
            return done[1]
        if commit:
            # The commit record is the part as an ordinary batch (with txn_id), so
            # replay and replicas apply it like any batch. It is logged here, not
            # through submit: the part was checked and locked when prepared, and
            # those locks kept every other write off its concepts since.
            b = wal_pb2.WalBatch()
            b.CopyFrom(got.batch)
            b.txn_id = txn_id
            b.timestamp_us = time.time_ns() // 1000
            rtype, payload, items = RT_BATCH, b.SerializeToString(), batch_items(b)
        else:
            b, items = None, 0
            rtype, payload = RT_TXN_ABORT, wal_pb2.WalTxnAbort(txn_id=txn_id, reason=reason[:200]).SerializeToString()
        with self._append_lock:
            self.check_writable()
            lead = self._leadership
            assert lead is not None
            if txn_id not in self.txns.open:  # decided meanwhile (a concurrent decide)
                done = self.txns.decided.get(txn_id)
                if done is None or done[0] != commit:
                    raise FailedPrecondition(f"transaction {txn_id} was decided otherwise meanwhile ({done})")
                lsn = done[1]
            else:
                lsn = self.wal.append(rtype, payload, lead.term)
                self.recent.append(lsn, lead.term, rtype, payload)
                self._unapplied.append((lsn, b, items))
                if b is not None:
                    self._remember(b.request_id, lsn, request_fingerprint(logged_body(payload, b)))
                    self.pending_items += items
                self.txns.resolve(txn_id, commit, lsn)
        if commit and not wait:
            return lsn
        self._durable_and_committed(lsn, lead)
        return lsn

    def _log(self, rtype: int, payload: bytes, term: int) -> int:
        """Append a record that applies nothing (caller holds the append lock)."""
        lsn = self.wal.append(rtype, payload, term)
        self.recent.append(lsn, term, rtype, payload)
        self._unapplied.append((lsn, None, 0))
        return lsn

    def wait_txns(self, keys: Iterable[str]) -> None:
        """Before a read by key: wait until no prepared part holds ``keys`` and
        the outcome of any that did is visible here, so a reader never sees one
        shard's part of a committed transaction and then another shard without
        its part. Free when nothing is prepared. Raises TxnLocked (retryable)
        after SUTRA_READ_WAIT_MS."""
        if not self.txns.locks:
            return
        lsn = self.txns.wait_released(keys, self.cfg.read_wait_ms / 1000.0)
        if lsn:
            self.wait_visible(lsn)

    def wait_txns_all(self) -> None:
        """Before a scan, a count or a vector search (reads that name no key):
        wait until every part prepared when the read began has its outcome
        visible here, so the read does not show this shard without its part of a
        transaction another shard has already committed. Free when nothing is
        prepared. Raises TxnLocked (retryable) after SUTRA_READ_WAIT_MS."""
        if not self.txns.open:
            return
        lsn = self.txns.wait_open_resolved(self.cfg.read_wait_ms / 1000.0)
        if lsn:
            self.wait_visible(lsn)

    def _durable_and_committed(self, lsn: int, lead: Leadership) -> None:
        try:
            self.wal.wait_durable(lsn)
        except WalWriteError as exc:
            self._on_write_failure(exc)
            raise Unavailable(f"transaction record not acknowledged: {exc}") from exc
        self._commit(lsn, lead)
