"""Bounds on calls that hold a gRPC worker thread for long: streams and reads
waiting for a ``sequence``.

The server is grpcio's synchronous server: every call in progress holds one of
SUTRA_GRPC_WORKERS threads, and a stream holds its thread until the client ends
it. Unbounded, 32 idle streams stalled every call of a node, health checks and
replication included (security review 2026-12-01, H1). So long calls are
counted, per client and in total, in two budgets that together stay below the
worker count:

- the client budget (SUTRA_MAX_STREAMS, SUTRA_MAX_STREAMS_PER_CLIENT):
  StorageService streams, reflection and health streams, and reads that wait
  for a sequence;
- the node-plane budget (SUTRA_MAX_NODE_STREAMS): ReplicationService streams
  (WAL streaming, snapshots, backups), so clients can never crowd out
  replication, nor fake followers crowd out clients.

Past a bound the call is refused at once with RESOURCE_EXHAUSTED naming the
setting; the workers left over always serve unary calls (health, reads, writes).
A client is its peer's host address (a busy client's many connections count
together).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from sutra_cluster.errors import ResourceExhausted

NODE_PLANE_PREFIX = "/sutra.replication.ReplicationService/"


def client_of(context: Any) -> str:
    """The peer's host, without the port: ``ipv4:10.0.0.7:51234`` -> ``ipv4:10.0.0.7``."""
    try:
        peer = str(context.peer())
    except Exception:  # a context without a peer (tests calling servicers directly)
        return "local"
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


class Budget:
    """Counts long calls per client and in total. Thread-safe."""

    def __init__(self, what: str, total: int, total_setting: str, per_client: int, per_client_setting: str) -> None:
        self.what = what
        self.total, self.total_setting = total, total_setting
        self.per_client, self.per_client_setting = per_client, per_client_setting
        self.open = 0
        self.refused = 0
        self._by_client: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, client: str) -> None:
        """Take a slot; raise ResourceExhausted naming the setting when none is left."""
        with self._lock:
            mine = self._by_client.get(client, 0)
            if mine >= self.per_client:
                self.refused += 1
                raise ResourceExhausted(
                    f"{client} already has {mine} {self.what} open; {self.per_client_setting} is "
                    f"{self.per_client}: end one, or raise the setting")
            if self.open >= self.total:
                self.refused += 1
                raise ResourceExhausted(
                    f"this server already has {self.open} {self.what} open; {self.total_setting} is "
                    f"{self.total}: retry later")
            self.open += 1
            self._by_client[client] = mine + 1

    def release(self, client: str) -> None:
        with self._lock:
            self.open -= 1
            left = self._by_client.get(client, 1) - 1
            if left > 0:
                self._by_client[client] = left
            else:  # forget idle clients, so the table stays as small as what is open
                self._by_client.pop(client, None)

    @contextmanager
    def slot(self, client: str) -> Iterator[None]:
        self.acquire(client)
        try:
            yield
        finally:
            self.release(client)


def _abort(context: Any, exc: ResourceExhausted) -> None:
    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))


def _take(budget: Budget, context: Any) -> str:
    """A slot of ``budget`` for the caller, or the call is refused RESOURCE_EXHAUSTED."""
    client = client_of(context)
    try:
        budget.acquire(client)
    except ResourceExhausted as exc:
        _abort(context, exc)
    return client


def _wrap(handler: grpc.RpcMethodHandler, budget: Budget) -> grpc.RpcMethodHandler:
    """The same handler, holding a slot of ``budget`` while the call runs."""
    kw = {"request_deserializer": handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    if handler.response_streaming:
        inner_gen: Callable[..., Iterator[Any]] = handler.stream_stream or handler.unary_stream

        def streaming(request: Any, context: Any) -> Iterator[Any]:
            client = _take(budget, context)
            try:
                yield from inner_gen(request, context)
            finally:
                budget.release(client)

        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(streaming, **kw)
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    inner = handler.stream_unary

    def unary_answer(request_iterator: Any, context: Any) -> Any:
        client = _take(budget, context)
        try:
            return inner(request_iterator, context)
        finally:
            budget.release(client)

    return grpc.stream_unary_rpc_method_handler(unary_answer, **kw)


class StreamLimits(grpc.ServerInterceptor):
    """Server interceptor: every streaming call takes a slot of its budget
    (node plane for ReplicationService, client otherwise). Unary calls pass
    untouched; reads that wait take a client slot in the servicer (see
    StorageServicer._wait)."""

    def __init__(self, clients: Budget, node_plane: Budget | None = None) -> None:
        self.clients = clients
        self.node_plane = node_plane

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or not (handler.request_streaming or handler.response_streaming):
            return handler
        plane = self.node_plane is not None and str(details.method).startswith(NODE_PLANE_PREFIX)
        return _wrap(handler, self.node_plane if plane and self.node_plane is not None else self.clients)


def node_budgets(cfg: Any) -> tuple[Budget, Budget]:
    """(client budget, node-plane budget) from a node's Config."""
    clients = Budget("streams or waiting reads", cfg.max_streams, "SUTRA_MAX_STREAMS",
                     cfg.max_streams_per_client, "SUTRA_MAX_STREAMS_PER_CLIENT")
    nodes = Budget("replication streams", cfg.max_node_streams, "SUTRA_MAX_NODE_STREAMS",
                   cfg.max_node_streams, "SUTRA_MAX_NODE_STREAMS")
    return clients, nodes
