"""Operator commands that talk to running nodes: promote, follow, status."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import grpc

from sutra_cluster.pb import replication_pb2 as rpb
from sutra_cluster.pb import replication_pb2_grpc
from sutra_cluster.tlsutil import env_channel


def _stub(address: str) -> tuple[grpc.Channel, replication_pb2_grpc.ReplicationServiceStub]:
    ch = env_channel(address)
    return ch, replication_pb2_grpc.ReplicationServiceStub(ch)


def replication_status(address: str, timeout: float = 5.0) -> rpb.ReplicationStatus:
    ch, stub = _stub(address)
    try:
        return stub.GetReplicationStatus(rpb.ReplicationStatusRequest(), timeout=timeout)
    finally:
        ch.close()


class FollowersNotPointed(RuntimeError):
    """The promotion happened, but some followers could not be pointed at the new
    leader (down, say); the others were. ``response`` is the promotion's answer."""

    def __init__(self, node: str, response: rpb.PromoteResponse, failed: dict[str, str]) -> None:
        self.response, self.failed = response, failed
        super().__init__(f"promoted {node} (term {response.term}, LSN {response.lsn}), but could not point "
                         + ", ".join(f"{f} ({why})" for f, why in failed.items())
                         + f" at it; run `sutra-cluster follow --node <node> --leader {node}` once they are up")


def promote(node: str, followers: Sequence[str], min_lsn: int = 0, timeout: float = 10.0) -> rpb.PromoteResponse:
    """Promote ``node`` and point every follower at it. The promoted node's new
    term makes every replica reject the old leader from then on.

    Every follower is tried even if one fails (the old leader in the list is
    usually down); then FollowersNotPointed names those that failed."""
    ch, stub = _stub(node)
    try:
        resp = stub.Promote(rpb.PromoteRequest(min_lsn=min_lsn), timeout=timeout)
    finally:
        ch.close()
    failed: dict[str, str] = {}
    for f in followers:
        try:
            follow(f, node, timeout)
        except grpc.RpcError as exc:
            failed[f] = f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
    if failed:
        raise FollowersNotPointed(node, resp, failed)
    return resp


def follow(node: str, leader: str, timeout: float = 10.0) -> rpb.FollowResponse:
    ch, stub = _stub(node)
    try:
        return stub.Follow(rpb.FollowRequest(leader_address=leader), timeout=timeout)
    finally:
        ch.close()


def reinit(node: str, timeout: float = 600.0) -> rpb.ReinitResponse:
    """Rebuild the replica at ``node`` from its leader's snapshot (the node refuses
    if it leads); returns once the snapshot is installed. Raises grpc.RpcError."""
    ch, stub = _stub(node)
    try:
        return stub.Reinit(rpb.ReinitRequest(), timeout=timeout)
    finally:
        ch.close()


def status_rows(addresses: Sequence[str]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for addr in addresses:
        try:
            st = replication_status(addr, timeout=2.0)
        except grpc.RpcError as exc:
            rows.append({"node": addr, "address": addr, "role": "down", "error": exc.code().name})  # type: ignore[attr-defined]
            continue
        lag = {r.node_id: r for r in st.replicas}
        rows.append({
            "node": st.node_id, "address": addr, "role": st.role, "term": st.term, "last_lsn": st.last_lsn,
            "durable_lsn": st.durable_lsn, "applied_lsn": st.applied_lsn, "leader": st.leader_address,
            "state": st.follow_state or ("leader" if st.role == "leader" else ""), "lag": lag,
        })
    for row in rows:  # fill each replica's lag from its leader's view
        for other in rows:
            replicas = other.get("lag") or {}
            if row["node"] in replicas:  # type: ignore[operator]
                r = replicas[row["node"]]  # type: ignore[index]
                row["lag_bytes"], row["lag_ms"] = r.lag_bytes, r.lag_ms
    return rows


def print_status(addresses: Sequence[str], out=sys.stdout) -> int:  # type: ignore[no-untyped-def]
    rows = status_rows(addresses)
    print(f"{'NODE':<14} {'ADDRESS':<22} {'ROLE':<8} {'TERM':>5} {'LAST LSN':>9} {'FLUSHED':>9} {'APPLIED':>9} "
          f"{'LAG B':>8} {'LAG MS':>8}  STATE", file=out)
    for r in rows:
        if r["role"] == "down":
            print(f"{r['node']:<14} {r['address']:<22} {'down':<8}  ({r['error']})", file=out)
            continue
        # No nested f-string with the same quotes: that needs Python 3.12, the project supports 3.11.
        lag_ms = f"{r['lag_ms']:.1f}" if "lag_ms" in r else "-"
        print(f"{r['node']!s:<14} {r['address']!s:<22} {r['role']!s:<8} {r['term']!s:>5} {r['last_lsn']!s:>9} "
              f"{r['durable_lsn']!s:>9} {r['applied_lsn']!s:>9} {r.get('lag_bytes', '-')!s:>8} "
              f"{lag_ms:>8}  {r['state']}", file=out)
    return 0 if all(r["role"] != "down" for r in rows) else 1


def etcd_members(endpoints: Sequence[str], cluster: str, shard: int) -> tuple[list[str], str]:
    """Addresses of a shard's members as published in etcd, and the leader's."""
    from sutra_cluster.failover.etcd import EtcdCoordinator, shard_prefix

    coord = EtcdCoordinator(list(endpoints), shard_prefix(cluster, shard), "admin", timeout=2.0)
    try:
        snap = coord.snapshot()
    finally:
        coord.close()
    addrs = sorted(m.address for m in snap.members.values())
    return addrs, snap.leader.address if snap.leader else ""


def switchover(endpoints: Sequence[str], cluster: str, shard: int, target: str = "",
               timeout: float = 10.0) -> tuple[str, float]:
    """Planned switchover: ask the leader to hand over to ``target`` (or the most
    caught-up replica), wait until the target holds the leader key; returns
    (target, seconds). No acknowledged write is lost: the leader pauses writes
    and hands over only once the target has flushed everything."""
    import time

    from sutra_cluster.failover.etcd import EtcdCoordinator, shard_prefix
    from sutra_cluster.ops.waiting import wait_until

    coord = EtcdCoordinator(list(endpoints), shard_prefix(cluster, shard), "admin", timeout=2.0)
    try:
        snap = coord.snapshot()
        if snap.leader is None:
            raise RuntimeError("no leader: nothing to switch over")
        if not target:
            replicas = [m for m in snap.members.values() if m.node_id != snap.leader.node_id and m.healthy]
            if not replicas:
                raise RuntimeError("no healthy replica to switch over to")
            target = sorted(replicas, key=lambda m: (-m.flushed_lsn, m.node_id))[0].node_id
        if target not in snap.members:
            raise RuntimeError(f"{target} is not a live member of shard {shard}")
        t0 = time.monotonic()
        coord.request_switchover(target)

        def target_leads() -> bool:
            cur = coord.snapshot().leader
            return cur is not None and cur.node_id == target

        try:
            # Polled every ~10 ms: the time this returns is the switchover's reported duration.
            wait_until(target_leads, timeout, f"switchover to {target}", first_s=0.005, max_s=0.01)
        except TimeoutError as exc:
            coord.clear_switchover()
            raise RuntimeError(f"{exc}; the request was withdrawn") from None
        return target, time.monotonic() - t0
    finally:
        coord.close()
