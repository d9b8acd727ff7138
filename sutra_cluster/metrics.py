"""Prometheus metrics of one node, in their own registry (so several engines can
live in one test process). Names follow Prometheus conventions: base units,
``_total`` only on counters; the guide's planned names map as docs/HA.md says."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


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

    def add_gauges(self, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        self.registry.register(_Gauges(read))

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, addr=host, registry=self.registry)
