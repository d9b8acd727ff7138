"""Checks for cross-shard atomic writes, against real nodes over gRPC: is a
batch whole or absent on every node of every shard it touches?"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import grpc

from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc, txn_pb2, txn_pb2_grpc
from tests.helpers import wait_for
from tests.shard_cluster import RouterProcess, ShardedCluster


@dataclass
class XBatch:
    """A cross-shard batch: new concepts, and edges between them (each edge on its source's shard)."""

    request_id: str
    concepts: list[str]
    edges: list[tuple[str, str]] = field(default_factory=list)

    def request(self) -> pb.LearnBatchRequest:
        return pb.LearnBatchRequest(
            request_id=self.request_id,
            concepts=[pb.LearnConceptRequest(concept_id=c, content=f"content of {c}", strength=1.0, confidence=0.9)
                      for c in self.concepts],
            associations=[pb.LearnAssociationRequest(source_id=s, target_id=t, confidence=0.5) for s, t in self.edges],
        )


_CHANNELS: dict[str, grpc.Channel] = {}


def _channel(address: str) -> grpc.Channel:
    """One channel per address for the whole test session (a checker reads thousands of items)."""
    ch = _CHANNELS.get(address)
    if ch is None:
        ch = _CHANNELS[address] = grpc.insecure_channel(address)
    return ch


def items_on(address: str, concepts: Iterable[str], edges: Iterable[tuple[str, str]],
             sequence: int = 0) -> tuple[int, int]:
    """(items present, items asked) on one node: its own concepts and its edges,
    read once ``sequence`` is visible there. A node answers only for the ids its
    shard owns; callers pass those."""
    stub = storage_pb2_grpc.StorageServiceStub(_channel(address))
    present = asked = 0
    for cid in concepts:
        asked += 1
        present += bool(stub.QueryConcept(pb.QueryConceptRequest(concept_id=cid, sequence=sequence), timeout=10).found)
    for s, t in edges:
        asked += 1
        r = stub.GetNeighbors(pb.GetNeighborsRequest(concept_id=s, direction=pb.OUTGOING, sequence=sequence),
                              timeout=10)
        present += t in r.neighbor_ids
    return present, asked


def state_of(c: ShardedCluster, b: XBatch, nodes: str = "all", token: dict[int, int] | None = None,
             at_durable: bool = False) -> str:
    """'whole', 'absent' or 'partial: ...' across every node (``nodes="leaders"``: leaders only),
    each shard read at its LSN in ``token`` (the write's shard_sequences); ``at_durable``: each node
    read once it has applied all it holds durably (a part decided there may not be applied yet)."""
    present = asked = 0
    per: list[str] = []
    for s in range(c.smap.shards):
        mine = [x for x in b.concepts if c.owner(x) == s]
        edges = [e for e in b.edges if c.owner(e[0]) == s]
        if not mine and not edges:
            continue
        group = [c.leader(s)] if nodes == "leaders" else c.shards[s]
        for n in group:
            seq = n.status().durable_lsn if at_durable else (token or {}).get(s, 0)
            p, a = items_on(n.address, mine, edges, seq)
            present += p
            asked += a
            per.append(f"{n.name} {p}/{a}")
    if present == asked:
        return "whole"
    if present == 0:
        return "absent"
    return "partial: " + ", ".join(per)


def settle(c: ShardedCluster, b: XBatch, timeout: float = 60.0, resolved: bool = False) -> str:
    """Wait until the batch is whole or absent on every node (replicas catch up,
    in-doubt parts get resolved), and return which; fails on a lasting partial.
    ``resolved``: the caller saw no node with an undecided part already."""
    seen: list[str] = []

    def done() -> str | None:
        # Undecided parts first, then the state: read the other way round, a part committed between
        # the two reads looked absent (the state was read while it was still only prepared).
        if not resolved and any(open_txns(n.address) for n in c.nodes):
            seen[:] = ["undecided parts remain"]
            return None
        # (``resolved``: nodes may be down or rewinding, so read as they serve, as before.)
        st = state_of(c, b, at_durable=not resolved)
        seen[:] = [st]
        return st if st in ("whole", "absent") else None

    try:
        got = wait_for(done, timeout, f"batch {b.request_id} to be whole or absent on every node", interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last state {seen}") from None
    assert got is not None
    return got


def open_txns(address: str) -> list[txn_pb2.OpenTxn]:
    stub = txn_pb2_grpc.TxnServiceStub(_channel(address))
    return list(stub.ListTxns(txn_pb2.ListTxnsRequest(), timeout=10).open)


def wait_resolved(c: ShardedCluster, timeout: float = 60.0) -> None:
    """Until no node holds an undecided part."""
    wait_for(lambda: not any(open_txns(n.address) for n in c.nodes), timeout,
             "every node to have resolved its prepared parts", interval=0.1)


def token(resp: object) -> dict[int, int]:
    return {e.shard: e.sequence for e in resp.shard_sequences}  # type: ignore[attr-defined]


def spread(c: ShardedCluster, prefix: str, shards: Sequence[int], per_shard: int = 2,
           start: int = 0) -> list[str]:
    """Concept ids, ``per_shard`` on each of ``shards``."""
    out: list[str] = []
    for s in shards:
        out += c.ids_on(s, per_shard, prefix=prefix, start=start)
    return out


def start_router(c: ShardedCluster, name: str, env: dict[str, str] | None = None, tries: int = 3) -> RouterProcess:
    """A router, started again (up to ``tries`` times) when it exits at start because
    etcd answered its first read too slowly (seen at load average ~30 on 2 cores)."""
    for attempt in range(tries):
        r = c.add_router(name if attempt == 0 else f"{name}.{attempt}", {"VECTOR_DIMENSION": "8", **(env or {})},
                         start=False)
        try:
            return r.start()
        except AssertionError:
            r.stop()
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")
