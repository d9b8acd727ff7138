"""One node's process: the gRPC server (StorageService, reflection, standard
health), the metrics endpoint and graceful shutdown on SIGTERM."""

from __future__ import annotations

import logging
import threading
from typing import Any

from grpc_health.v1 import health_pb2

from sutra_cluster import __version__, auth, logformat, process, tlsutil
from sutra_cluster.api import limits
from sutra_cluster.api.storage_service import StorageServicer
from sutra_cluster.api.storage_service import add_to_server as add_storage_service
from sutra_cluster.config import Config
from sutra_cluster.failover.etcd import EtcdCoordinator, shard_prefix
from sutra_cluster.failover.journal import Journal
from sutra_cluster.failover.loop import HaLoop
from sutra_cluster.metrics import NodeMetrics
from sutra_cluster.pb import replication_pb2, replication_pb2_grpc, storage_pb2, txn_pb2_grpc
from sutra_cluster.replication.manager import LagCollector, ReplicationManager
from sutra_cluster.replication.service import ReplicationServicer
from sutra_cluster.roles import Role
from sutra_cluster.sharding import reshard_node, reshard_rescue
from sutra_cluster.storage.engine import Engine
from sutra_cluster.txn import recovery as txn_recovery
from sutra_cluster.txn.decision import DecisionStore
from sutra_cluster.txn.service import TxnServicer

log = logging.getLogger(__name__)

STORAGE_SERVICE = storage_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name
REPLICATION_SERVICE = replication_pb2.DESCRIPTOR.services_by_name["ReplicationService"].full_name


class _NodeContext(logging.Filter):
    """Adds node id, shard and the current term to every log line."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.engine: Engine | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.cfg.node_id
        record.shard = self.cfg.shard
        record.term = self.engine.term if self.engine is not None else "-"
        return True


def setup_logging(cfg: Config) -> _NodeContext:
    """Log to stderr in SUTRA_LOG_FORMAT (text, or json for log shippers: sutra_cluster/logformat.py)."""
    ctx = _NodeContext(cfg)
    logformat.install(cfg.log_format, cfg.log_level,
                      "%(asctime)s %(levelname)s [%(node)s shard=%(shard)s term=%(term)s] %(name)s: %(message)s",
                      ("node", "shard", "term"), ctx)
    return ctx


def grpc_options(cfg: Config) -> list[tuple[str, Any]]:
    # gRPC's own limit sits above ours so that an oversized message reaches the
    # servicer and is answered INVALID_ARGUMENT naming SUTRA_MAX_MESSAGE_BYTES.
    hard = min(2 * cfg.max_message_bytes, (1 << 31) - 1)
    return [
        ("grpc.max_receive_message_length", hard),
        # Replication messages carry up to 4 MiB of records plus one more record.
        ("grpc.max_send_message_length", min(hard + (8 << 20), (1 << 31) - 1)),
        ("grpc.so_reuseport", 0),
    ]


class Node:
    """A running node. ``start`` binds the port; ``stop`` is graceful and idempotent."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.metrics = NodeMetrics()
        self.engine = Engine(cfg, self.metrics)
        # Streams and waiting reads are bounded so they never hold every worker.
        self.client_budget, self.node_budget = limits.node_budgets(cfg)
        self.server, self.health = process.grpc_server(
            cfg.grpc_workers, grpc_options(cfg),
            # Authentication first: a refused caller never takes a stream slot.
            [*auth.server_interceptors(cfg), limits.StreamLimits(self.client_budget, self.node_budget)],
        )
        self.replication = ReplicationManager(self.engine, cfg)
        self.metrics.registry.register(LagCollector(self.replication))
        storage = StorageServicer(self.engine, health=self._health, waits=self.client_budget)
        add_storage_service(storage, self.server)
        reshard_node.add_to_server(self.engine, storage.guard, self.server)  # also installs the guard's write fence
        # With etcd: a freeze left by a reshard driver that died mid-cutover is lifted by a shard leader.
        self.freeze_rescue = (reshard_rescue.FreezeRescue(
            list(cfg.etcd_endpoints), cfg.cluster_name, lambda: storage.guard.map,
            lambda: self.engine.role == Role.LEADER) if cfg.etcd_endpoints else None)
        replication_pb2_grpc.add_ReplicationServiceServicer_to_server(
            ReplicationServicer(self.replication), self.server)
        txn_pb2_grpc.add_TxnServiceServicer_to_server(TxnServicer(self.engine), self.server)  # cross-shard writes
        self.txn_resolver: txn_recovery.Resolver | None = None
        process.enable_reflection(self.server, (STORAGE_SERVICE, REPLICATION_SERVICE))
        self._stopped = threading.Event()
        self.ha: HaLoop | None = None
        if cfg.etcd_endpoints:
            coord = EtcdCoordinator(
                cfg.etcd_endpoints, shard_prefix(cfg.cluster_name, cfg.shard), cfg.node_id,
                ttl=cfg.lease_ttl_s, timeout=cfg.retry_timeout_ms / 1000.0, security=cfg.etcd,
            )
            journal = Journal(coord, cfg.cluster_name, cfg.shard, cfg.node_id, cfg.address, __version__)
            self.ha = HaLoop(self.replication, coord, cfg, journal=journal, identity=self.replication.identity)
            # In-doubt cross-shard parts are finished here from their decision in etcd.
            self.txn_resolver = txn_recovery.Resolver(
                self.engine, DecisionStore(cfg.etcd_endpoints, cfg.cluster_name, cfg.node_id, security=cfg.etcd),
                txn_recovery.timeout_ms() / 1000.0)

    def _health(self) -> tuple[bool, str]:
        """(process serving RPCs, a one-line status) for the guide's HealthCheck."""
        eng = self.engine
        if self.ha is not None and self.ha.identity_problem:
            return True, f"not taking part: {self.ha.identity_problem}"
        if eng.read_fence:
            return True, f"joining: {eng.read_fence}"
        if eng.write_failure:
            return True, f"read-only after a storage failure: {eng.write_failure}"
        return True, f"serving as {eng.role}"

    def _watch_health(self) -> None:
        """grpc.health.v1 says NOT_SERVING while the node refuses reads (joining or
        rejoining), so load balancers and compose health checks wait for it."""
        last = None
        while not self._stopped.wait(0.1):
            status = (health_pb2.HealthCheckResponse.NOT_SERVING if self.engine.read_fence
                      else health_pb2.HealthCheckResponse.SERVING)
            if status != last:
                self.health.set("", status)
                self.health.set(STORAGE_SERVICE, status)
                last = status

    def start(self) -> None:
        bind = f"{self.cfg.host}:{self.cfg.port}"
        creds = tlsutil.server_credentials(self.cfg)
        process.bind(self.server, bind, creds, f"STORAGE_PORT={self.cfg.port}")
        if self.cfg.metrics_port:
            # Before anything serves: a busy metrics port used to crash a node
            # that was already leading (review M6).
            process.serve_metrics(self.metrics.serve, self.cfg.metrics_port, self.cfg.host)
        # Roles (and a joining node's read fence) are set before the port opens.
        self.replication.start()
        self.server.start()
        if self.ha is not None:
            self.ha.start()
        if self.txn_resolver is not None:
            self.txn_resolver.start()
        if self.freeze_rescue is not None:
            self.freeze_rescue.start()
        threading.Thread(target=self._watch_health, name="health", daemon=True).start()
        log.info("node %s serving on %s as %s (metrics port %s)", self.cfg.node_id, bind, self.engine.role,
                 self.cfg.metrics_port or "off")

    def stop(self, grace: float = 10.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("stopping: refusing new requests, letting in-flight ones finish (grace %.0fs)", grace)
        self.health.enter_graceful_shutdown()
        if self.ha is not None:
            self.ha.stop(release=True)  # a replica takes over now, not after the lease TTL
        stopped = self.server.stop(grace)
        self.replication.leader.close(grace)
        stopped.wait()
        self.replication.stop()
        if self.txn_resolver is not None:
            self.txn_resolver.stop()
        if self.freeze_rescue is not None:
            self.freeze_rescue.stop()
        self.engine.close()

    def wait(self) -> None:
        self._stopped.wait()


def serve(cfg: Config) -> int:
    """Run a node until SIGTERM or SIGINT; returns the exit status."""
    ctx = setup_logging(cfg)
    if not process.tune_malloc():
        log.info("malloc thresholds left as they were (not glibc)")
    node = Node(cfg)
    ctx.engine = node.engine
    node.start()
    process.wait_for_signal()
    node.stop()
    return 0
