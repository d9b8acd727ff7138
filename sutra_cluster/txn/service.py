"""A node's TxnService: the participant side of a cross-shard write, over the
engine's prepared-part table (``storage.prepared``). Validation happens here,
before anything is logged, as for LearnBatch."""

from __future__ import annotations

import re
import time

import grpc

from sutra_cluster.api import validate as model
from sutra_cluster.api.shard_guard import ShardGuard
from sutra_cluster.api.status import grpc_errors
from sutra_cluster.errors import InvalidArgument
from sutra_cluster.pb import txn_pb2, txn_pb2_grpc, wal_pb2
from sutra_cluster.sharding.shardmap import MAX_SHARDS
from sutra_cluster.storage.engine import Engine

TXN_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def check_txn_id(txn_id: str) -> None:
    # It names an etcd key: a closed alphabet, bounded.
    if not TXN_ID.match(txn_id):
        raise InvalidArgument(f"txn_id {txn_id[:80]!r} must be 1..64 characters of [A-Za-z0-9._-]")


class TxnServicer(txn_pb2_grpc.TxnServiceServicer):
    def __init__(self, engine: Engine, guard: ShardGuard | None = None) -> None:
        self.engine = engine
        cfg = engine.cfg
        self.limits = model.Limits(cfg.vector_dimension, cfg.max_batch, cfg.max_message_bytes)
        self.guard = guard or ShardGuard(cfg)
        engine.metrics.add_gauges(self._gauges)

    def _gauges(self) -> dict[str, tuple[str, float]]:
        open_ = self.engine.txns.snapshot()
        oldest = time.monotonic() - min(p.since for p in open_) if open_ else 0.0
        return {
            "sutra_txn_prepared": ("Cross-shard parts prepared on this node and not yet decided", len(open_)),
            "sutra_txn_oldest_prepared_seconds": ("How long the oldest undecided cross-shard part has waited "
                                                  "(resolved from etcd after SUTRA_TXN_TIMEOUT_MS)", oldest),
        }

    @grpc_errors
    def PrepareTxn(self, request: txn_pb2.PrepareTxnRequest, context: grpc.ServicerContext) -> txn_pb2.PrepareTxnResponse:
        check_txn_id(request.txn_id)
        shards = list(request.shards)
        if not shards or len(shards) > MAX_SHARDS or len(set(shards)) != len(shards):
            raise InvalidArgument(f"shards has {len(shards)} entries; it must list each participant shard once "
                                  f"(1..{MAX_SHARDS})")
        if self.engine.cfg.shard not in shards:
            raise InvalidArgument(f"shards {shards} does not name this node's shard {self.engine.cfg.shard}")
        batch = wal_pb2.WalBatch.FromString(request.part.SerializeToString())
        model.check_batch(batch, self.limits)
        # Concepts and edges must be owned here; a delete of another shard's
        # concept is the purge of this shard's edges that point at it.
        for c in batch.concepts:
            self.guard.check(c.concept_id)
        for a in batch.associations:
            self.guard.check(a.source_id)
        prep = wal_pb2.WalPrepare(txn_id=request.txn_id, batch=batch, shards=shards)
        return txn_pb2.PrepareTxnResponse(sequence=self.engine.prepare_txn(prep))

    @grpc_errors
    def DecideTxn(self, request: txn_pb2.DecideTxnRequest, context: grpc.ServicerContext) -> txn_pb2.DecideTxnResponse:
        check_txn_id(request.txn_id)
        lsn = self.engine.decide_txn(request.txn_id, request.commit, "decided by the coordinator",
                                     wait=not request.reply_when_logged)
        return txn_pb2.DecideTxnResponse(sequence=lsn)

    @grpc_errors
    def ListTxns(self, request: txn_pb2.ListTxnsRequest, context: grpc.ServicerContext) -> txn_pb2.ListTxnsResponse:
        now = time.monotonic()
        return txn_pb2.ListTxnsResponse(open=[
            txn_pb2.OpenTxn(txn_id=p.txn_id, prepare_sequence=p.lsn, shards=p.shards, age_seconds=now - p.since,
                            items=len(p.batch.concepts) + len(p.batch.associations) + len(p.batch.delete_concept_ids))
            for p in self.engine.txns.snapshot()])
