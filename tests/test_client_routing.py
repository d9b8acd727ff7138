"""The client across shards: through a router and routed by the client itself
(etcd), sync and asyncio. Multi-get, scroll and count merge correctly, and
filtered vector search keeps recall@10 >= 0.95 against exact filtered search
under a 1 % selective filter, end to end through one node, through the router
and through the routing client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sutra_cluster.client import AsyncSutraClient, Concept, ShardedClient, SutraClient
from tests.helpers import NodeProcess
from tests.shard_cluster import ShardedCluster, sharded_cluster

pytestmark = pytest.mark.slow  # etcd, two shards, a router, 20,000 vectors

DIM = 16
N = 20_000
QUERIES = 40
RARE_EVERY = 100  # 1 % of concepts carry tag=rare
COMMON_EVERY = 2  # 50 %: past the exact-scan bound per shard, so the HNSW filter path runs


def data() -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(14)
    centres = rng.standard_normal((20, DIM)).astype(np.float32)
    vecs = centres[rng.integers(0, 20, N)] + 0.6 * rng.standard_normal((N, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    queries = vecs[rng.choice(N, QUERIES, replace=False)] + 0.1 * rng.standard_normal((QUERIES, DIM)).astype(np.float32)
    return [f"v{i:05d}" for i in range(N)], vecs, queries


def attrs(i: int) -> dict[str, str]:
    return {"tag": "rare" if i % RARE_EVERY == 7 else "plain", "half": "yes" if i % COMMON_EVERY == 0 else "no"}


def load(c: SutraClient, ids: list[str], vecs: np.ndarray) -> None:
    for lo in range(0, N, 1000):
        c.learn_batch([Concept(ids[i], f"c{i}", vecs[i], attributes=attrs(i)) for i in range(lo, min(N, lo + 1000))])


def exact_top(ids: list[str], vecs: np.ndarray, q: np.ndarray, mask: np.ndarray, k: int = 10) -> list[str]:
    qn = q / np.linalg.norm(q)
    sims = vecs @ qn
    rows = np.flatnonzero(mask)
    order = sorted(rows, key=lambda r: (-float(sims[r]), ids[r]))[:k]
    return [ids[r] for r in order]


def recall(c: SutraClient, ids: list[str], vecs: np.ndarray, queries: np.ndarray, where: dict[str, str],
           mask: np.ndarray) -> float:
    got = 0
    for q in queries:
        hits = c.vector_search(q, k=10, filter=where, with_fields=("attributes",))
        assert all(h.concept and all(h.concept.attributes[k] == v for k, v in where.items()) for h in hits)
        got += len({h.concept_id for h in hits} & set(exact_top(ids, vecs, q, mask)))
    return got / (10 * len(queries))


@pytest.fixture(scope="module")
def dataset() -> tuple[list[str], np.ndarray, np.ndarray]:
    return data()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory,
            dataset: tuple[list[str], np.ndarray, np.ndarray]) -> Iterator[ShardedCluster]:
    env = {"SUTRA_ANN_THRESHOLD": "2000"}  # each shard's 10,000 vectors are searched by HNSW
    with sharded_cluster(tmp_path_factory.mktemp("routing"), shards=2, per_shard=1, mode="async", env=env,
                         dim=DIM, name="cl") as c:
        ids, vecs, _ = dataset
        with SutraClient(c.router.address) as rc:
            load(rc, ids, vecs)
            rc.flush()
        yield c


def test_filtered_recall_through_one_node(tmp_path: Path, dataset: tuple[list[str], np.ndarray, np.ndarray]) -> None:
    ids, vecs, queries = dataset
    node = NodeProcess(tmp_path / "n", env={"VECTOR_DIMENSION": str(DIM), "SUTRA_ANN_THRESHOLD": "2000"},
                       log_path=tmp_path / "n.log")
    try:
        node.start()
        with SutraClient(node.address) as c:
            load(c, ids, vecs)
            c.digest(c.stats().last_lsn)  # everything visible
            rare = np.array([attrs(i)["tag"] == "rare" for i in range(N)])
            half = np.array([attrs(i)["half"] == "yes" for i in range(N)])
            r1 = recall(c, ids, vecs, queries, {"tag": "rare"}, rare)
            r50 = recall(c, ids, vecs, queries, {"half": "yes"}, half)
            print(f"\nrecall@10 one node: 1% filter {r1:.3f}, 50% filter {r50:.3f}")
            assert r1 >= 0.95 and r50 >= 0.95, (r1, r50)
    finally:
        node.stop(timeout=10)


def test_filtered_recall_through_router_and_routing_client(cluster: ShardedCluster,
                                                         dataset: tuple[list[str], np.ndarray, np.ndarray]) -> None:
    ids, vecs, queries = dataset
    rare = np.array([attrs(i)["tag"] == "rare" for i in range(N)])
    half = np.array([attrs(i)["half"] == "yes" for i in range(N)])
    with SutraClient(cluster.router.address) as rc, \
            SutraClient(f"sutra+etcd://{cluster.etcd.endpoint}/{cluster.name}") as sc:
        assert sc.set.shards == 2
        for name, c in (("router", rc), ("routing client", sc)):
            r1 = recall(c, ids, vecs, queries, {"tag": "rare"}, rare)
            r50 = recall(c, ids, vecs, queries, {"half": "yes"}, half)
            print(f"\nrecall@10 {name}: 1% filter {r1:.3f}, 50% filter {r50:.3f}")
            assert r1 >= 0.95 and r50 >= 0.95, (name, r1, r50)
            hits = c.vector_search(queries[0], k=10, filter={"tag": "rare"}, score_threshold=0.2)
            assert all(h.similarity >= 0.2 for h in hits)


def test_multi_get_scroll_and_count_across_shards(cluster: ShardedCluster,
                                                  dataset: tuple[list[str], np.ndarray, np.ndarray]) -> None:
    ids, _, _ = dataset
    want = [ids[5], "absent", ids[1], ids[19_999], ids[2]]
    assert {cluster.owner(i) for i in want} == {0, 1}
    with SutraClient(cluster.router.address) as rc, ShardedClient([cluster.etcd.endpoint], cluster=cluster.name) as sc:
        for c in (rc, sc):
            got = c.get_concepts(want)
            assert [g.concept_id if g else None for g in got] == [ids[5], None, ids[1], ids[19_999], ids[2]]
            assert c.count() == N
            assert c.count(filter={"tag": "rare"}) == N // RARE_EVERY
            rare = [x.concept_id for x in c.iterate(filter={"tag": "rare"}, page_size=37)]
            assert rare == [ids[i] for i in range(N) if i % RARE_EVERY == 7]
            page = c.scroll(limit=1000, after_id=ids[9_499])
            assert [x.concept_id for x in page.concepts] == ids[9_500:10_500] and page.next_after_id == ids[10_499]
            last = c.scroll(limit=1000, after_id=ids[19_500])
            assert [x.concept_id for x in last.concepts] == ids[19_501:] and last.next_after_id == ""
        # The routing client's token makes its reads wait for its own writes on each shard.
        sc.learn_concept("zz-new", "fresh", np.ones(DIM, np.float32), attributes={"tag": "rare"})
        assert sc.count(filter={"tag": "rare"}) == N // RARE_EVERY + 1
        assert [x.concept_id for x in sc.scroll(after_id="zz").concepts] == ["zz-new"]
        sc.delete_concept("zz-new")
        assert sc.get_concepts(["zz-new"]) == [None]


def test_async_client_through_router_and_routing(cluster: ShardedCluster,
                                                 dataset: tuple[list[str], np.ndarray, np.ndarray]) -> None:
    ids, vecs, queries = dataset

    async def run() -> None:
        async with AsyncSutraClient(f"sutra://{cluster.router.address}") as ac, \
                AsyncSutraClient(etcd=[cluster.etcd.endpoint], cluster=cluster.name) as rc:
            for c in (ac, rc):
                seq = await c.learn_concept("async-1", "from asyncio", vecs[0], attributes={"tag": "async"})
                assert seq > 0
                got = await c.get("async-1", include_embedding=True)  # the token: visible at once
                assert got is not None and got.content == "from asyncio"
                np.testing.assert_allclose(got.embedding, vecs[0])  # type: ignore[arg-type]
                hits = await c.vector_search(vecs[0], k=3, filter={"tag": "async"}, with_fields=True)
                assert [h.concept_id for h in hits] == ["async-1"] and hits[0].concept.content == "from asyncio"  # type: ignore[union-attr]
                assert await c.count(filter={"tag": "async"}) == 1
                many = await c.get_concepts([ids[0], ids[1]])
                assert [m.concept_id for m in many if m] == [ids[0], ids[1]]
                seen = [x.concept_id async for x in c.iterate(filter={"tag": "rare"}, page_size=50)]
                assert len(seen) == N // RARE_EVERY
                assert (await c.stats()).concepts >= N
                await c.delete_concept("async-1")
                assert await c.get("async-1") is None
            results = await asyncio.gather(*(ac.vector_search(q, k=5) for q in queries[:20]))
            assert all(len(r) == 5 for r in results)

    asyncio.run(run())


def test_one_shard_leader_through_etcd(cluster: ShardedCluster,
                                       dataset: tuple[list[str], np.ndarray, np.ndarray]) -> None:
    """``?shard=N`` (ClusterClient): that shard's leader, followed through etcd;
    another shard's concept is refused as WrongShard, typed."""
    from sutra_cluster.client import ClusterClient, WrongShard

    ids, vecs, _ = dataset
    mine = next(i for i in ids if cluster.owner(i) == 1)
    other = next(i for i in ids if cluster.owner(i) == 0)
    with SutraClient(f"sutra+etcd://{cluster.etcd.endpoint}/{cluster.name}?shard=1") as c, \
            ClusterClient([cluster.etcd.endpoint], cluster=cluster.name, shard=1) as old:
        assert c.find_leader(time.monotonic() + 10) == cluster.leader_address(1)
        for cl in (c, old):
            got = cl.get_concepts([mine])
            assert got[0] is not None and got[0].concept_id == mine
            assert cl.count() == sum(1 for i in ids if cluster.owner(i) == 1)
            with pytest.raises(WrongShard) as wrong:
                cl.learn_concept(other, "elsewhere", vecs[0])
            assert "shard 0" in wrong.value.details()

    async def run() -> None:
        async with AsyncSutraClient(etcd=[cluster.etcd.endpoint], cluster=cluster.name, shard=1) as ac:
            seq = await ac.learn_concept(mine, "rewritten", vecs[1])
            got = await ac.get(mine, sequence=seq)
            assert got is not None and got.content == "rewritten"

    asyncio.run(run())
