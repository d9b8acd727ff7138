"""Resharding tests' tools: new shard groups, the driver as a process, a sync
write load whose acknowledged writes are logged, and the comparison of what the
router answers with a single reference node holding those writes."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc
from tests.cluster import DIM, Node, free_ports
from tests.helpers import ROOT
from tests.shard_cluster import ShardedCluster

WRITE_DEADLINE_S = 60.0


def add_shard(c: ShardedCluster, shard: int, per_shard: int = 2) -> list[Node]:
    """Start a new replication group for ``shard`` (SUTRA_SHARD=n, no SUTRA_SHARDS)
    with the first node's settings, and wait until it has a healthy leader."""
    base_env = {k: v for k, v in c.shards[0][0].env.items()
                if k not in ("SUTRA_SHARD", "SUTRA_NODE_ID", "SUTRA_NODE_ROLE", "SUTRA_METRICS_PORT", "SUTRA_SHARDS")}
    ports = free_ports(per_shard)
    group = []
    for i in range(per_shard):
        nm = f"s{shard}n{i}"
        group.append(Node(nm, c.base / nm, {**base_env, "SUTRA_SHARD": str(shard),
                                            "SUTRA_NODE_ROLE": "leader" if i == 0 else "replica"},
                          ports[i], 0, c.base / f"{nm}.log"))
    while len(c.shards) <= shard:
        c.shards.append([])
    c.shards[shard] = group
    for n in group:
        n.start(wait=False)
    for n in group:
        n.wait_ready(90)
    c.wait_shard_healthy(shard, 60)
    return group


def reshard(c: ShardedCluster, *args: str, fault: str = "", timeout: float = 180.0,
            cleanup_after: float = 1.0) -> subprocess.CompletedProcess[str]:
    """``sutra-cluster reshard <args>`` as a process (SUTRA_RESHARD_FAULT=fault kills it there)."""
    env = {**os.environ, "SUTRA_RESHARD_FAULT": fault}  # with the cluster secret the nodes hold
    cmd = [sys.executable, "-m", "sutra_cluster", "reshard", *args, "--etcd", c.etcd.endpoint,
           "--cluster", c.name, "--cleanup-after", str(cleanup_after)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


class Load:
    """Writers through a router, each on its own keys, each write retried with its
    request id until acknowledged. ``acked`` lists every acknowledged write in
    the order each writer got it (the reference replays them)."""

    def __init__(self, address: str, writers: int = 3, keys_per_writer: int = 120, seed: int = 1) -> None:
        self.address = address
        self.writers = writers
        self.keys = [[f"w{w}-{i}" for i in range(keys_per_writer)] for w in range(writers)]
        self.acked: list[list[tuple[str, object]]] = [[] for _ in range(writers)]
        self.failed: list[str] = []
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.running = threading.Event()
        self.running.set()
        self.seed = seed
        self._threads: list[threading.Thread] = []
        self._parked: set[int] = set()

    def all_keys(self) -> list[str]:
        return [k for ks in self.keys for k in ks]

    def start(self) -> Load:
        for w in range(self.writers):
            t = threading.Thread(target=self._write, args=(w,), daemon=True, name=f"load-{w}")
            t.start()
            self._threads.append(t)
        return self

    def pause(self, timeout: float = WRITE_DEADLINE_S + 30) -> None:
        """Stop writing; returns once every writer is parked (its last write acknowledged or failed)."""
        self.running.clear()
        deadline = time.monotonic() + timeout
        while len(self._parked) < len(self._threads):
            assert time.monotonic() < deadline, "writers did not park"
            time.sleep(0.02)

    def resume(self) -> None:
        self.running.set()

    def finish(self) -> None:
        self.stop.set()
        self.running.set()
        for t in self._threads:
            t.join(WRITE_DEADLINE_S + 30)

    def count(self) -> int:
        return sum(len(a) for a in self.acked)

    def _request(self, w: int, rng: random.Random, nrng: np.random.Generator, n: int) -> tuple[str, object]:
        mine = self.keys[w]
        cid = mine[n % len(mine)] if n >= len(mine) else mine[n]
        if n >= len(mine) and rng.random() < 0.5:
            other = rng.choice(self.all_keys())
            return "LearnAssociation", pb.LearnAssociationRequest(
                source_id=rng.choice(mine), target_id=other, assoc_type=rng.randrange(5),
                confidence=round(rng.uniform(0.1, 1.0), 3), request_id=uuid.uuid4().hex)
        emb = nrng.standard_normal(DIM).astype("<f4").tobytes()
        return "LearnConcept", pb.LearnConceptRequest(
            concept_id=cid, content=f"{cid} v{n}", strength=1.0, confidence=round(rng.uniform(0.1, 1.0), 3),
            embedding_f32=emb, request_id=uuid.uuid4().hex)

    def _write(self, w: int) -> None:
        rng = random.Random(self.seed * 100 + w)
        nrng = np.random.default_rng(self.seed * 100 + w)
        stub = storage_pb2_grpc.StorageServiceStub(grpc.insecure_channel(self.address))
        n = 0
        while not self.stop.is_set():
            if not self.running.is_set():
                self._parked.add(w)
                self.running.wait()
                self._parked.discard(w)
            method, req = self._request(w, rng, nrng, n)
            t0 = time.monotonic()
            deadline = t0 + WRITE_DEADLINE_S
            while True:
                try:
                    getattr(stub, method)(req, timeout=20)
                    self.acked[w].append((method, req))
                    self.latencies.append(time.monotonic() - t0)
                    break
                except grpc.RpcError as exc:
                    if time.monotonic() > deadline:
                        self.failed.append(f"{method} {req}: {exc.code().name}: {exc.details()}")  # type: ignore[attr-defined]
                        break
                    time.sleep(0.05)  # the router retried already; a router restart, or its deadline
            n += 1


def replay(acked: list[list[tuple[str, object]]], ref: storage_pb2_grpc.StorageServiceStub) -> int:
    lsn = 0
    for log in acked:
        for method, req in log:
            lsn = getattr(ref, method)(req, timeout=30).sequence
    return lsn


def _times_cleared(r: pb.QueryConceptResponse) -> pb.QueryConceptResponse:
    out = pb.QueryConceptResponse()
    out.CopyFrom(r)
    out.ClearField("created_at_us")
    out.ClearField("updated_at_us")
    return out


def mismatch(router: storage_pb2_grpc.StorageServiceStub, ref: storage_pb2_grpc.StorageServiceStub,
             ids: list[str], seed: int = 3) -> str | None:
    """The first difference between the router's and the reference's answers
    (concepts, neighbours in each direction, paths, exact vector search), or None."""
    rng = random.Random(seed)
    for cid in ids:
        q = pb.QueryConceptRequest(concept_id=cid, include_embedding=True)
        got, want = _times_cleared(router.QueryConcept(q)), _times_cleared(ref.QueryConcept(q))
        if got.embedding_f32 != want.embedding_f32 and len(got.embedding_f32) == len(want.embedding_f32):
            # A node keeps vectors normalised with their norm: a moved concept's
            # vector is the original within float rounding, as after a restart.
            g, w = (np.frombuffer(x.embedding_f32, "<f4") for x in (got, want))
            if np.allclose(g, w, rtol=1e-5, atol=1e-6):
                got.embedding_f32 = want.embedding_f32
        if got != want:
            fields = [f.name for f in pb.QueryConceptResponse.DESCRIPTOR.fields
                      if getattr(got, f.name) != getattr(want, f.name)]
            return (f"QueryConcept {cid}: {fields} differ: "
                    f"{[(getattr(got, f), getattr(want, f)) for f in fields if f != 'embedding_f32']}")
        for d in (pb.BOTH, pb.OUTGOING, pb.INCOMING):
            r = pb.GetNeighborsRequest(concept_id=cid, direction=d)
            if router.GetNeighbors(r) != ref.GetNeighbors(r):
                return f"GetNeighbors {cid} {pb.Direction.Name(d)}: {router.GetNeighbors(r)} != {ref.GetNeighbors(r)}"
    for _ in range(20):
        s, t = rng.choice(ids), rng.choice(ids)
        r = pb.FindPathRequest(start_id=s, end_id=t, max_depth=3)
        if router.FindPath(r) != ref.FindPath(r):
            return f"FindPath {s} {t}"
    nrng = np.random.default_rng(seed)
    for _ in range(8):
        query = nrng.standard_normal(DIM).astype("<f4").tobytes()
        r = pb.VectorSearchRequest(query_f32=query, k=10)
        got, want = router.VectorSearch(r), ref.VectorSearch(r)
        if [x.concept_id for x in got.results] != [x.concept_id for x in want.results]:
            return f"VectorSearch: {[x.concept_id for x in got.results]} != {[x.concept_id for x in want.results]}"
    stats, ref_stats = router.GetStats(pb.GetStatsRequest()), ref.GetStats(pb.GetStatsRequest())
    return None if stats.concepts >= ref_stats.concepts else f"router counts {stats.concepts} concepts < {ref_stats.concepts}"


def wait_equal(router_address: str, ref: storage_pb2_grpc.StorageServiceStub, ids: list[str],
               timeout: float = 60.0, on_fail: Callable[[], str] = lambda: "") -> None:
    """Until the router answers as the reference does (writes become visible
    within a reconcile interval of their acknowledgement)."""
    router = storage_pb2_grpc.StorageServiceStub(grpc.insecure_channel(router_address))
    deadline = time.monotonic() + timeout
    last: str | None = "not compared"
    while time.monotonic() < deadline:
        last = mismatch(router, ref, ids)
        if last is None:
            return
        time.sleep(0.5)
    raise AssertionError(f"the router's answers differ from the reference's: {last}\n{on_fail()}")


def shard_concepts(c: ShardedCluster, shard: int) -> int:
    from sutra_cluster.client import SutraClient

    with SutraClient(c.leader(shard).address, timeout=10.0, retry_deadline=0) as cl:
        return int(cl.stats().concepts)


def data_dirs(base: Path) -> list[Path]:
    return sorted(p for p in base.iterdir() if p.is_dir())
