"""The router's side of a cross-shard write: prepare every part, make the
decision durable, commit every part.

    1. PrepareTxn to each participant's leader, in parallel. Each logs an
       RT_PREPARE (durable, and acknowledged by its sync replicas in sync mode);
       the part is not visible and its concept ids are locked.
    2. Create /<cluster>/txns/<txn id> = commit in etcd: the commit point. If a
       recoverer created an abort first, the transaction is aborted.
    3. DecideTxn(commit) to each participant, in parallel: each logs the part as
       an ordinary batch (with txn_id), and the answer's LSNs are the client's
       read-your-writes token.

A prepare that fails aborts the parts already prepared (presumed abort: no
etcd write needed, nothing was decided) and the client is told to retry. A
router that dies after 1 leaves parts in doubt: each participant's resolver
(``txn.recovery``) creates the abort after SUTRA_TXN_TIMEOUT_MS. A router that
dies after 2 leaves a commit decision: the resolvers apply it. Either way no
client retry is needed; a retry with the same request id finds the same
transaction and answers with its outcome.

Fault injection for tests: SUTRA_FAULT_TXN=exit-after-prepare |
exit-after-decision | exit-after-first-commit makes the router process exit
(as a SIGKILL would) at that point.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from sutra_cluster.errors import SutraError, Unavailable
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import txn_pb2, txn_pb2_grpc
from sutra_cluster.txn.decision import DecisionStore, txn_id_for

if TYPE_CHECKING:
    from sutra_cluster.sharding.core import ShardSet

log = logging.getLogger(__name__)

FAULTS = ("exit-after-prepare", "exit-after-decision", "exit-after-first-commit")
MAX_ATTEMPTS = 100  # aborted attempts of one request id before the client must pick a new id


class TxnAborted(Unavailable):
    """The cross-shard batch was aborted: nothing of it was applied. Retry it."""

    reason = "txn-aborted"


class TxnCoordinator:
    """Runs cross-shard writes for one router. Thread-safe."""

    def __init__(self, store: DecisionStore, fault: str = "") -> None:
        if fault and fault not in FAULTS:
            raise ValueError(f"SUTRA_FAULT_TXN={fault!r}: expected one of {', '.join(FAULTS)}")
        self.store = store
        self.fault = fault

    @staticmethod
    def from_env(endpoints: Sequence[str], cluster: str, who: str,
                 env: Mapping[str, str] | None = None) -> TxnCoordinator:
        env = os.environ if env is None else env
        return TxnCoordinator(DecisionStore(endpoints, cluster, who), env.get("SUTRA_FAULT_TXN", "").strip())

    def close(self) -> None:
        self.store.close()

    def _die(self, point: str) -> None:
        if self.fault == point:
            log.error("fault injection: SUTRA_FAULT_TXN=%s, the router exits now", point)
            logging.shutdown()
            os._exit(137)

    @staticmethod
    def _call(ss: ShardSet, shard: int, method: str, request: Any) -> Any:
        return ss.links[shard].call(method, request, write=True, service=txn_pb2_grpc.TxnServiceStub)

    def run(self, ss: ShardSet, parts: Mapping[int, pb.LearnBatchRequest], request_id: str,
            client_id: bool) -> dict[int, int]:
        """Apply ``parts`` (shard -> part) on all their shards or on none; returns
        each shard's commit LSN. Raises TxnAborted when it was aborted (nothing
        applied), Unavailable when the decision is commit but a shard could not
        be told yet (it will apply it by itself: the write stands).

        With a client's request id the transaction id is derived from it, so a
        retry finds the same transaction: a committed one is answered (a prepare
        of a committed transaction is a no-op on every node, and the decision
        found is commit), and after an attempt a recoverer aborted, the next
        attempt id is used. The common path reads nothing from etcd: only a
        decision that comes back "abort" costs lookups."""
        shards = sorted(parts)
        attempt = 0
        while True:
            txn = txn_id_for(request_id, attempt) if client_id else f"t-{uuid.uuid4().hex[:24]}"
            done = self.store.get(txn) if attempt else None
            if done is None:
                self._prepare(ss, txn, parts, shards)
                self._die("exit-after-prepare")
                done = self.store.decide(txn, True, shards)
            if done.commit:
                self._die("exit-after-decision")
                return self._commit(ss, txn, shards)
            self._decide_all(ss, txn, shards, False, "aborted by recovery")
            attempt += 1
            if not client_id or attempt >= MAX_ATTEMPTS:
                raise TxnAborted(f"cross-shard batch {txn} was aborted by recovery (its prepare outlived "
                                 "SUTRA_TXN_TIMEOUT_MS before the decision); nothing was applied: retry it")

    def _prepare(self, ss: ShardSet, txn: str, parts: Mapping[int, pb.LearnBatchRequest],
                 shards: list[int]) -> None:
        def prep(s: int) -> int:
            r = txn_pb2.PrepareTxnRequest(txn_id=txn, part=parts[s], shards=shards)
            return int(self._call(ss, s, "PrepareTxn", r).sequence)

        try:
            ss._parallel(shards, prep)
        except (grpc.RpcError, SutraError) as exc:
            why = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.RpcError) else str(exc)  # type: ignore[attr-defined]
            self._decide_all(ss, txn, shards, False, f"prepare failed: {why}")
            raise TxnAborted(f"cross-shard batch {txn} aborted before its decision ({why}); nothing was "
                             "applied: retry it") from exc

    def _commit(self, ss: ShardSet, txn: str, shards: list[int]) -> dict[int, int]:
        first = True

        def commit(s: int) -> int:
            nonlocal first
            r = txn_pb2.DecideTxnRequest(txn_id=txn, commit=True, reply_when_logged=True)
            lsn = int(self._call(ss, s, "DecideTxn", r).sequence)
            if first:
                first = False
                self._die("exit-after-first-commit")
            return lsn

        try:
            done, _ = ss._parallel(shards, commit)
        except (grpc.RpcError, SutraError) as exc:
            why = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.RpcError) else str(exc)  # type: ignore[attr-defined]
            raise Unavailable(f"cross-shard batch {txn} is committed, but not every shard has applied it yet "
                              f"({why}); each shard applies it by itself. Retrying with the same request_id "
                              "answers with the shards' sequences") from exc
        return done

    def _decide_all(self, ss: ShardSet, txn: str, shards: Sequence[int], commit: bool, why: str) -> None:
        """Best effort (abort only): a shard not told now resolves the part itself."""
        def decide(s: int) -> int:
            r = txn_pb2.DecideTxnRequest(txn_id=txn, commit=commit)
            return int(self._call(ss, s, "DecideTxn", r).sequence)

        try:
            ss._parallel(shards, decide, allow_partial=True)
        except (grpc.RpcError, SutraError) as exc:
            log.warning("transaction %s: not every shard took the abort (%s); they resolve it themselves", txn, exc)
        log.info("transaction %s aborted on shards %s: %s", txn, list(shards), why)

    # ---- the router's write paths (sharding/core.py hands these over) ------
    @staticmethod
    def spans(ss: ShardSet, req: pb.LearnBatchRequest, parts: Mapping[int, pb.LearnBatchRequest]) -> bool:
        """Whether a batch needs a transaction: parts on two or more shards, or a
        delete (whose edges may live on every shard). A one-shard batch keeps the
        plain path and pays nothing."""
        return len(parts) > 1 or (bool(req.delete_concept_ids) and ss.shards > 1)

    def learn_batch(self, ss: ShardSet, req: pb.LearnBatchRequest, parts: Mapping[int, pb.LearnBatchRequest],
                    client_id: bool) -> dict[int, int]:
        """A split batch, atomically. A delete goes to every shard: its owner
        deletes the concept, every other shard removes its edges pointing at it."""
        parts = dict(parts)
        if req.delete_concept_ids:
            for s in range(ss.shards):
                p = parts.setdefault(s, pb.LearnBatchRequest(request_id=req.request_id))
                owned = set(p.delete_concept_ids)
                p.delete_concept_ids.extend(d for d in dict.fromkeys(req.delete_concept_ids) if d not in owned)
        return self.run(ss, parts, req.request_id, client_id)

    def delete_concept(self, ss: ShardSet, req: pb.DeleteConceptRequest, client_id: bool) -> dict[int, int]:
        """The concept on its shard and the edges pointing at it on every other, atomically."""
        parts = {s: pb.LearnBatchRequest(delete_concept_ids=[req.concept_id], request_id=req.request_id)
                 for s in range(ss.shards)}
        return self.run(ss, parts, req.request_id, client_id)


def for_router(endpoints: Sequence[str], cluster: str, router_id: str,
               env: Mapping[str, str] | None = None) -> TxnCoordinator | None:
    """The router's coordinator, or None: without etcd (no durable place for the
    decision) or with SUTRA_ROUTER_ATOMIC=off, cross-shard writes are atomic per
    shard only, as before (each part idempotent by request id)."""
    env = os.environ if env is None else env
    atomic = env.get("SUTRA_ROUTER_ATOMIC", "on").strip().lower() or "on"
    if atomic not in ("on", "off"):
        raise ValueError(f"SUTRA_ROUTER_ATOMIC={atomic!r}: expected on or off")
    if not endpoints or atomic == "off":
        return None
    return TxnCoordinator.from_env(endpoints, cluster, router_id, env)
