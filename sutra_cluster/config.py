"""Settings from the environment, validated once at start.

Every problem is reported, one line per bad setting, in a single ``ConfigError``,
so an operator fixes them all in one pass.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from sutra_cluster.credentials import EtcdSecurity, cluster_secret
from sutra_cluster.errors import ConfigError

T = TypeVar("T")

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")  # SUTRA_LOG_FORMAT: json is one object a line, for log shippers
VECTOR_STORAGES = ("memory", "mmap")  # SUTRA_VECTOR_STORAGE (storage/quant.py)
QUANTIZATIONS = ("none", "sq8", "pq")  # SUTRA_QUANTIZATION
LEADER_TICK_ETCD_CALLS = 6  # the most etcd calls one HA-loop tick of a leader makes, one after another


@dataclass(frozen=True)
class Config:
    """A node's settings. Field comments name the environment variable."""

    storage_path: str = "./sutra-data"  # STORAGE_PATH
    port: int = 50051  # STORAGE_PORT
    host: str = "0.0.0.0"  # SUTRA_HOST
    reconcile_interval_ms: int = 10  # RECONCILE_INTERVAL_MS
    memory_threshold: int = 50_000  # MEMORY_THRESHOLD: writes between automatic checkpoints
    vector_dimension: int = 768  # VECTOR_DIMENSION
    metrics_port: int = 0  # SUTRA_METRICS_PORT (0: no metrics endpoint)
    log_level: str = "info"  # SUTRA_LOG_LEVEL (falls back to RUST_LOG, as the guide sets it)
    log_format: str = "text"  # SUTRA_LOG_FORMAT text|json
    wal_fsync: bool = True  # SUTRA_WAL_FSYNC on|off
    wal_segment_bytes: int = 64 << 20  # SUTRA_WAL_SEGMENT_BYTES
    ann_threshold: int = 10_000  # SUTRA_ANN_THRESHOLD: exact search up to this many vectors
    index_yield: float = 1.0  # SUTRA_INDEX_YIELD: HNSW indexing rests this many times its work while writes flow
    index_quiet_ms: int = 250  # SUTRA_INDEX_QUIET_MS: HNSW indexing waits until no vector arrived for this long...
    index_max_tail: int = 20_000  # SUTRA_INDEX_MAX_TAIL: ...unless more vectors than this wait outside the graph
    vector_storage: str = "memory"  # SUTRA_VECTOR_STORAGE memory|mmap
    quantization: str = "none"  # SUTRA_QUANTIZATION none|sq8|pq
    max_batch: int = 10_000  # SUTRA_MAX_BATCH: concepts + associations + deletes per batch
    max_message_bytes: int = 64 << 20  # SUTRA_MAX_MESSAGE_BYTES
    read_wait_ms: int = 5_000  # SUTRA_READ_WAIT_MS: longest wait for a read's `sequence`
    grpc_workers: int = 32  # SUTRA_GRPC_WORKERS
    max_streams: int = 16  # SUTRA_MAX_STREAMS: client streams + waiting reads at once (default workers / 2)
    max_streams_per_client: int = 8  # SUTRA_MAX_STREAMS_PER_CLIENT: the same, per client host
    max_node_streams: int = 8  # SUTRA_MAX_NODE_STREAMS: replication/snapshot streams (default workers / 4)
    max_path_visits: int = 100_000  # SUTRA_MAX_PATH_VISITS: concepts one FindPath may visit
    max_path_ms: int = 2_000  # SUTRA_MAX_PATH_MS: time one FindPath may search
    max_neighbors: int = 100_000  # SUTRA_MAX_NEIGHBORS: neighbours in one GetNeighbors(Batch) answer
    node_id: str = ""  # SUTRA_NODE_ID
    role: str = "leader"  # SUTRA_NODE_ROLE leader|replica
    replicas: tuple[str, ...] = ()  # SUTRA_REPLICAS host:port,...
    leader: str = ""  # SUTRA_LEADER host:port
    advertise: str = ""  # SUTRA_ADVERTISE host:port others use to reach this node
    commit_mode: str = "async"  # SUTRA_COMMIT_MODE async|sync
    sync_replicas: int = 1  # SUTRA_SYNC_REPLICAS
    sync_timeout_ms: int = 5_000  # SUTRA_SYNC_TIMEOUT_MS
    sync_fallback: bool = False  # SUTRA_SYNC_FALLBACK: degrade sync to async when replicas are missing
    sync_stall_ms: int = 500  # SUTRA_SYNC_STALL_MS: a sync member silent this long is replaced by a caught-up replica
    wal_keep_bytes: int = 1 << 30  # SUTRA_WAL_KEEP_BYTES
    etcd_endpoints: tuple[str, ...] = ()  # SUTRA_ETCD_ENDPOINTS
    tls_cert: str = ""  # SUTRA_TLS_CERT
    tls_key: str = ""  # SUTRA_TLS_KEY
    tls_ca: str = ""  # SUTRA_TLS_CA
    cluster_secret: str = field(default="", repr=False)  # SUTRA_CLUSTER_SECRET or SUTRA_CLUSTER_SECRET_FILE
    etcd: EtcdSecurity = EtcdSecurity()  # SUTRA_ETCD_CACERT/CERT/KEY/USER/PASSWORD
    shard: int = 0  # SUTRA_SHARD
    shards: int = 1  # SUTRA_SHARDS: shard count for the wrong-shard check (1: none, or the etcd shard map's)
    cluster_name: str = "sutra"  # SUTRA_CLUSTER_NAME: etcd key prefix /<name>/
    lease_ttl_s: int = 2  # SUTRA_LEASE_TTL_S: leader key lease (etcd's minimum at its defaults is 2)
    loop_wait_ms: int = 100  # SUTRA_LOOP_WAIT_MS: HA loop period
    retry_timeout_ms: int = 250  # SUTRA_RETRY_TIMEOUT_MS: one etcd call's deadline
    fence_margin_ms: int = 500  # SUTRA_FENCE_MARGIN_MS: stop acknowledging this long before the lease can expire
    max_lag_on_failover: int = 1_000_000  # SUTRA_MAX_LAG_ON_FAILOVER: records a candidate may be behind

    @property
    def address(self) -> str:
        """host:port at which other nodes and clients reach this node."""
        if self.advertise:
            return self.advertise
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "[::]") else self.host
        return f"{host}:{self.port}"


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.errors: list[str] = []

    def get(self, name: str, default: T, parse: Callable[[str], T], check: Callable[[T], str | None]) -> T:
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = parse(raw.strip())
        except ValueError as exc:
            self.errors.append(f"{name}={raw!r}: {exc}")
            return default
        problem = check(value)
        if problem:
            self.errors.append(f"{name}={raw!r}: {problem}")
            return default
        return value

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        def parse(s: str) -> int:
            try:
                return int(s.replace("_", ""))
            except ValueError:
                raise ValueError("not an integer") from None

        return self.get(name, default, parse, lambda v: None if lo <= v <= hi else f"must be {lo}..{hi}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        return self.get(
            name, default, str.lower, lambda v: None if v in choices else f"must be one of {'|'.join(choices)}"
        )

    def flag(self, name: str, default: bool) -> bool:
        def parse(s: str) -> bool:
            low = s.lower()
            if low in ("1", "true", "on", "yes", "always"):
                return True
            if low in ("0", "false", "off", "no", "never"):
                return False
            raise ValueError("must be on|off")

        return self.get(name, default, parse, lambda v: None)

    def address_list(self, name: str) -> tuple[str, ...]:
        return self.get(name, (), _parse_addresses, lambda v: None)


def _parse_addresses(raw: str) -> tuple[str, ...]:
    out = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{part!r} is not host:port")
        out.append(part)
    return tuple(out)


def parse_etcd_endpoints(raw: str) -> tuple[str, ...]:
    """etcd endpoints as host:port; etcdctl's ``http://host:port`` form is accepted
    (the scheme is dropped: the client speaks plain HTTP/2 unless etcd TLS is set),
    any other scheme is refused rather than retried forever."""
    parts = []
    for part in raw.split(","):
        part = part.strip().rstrip("/")
        scheme, sep, rest = part.partition("://")
        if sep:
            if scheme.lower() != "http":
                raise ValueError(f"{part!r}: give host:port or http://host:port")
            part = rest
        parts.append(part)
    return _parse_addresses(",".join(parts))


def timing_problems(cfg: Config) -> list[str]:
    """The failover timing invariants (Patroni's, plus the fencing margin)."""
    ttl_ms = cfg.lease_ttl_s * 1000
    problems = []
    if cfg.loop_wait_ms + 2 * cfg.retry_timeout_ms > ttl_ms:
        problems.append(
            f"SUTRA_LOOP_WAIT_MS + 2 * SUTRA_RETRY_TIMEOUT_MS ({cfg.loop_wait_ms} + 2 * {cfg.retry_timeout_ms}) "
            f"must be <= SUTRA_LEASE_TTL_S ({ttl_ms} ms), or a leader could lose its key between two renewals"
        )
    fence_ms = ttl_ms - cfg.fence_margin_ms
    # A leader renews at the start of every tick; a tick lasts the loop wait or,
    # when etcd is slow, its calls: member lease, member put, snapshot, key get,
    # lease refresh, sync set. Two renewals are at most that far apart.
    gap_ms = max(cfg.loop_wait_ms, LEADER_TICK_ETCD_CALLS * cfg.retry_timeout_ms)
    if gap_ms > fence_ms:
        problems.append(
            f"max(SUTRA_LOOP_WAIT_MS, {LEADER_TICK_ETCD_CALLS} * SUTRA_RETRY_TIMEOUT_MS) ({cfg.loop_wait_ms}, "
            f"{LEADER_TICK_ETCD_CALLS} * {cfg.retry_timeout_ms}) must be <= SUTRA_LEASE_TTL_S - SUTRA_FENCE_MARGIN_MS "
            f"({fence_ms} ms): a leader's tick makes up to {LEADER_TICK_ETCD_CALLS} etcd calls, and a slow but "
            "healthy etcd would otherwise make a healthy leader fence itself between two renewals"
        )
    if cfg.fence_margin_ms + cfg.retry_timeout_ms >= ttl_ms:
        problems.append(
            f"SUTRA_FENCE_MARGIN_MS + SUTRA_RETRY_TIMEOUT_MS ({cfg.fence_margin_ms} + {cfg.retry_timeout_ms}) "
            f"must be < SUTRA_LEASE_TTL_S ({ttl_ms} ms)"
        )
    return problems


def vector_mode_problem(storage: str, quantization: str) -> str | None:
    """Why SUTRA_VECTOR_STORAGE/SUTRA_QUANTIZATION cannot be combined, or None."""
    if storage not in VECTOR_STORAGES:
        return f"SUTRA_VECTOR_STORAGE={storage!r}: must be one of {'|'.join(VECTOR_STORAGES)}"
    if quantization not in QUANTIZATIONS:
        return f"SUTRA_QUANTIZATION={quantization!r}: must be one of {'|'.join(QUANTIZATIONS)}"
    if storage == "mmap" and quantization == "none":
        # faiss' flat HNSW keeps its own float32 copy of every vector it holds.
        return ("SUTRA_VECTOR_STORAGE=mmap needs SUTRA_QUANTIZATION=sq8 or pq: with none the HNSW graph keeps a float32 "
                "copy of every vector in memory, so a map would save nothing")
    return None


def load(env: Mapping[str, str] | None = None) -> Config:
    """Read and validate every setting. Raises ConfigError listing each bad one."""
    env = os.environ if env is None else env
    r = _Reader(env)
    port = r.integer("STORAGE_PORT", 50051, 1, 65535)
    log_default = env.get("RUST_LOG", "info").lower()
    log_default = log_default if log_default in LOG_LEVELS else "info"
    role = r.choice("SUTRA_NODE_ROLE", "leader", ("leader", "replica"))
    leader = r.get("SUTRA_LEADER", "", lambda s: _parse_addresses(s)[0] if s else "", lambda v: None)
    workers = r.integer("SUTRA_GRPC_WORKERS", 32, 4, 1024)
    node_streams = r.integer("SUTRA_MAX_NODE_STREAMS", max(1, workers // 4), 1, 1024)
    max_streams = r.integer("SUTRA_MAX_STREAMS", max(1, min(workers // 2, workers - 2 - node_streams)), 1, 1024)
    cfg = Config(
        storage_path=env.get("STORAGE_PATH", "").strip() or "./sutra-data",
        port=port,
        host=env.get("SUTRA_HOST", "").strip() or "0.0.0.0",
        reconcile_interval_ms=r.integer("RECONCILE_INTERVAL_MS", 10, 1, 60_000),
        memory_threshold=r.integer("MEMORY_THRESHOLD", 50_000, 1, 1 << 40),
        vector_dimension=r.integer("VECTOR_DIMENSION", 768, 1, 65_536),
        metrics_port=r.integer("SUTRA_METRICS_PORT", 0, 0, 65535),
        log_level=r.choice("SUTRA_LOG_LEVEL", log_default, LOG_LEVELS),
        log_format=r.choice("SUTRA_LOG_FORMAT", "text", LOG_FORMATS),
        wal_fsync=r.flag("SUTRA_WAL_FSYNC", True),
        wal_segment_bytes=r.integer("SUTRA_WAL_SEGMENT_BYTES", 64 << 20, 1 << 16, 1 << 34),
        ann_threshold=r.integer("SUTRA_ANN_THRESHOLD", 10_000, 0, 1 << 40),
        index_yield=r.get("SUTRA_INDEX_YIELD", 1.0, float, lambda v: None if 0 <= v <= 100 else "must be 0..100"),
        index_quiet_ms=r.integer("SUTRA_INDEX_QUIET_MS", 250, 0, 60_000),
        index_max_tail=r.integer("SUTRA_INDEX_MAX_TAIL", 20_000, 0, 1 << 40),
        vector_storage=r.choice("SUTRA_VECTOR_STORAGE", "memory", VECTOR_STORAGES),
        quantization=r.choice("SUTRA_QUANTIZATION", "none", QUANTIZATIONS),
        max_batch=r.integer("SUTRA_MAX_BATCH", 10_000, 1, 1_000_000),
        max_message_bytes=r.integer("SUTRA_MAX_MESSAGE_BYTES", 64 << 20, 1 << 20, 1 << 30),
        read_wait_ms=r.integer("SUTRA_READ_WAIT_MS", 5_000, 0, 600_000),
        grpc_workers=workers,
        max_streams=max_streams,
        max_streams_per_client=r.integer("SUTRA_MAX_STREAMS_PER_CLIENT", min(8, max_streams), 1, 1024),
        max_node_streams=node_streams,
        max_path_visits=r.integer("SUTRA_MAX_PATH_VISITS", 100_000, 1, 1 << 32),
        max_path_ms=r.integer("SUTRA_MAX_PATH_MS", 2_000, 1, 600_000),
        max_neighbors=r.integer("SUTRA_MAX_NEIGHBORS", 100_000, 1, 1 << 32),
        node_id=env.get("SUTRA_NODE_ID", "").strip() or f"{socket.gethostname()}-{port}",
        role=role,
        replicas=r.address_list("SUTRA_REPLICAS"),
        leader=leader,
        advertise=env.get("SUTRA_ADVERTISE", "").strip(),
        commit_mode=r.choice("SUTRA_COMMIT_MODE", "async", ("async", "sync")),
        sync_replicas=r.integer("SUTRA_SYNC_REPLICAS", 1, 1, 16),
        sync_timeout_ms=r.integer("SUTRA_SYNC_TIMEOUT_MS", 5_000, 1, 600_000),
        sync_fallback=r.flag("SUTRA_SYNC_FALLBACK", False),
        sync_stall_ms=r.integer("SUTRA_SYNC_STALL_MS", 500, 50, 600_000),
        wal_keep_bytes=r.integer("SUTRA_WAL_KEEP_BYTES", 1 << 30, 0, 1 << 44),
        etcd_endpoints=r.get("SUTRA_ETCD_ENDPOINTS", (), parse_etcd_endpoints, lambda v: None),
        tls_cert=env.get("SUTRA_TLS_CERT", "").strip(),
        tls_key=env.get("SUTRA_TLS_KEY", "").strip(),
        tls_ca=env.get("SUTRA_TLS_CA", "").strip(),
        cluster_secret=cluster_secret(env, r.errors),
        etcd=EtcdSecurity.from_env(env),
        shard=r.integer("SUTRA_SHARD", 0, 0, 65_535),
        shards=r.integer("SUTRA_SHARDS", 1, 1, 4096),
        cluster_name=env.get("SUTRA_CLUSTER_NAME", "").strip() or "sutra",
        lease_ttl_s=r.integer("SUTRA_LEASE_TTL_S", 2, 1, 600),
        loop_wait_ms=r.integer("SUTRA_LOOP_WAIT_MS", 100, 10, 600_000),
        retry_timeout_ms=r.integer("SUTRA_RETRY_TIMEOUT_MS", 250, 10, 600_000),
        fence_margin_ms=r.integer("SUTRA_FENCE_MARGIN_MS", 500, 0, 600_000),
        max_lag_on_failover=r.integer("SUTRA_MAX_LAG_ON_FAILOVER", 1_000_000, 0, 1 << 62),
    )
    r.errors.extend(timing_problems(cfg))
    r.errors.extend(cfg.etcd.problems())
    if cfg.shards > 1 and cfg.shard >= cfg.shards:
        r.errors.append(f"SUTRA_SHARD={cfg.shard}: SUTRA_SHARDS is {cfg.shards}, so shards are 0..{cfg.shards - 1}")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        r.errors.append("SUTRA_TLS_CERT/SUTRA_TLS_KEY: set both or neither")
    for name, path in (("SUTRA_TLS_CERT", cfg.tls_cert), ("SUTRA_TLS_KEY", cfg.tls_key), ("SUTRA_TLS_CA", cfg.tls_ca)):
        if path and not os.path.isfile(path):
            r.errors.append(f"{name}={path!r}: no such file")
    if role == "replica" and not cfg.leader and not cfg.etcd_endpoints:
        r.errors.append("SUTRA_LEADER: a replica needs its leader's host:port (or SUTRA_ETCD_ENDPOINTS)")
    if cfg.max_streams + cfg.max_node_streams > cfg.grpc_workers - 2:
        # Streams and waiting reads hold a worker each: two must stay free for
        # health checks and the unary calls (see sutra_cluster/api/limits.py).
        r.errors.append(
            f"SUTRA_MAX_STREAMS + SUTRA_MAX_NODE_STREAMS ({cfg.max_streams} + {cfg.max_node_streams}) must be <= "
            f"SUTRA_GRPC_WORKERS - 2 ({cfg.grpc_workers - 2}), or long calls could take every worker")
    if cfg.tls_ca and not cfg.tls_cert:
        r.errors.append("SUTRA_TLS_CA: set SUTRA_TLS_CERT and SUTRA_TLS_KEY too; a CA alone would serve plaintext")
    if (problem := vector_mode_problem(cfg.vector_storage, cfg.quantization)) is not None:
        r.errors.append(problem)
    if cfg.metrics_port and cfg.metrics_port == cfg.port:
        r.errors.append(f"SUTRA_METRICS_PORT={cfg.metrics_port}: STORAGE_PORT is the same port; pick another")
    if r.errors:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(r.errors))
    return cfg
