"""Prometheus metrics of one node, in their own registry (so several engines can
live in one test process). Names follow Prometheus conventions: base units,
``_total`` only on counters; the guide's planned names map as docs/HA.md says."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

# No `<counter>_created` / `<histogram>_created` series: they doubled the series count and
# nothing here reads them (a process-wide switch of prometheus_client, set on import).
disable_created_metrics()


class _Gauges(Collector):
    """Gauges read at scrape time from a callback, so they are never stale."""

    def __init__(self, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, (doc, value) in self.read().items():
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.write_latency = Histogram(
            "sutra_write_latency_seconds", "Time from receiving a write to acknowledging it",
            registry=r, buckets=LATENCY_BUCKETS,
        )
        self.fsync_latency = Histogram(
            "sutra_wal_fsync_duration_seconds", "Duration of one WAL group-commit fsync",
            registry=r, buckets=LATENCY_BUCKETS,
        )
        self.group_size = Histogram(
            "sutra_wal_group_commit_records", "Records made durable by one fsync",
            registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024),
        )
        self.flushes = Counter("sutra_flushes", "Checkpoints written (Flush RPC or automatic)", registry=r)
        self.writes = Counter("sutra_writes", "Items acknowledged (concepts, associations, deletes)", registry=r)
        self.write_errors = Counter(
            "sutra_write_errors", "Validated writes that failed and were not acknowledged", ["reason"], registry=r
        )
        self.rejected = Counter("sutra_rejected_requests", "Requests rejected as invalid", registry=r)
        # Counted where ReplicationManager.lead/step_down change the role: `started` when this node
        # begins leading, `stopped` when it stops; increase(...[1h]) is the failover history.
        self.leader_changes = Counter(
            "sutra_leader_changes", "Times this node started or stopped leading its shard", ["change"], registry=r
        )
        for change in ("started", "stopped"):
            self.leader_changes.labels(change)

    def add_gauges(self, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        self.registry.register(_Gauges(read))

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, addr=host, registry=self.registry)


class RouterMetrics:
    """The router process's metrics: requests it served (by method and status
    code), their latency, errors per shard, and the latency of fan-outs that ask
    every shard at once. Its own registry, served on the router's SUTRA_METRICS_PORT."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sutra_router_requests", "Requests the router answered, by method and status code",
                                ["service", "method", "code"], registry=r)
        self.latency = Histogram("sutra_router_request_duration_seconds", "Time to answer one request",
                                 ["service", "method"], registry=r, buckets=LATENCY_BUCKETS)
        self.shard_errors = Counter("sutra_router_shard_errors",
                                    "Calls to a shard that failed (code UNAVAILABLE: no leader or replica answered)",
                                    ["shard", "code"], registry=r)
        self.fanout = Histogram("sutra_router_fanout_duration_seconds",
                                "Time for one fan-out to every shard (search, neighbours, stats) to finish",
                                registry=r, buckets=LATENCY_BUCKETS)

    def interceptor(self) -> grpc.ServerInterceptor:
        return _RequestMetrics(self)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, addr=host, registry=self.registry)


def _code_name(context: grpc.ServicerContext, default: grpc.StatusCode) -> str:
    code = context.code()  # set by abort() or set_code(); None when the handler returned normally
    return (code or default).name  # type: ignore[no-any-return]


class _RequestMetrics(grpc.ServerInterceptor):
    """Counts and times every call, with the status code it ended with. Streamed
    answers are timed until the last message has been sent."""

    def __init__(self, metrics: RouterMetrics) -> None:
        self.m = metrics

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        service, _, method = details.method.lstrip("/").rpartition("/")
        m = self.m

        def record(t0: float, context: grpc.ServicerContext, default: grpc.StatusCode) -> None:
            m.requests.labels(service, method, _code_name(context, default)).inc()
            m.latency.labels(service, method).observe(time.perf_counter() - t0)

        def unary(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                t0, outcome = time.perf_counter(), grpc.StatusCode.UNKNOWN
                try:
                    answer = behavior(request, context)
                    outcome = grpc.StatusCode.OK
                    return answer
                finally:
                    record(t0, context, outcome)
            return call

        def streamed(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                t0, outcome = time.perf_counter(), grpc.StatusCode.UNKNOWN
                try:
                    yield from behavior(request, context)
                    outcome = grpc.StatusCode.OK
                finally:
                    record(t0, context, outcome)
            return call

        h = handler
        if h.unary_unary:
            return grpc.unary_unary_rpc_method_handler(unary(h.unary_unary), h.request_deserializer,
                                                       h.response_serializer)
        if h.stream_unary:
            return grpc.stream_unary_rpc_method_handler(unary(h.stream_unary), h.request_deserializer,
                                                        h.response_serializer)
        if h.unary_stream:
            return grpc.unary_stream_rpc_method_handler(streamed(h.unary_stream), h.request_deserializer,
                                                        h.response_serializer)
        return grpc.stream_stream_rpc_method_handler(streamed(h.stream_stream), h.request_deserializer,
                                                     h.response_serializer)
