"""One read of a whole cluster for ``sutra-cluster status``: every shard's
leader key, term, maintenance mode, live members and registered members from
etcd (one prefix read), then every member's own GetReplicationStatus (in
parallel, each bounded by ``rpc_timeout``).

Which members exist comes from etcd's registry (failover/journal.py), not from
the live member keys alone: a member key dies with its lease, so a SIGKILLed
node would otherwise vanish from the table. A registered member without a live
key is shown as ``down`` with the time it was last seen.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import grpc

from sutra_cluster.failover.keys import (
    LEADER,
    MEMBERS,
    PAUSE,
    TERM,
    LeaderKey,
    MemberInfo,
    Registration,
    SyncState,
    cluster_prefix,
    map_key,
    parse_pause,
    registry_prefix,
)
from sutra_cluster.pb import replication_pb2 as rpb

DOWN = "down"  # registered, no live member key: the process is gone (or cut off from etcd)
UNREACHABLE = "unreachable"  # live member key, but its port does not answer


@dataclass
class Member:
    node: str
    address: str
    role: str  # leader | replica | down | unreachable
    state: str = ""  # streaming, snapshot, rejected ... (a replica's stream), "running" for a leader
    term: int | None = None
    last_lsn: int | None = None
    flushed_lsn: int | None = None
    applied_lsn: int | None = None
    lag_bytes: int | None = None
    lag_ms: float | None = None
    sync: bool = False
    version: str = ""
    last_seen_s: float | None = None  # seconds since it was last seen (down members)
    error: str = ""

    @property
    def up(self) -> bool:
        return self.role not in (DOWN, UNREACHABLE)


@dataclass
class Shard:
    shard: int
    leader: str | None
    term: int
    paused: bool = False
    paused_since: float | None = None
    paused_by: str = ""
    paused_reason: str = ""
    sync_set: list[str] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = [] if self.leader else [f"shard {self.shard} has no leader"]
        out += [f"shard {self.shard}: {m.node} is {m.role}" + (f" ({m.error})" if m.error else "")
                for m in self.members if not m.up]
        return out


@dataclass
class ClusterView:
    cluster: str
    time: float
    shards: list[Shard]

    def problems(self) -> list[str]:
        return [p for s in self.shards for p in s.problems()]

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["healthy"] = not self.problems()
        d["problems"] = self.problems()
        return d


def _shard_of(key: str, base: str) -> int | None:
    rest = key[len(base):]
    head = rest.split("/", 1)[0]
    return int(head) if head.isdigit() else None


def read_etcd(kv: dict[str, str], cluster: str, now: float) -> list[Shard]:
    """Shards from one read of the cluster prefix (no node is asked yet)."""
    base = cluster_prefix(cluster) + "shards/"
    reg_base = registry_prefix(cluster)
    numbers: set[int] = set()
    raw_map = kv.get(map_key(cluster))
    if raw_map:
        from sutra_cluster.sharding.shardmap import ShardMap

        numbers.update(range(ShardMap.from_json(raw_map).shards))
    for k in kv:
        for b in (base, reg_base):
            if k.startswith(b) and (n := _shard_of(k, b)) is not None:
                numbers.add(n)
    shards = []
    for n in sorted(numbers):
        p = f"{base}{n}/"
        key = LeaderKey.decode(kv[p + LEADER]) if p + LEADER in kv else None
        pause = parse_pause(kv.get(p + PAUSE))
        sync = SyncState.decode(kv[p + "sync"]) if p + "sync" in kv else None
        live = {m.node_id: m for m in (MemberInfo.decode(v) for k, v in kv.items() if k.startswith(p + MEMBERS))}
        regs = {r.node_id: r for r in (Registration.decode(v) for k, v in kv.items()
                                        if k.startswith(registry_prefix(cluster, n)))}
        members = []
        for node in sorted(set(live) | set(regs)):
            reg, m = regs.get(node), live.get(node)
            version = reg.version if reg is not None else ""
            if m is None:
                assert reg is not None
                members.append(Member(node, reg.address, DOWN, version=version, term=reg.term or None,
                                      last_seen_s=now - reg.last_seen))
            else:
                members.append(Member(node, m.address, m.role, term=m.term, flushed_lsn=m.flushed_lsn,
                                      version=version, sync=sync is not None and node in sync.members))
        shards.append(Shard(n, key.node_id if key else None, int(kv.get(p + TERM, "0")),
                            paused=pause is not None, paused_since=pause.since if pause else None,
                            paused_by=pause.by if pause else "", paused_reason=pause.reason if pause else "",
                            sync_set=list(sync.members) if sync else [],
                            members=members))
    return shards


def ask_nodes(members: Sequence[Member], rpc_timeout: float = 2.0) -> None:
    """Fill each live member's row from its own GetReplicationStatus, in parallel;
    a member whose port does not answer becomes ``unreachable``."""
    from sutra_cluster.admin import replication_status

    live = [m for m in members if m.up]
    if not live:
        return

    def ask(m: Member) -> tuple[Member, rpb.ReplicationStatus | None, str]:
        try:
            return m, replication_status(m.address, timeout=rpc_timeout), ""
        except grpc.RpcError as exc:
            return m, None, f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]

    with ThreadPoolExecutor(max_workers=min(16, len(live))) as pool:
        answers = list(pool.map(ask, live))
    lag: dict[str, rpb.ReplicaStatus] = {}
    for m, st, _ in answers:
        if st is not None and m.node == m.address and st.node_id:
            m.node = st.node_id  # --nodes: the node's own id once it answered
        if st is not None and st.role == "leader":
            lag.update({r.node_id: r for r in st.replicas})
    for m, st, err in answers:
        if st is None:
            m.role, m.error = UNREACHABLE, err
            continue
        m.role, m.term, m.last_lsn = st.role, st.term, st.last_lsn
        m.flushed_lsn, m.applied_lsn = st.durable_lsn, st.applied_lsn
        m.state = "running" if st.role == "leader" else (st.follow_state or "")
        m.version = st.version or m.version  # the node's own word; an older node sends none
        r = lag.get(m.node)
        if r is not None:
            m.lag_bytes = r.lag_bytes if r.HasField("lag_bytes") else None
            m.lag_ms = round(r.lag_ms, 1) if r.HasField("lag_ms") else None
            m.sync = m.sync or r.sync
        elif st.role == "leader":
            m.lag_bytes, m.lag_ms = 0, 0.0


def from_etcd(endpoints: Sequence[str], cluster: str, shards: Sequence[int] = (), rpc_timeout: float = 2.0,
              etcd_timeout: float = 2.0, etcd_retry_s: float = 5.0) -> ClusterView:
    """The whole cluster (or ``shards``). Raises CoordinatorUnavailable when etcd
    cannot be read within ``etcd_retry_s`` (ops/waiting.py's policy)."""
    from sutra_cluster.failover.etcd import EtcdCoordinator
    from sutra_cluster.ops.waiting import call

    coord = EtcdCoordinator(list(endpoints), cluster_prefix(cluster), "status", timeout=etcd_timeout)
    try:
        kv = call(lambda: coord.read_prefix(cluster_prefix(cluster)), etcd_retry_s)
    finally:
        coord.close()
    now = time.time()
    view = [s for s in read_etcd(kv, cluster, now) if not shards or s.shard in shards]
    ask_nodes([m for s in view for m in s.members], rpc_timeout)
    return ClusterView(cluster, now, view)


def from_nodes(addresses: Sequence[str], rpc_timeout: float = 2.0) -> ClusterView:
    """Without etcd (``--nodes``): one shard made of the listed nodes."""
    members = [Member(a, a, "replica") for a in addresses]
    ask_nodes(members, rpc_timeout)
    leader = next((m.node for m in members if m.role == "leader"), None)
    term = max((m.term or 0 for m in members), default=0)
    return ClusterView("", time.time(), [Shard(0, leader, term, members=members)])

