"""``sutra-cluster router``: the whole sharded cluster as one StorageService.

A stateless process: it holds the shard map and connections, nothing a
restart would lose, so several routers can run side by side behind one name.
It serves ``sutra.storage.StorageService`` (with reflection and the standard
gRPC health service) on one port, sends each write to the leader of the shard
that owns it and each read to a leader or a replica (``read_preference``),
follows each shard's leader through etcd, and answers fan-out reads across
shards (see ``sutra_cluster.sharding.core`` for how each one is answered).

Settings (environment):
  SUTRA_ETCD_ENDPOINTS   etcd host:port,...: the shard map at /<cluster>/shardmap and each shard's leader
  SUTRA_SHARD_MAP        static map for clusters without etcd (JSON, or 0=host:port,host:port;1=...);
                         with etcd: the map to publish when etcd has none
  SUTRA_SHARDS           with etcd: the shard count to publish when etcd has no map (checked against it otherwise)
  SUTRA_CLUSTER_NAME     etcd key prefix /<name>/ (default sutra)
  SUTRA_ROUTER_PORT      port (default STORAGE_PORT, else 50051); SUTRA_HOST the address to bind
  SUTRA_NODE_ID          the router's name in HealthCheck/GetStats (default router-<host>-<port>)
  SUTRA_ROUTER_TIMEOUT_MS         one call to a shard (default 10000)
  SUTRA_ROUTER_WRITE_DEADLINE_MS  how long a write follows a shard's failover (default 15000)
  SUTRA_ROUTER_READ_DEADLINE_MS   how long a read waits for a shard (default 15000)
  SUTRA_ROUTER_ATOMIC    on (default, with etcd): a write spanning shards is one transaction (txn/coordinator.py);
                         off: atomic per shard only
  SUTRA_FAULT_TXN        tests only: exit-after-prepare | exit-after-decision | exit-after-first-commit
  VECTOR_DIMENSION, SUTRA_MAX_BATCH, SUTRA_MAX_MESSAGE_BYTES: to validate a whole
                         batch before splitting it (the dimension is asked of the shards when unset)
  SUTRA_GRPC_WORKERS, SUTRA_LOG_LEVEL, SUTRA_TLS_CERT/KEY/CA as for nodes
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from sutra_cluster import auth, logformat, process
from sutra_cluster.api import wire
from sutra_cluster.api.limits import Budget, StreamLimits
from sutra_cluster.api.status import grpc_errors
from sutra_cluster.config import LOG_FORMATS, _Reader, parse_etcd_endpoints
from sutra_cluster.errors import ConfigError, InvalidArgument
from sutra_cluster.failover.coordinator import CoordinatorUnavailable
from sutra_cluster.metrics import RouterMetrics
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc
from sutra_cluster.sharding import concept_reads, shardmap
from sutra_cluster.sharding.core import ShardSet
from sutra_cluster.sharding.links import ShardUnavailable
from sutra_cluster.sharding.reshard_follow import FollowingSet, MapFollower
from sutra_cluster.sharding.shardmap import ShardMap
from sutra_cluster.txn import coordinator as txn_coordinator

log = logging.getLogger(__name__)
STORAGE_SERVICE = pb.DESCRIPTOR.services_by_name["StorageService"].full_name


@dataclass(frozen=True)
class RouterConfig:
    host: str = "0.0.0.0"
    port: int = 50051
    etcd_endpoints: tuple[str, ...] = ()
    cluster_name: str = "sutra"
    shard_map: str = ""
    shards: int = 0
    router_id: str = ""
    timeout_ms: int = 10_000
    write_deadline_ms: int = 15_000
    read_deadline_ms: int = 15_000
    dimension: int = 0
    max_batch: int = 10_000
    max_message_bytes: int = 64 << 20
    grpc_workers: int = 64
    log_level: str = "info"
    log_format: str = "text"  # SUTRA_LOG_FORMAT text|json
    metrics_port: int = 0  # SUTRA_METRICS_PORT (0: no metrics endpoint)
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    max_streams: int = 32  # SUTRA_MAX_STREAMS (default workers / 2)
    max_streams_per_client: int = 8  # SUTRA_MAX_STREAMS_PER_CLIENT
    max_path_visits: int = 100_000  # SUTRA_MAX_PATH_VISITS
    max_path_ms: int = 2_000  # SUTRA_MAX_PATH_MS


def load_config(env: Mapping[str, str] | None = None) -> RouterConfig:
    env = os.environ if env is None else env
    r = _Reader(env)
    port_default = r.integer("STORAGE_PORT", 50051, 1, 65535)
    port = r.integer("SUTRA_ROUTER_PORT", port_default, 1, 65535)
    host = env.get("SUTRA_HOST", "").strip() or "0.0.0.0"
    workers = r.integer("SUTRA_GRPC_WORKERS", 64, 4, 1024)
    cfg = RouterConfig(
        host=host, port=port,
        etcd_endpoints=r.get("SUTRA_ETCD_ENDPOINTS", (), parse_etcd_endpoints, lambda v: None),
        cluster_name=env.get("SUTRA_CLUSTER_NAME", "").strip() or "sutra",
        shard_map=env.get("SUTRA_SHARD_MAP", "").strip(),
        shards=r.integer("SUTRA_SHARDS", 0, 1, shardmap.MAX_SHARDS),
        router_id=env.get("SUTRA_NODE_ID", "").strip() or f"router-{socket.gethostname()}-{port}",
        timeout_ms=r.integer("SUTRA_ROUTER_TIMEOUT_MS", 10_000, 10, 600_000),
        write_deadline_ms=r.integer("SUTRA_ROUTER_WRITE_DEADLINE_MS", 15_000, 0, 600_000),
        read_deadline_ms=r.integer("SUTRA_ROUTER_READ_DEADLINE_MS", 15_000, 0, 600_000),
        dimension=r.integer("VECTOR_DIMENSION", 0, 1, 65_536),
        max_batch=r.integer("SUTRA_MAX_BATCH", 10_000, 1, 1_000_000),
        max_message_bytes=r.integer("SUTRA_MAX_MESSAGE_BYTES", 64 << 20, 1 << 20, 1 << 30),
        grpc_workers=workers,
        max_streams=r.integer("SUTRA_MAX_STREAMS", workers // 2, 1, workers - 2),
        max_streams_per_client=r.integer("SUTRA_MAX_STREAMS_PER_CLIENT", 8, 1, 1024),
        max_path_visits=r.integer("SUTRA_MAX_PATH_VISITS", 100_000, 1, 1 << 32),
        max_path_ms=r.integer("SUTRA_MAX_PATH_MS", 2_000, 1, 600_000),
        log_level=r.choice("SUTRA_LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
        log_format=r.choice("SUTRA_LOG_FORMAT", "text", LOG_FORMATS),
        metrics_port=r.integer("SUTRA_METRICS_PORT", 0, 0, 65535),
        tls_cert=env.get("SUTRA_TLS_CERT", "").strip(), tls_key=env.get("SUTRA_TLS_KEY", "").strip(),
        tls_ca=env.get("SUTRA_TLS_CA", "").strip(),
    )
    if not cfg.etcd_endpoints and not cfg.shard_map:
        r.errors.append("SUTRA_ETCD_ENDPOINTS or SUTRA_SHARD_MAP: the router needs one to find the shards")
    if cfg.shard_map:
        try:
            ShardMap.parse(cfg.shard_map)
        except ConfigError as exc:
            r.errors.append(f"SUTRA_SHARD_MAP: {exc}")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        r.errors.append("SUTRA_TLS_CERT/SUTRA_TLS_KEY: set both or neither")
    if cfg.metrics_port and cfg.metrics_port == cfg.port:
        r.errors.append(f"SUTRA_METRICS_PORT={cfg.metrics_port}: the router's gRPC port is the same port; pick another")
    if cfg.tls_ca and not cfg.tls_cert:
        r.errors.append("SUTRA_TLS_CA: set SUTRA_TLS_CERT and SUTRA_TLS_KEY too; a CA alone would serve plaintext")
    if r.errors:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(r.errors))
    return cfg


def resolve_map(cfg: RouterConfig) -> ShardMap:
    """The map to route by: etcd's (publishing SUTRA_SHARD_MAP or SUTRA_SHARDS
    there when it has none), or the static SUTRA_SHARD_MAP."""
    static = ShardMap.parse(cfg.shard_map) if cfg.shard_map else None
    if not cfg.etcd_endpoints:
        assert static is not None
        return static
    stored = shardmap.load_from_etcd(cfg.etcd_endpoints, cfg.cluster_name)
    if stored is None:
        wanted = static or (ShardMap(shards=cfg.shards) if cfg.shards else None)
        if wanted is None:
            raise ConfigError(f"no shard map in etcd at {shardmap.map_key(cfg.cluster_name)}; set SUTRA_SHARDS "
                              "(or SUTRA_SHARD_MAP) to publish one")
        stored = shardmap.publish(cfg.etcd_endpoints, cfg.cluster_name, wanted)
        log.info("shard map version %d with %d shards is in etcd", stored.version, stored.shards)
    for name, want in (("SUTRA_SHARDS", cfg.shards), ("SUTRA_SHARD_MAP", static.shards if static else 0)):
        if want and want != stored.shards:  # a reshard changed it since: etcd's map is the truth
            log.warning("%s says %d shards, the map in etcd (version %d) has %d: routing by etcd's map", name, want,
                        stored.version, stored.shards)
    return stored


def _resolve_map_waiting(cfg: RouterConfig, wait_s: float = 30.0) -> ShardMap:
    """``resolve_map``, waiting up to ``wait_s`` for etcd to answer: a router
    restarted while etcd is busy (or electing) starts once it answers."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return resolve_map(cfg)
        except CoordinatorUnavailable as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("shard map not read yet (%s); retrying", exc)
            time.sleep(0.5)


def _credentials(cfg: RouterConfig) -> tuple[grpc.ServerCredentials | None, grpc.ChannelCredentials | None]:
    if not cfg.tls_cert:
        return None, None
    from sutra_cluster import tlsutil
    from sutra_cluster.config import Config

    tls = Config(tls_cert=cfg.tls_cert, tls_key=cfg.tls_key, tls_ca=cfg.tls_ca)
    return tlsutil.server_credentials(tls), tlsutil.peer_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)


class RouterServicer(storage_pb2_grpc.StorageServiceServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    @property
    def set(self) -> ShardSet:
        return self.router.routed  # type: ignore[return-value]  # follows map changes (sharding/reshard_follow.py)

    # ---- writes ----------------------------------------------------------
    @grpc_errors
    def LearnConcept(self, request: pb.LearnConceptRequest, context: Any) -> pb.LearnConceptResponse:
        return self.set.learn_concept(request)

    @grpc_errors
    def LearnAssociation(self, request: pb.LearnAssociationRequest, context: Any) -> pb.LearnAssociationResponse:
        return self.set.learn_association(request)

    @grpc_errors
    def DeleteConcept(self, request: pb.DeleteConceptRequest, context: Any) -> pb.DeleteConceptResponse:
        return self.set.delete_concept(request)

    @grpc_errors
    def LearnBatch(self, request: pb.LearnBatchRequest, context: Any) -> pb.LearnBatchResponse:
        return self.set.learn_batch(request)

    @grpc_errors
    def LearnStream(self, request_iterator: Iterator[pb.LearnBatchRequest], context: Any) -> pb.LearnStreamResponse:
        out = pb.LearnStreamResponse()
        seqs: dict[int, int] = {}
        for i, request in enumerate(request_iterator):
            try:
                r = self.set.learn_batch(request)
            except InvalidArgument as exc:
                raise InvalidArgument(f"stream message {i}: {exc} (messages before it are durable)") from exc
            out.sequence = r.sequence
            for e in r.shard_sequences:
                seqs[e.shard] = max(seqs.get(e.shard, 0), e.sequence)
            out.batches += 1
            out.concepts += len(request.concepts)
            out.associations += len(request.associations)
        out.shard_sequences.extend(pb.ShardSequence(shard=s, sequence=q) for s, q in sorted(seqs.items()))
        return out

    # ---- reads -----------------------------------------------------------
    @grpc_errors
    def QueryConcept(self, request: pb.QueryConceptRequest, context: Any) -> pb.QueryConceptResponse:
        return self.set.query_concept(request)

    @grpc_errors
    def GetNeighbors(self, request: pb.GetNeighborsRequest, context: Any) -> pb.GetNeighborsResponse:
        return self.set.get_neighbors(request)

    @grpc_errors
    def GetNeighborsBatch(self, request: pb.GetNeighborsBatchRequest, context: Any) -> pb.GetNeighborsBatchResponse:
        return self.set.get_neighbors_batch(request)

    @grpc_errors
    def FindPath(self, request: pb.FindPathRequest, context: Any) -> pb.FindPathResponse:
        return self.set.find_path(request)

    @grpc_errors
    def VectorSearch(self, request: pb.VectorSearchRequest, context: Any) -> pb.VectorSearchResponse:
        return self.set.vector_search(request)

    @grpc_errors
    def GetConcepts(self, request: pb.GetConceptsRequest, context: Any) -> pb.GetConceptsResponse:
        return concept_reads.get_concepts(self.set, request)

    @grpc_errors
    def ScrollConcepts(self, request: pb.ScrollConceptsRequest, context: Any) -> pb.ScrollConceptsResponse:
        return concept_reads.scroll_concepts(self.set, request)

    @grpc_errors
    def CountConcepts(self, request: pb.CountConceptsRequest, context: Any) -> pb.CountConceptsResponse:
        return concept_reads.count_concepts(self.set, request)

    # ---- operations ------------------------------------------------------
    @grpc_errors
    def Flush(self, request: pb.FlushRequest, context: Any) -> pb.FlushResponse:
        return self.set.flush()

    @grpc_errors
    def HealthCheck(self, request: pb.HealthCheckRequest, context: Any) -> pb.HealthCheckResponse:
        ok, status, shards = self.set.health()
        return pb.HealthCheckResponse(healthy=ok, status=status, uptime_seconds=self.router.uptime(),
                                      role="router", node_id=self.router.cfg.router_id, shards=shards)

    @grpc_errors
    def GetStats(self, request: pb.GetStatsRequest, context: Any) -> pb.GetStatsResponse:
        shards, missing = self.set.stats()
        out = pb.GetStatsResponse(
            uptime_seconds=self.router.uptime(), role="router", node_id=self.router.cfg.router_id,
            shard_count=self.set.shards, missing_shards=missing, shard_map_version=self.set.map.version,
            shards=shards,
        )
        for name in ("concepts", "edges", "written", "dropped", "pending", "reconciliations", "vectors",
                     "wal_bytes", "flushes"):
            setattr(out, name, sum(getattr(s, name) for s in shards))
        if shards and shards[0].vector_dimension:
            out.vector_dimension = shards[0].vector_dimension
        return out

    @grpc_errors
    def GetDigest(self, request: pb.GetDigestRequest, context: Any) -> pb.GetDigestResponse:
        if request.sequence and self.set.shards > 1:
            raise InvalidArgument("sequence is an LSN of one shard; through a router GetDigest takes no sequence")
        return self.set.digest({0: request.sequence} if request.sequence else {}, request.digest_version)


class _MeteredShardSet(ShardSet):
    """The ShardSet, with the router's per-shard errors and fan-out latency
    counted where every shard call and every fan-out passes (_write, _read,
    _parallel)."""

    def __init__(self, metrics: RouterMetrics, smap: ShardMap, **kwargs: Any) -> None:
        super().__init__(smap, **kwargs)
        self.metrics = metrics

    def _count(self, shard: int, exc: BaseException) -> None:
        code = exc.code().name if isinstance(exc, grpc.RpcError) else "UNAVAILABLE"  # type: ignore[attr-defined]
        self.metrics.shard_errors.labels(str(shard), code).inc()

    def _write(self, shard: int, method: str, request: Any) -> Any:
        try:
            return super()._write(shard, method, request)
        except (grpc.RpcError, ShardUnavailable) as exc:
            self._count(shard, exc)
            raise

    def _read(self, shard: int, method: str, request: Any, pref: int) -> Any:
        try:
            return super()._read(shard, method, request, pref)
        except (grpc.RpcError, ShardUnavailable) as exc:
            self._count(shard, exc)
            raise

    def _parallel(self, shards: Any, fn: Any, allow_partial: bool = False, hint: str = "") -> Any:
        t0 = time.perf_counter()
        try:
            return super()._parallel(shards, fn, allow_partial, hint)
        finally:
            self.metrics.fanout.observe(time.perf_counter() - t0)


class Router:
    """A running router. ``start`` binds the port; ``stop`` is graceful and idempotent."""

    def __init__(self, cfg: RouterConfig) -> None:
        self.cfg = cfg
        self.started = time.monotonic()
        self._server_creds, self._channel_creds = _credentials(cfg)
        self.metrics = RouterMetrics()
        # Cross-shard writes commit on all shards or none (with etcd; SUTRA_ROUTER_ATOMIC=off opts out).
        self.txn = txn_coordinator.for_router(cfg.etcd_endpoints, cfg.cluster_name, cfg.router_id)
        # The newest shard map's ShardSet; operations re-route after a reshard's refusals.
        self.follower = MapFollower(_resolve_map_waiting(cfg), self._make_set, etcd_endpoints=cfg.etcd_endpoints,
                                    cluster=cfg.cluster_name, deadline_s=cfg.write_deadline_ms / 1000)
        self.routed = FollowingSet(self.follower)
        hard = min(2 * cfg.max_message_bytes, (1 << 31) - 1)
        # Streams hold a worker each: bounded, so health checks and unary calls always find one.
        streams = StreamLimits(Budget("streams", cfg.max_streams, "SUTRA_MAX_STREAMS", cfg.max_streams_per_client,
                                      "SUTRA_MAX_STREAMS_PER_CLIENT"))
        self.server, self.health = process.grpc_server(
            cfg.grpc_workers,
            [("grpc.max_receive_message_length", hard), ("grpc.max_send_message_length", hard),
             ("grpc.so_reuseport", 0)],
            # The router serves only the client plane; the interceptor refuses any other method.
            # Outermost, the request metrics: they count refused calls too.
            [self.metrics.interceptor(), auth.AuthInterceptor(auth.Policy(mtls=bool(cfg.tls_ca and cfg.tls_cert))),
             streams],
        )
        wire.add_storage_service(RouterServicer(self), self.server)  # malformed bytes: INVALID_ARGUMENT
        process.enable_reflection(self.server, (STORAGE_SERVICE,))
        self._stop = threading.Event()

    @property
    def set(self) -> ShardSet:
        return self.follower.set  # type: ignore[no-any-return]

    def _make_set(self, smap: ShardMap) -> ShardSet:
        c = self.cfg
        return _MeteredShardSet(self.metrics, smap, etcd_endpoints=c.etcd_endpoints, cluster=c.cluster_name,
                                timeout=c.timeout_ms / 1000, write_deadline=c.write_deadline_ms / 1000,
                                read_deadline=c.read_deadline_ms / 1000, credentials=self._channel_creds,
                                dimension=c.dimension, max_batch=c.max_batch,
                                max_message_bytes=c.max_message_bytes, max_path_visits=c.max_path_visits,
                                max_path_ms=c.max_path_ms, txn=self.txn)

    def uptime(self) -> int:
        return int(time.monotonic() - self.started)

    def start(self) -> None:
        bind = f"{self.cfg.host}:{self.cfg.port}"
        process.bind(self.server, bind, self._server_creds, f"SUTRA_ROUTER_PORT={self.cfg.port}")
        if self.cfg.metrics_port:
            process.serve_metrics(self.metrics.serve, self.cfg.metrics_port, self.cfg.host)
        self.server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(STORAGE_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        log.info("router %s serving on %s: %d shard(s), map version %d (%s)", self.cfg.router_id, bind,
                 self.set.shards, self.set.map.version, "etcd" if self.cfg.etcd_endpoints else "static map")

    def stop(self, grace: float = 5.0) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.follower.close()
        if self.txn is not None:
            self.txn.close()


class _RouterContext(logging.Filter):
    """Names the process in JSON log lines, as the text format's "[router]" does."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_name = "router"
        return True


def setup_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr in SUTRA_LOG_FORMAT (text, or json: sutra_cluster/logformat.py)."""
    logformat.install(log_format, level, "%(asctime)s %(levelname)s [router] %(name)s: %(message)s",
                      ("process_name",), _RouterContext())


def serve(cfg: RouterConfig) -> int:
    """Run a router until SIGTERM or SIGINT; returns the exit status."""
    setup_logging(cfg.log_level, cfg.log_format)
    router = Router(cfg)
    router.start()
    process.wait_for_signal()
    router.stop()
    return 0
