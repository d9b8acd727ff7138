"""Slow and greedy clients cannot stall a node (security review 2026-12-01, H1-H3).

Each test performs the attack against real node processes and asserts that it
is refused with RESOURCE_EXHAUSTED naming the setting, that other clients'
health checks, reads and writes keep working within a bound while it lasts,
and that nothing changed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sutra_cluster.api.limits import Budget
from sutra_cluster.errors import ResourceExhausted
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc
from tests.cluster import running_cluster, wait_lsn, wait_streaming
from tests.helpers import NodeProcess, wait_for
from tests.shard_cluster import RouterProcess

pytestmark = pytest.mark.slow  # starts node processes

HOSTILE = 200
PER_CLIENT = 8  # SUTRA_MAX_STREAMS_PER_CLIENT's default
BOUND_S = 2.0  # the longest another client's call may take while the attack runs
T = TypeVar("T")


def test_budget_counts_per_client_and_in_total() -> None:
    b = Budget("streams", 3, "SUTRA_MAX_STREAMS", 2, "SUTRA_MAX_STREAMS_PER_CLIENT")
    b.acquire("a")
    b.acquire("a")
    with pytest.raises(ResourceExhausted, match="SUTRA_MAX_STREAMS_PER_CLIENT is 2"):
        b.acquire("a")
    b.acquire("b")
    with pytest.raises(ResourceExhausted, match="SUTRA_MAX_STREAMS is 3"):
        b.acquire("c")
    b.release("a")
    b.acquire("c")
    for c in ("a", "b", "c"):
        b.release(c)
    assert b.open == 0 and b._by_client == {}, "released slots must leave no trace"


def _idle_stream(stop: threading.Event) -> Iterator[pb.LearnBatchRequest]:
    # A client that opens a stream and never sends: it used to hold a worker forever.
    stop.wait(120)
    return
    yield  # pragma: no cover - makes this a generator


def _probe(address: str, leader: str, n: int) -> float:
    """Health checks, writes (to the leader) and reads from another client; returns
    the slowest call's duration in seconds."""
    slowest = 0.0

    def timed(call: Callable[[], T]) -> T:
        nonlocal slowest
        t0 = time.monotonic()
        out = call()
        slowest = max(slowest, time.monotonic() - t0)
        return out

    with grpc.insecure_channel(address) as ch, grpc.insecure_channel(leader) as lch:
        stub = storage_pb2_grpc.StorageServiceStub(ch)
        lstub = storage_pb2_grpc.StorageServiceStub(lch)
        hstub = health_pb2_grpc.HealthStub(ch)
        for i in range(n):
            timed(lambda: stub.HealthCheck(pb.HealthCheckRequest(), timeout=BOUND_S))
            timed(lambda: hstub.Check(health_pb2.HealthCheckRequest(), timeout=BOUND_S))
            cid = f"good-{address}-{i}"
            seq = timed(lambda: lstub.LearnConcept(
                pb.LearnConceptRequest(concept_id=cid, content="x", confidence=0.5), timeout=BOUND_S)).sequence
            # This client shares the attacker's address (loopback), so its own waiting
            # slots are taken: it reads once the sequence is applied, as replication allows.
            wait_for(lambda: timed(lambda: stub.GetStats(pb.GetStatsRequest(), timeout=BOUND_S)).applied_lsn >= seq,
                     BOUND_S, f"sequence {seq} applied on {address}")
            got = timed(lambda: stub.QueryConcept(pb.QueryConceptRequest(concept_id=cid, sequence=seq),
                                                  timeout=BOUND_S))
            assert got.found
    return slowest


@pytest.mark.slow
def test_200_idle_streams_and_200_waiting_reads_do_not_stall_the_nodes(tmp_path: Path) -> None:
    with running_cluster(tmp_path, replicas=1, replica_env={"SUTRA_READ_WAIT_MS": "60000"}) as c:
        replica = c.nodes[1]
        wait_streaming(c.leader, [replica.name])
        stop = threading.Event()
        channels = [grpc.insecure_channel(n.address) for n in (c.leader, replica) for _ in range(4)]
        try:
            before = c.leader.stats().last_lsn
            lstubs = [storage_pb2_grpc.StorageServiceStub(ch) for ch in channels[:4]]
            rstubs = [storage_pb2_grpc.StorageServiceStub(ch) for ch in channels[4:]]
            streams = [lstubs[i % 4].LearnStream.future(_idle_stream(stop), timeout=120) for i in range(HOSTILE)]
            # Reads waiting for a sequence the replica does not have yet (far in the future).
            waits = [rstubs[i % 4].QueryConcept.future(
                pb.QueryConceptRequest(concept_id="nothing", sequence=1 << 62), timeout=120) for i in range(HOSTILE)]

            def refused(futs: list[grpc.Future]) -> list[grpc.RpcError]:
                return [f.exception() for f in futs if f.done()]  # type: ignore[misc]

            wait_for(lambda: len(refused(streams)) >= HOSTILE - PER_CLIENT, 60, "idle streams past the bound refused")
            wait_for(lambda: len(refused(waits)) >= HOSTILE - PER_CLIENT, 60, "waiting reads past the bound refused")
            for exc in refused(streams) + refused(waits):
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (exc.code(), exc.details())
                assert "SUTRA_MAX_STREAMS_PER_CLIENT is 8" in exc.details(), exc.details()
            assert sum(not f.done() for f in streams) == PER_CLIENT, "exactly the allowed streams stay open"
            assert sum(not f.done() for f in waits) == PER_CLIENT, "exactly the allowed waits stay open"
            # While the allowed ones stay open: the other client is served, and replication goes on.
            slowest = max(_probe(c.leader.address, c.leader.address, 5), _probe(replica.address, c.leader.address, 5))
            assert slowest < BOUND_S, f"another client's call took {slowest:.2f}s during the attack"
            after = c.leader.stats().last_lsn
            assert after == before + 10, "only the good client's 10 writes were logged"
            wait_lsn(c.nodes, after)
        finally:
            stop.set()
            for ch in channels:
                ch.close()


@pytest.fixture(scope="module")
def graph_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    base = tmp_path_factory.mktemp("limits-graph")
    n = NodeProcess(base / "data", env={"SUTRA_MAX_PATH_VISITS": "5000", "SUTRA_MAX_NEIGHBORS": "20000"},
                    log_path=base / "node.log")
    try:
        n.start()
        with grpc.insecure_channel(n.address) as ch:
            stub = storage_pb2_grpc.StorageServiceStub(ch)
            # A hub with 5,000 incoming edges, and a 20,000-node chain that FindPath can wander.
            hub = [pb.LearnAssociationRequest(source_id=f"s{i}", target_id="HUB", confidence=0.5) for i in range(5000)]
            stub.LearnBatch(pb.LearnBatchRequest(associations=hub), timeout=60)
            for lo in range(0, 20_000, 5000):
                chain = [pb.LearnAssociationRequest(source_id=f"n{i}", target_id=f"n{i + 1}", confidence=0.5)
                         for i in range(lo, lo + 5000)]
                stub.LearnBatch(pb.LearnBatchRequest(associations=chain), timeout=60)
        yield n
    finally:
        n.stop()


def _state(stub: storage_pb2_grpc.StorageServiceStub) -> tuple[int, str]:
    last = stub.GetStats(pb.GetStatsRequest()).last_lsn
    d = stub.GetDigest(pb.GetDigestRequest(sequence=last))
    return d.lsn, d.digest


@pytest.mark.slow
def test_neighbors_batch_naming_a_hub_1000_times_is_refused_at_once(graph_node: NodeProcess) -> None:
    with grpc.insecure_channel(graph_node.address) as ch:
        stub = storage_pb2_grpc.StorageServiceStub(ch)
        before = _state(stub)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.GetNeighborsBatch(pb.GetNeighborsBatchRequest(concept_ids=["HUB"] * 1000), timeout=30)
        took = time.monotonic() - t0
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "5000000 neighbours" in info.value.details() and "SUTRA_MAX_NEIGHBORS is 20000" in info.value.details()
        assert took < 1.0, f"the refusal took {took:.2f}s"
        # Under the bound it is served.
        got = stub.GetNeighborsBatch(pb.GetNeighborsBatchRequest(concept_ids=["HUB"] * 3, ids_only=True), timeout=30)
        assert [len(r.neighbor_ids) for r in got.results] == [5000] * 3
        assert _state(stub) == before


@pytest.mark.slow
def test_find_path_is_bounded_and_lets_writes_become_visible(graph_node: NodeProcess) -> None:
    with grpc.insecure_channel(graph_node.address) as ch:
        stub = storage_pb2_grpc.StorageServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.FindPath(pb.FindPathRequest(start_id="HUB", end_id="nowhere", max_depth=20), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "SUTRA_MAX_PATH_VISITS is 5000" in info.value.details(), info.value.details()
        # Within the bound a path is still found.
        assert list(stub.FindPath(pb.FindPathRequest(start_id="n0", end_id="n15", max_depth=20)).path) == \
            [f"n{i}" for i in range(16)]
        # 4 clients searching in a loop: a write still becomes visible to a read quickly.
        stop = threading.Event()

        def search() -> None:
            while not stop.is_set():
                try:
                    stub.FindPath(pb.FindPathRequest(start_id="HUB", end_id="nowhere", max_depth=20), timeout=30)
                except grpc.RpcError:
                    pass

        threads = [threading.Thread(target=search, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            slowest = 0.0
            for i in range(10):
                t0 = time.monotonic()
                seq = stub.LearnConcept(pb.LearnConceptRequest(concept_id=f"w{i}", content="x", confidence=0.5),
                                        timeout=BOUND_S).sequence
                assert stub.QueryConcept(pb.QueryConceptRequest(concept_id=f"w{i}", sequence=seq),
                                         timeout=BOUND_S).found
                slowest = max(slowest, time.monotonic() - t0)
            assert slowest < BOUND_S
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)


def test_router_applies_the_same_bounds(graph_node: NodeProcess, tmp_path: Path) -> None:
    router = RouterProcess("router-limits", {
        "SUTRA_SHARD_MAP": f"0={graph_node.address}", "SUTRA_MAX_BATCH": "100", "SUTRA_MAX_PATH_VISITS": "1000",
        "SUTRA_GRPC_WORKERS": "8"}, tmp_path / "router.log")
    stop = threading.Event()
    try:
        router.start()
        with grpc.insecure_channel(router.address) as ch:
            stub = storage_pb2_grpc.StorageServiceStub(ch)
            with pytest.raises(grpc.RpcError) as info:
                stub.GetNeighborsBatch(pb.GetNeighborsBatchRequest(concept_ids=["HUB"] * 101), timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "concept_ids has 101 ids, SUTRA_MAX_BATCH is 100" in info.value.details()
            with pytest.raises(grpc.RpcError) as info:
                stub.FindPath(pb.FindPathRequest(start_id="HUB", end_id="nowhere", max_depth=20), timeout=30)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "SUTRA_MAX_PATH_VISITS is 1000" in info.value.details(), info.value.details()
            raw = ch.unary_unary("/sutra.storage.StorageService/LearnConcept", request_serializer=None,
                                 response_deserializer=None)
            with pytest.raises(grpc.RpcError) as info:
                raw(b"\x0a\x02\xff\xfe", timeout=10)  # invalid UTF-8 in concept_id
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
            assert "LearnConcept: the request is not a valid LearnConceptRequest" in info.value.details()
            # 200 idle streams: 4 (SUTRA_GRPC_WORKERS / 2) stay open, the rest are refused,
            # and health checks and reads through the router go on.
            streams = [stub.LearnStream.future(_idle_stream(stop), timeout=120) for _ in range(HOSTILE)]
            wait_for(lambda: sum(f.done() for f in streams) >= HOSTILE - 4, 60, "router streams past the bound refused")
            assert all(f.exception().code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[union-attr]
                       for f in streams if f.done())
            assert "SUTRA_MAX_STREAMS is 4" in next(f for f in streams if f.done()).exception().details()  # type: ignore[union-attr]
            for _ in range(5):
                t0 = time.monotonic()
                assert stub.HealthCheck(pb.HealthCheckRequest(), timeout=BOUND_S).healthy
                assert stub.QueryConcept(pb.QueryConceptRequest(concept_id="n1"), timeout=BOUND_S) is not None
                assert time.monotonic() - t0 < BOUND_S
    finally:
        stop.set()
        router.stop()
