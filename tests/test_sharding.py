"""Sharding: jump hash, shard map, router, routing client, cross-shard reads and writes.

The process tests share one cluster (module scope): etcd, two shards of three
``sutra-cluster serve`` nodes each (sync commit, etcd-managed leadership) and
two routers, all real processes on loopback. Each test uses its own id prefix;
the tests that kill a leader restart it and wait until its shard is whole
again before they end, so the next test starts from a healthy cluster.
"""

from __future__ import annotations

import collections
import itertools
import random
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest

from sutra_cluster.api.storage_service import StorageServicer
from sutra_cluster.client import Association, Concept
from sutra_cluster.config import Config
from sutra_cluster.errors import ConfigError
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc
from sutra_cluster.sharding.client import ShardedClient
from sutra_cluster.sharding.hashing import jump_hash, key_hash, shard_for
from sutra_cluster.sharding.shardmap import ShardMap
from sutra_cluster.storage.engine import Engine
from tests.cluster import DIM
from tests.helpers import free_port, rpc_code, tool, wait_for
from tests.shard_cluster import RouterProcess, ShardedCluster, sharded_cluster

# ---- pure: the hash and the map ---------------------------------------------------


def test_jump_hash_matches_the_paper_reference_values() -> None:
    # Values of the paper's C++ function (as other implementations test it).
    assert [jump_hash(k, 60) for k in (0, 1, 2)] == [0, 55, 46]
    assert jump_hash(42, 57) == 43
    assert jump_hash(256, 1024) == 520
    assert jump_hash(0xDEAD10CC, 1) == 0
    assert jump_hash(0xDEAD10CC, 666) == 361
    assert jump_hash(16045690984833335023, 255) == 237
    # blake2b of the UTF-8 bytes: stable across processes and languages.
    assert key_hash("concept-1") == int.from_bytes(
        __import__("hashlib").blake2b(b"concept-1", digest_size=8).digest(), "little")


def test_jump_hash_is_balanced_and_moves_little_when_shards_grow() -> None:
    ids = [f"id-{i}" for i in range(20_000)]
    for shards in (2, 3, 5):
        counts = collections.Counter(shard_for(i, shards) for i in ids)
        assert set(counts) == set(range(shards))
        expected = len(ids) / shards
        assert all(abs(n - expected) < 0.05 * expected for n in counts.values()), counts
    for shards in (1, 2, 4, 7):
        before = {i: shard_for(i, shards) for i in ids}
        after = {i: shard_for(i, shards + 1) for i in ids}
        moved = [i for i in ids if before[i] != after[i]]
        assert all(after[i] == shards for i in moved), "keys only ever move to the new shard"
        share = len(moved) / len(ids)
        assert abs(share - 1 / (shards + 1)) < 0.02, (shards, share)


def test_shard_map_forms() -> None:
    m = ShardMap.parse("0=127.0.0.1:1,127.0.0.1:2; 1=127.0.0.1:3")
    assert (m.shards, m.version, m.members_of(1)) == (2, 1, ("127.0.0.1:3",))
    assert ShardMap.from_json(m.to_json()) == m
    j = ShardMap.parse('{"version": 3, "shards": 4, "hash": "jump-blake2b64", "members": {}}')
    assert (j.shards, j.version, j.owner("x")) == (4, 3, shard_for("x", 4))
    for bad in ("0=a:1;2=b:2", "0=nohost", '{"shards": 2, "hash": "ring"}', '{"shards": 0}', "x=a:1",
                '{"shards": 2, "members": {"5": ["a:1"]}}'):
        with pytest.raises(ConfigError):
            ShardMap.parse(bad)


def test_shard_settings_are_checked(tmp_path: Path) -> None:
    from sutra_cluster import config

    assert config.load({"SUTRA_SHARD": "1", "SUTRA_SHARDS": "2"}).shards == 2
    with pytest.raises(ConfigError, match="SUTRA_SHARD=2: SUTRA_SHARDS is 2"):
        config.load({"SUTRA_SHARD": "2", "SUTRA_SHARDS": "2"})
    # Without etcd, SUTRA_SHARDS alone turns the wrong-shard check on.
    other = next(f"st{i}" for i in range(100) if shard_for(f"st{i}", 2) == 0)
    with reference_node(tmp_path / "n", shard=1, shards=2) as node:
        code, details = _code_and_details(node.LearnConcept, pb.LearnConceptRequest(
            concept_id=other, content="x", strength=1, confidence=1))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "belongs to shard 0" in details, details


# ---- the cluster -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShardedCluster]:
    with sharded_cluster(tmp_path_factory.mktemp("sharded"), shards=2, per_shard=3, routers=2) as c:
        yield c


def _code_and_details(fn, *args) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as exc:
        fn(*args, timeout=30)
    return rpc_code(exc.value), exc.value.details() or ""  # type: ignore[attr-defined]


# ---- router equals a single node ------------------------------------------------------


@contextmanager
def reference_node(path: Path, **settings: object) -> Iterator[storage_pb2_grpc.StorageServiceStub]:
    """A single node in this process: the engine and the service, no replication, no shards."""
    engine = Engine(Config(storage_path=str(path), vector_dimension=DIM, node_id="reference", wal_fsync=False,
                           **settings))  # type: ignore[arg-type]
    engine.lead("reference")  # no replication: this engine takes writes itself
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    storage_pb2_grpc.add_StorageServiceServicer_to_server(StorageServicer(engine), server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield storage_pb2_grpc.StorageServiceStub(channel)
    finally:
        channel.close()
        server.stop(0).wait()
        engine.close()


def _mixed_load(c: ShardedCluster, rng: random.Random) -> tuple[list[tuple[str, object]], list[str]]:
    """The operations (method, request) and the ids they touch, deterministic."""
    a, b = c.ids_on(0, 14, "eq"), c.ids_on(1, 14, "eq")
    ids = sorted(a + b)
    ghosts = ["eq-ghost-1", "eq-ghost-2", "eq-ghost-3"]  # edge targets that are never concepts
    nrng = np.random.default_rng(rng.randrange(1 << 30))

    def emb() -> bytes:
        return nrng.standard_normal(DIM).astype("<f4").tobytes()

    def concept(cid: str, with_vec: bool = True, content: str = "") -> pb.LearnConceptRequest:
        return pb.LearnConceptRequest(
            concept_id=cid, content=content or f"about {cid}", strength=round(rng.uniform(0.1, 3), 3),
            confidence=round(rng.random(), 3), attributes={"n": cid[-2:]} if rng.random() < 0.3 else {},
            embedding_f32=emb() if with_vec else b"")

    def assoc(s: str, t: str) -> pb.LearnAssociationRequest:
        return pb.LearnAssociationRequest(source_id=s, target_id=t, assoc_type=rng.randrange(5),
                                          confidence=round(rng.random(), 3))

    ops: list[tuple[str, object]] = []
    for cid in ids[:-6]:
        ops.append(("LearnConcept", concept(cid, with_vec=cid not in ids[-10:-6])))
    same = emb()  # two equal vectors on different shards: the merge must break the tie by id
    ops.append(("LearnConcept", pb.LearnConceptRequest(concept_id=a[0], content="twin", strength=1, confidence=1,
                                                       embedding_f32=same)))
    ops.append(("LearnConcept", pb.LearnConceptRequest(concept_id=b[0], content="twin", strength=1, confidence=1,
                                                       embedding_f32=same)))
    ops.append(("LearnBatch", pb.LearnBatchRequest(
        concepts=[concept(cid) for cid in ids[-6:]],
        associations=[assoc(rng.choice(ids), rng.choice(ids)) for _ in range(10)])))
    for _ in range(70):
        ops.append(("LearnAssociation", assoc(rng.choice(ids), rng.choice(ids + ghosts[:1]))))
    ops.append(("LearnAssociation", assoc(a[1], a[1])))  # a self-loop
    ops.append(("LearnAssociation", assoc(a[2], b[2])))  # the same pair with every type
    for t in range(5):
        ops.append(("LearnAssociation", pb.LearnAssociationRequest(source_id=b[3], target_id=a[3], assoc_type=t,
                                                                   confidence=0.1 * t)))
    ops.append(("LearnAssociation", assoc(b[4], ghosts[1])))
    ops.append(("LearnAssociation", assoc(a[4], ghosts[1])))
    # Updates: new content without a vector (drops it), a new vector.
    ops.append(("LearnConcept", concept(a[5], with_vec=False, content="rewritten")))
    ops.append(("LearnConcept", concept(b[5])))
    # Deletes of concepts with cross-shard incoming edges, and of an id that only has edges.
    for cid in (a[6], b[6], ghosts[1]):
        ops.append(("DeleteConcept", pb.DeleteConceptRequest(concept_id=cid)))
    # A batch that re-creates a deleted concept, links to it from the other
    # shard, and deletes a concept it also links to (the delete wins).
    ops.append(("LearnBatch", pb.LearnBatchRequest(
        concepts=[concept(a[6])],
        associations=[assoc(b[7], a[6]), assoc(a[8], b[8]), assoc(b[9], b[8]), assoc(b[8], a[9])],
        delete_concept_ids=[b[8]])))
    ops.append(("LearnAssociation", assoc(a[10], b[6])))  # an edge to a deleted concept is allowed
    # A bulk load: each message is split by shard.
    ops.append(("LearnStream", [
        pb.LearnBatchRequest(concepts=[concept(a[11]), concept(b[11])], associations=[assoc(a[11], b[11])]),
        pb.LearnBatchRequest(associations=[assoc(b[12], a[12]), assoc(a[12], a[11])], delete_concept_ids=[a[13]]),
    ]))
    for _ in range(20):
        ops.append(("LearnAssociation", assoc(rng.choice(ids), rng.choice(ids))))
    return ops, ids + ghosts + ["eq-never"]


def _without_times(r: pb.QueryConceptResponse) -> pb.QueryConceptResponse:
    out = pb.QueryConceptResponse()
    out.CopyFrom(r)
    out.ClearField("created_at_us")
    out.ClearField("updated_at_us")
    return out


@pytest.mark.slow
def test_router_answers_equal_a_single_node(cluster: ShardedCluster, tmp_path: Path) -> None:
    rng = random.Random(5)
    ops, universe = _mixed_load(cluster, rng)
    routers = [storage_pb2_grpc.StorageServiceStub(grpc.insecure_channel(r.address)) for r in cluster.routers]
    token: dict[int, int] = {}
    with reference_node(tmp_path / "reference") as ref:
        ref_lsn = 0
        for i, (method, req) in enumerate(ops):
            # Writes alternate between the two routers: they hold no state of their own.
            stream = method == "LearnStream"
            got = getattr(routers[i % 2], method)(iter(req) if stream else req, timeout=30)  # type: ignore[call-overload]
            assert got.shard_sequences, (method, got)
            for e in got.shard_sequences:
                token[e.shard] = max(token.get(e.shard, 0), e.sequence)
            ref_lsn = getattr(ref, method)(iter(req) if stream else req, timeout=30).sequence  # type: ignore[call-overload]
        seqs = [pb.ShardSequence(shard=s, sequence=q) for s, q in token.items()]
        assert len(token) == 2, "the load wrote to both shards"
        checked: collections.Counter[str] = collections.Counter()
        for i, cid in enumerate(universe):
            router = routers[i % 2]
            want = ref.QueryConcept(pb.QueryConceptRequest(concept_id=cid, sequence=ref_lsn, include_embedding=True))
            got = router.QueryConcept(pb.QueryConceptRequest(concept_id=cid, shard_sequences=seqs,
                                                             include_embedding=True))
            assert _without_times(got) == _without_times(want), cid
            for d in (pb.BOTH, pb.OUTGOING, pb.INCOMING):
                want_n = ref.GetNeighbors(pb.GetNeighborsRequest(concept_id=cid, direction=d, sequence=ref_lsn))
                got_n = router.GetNeighbors(pb.GetNeighborsRequest(concept_id=cid, direction=d, shard_sequences=seqs))
                assert got_n == want_n, (cid, pb.Direction.Name(d))
                checked["neighbors"] += 1
            checked["concepts"] += 1
        # The batch form gives the same as one call per id.
        want_b = [ref.GetNeighbors(pb.GetNeighborsRequest(concept_id=c, sequence=ref_lsn)) for c in universe]
        got_b = routers[0].GetNeighborsBatch(pb.GetNeighborsBatchRequest(concept_ids=universe, shard_sequences=seqs))
        assert list(got_b.results) == want_b
        cross = 0
        pairs = [(rng.choice(universe), rng.choice(universe)) for _ in range(60)] + [(x, x) for x in universe[:5]]
        pairs += [("eq-ghost-1", "eq-ghost-1"), ("eq-never", "eq-never"), (universe[0], "eq-never")]
        for i, (s, t) in enumerate(pairs):
            for depth in (0, 1, 2, 3):
                want_p = ref.FindPath(pb.FindPathRequest(start_id=s, end_id=t, max_depth=depth, sequence=ref_lsn))
                got_p = routers[i % 2].FindPath(pb.FindPathRequest(start_id=s, end_id=t, max_depth=depth,
                                                                   shard_sequences=seqs))
                assert got_p == want_p, (s, t, depth)
                if got_p.found and len({cluster.owner(x) for x in got_p.path}) > 1:
                    cross += 1
        assert cross > 20, "the paths compared include many that cross shards"
        nrng = np.random.default_rng(7)
        for q in range(10):
            query = nrng.standard_normal(DIM).astype("<f4").tobytes()
            for k in (1, 3, 10, 100):
                want_v = ref.VectorSearch(pb.VectorSearchRequest(query_f32=query, k=k, sequence=ref_lsn))
                got_v = routers[q % 2].VectorSearch(pb.VectorSearchRequest(query_f32=query, k=k,
                                                                           shard_sequences=seqs))
                assert [x.concept_id for x in got_v.results] == [x.concept_id for x in want_v.results], (q, k)
                assert np.allclose([x.similarity for x in got_v.results], [x.similarity for x in want_v.results],
                                   atol=1e-6)
                assert got_v.exact and want_v.exact
        # The twins (equal vectors on different shards) come out in id order, as on one node.
        twin = ref.QueryConcept(pb.QueryConceptRequest(concept_id=cluster.ids_on(0, 1, "eq")[0],
                                                       include_embedding=True)).embedding_f32
        top2 = routers[0].VectorSearch(pb.VectorSearchRequest(query_f32=twin, k=2, shard_sequences=seqs)).results
        assert [x.concept_id for x in top2] == sorted([cluster.ids_on(0, 1, "eq")[0], cluster.ids_on(1, 1, "eq")[0]])
        # Cluster totals through the router equal the single node's.
        ref_stats = ref.GetStats(pb.GetStatsRequest())
        stats = routers[1].GetStats(pb.GetStatsRequest())
        assert (stats.concepts, stats.edges, stats.vectors) == (ref_stats.concepts, ref_stats.edges, ref_stats.vectors)
        assert stats.shard_count == 2 and [s.shard for s in stats.shards] == [0, 1]
        assert sum(s.concepts for s in stats.shards) == stats.concepts
    assert checked["concepts"] == len(universe)


@pytest.mark.slow
def test_router_is_one_service_for_grpcurl(cluster: ShardedCluster) -> None:
    import json
    import subprocess

    def grpcurl(*args: str, data: dict | None = None) -> str:
        cmd = [tool("grpcurl"), "-plaintext", *(["-d", json.dumps(data)] if data else []), cluster.router.address,
               *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        assert out.returncode == 0, out.stderr
        return out.stdout

    listed = grpcurl("list").split()
    assert "sutra.storage.StorageService" in listed and "grpc.health.v1.Health" in listed
    health = json.loads(grpcurl("sutra.storage.StorageService/HealthCheck"))
    assert health["healthy"] is True and health["role"] == "router" and len(health["shards"]) == 2
    cid = cluster.ids_on(1, 1, "gc")[0]
    wrote = json.loads(grpcurl("sutra.storage.StorageService/LearnConcept", data={
        "concept_id": cid, "content": "via grpcurl", "embedding": [0.5] * DIM, "strength": 1, "confidence": 1}))
    # A key read takes the plain `sequence` (an LSN of the key's own shard).
    got = json.loads(grpcurl("sutra.storage.StorageService/QueryConcept",
                             data={"concept_id": cid, "sequence": int(wrote["sequence"])}))
    assert got["found"] is True and got["content"] == "via grpcurl"
    stats = json.loads(grpcurl("sutra.storage.StorageService/GetStats"))
    assert stats["shard_count"] == 2 and len(stats["shards"]) == 2


# ---- the routing client -----------------------------------------------------------------------


@pytest.mark.slow
def test_routing_client_reads_its_writes_from_replicas(cluster: ShardedCluster) -> None:
    ids = cluster.ids_on(0, 15, "ryw") + cluster.ids_on(1, 15, "ryw")
    with ShardedClient([cluster.etcd.endpoint], cluster=cluster.name, read_preference="replica") as sc:
        assert all(link.replicas() for link in sc.set.links), "each shard has replicas to read from"
        for i, cid in enumerate(ids):
            sc.learn_concept(cid, f"v{i}", np.full(DIM, i + 1, dtype=np.float32))
            # Read at once from a replica: the token makes it wait for this write.
            got = sc.query_concept(cid)
            assert got is not None and got.content == f"v{i}", cid
        sc.learn_association(ids[0], ids[-1])
        assert sc.get_neighbors(ids[-1], pb.INCOMING) == [ids[0]]
        assert sc.find_path(ids[-1], ids[0]) == [ids[-1], ids[0]]
        token = sc.token()
        assert set(token) == {0, 1}
        with ShardedClient([cluster.etcd.endpoint], cluster=cluster.name) as other:
            # Another client (or process) reads those writes by passing the token on.
            hits = other.vector_search(np.full(DIM, 1, dtype=np.float32), k=100, token=token,
                                       read_preference="replica")
            assert {cid for cid, _ in hits} >= set(ids)


# ---- wrong shard ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_node_refuses_a_concept_of_another_shard(cluster: ShardedCluster) -> None:
    other = cluster.ids_on(1, 1, "ws")[0]
    mine = cluster.ids_on(0, 1, "ws")[0]
    leader = cluster.leader(0)
    replica = next(n for n in cluster.shards[0] if n is not leader)
    for node in (leader, replica):
        with node.client() as c:
            stub = c.stub
            attempts = [
                (stub.LearnConcept, pb.LearnConceptRequest(concept_id=other, content="x", strength=1, confidence=1)),
                (stub.LearnAssociation, pb.LearnAssociationRequest(source_id=other, target_id=mine, confidence=1)),
                (stub.DeleteConcept, pb.DeleteConceptRequest(concept_id=other)),
                (stub.LearnBatch, pb.LearnBatchRequest(concepts=[
                    pb.LearnConceptRequest(concept_id=mine, content="x", strength=1, confidence=1),
                    pb.LearnConceptRequest(concept_id=other, content="x", strength=1, confidence=1)])),
                (stub.QueryConcept, pb.QueryConceptRequest(concept_id=other)),
            ]
            for fn, req in attempts:
                code, details = _code_and_details(fn, req)
                assert code == grpc.StatusCode.FAILED_PRECONDITION, (node, fn, code, details)
                assert "belongs to shard 1" in details and "serves shard 0" in details, details
    with leader.client() as c:
        # Its own concepts, and edges from them to the other shard, are taken.
        seq = c.learn_concept(mine, "mine", np.ones(DIM, dtype=np.float32))
        c.learn_association(mine, other)
        assert c.query_concept(mine, sequence=seq) is not None
        # A purge is only for the shards that do not own the concept.
        code, details = _code_and_details(c.stub.DeleteConcept, pb.DeleteConceptRequest(concept_id=mine,
                                                                                         purge_foreign=True))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details


# ---- a shard that is down ------------------------------------------------------------------


@pytest.mark.slow
def test_fan_out_reads_name_a_missing_shard_or_return_partial_results(cluster: ShardedCluster) -> None:
    """A router with a static map (no etcd) whose shard 1 is unreachable."""
    ids = cluster.ids_on(0, 3, "pt")
    with ShardedClient([cluster.etcd.endpoint], cluster=cluster.name) as sc:
        for cid in ids:
            sc.learn_concept(cid, "partial", np.full(DIM, 0.5, dtype=np.float32))
        sc.learn_association(ids[0], ids[1])
        token = sc.token()
    dead = f"127.0.0.1:{free_port()}"
    static = f"0={','.join(n.address for n in cluster.shards[0])};1={dead}"
    r = RouterProcess("static-router", {"SUTRA_SHARD_MAP": static, "SUTRA_ROUTER_READ_DEADLINE_MS": "300",
                                        "SUTRA_ROUTER_WRITE_DEADLINE_MS": "300", "VECTOR_DIMENSION": str(DIM)},
                      cluster.base / "static-router.log")
    try:
        r.start(wait=False)

        def answers() -> pb.HealthCheckResponse:
            with r.client(timeout=5) as c:
                return c.health()

        h = wait_for(answers, 60, "the static router to answer")
        assert h.healthy is False and "shard(s) 1" in h.status, h
        seqs = [pb.ShardSequence(shard=0, sequence=token[0])]
        with r.client() as c:
            q = pb.VectorSearchRequest(query_vector=[0.5] * DIM, k=5, shard_sequences=seqs)
            code, details = _code_and_details(c.stub.VectorSearch, q)
            assert code == grpc.StatusCode.UNAVAILABLE and "shard 1" in details, details
            q.allow_partial = True
            got = c.stub.VectorSearch(q, timeout=30)
            assert list(got.missing_shards) == [1]
            assert {x.concept_id for x in got.results} >= set(ids)
            n = c.stub.GetNeighbors(pb.GetNeighborsRequest(concept_id=ids[1], shard_sequences=seqs,
                                                           allow_partial=True), timeout=30)
            assert list(n.missing_shards) == [1] and ids[0] in n.neighbor_ids
            code, details = _code_and_details(c.stub.GetNeighbors, pb.GetNeighborsRequest(concept_id=ids[1]))
            assert code == grpc.StatusCode.UNAVAILABLE and "shard 1" in details
            p = c.stub.FindPath(pb.FindPathRequest(start_id=ids[1], end_id=ids[0], shard_sequences=seqs,
                                                   allow_partial=True), timeout=30)
            assert p.found and list(p.path) == [ids[1], ids[0]] and list(p.missing_shards) == [1]
            # Key reads and writes of the shard that is up are unaffected.
            assert c.stub.QueryConcept(pb.QueryConceptRequest(concept_id=ids[2], shard_sequences=seqs)).found
            off = cluster.ids_on(1, 1, "pt")[0]
            code, details = _code_and_details(c.stub.LearnConcept, pb.LearnConceptRequest(
                concept_id=off, content="x", strength=1, confidence=1))
            assert code == grpc.StatusCode.UNAVAILABLE and "shard 1" in details
            stats = c.stats()
            assert list(stats.missing_shards) == [1] and [s.shard for s in stats.shards] == [0]
    finally:
        r.stop()


# ---- shards fail independently --------------------------------------------------------------


class ShardWriter:
    """Sequential LearnConcept calls through a router, for ids of one shard; a
    record of (start, end, error) per call."""

    def __init__(self, address: str, ids: list[str]) -> None:
        self.address, self.ids = address, ids
        self.calls: list[tuple[float, float, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        ch = grpc.insecure_channel(self.address)
        stub = storage_pb2_grpc.StorageServiceStub(ch)
        try:
            for i, cid in enumerate(self.ids):
                if self.stop.is_set():
                    break
                t0 = time.monotonic()
                err = ""
                try:
                    stub.LearnConcept(pb.LearnConceptRequest(
                        concept_id=cid, content=f"w{i}", strength=1, confidence=1, request_id=f"{cid}-r"), timeout=30)
                except grpc.RpcError as exc:
                    err = f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
                self.calls.append((t0, time.monotonic(), err))
        finally:
            ch.close()

    def acked_after(self, t: float) -> int:
        return sum(1 for s, e, err in self.calls if not err and s > t)

    def window(self, lo: float, hi: float) -> list[tuple[float, float, str]]:
        return [c for c in self.calls if lo <= c[0] < hi]


def _max_gap(calls: list[tuple[float, float, str]]) -> float:
    """The longest time between two consecutive acknowledgements (or a call's own latency)."""
    ends = [e for _, e, err in calls if not err]
    gaps = [b - a for a, b in itertools.pairwise(ends)]
    return max(gaps + [e - s for s, e, _ in calls], default=0.0)


@pytest.mark.slow
def test_shards_fail_independently(cluster: ShardedCluster) -> None:
    victim_shard, other_shard = 0, 1
    writers = {s: ShardWriter(cluster.router.address, cluster.ids_on(s, 20_000, f"ind{s}-")) for s in (0, 1)}
    old = cluster.leader(victim_shard)
    for w in writers.values():
        w.thread.start()
    try:
        wait_for(lambda: all(w.acked_after(0) > 20 for w in writers.values()), 30, "both writers to run")
        t_base = time.monotonic()
        time.sleep(2.0)  # the baseline: both shards healthy
        t_kill = time.monotonic()
        old.kill()
        wait_for(lambda: writers[victim_shard].acked_after(t_kill) > 0, 30, "shard 0's writes to resume")
        t_resumed = max(e for s, e, err in writers[victim_shard].calls if s > t_kill and not err)
        time.sleep(1.0)
        t_end = time.monotonic()
    finally:
        for w in writers.values():
            w.stop.set()
        for w in writers.values():
            w.thread.join(60)
    new = cluster.leader(victim_shard)
    assert new is not old, "shard 0 failed over to another node"
    other = writers[other_shard]
    errors = [err for _, _, err in other.calls if err]
    assert not errors, f"shard {other_shard}'s writes failed while shard {victim_shard} failed over: {errors[:3]}"
    base = other.window(t_base, t_kill)
    during = other.window(t_kill, t_end)
    base_lat = [e - s for s, e, _ in base]
    gap_base, gap_during = _max_gap(base), _max_gap(during)
    victim_gap = _max_gap(writers[victim_shard].window(t_base, t_end))
    print(f"\nshard {victim_shard} outage seen by its writer: {victim_gap * 1000:.0f} ms "
          f"(kill -> first ack {(t_resumed - t_kill) * 1000:.0f} ms); shard {other_shard}: "
          f"{len(base)} writes in 2 s baseline (p50 {statistics.median(base_lat) * 1000:.1f} ms, "
          f"max gap {gap_base * 1000:.0f} ms), {len(during)} during the failover "
          f"(max gap {gap_during * 1000:.0f} ms)")
    assert len(during) > 0.25 * len(base) * (t_end - t_kill) / 2.0, "shard 1 kept its write rate"
    # No pause beyond noise: near the baseline's own worst gap (on a busy 2-core machine, half a
    # second at most), while shard 0 itself had no leader for a while.
    assert gap_during < max(4 * gap_base, 0.5), (gap_base, gap_during)
    # The victim's writer saw no error either: the router followed the failover.
    assert not [err for _, _, err in writers[victim_shard].calls if err]
    old.restart()
    cluster.wait_shard_healthy(victim_shard, 60)


# ---- cross-shard associations under SIGKILL -------------------------------------------------


@pytest.mark.slow
def test_cross_shard_writes_survive_a_killed_leader(cluster: ShardedCluster) -> None:
    """Cross-shard associations (and deletes of concepts with cross-shard
    incoming edges) from the routing client while the leader of one shard is
    SIGKILLed. Every acknowledged edge is there, seen from both ends; no edge is
    visible from one end only; an acknowledged delete leaves no edge behind."""
    src0 = cluster.ids_on(0, 400, "xs")
    src1 = cluster.ids_on(1, 400, "xs")
    doomed = cluster.ids_on(1, 150, "xd")  # concepts on shard 1 with incoming edges from shard 0 (the victim)
    attempted: list[tuple[str, str, int, str]] = []  # (source, target, type, request id)
    acked: set[tuple[str, str]] = set()
    deletes: list[tuple[str, str]] = []  # (concept id, request id)
    deleted: set[str] = set()
    errors: list[str] = []
    stop = threading.Event()
    victim = cluster.leader(0)
    # No failover budget at all: writes in flight when the leader dies fail
    # (unacknowledged, perhaps applied), and are retried after recovery. (A sync
    # shard now replaces a killed leader in ~30 ms, inside the 0.1 s this used.)
    client = ShardedClient([cluster.etcd.endpoint], cluster=cluster.name, failover_deadline=0.001)
    fixer = ShardedClient([cluster.etcd.endpoint], cluster=cluster.name, failover_deadline=20.0)
    for j, d in enumerate(doomed):
        fixer.learn_batch([Concept(d, "doomed")], [Association(d, src1[j])])
        fixer.learn_batch(associations=[Association(src0[j], d), Association(src0[j + 1], d)])

    def run() -> None:
        for i in range(400):
            if stop.is_set():
                return
            if i % 3 == 2 and i // 3 < len(doomed):
                d, rid = doomed[i // 3], f"xd-{i}"
                deletes.append((d, rid))
                try:
                    client.delete_concept(d, request_id=rid)
                    deleted.add(d)
                except Exception as exc:  # noqa: BLE001 - recorded, retried below
                    errors.append(f"delete {d}: {exc}")
                continue
            # Alternate: source on the victim's shard -> target on the other, and back.
            s, t = (src0[i], src1[i]) if i % 2 == 0 else (src1[i], src0[i])
            rid = f"xs-{i}"
            attempted.append((s, t, i % 5, rid))
            try:
                client.learn_association(s, t, assoc_type=i % 5, confidence=0.5, request_id=rid)
                acked.add((s, t))
            except Exception as exc:  # noqa: BLE001 - recorded: an unacknowledged edge may or may not exist
                errors.append(f"{s}->{t}: {exc}")

    th = threading.Thread(target=run, daemon=True)
    try:
        th.start()
        wait_for(lambda: len(acked) >= 40, 60, "cross-shard associations to be acknowledged")
        victim.kill()
        n = len(acked)
        wait_for(lambda: len(acked) >= n + 40 or not th.is_alive(), 60, "associations after the kill")
        stop.set()
        th.join(60)
        assert not th.is_alive()
        victim.restart()
        cluster.wait_shard_healthy(0, 60)
        # Retrying the unacknowledged writes with their request ids applies each once.
        for s, t, typ, rid in attempted:
            if (s, t) not in acked:
                fixer.learn_association(s, t, assoc_type=typ, confidence=0.5, request_id=rid)
        for d, rid in deletes:
            if d not in deleted:
                fixer.delete_concept(d, request_id=rid)
        tok = client.token()  # (reads below go through a router: the token is all they need)
        for sh, q in fixer.token().items():
            tok[sh] = max(tok.get(sh, 0), q)
        token = [pb.ShardSequence(shard=sh, sequence=q) for sh, q in tok.items()]
        router = storage_pb2_grpc.StorageServiceStub(grpc.insecure_channel(cluster.routers[1].address))

        def neighbors(cid: str, d: int) -> list[str]:
            return list(router.GetNeighbors(pb.GetNeighborsRequest(concept_id=cid, direction=d,  # type: ignore[arg-type]
                                                                   shard_sequences=token), timeout=30).neighbor_ids)

        half = []
        for s, t, _, _ in attempted:
            out, inc = t in neighbors(s, pb.OUTGOING), s in neighbors(t, pb.INCOMING)
            if out != inc:
                half.append((s, t, out, inc))
            assert out and inc, f"{'acknowledged' if (s, t) in acked else 'retried'} edge {s}->{t} is missing"
        assert not half, f"half-applied edges: {half[:5]}"
        for d, _ in deletes:
            assert neighbors(d, pb.BOTH) == [], f"edges of deleted {d} are left"
            assert d not in neighbors(src0[doomed.index(d)], pb.OUTGOING)
        # Each edge is stored once, on its source's shard: the target's shard has no copy.
        for s, t, _, _ in attempted[:40]:
            with cluster.leader(cluster.owner(t)).client() as c:
                assert s not in c.get_neighbors(t, direction=pb.INCOMING)
        print(f"\n{len(attempted)} cross-shard associations ({len(acked)} acknowledged) and {len(deletes)} "
              f"deletes ({len(deleted)} acknowledged) while the leader of shard 0 was killed; "
              f"{len(errors)} failed and were retried")
        assert errors, "some writes were in flight when the leader died (else this test tests nothing)"
    finally:
        stop.set()
        client.close()
        fixer.close()
