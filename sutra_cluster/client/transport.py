"""How the sync client reaches the cluster: one address, one shard's leader
through etcd, or every shard routed in process. Each transport takes a
StorageService method name and its request and returns the answer, raising
the typed errors of ``sutra_cluster.client.errors``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Protocol

import grpc
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from sutra_cluster import errors
from sutra_cluster.client.calls import READ_METHODS
from sutra_cluster.client.errors import SutraRpcError, from_rpc_error
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc
from sutra_cluster.retry import Retry, classify


class Transport(Protocol):
    def invoke(self, method: str, request: Any) -> Any: ...

    def stream(self, batches: Iterable[pb.LearnBatchRequest]) -> pb.LearnStreamResponse: ...

    def close(self) -> None: ...


def _retryable(exc: BaseException) -> bool:
    # One address: retry it when it is down, stopping or electing (UNAVAILABLE,
    # CANCELLED); every write carries a request id, so a retry applies once.
    return isinstance(exc, grpc.RpcError) and exc.code() in (  # type: ignore[attr-defined]
        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


class Direct:
    """One node or one router over one channel, retried on UNAVAILABLE until
    ``retry_deadline`` (0: never retried)."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]],
                 timeout: float, retry_deadline: float) -> None:
        self.address = address
        self.channel = (grpc.secure_channel(address, credentials, options=options) if credentials
                        else grpc.insecure_channel(address, options=options))
        self.stub = storage_pb2_grpc.StorageServiceStub(self.channel)
        self.timeout = timeout
        self.retry_deadline = retry_deadline

    def raw(self, method: str, request: Any, retry: bool = True) -> Any:
        """The call, raising grpc.RpcError as gRPC does (for the leader-following loop)."""
        fn = getattr(self.stub, method)
        if not retry or self.retry_deadline <= 0:
            return fn(request, timeout=self.timeout)
        for attempt in Retrying(retry=retry_if_exception(_retryable), stop=stop_after_delay(self.retry_deadline),
                                wait=wait_exponential(multiplier=0.05, max=1.0), reraise=True):
            with attempt:
                return fn(request, timeout=self.timeout)
        raise AssertionError("unreachable")

    def invoke(self, method: str, request: Any) -> Any:
        try:
            return self.raw(method, request, retry=method != "HealthCheck")
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def stream(self, batches: Iterable[pb.LearnBatchRequest]) -> pb.LearnStreamResponse:
        try:  # not retried: a stream is not replayable
            return self.stub.LearnStream(iter(batches), timeout=None)  # type: ignore[no-any-return]
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def close(self) -> None:
        self.channel.close()


class Leader:
    """One shard's leader, found in etcd and followed across failovers: on
    UNAVAILABLE or "not the leader" (the project's one rule,
    ``sutra_cluster.retry.classify``) it looks the leader up again and sends the
    same request, request id included, until ``failover_deadline``.
    ``connect(address)`` gives the per-address client (an overridable hook)."""

    def __init__(self, etcd: Sequence[str], cluster: str, shard: int, connect: Callable[[str], Any],
                 timeout: float, failover_deadline: float, watch: bool) -> None:
        from sutra_cluster.failover.discovery import ShardWatch

        self.watch = ShardWatch(list(etcd), cluster, shard, name="client", timeout=2.0, watch=watch)
        self.connect = connect
        self.timeout = timeout
        self.failover_deadline = failover_deadline
        self.clients: dict[str, Any] = {}

    def client(self, address: str) -> Any:
        if address not in self.clients:
            self.clients[address] = self.connect(address)
        return self.clients[address]

    def call(self, method: str, request: Any, client: Callable[[str], Any] | None = None) -> Any:
        get = client or self.client
        deadline = time.monotonic() + self.failover_deadline
        address = self.watch.leader or self.watch.wait_leader(deadline)
        while True:
            try:
                return getattr(get(address).stub, method)(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                if classify(exc, write=method not in READ_METHODS) != Retry.NEW_LEADER or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
                if exc.code() == grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
                    # Drop the channel: a dead node's channel sits in reconnect backoff.
                    stale = self.clients.pop(address, None)
                    if stale is not None:
                        stale.close()
                self.watch.forget(address)
                address = self.watch.wait_leader(deadline)

    def invoke(self, method: str, request: Any) -> Any:
        try:
            return self.call(method, request)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        except TimeoutError as exc:  # no leader appeared in etcd before the deadline
            raise errors.NoLeader(str(exc)) from None

    def stream(self, batches: Iterable[pb.LearnBatchRequest]) -> pb.LearnStreamResponse:
        address = self.watch.leader or self.watch.wait_leader(time.monotonic() + self.failover_deadline)
        try:
            return self.client(address).stub.LearnStream(iter(batches), timeout=None)  # type: ignore[no-any-return]
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def close(self) -> None:
        for c in self.clients.values():
            c.close()
        self.clients.clear()
        self.watch.close()


def _typed(exc: errors.SutraError) -> BaseException:
    """A server-side error raised in process (the routing client validates as a
    router would) as the client's typed error of the same code."""
    from sutra_cluster.api.status import code_for

    return from_rpc_error(SutraRpcError(code_for(exc), str(exc), exc.reason))


class Routed:
    """Every shard, routed in process as a router would route (the same
    ``ShardSet`` code): no router hop."""

    def __init__(self, ss: Any) -> None:
        from sutra_cluster.sharding import concept_reads

        self.set = ss
        self.table: dict[str, Callable[[Any], Any]] = {
            "LearnConcept": ss.learn_concept, "LearnAssociation": ss.learn_association,
            "DeleteConcept": ss.delete_concept, "LearnBatch": ss.learn_batch, "QueryConcept": ss.query_concept,
            "GetNeighbors": ss.get_neighbors, "GetNeighborsBatch": ss.get_neighbors_batch,
            "FindPath": ss.find_path, "VectorSearch": ss.vector_search,
            "GetConcepts": partial(concept_reads.get_concepts, ss),
            "ScrollConcepts": partial(concept_reads.scroll_concepts, ss),
            "CountConcepts": partial(concept_reads.count_concepts, ss),
            "Flush": lambda r: ss.flush(), "HealthCheck": self._health, "GetStats": self._stats,
            "GetDigest": lambda r: ss.digest({0: r.sequence} if r.sequence else {}, r.digest_version),
        }

    def _health(self, request: Any) -> pb.HealthCheckResponse:
        ok, status, shards = self.set.health()
        return pb.HealthCheckResponse(healthy=ok, status=status, role="client", shards=shards)

    def _stats(self, request: Any) -> pb.GetStatsResponse:
        shards, missing = self.set.stats()
        out = pb.GetStatsResponse(role="client", shard_count=self.set.shards, missing_shards=missing,
                                  shard_map_version=self.set.map.version, shards=shards)
        for name in ("concepts", "edges", "written", "dropped", "pending", "reconciliations", "vectors",
                     "wal_bytes", "flushes"):
            setattr(out, name, sum(getattr(s, name) for s in shards))
        if shards and shards[0].vector_dimension:
            out.vector_dimension = shards[0].vector_dimension
        return out

    def invoke(self, method: str, request: Any) -> Any:
        try:
            return self.table[method](request)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        except errors.SutraError as exc:
            if isinstance(exc, SutraRpcError) or isinstance(exc, errors.Unavailable) and hasattr(exc, "shard"):
                raise  # typed already, or ShardUnavailable(s) naming the shards
            raise _typed(exc) from None

    def stream(self, batches: Iterable[pb.LearnBatchRequest]) -> pb.LearnStreamResponse:
        out = pb.LearnStreamResponse()
        seqs: dict[int, int] = {}
        for b in batches:  # each message its own atomic batch, as through a router
            r = self.invoke("LearnBatch", b)
            out.sequence = r.sequence
            for e in r.shard_sequences:
                seqs[e.shard] = max(seqs.get(e.shard, 0), e.sequence)
            out.batches += 1
            out.concepts += len(b.concepts)
            out.associations += len(b.associations)
        out.shard_sequences.extend(pb.ShardSequence(shard=s, sequence=q) for s, q in sorted(seqs.items()))
        return out

    def close(self) -> None:
        self.set.close()
