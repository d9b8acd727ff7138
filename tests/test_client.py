"""The Python client against one real node: the whole API, dataclass results
with numpy embeddings, typed errors, the URL form, TLS and mutual TLS, and
the read-side RPCs (multi-get, scroll, count, filtered search) with their
bounds and the node's read rules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from sutra_cluster import errors as server_errors
from sutra_cluster.api import reads
from sutra_cluster.client import (
    Association,
    BulkLoadResult,
    ClusterClient,
    Concept,
    FailedPrecondition,
    Health,
    InvalidArgument,
    NotLeader,
    NotVisible,
    SearchHit,
    ShardedClient,
    Stats,
    SutraClient,
    SutraRpcError,
    Unavailable,
    WrongShard,
    batches_of,
    parse_url,
)
from sutra_cluster.client.errors import from_rpc_error
from sutra_cluster.errors import ConfigError
from sutra_cluster.pb import storage_pb2 as pb
from tests.helpers import NodeProcess, wait_for

DIM = 8


def unit(i: int) -> np.ndarray:
    v = np.random.default_rng(i).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    base = tmp_path_factory.mktemp("client")
    n = NodeProcess(base / "n1", env={"VECTOR_DIMENSION": str(DIM), "SUTRA_MAX_BATCH": "500"},
                    log_path=base / "n1.log")
    try:
        n.start()
        yield n
    finally:
        n.stop(timeout=10)


@pytest.mark.slow  # a real node
def test_writes_and_reads_return_dataclasses_with_numpy_embeddings(node: NodeProcess) -> None:
    with SutraClient(f"sutra://{node.address}") as c:
        seq = c.learn_concept("dc-a", "alpha", unit(1), attributes={"lang": "en"}, strength=2.0, confidence=0.5)
        got = c.get("dc-a", sequence=seq, include_embedding=True)
        assert isinstance(got, Concept) and got.content == "alpha" and got.attributes == {"lang": "en"}
        assert (got.strength, got.confidence, got.has_embedding) == (2.0, 0.5, True)
        assert isinstance(got.embedding, np.ndarray) and got.embedding.dtype == np.float32
        np.testing.assert_array_equal(got.embedding, unit(1))
        assert got.created_at_us > 0 and got.updated_at_us >= got.created_at_us
        lean = c.query_concept("dc-a")
        assert lean is not None and lean.embedding is None and lean.has_embedding
        assert c.get("dc-missing") is None

        seq = c.learn_batch([Concept("dc-b", "beta", unit(2)), Concept("dc-c", "gamma", unit(3))],
                            [Association("dc-a", "dc-b", "causal", 0.9), Association("dc-b", "dc-c")])
        assert c.get_neighbors("dc-b", "both", sequence=seq) == ["dc-a", "dc-c"]
        out = c.neighbors("dc-a", "outgoing")
        assert [(n.concept_id, n.assoc_type, n.outgoing) for n in out] == [("dc-b", 1, True)]
        assert c.find_path("dc-a", "dc-c") == ["dc-a", "dc-b", "dc-c"]
        assert c.get_neighbors_batch(["dc-b", "dc-a", "dc-missing"]) == [["dc-a", "dc-c"], ["dc-b"], []]
        assert c.find_path("dc-c", "dc-missing") is None

        hits = c.vector_search(unit(2), k=2, with_fields=("content", "attributes", "embedding"))
        assert all(isinstance(h, SearchHit) for h in hits) and hits[0].concept_id == "dc-b"
        assert hits[0].concept is not None and hits[0].concept.content == "beta"
        np.testing.assert_array_equal(hits[0].concept.embedding, unit(2))
        cid, sim = hits[0]  # unpacks as the earlier (id, similarity) tuples
        assert cid == "dc-b" and sim == pytest.approx(1.0, abs=1e-5)
        assert c.vector_search(unit(2), k=2)[0].concept is None

        gone = c.delete_concept("dc-c")
        assert gone > seq and c.get("dc-c", sequence=gone) is None

        loaded = c.bulk_load(batches_of((Concept(f"dc-bulk{i}", "bulk", unit(10 + i)) for i in range(7)), 3))
        assert isinstance(loaded, BulkLoadResult) and (loaded.batches, loaded.concepts) == (3, 7)

        d = c.digest(loaded.sequence)
        st, h, f = c.stats(), c.health(), c.flush()
        assert isinstance(st, Stats) and st.role == "leader" and st.vector_dimension == DIM and st.concepts >= 9
        assert isinstance(h, Health) and h.healthy and h.role == "leader"
        assert d.lsn >= loaded.sequence and len(d.digest) == 64
        assert f.success and f.checkpoint_lsn >= loaded.sequence


@pytest.mark.slow  # a real node
def test_multi_get_scroll_iterate_and_count(node: NodeProcess) -> None:
    ids = [f"sc-{i:03d}" for i in range(57)]
    with SutraClient(node.address) as c:
        seq = c.learn_batch([Concept(cid, f"scroll {i}", unit(100 + i), attributes={
            "parity": "even" if i % 2 == 0 else "odd", "tens": str(i // 10)}) for i, cid in enumerate(ids)])
        got = c.get_concepts([ids[3], "sc-none", ids[0]], include_embedding=True, sequence=seq)
        assert [g.concept_id if g else None for g in got] == [ids[3], None, ids[0]]
        assert got[0] is not None and got[0].embedding is not None and got[0].attributes["tens"] == "0"

        pages, after = [], ""
        while True:
            page = c.scroll(limit=10, after_id=after, filter={"tens": ["1", "2", "3", "4", "5"]})
            pages.append(page)
            if not page.next_after_id:
                break
            after = page.next_after_id
        seen = [x.concept_id for p in pages for x in p.concepts]
        assert seen == ids[10:57] and [len(p.concepts) for p in pages] == [10, 10, 10, 10, 7]

        evens = [x.concept_id for x in c.iterate(filter={"parity": "even", "tens": ["0", "1"]}, page_size=4)]
        assert evens == [ids[i] for i in range(0, 20, 2)]
        everything = [x.concept_id for x in c.iterate(page_size=1000) if x.concept_id.startswith("sc-")]
        assert everything == ids

        assert c.count(filter={"parity": "odd"}) == 28
        assert c.count(filter={"parity": "odd", "tens": "5"}) == 3  # 51, 53, 55
        assert c.count(filter={"parity": "nope"}) == 0
        assert c.count() == c.stats().concepts


@pytest.mark.slow  # a real node
def test_filtered_search_and_score_threshold(node: NodeProcess) -> None:
    with SutraClient(node.address) as c:
        seq = c.learn_batch([Concept(f"fs-{i}", "f", unit(300 + i), attributes={"group": "g" + str(i % 5)})
                             for i in range(200)])
        q = unit(300)
        hits = c.vector_search(q, k=5, filter={"group": ["g1", "g2"]}, sequence=seq, with_fields=True)
        assert len(hits) == 5 and all(h.concept and h.concept.attributes["group"] in ("g1", "g2") for h in hits)
        vecs = {f"fs-{i}": unit(300 + i) for i in range(200) if i % 5 in (1, 2)}
        exact = sorted(vecs, key=lambda k: (-float(vecs[k] @ q), k))[:5]
        assert [h.concept_id for h in hits] == exact
        above = c.vector_search(q, k=50, score_threshold=0.5)
        assert above and all(h.similarity >= 0.5 for h in above) and len(above) < 50
        assert c.vector_search(q, k=5, filter={"group": "g9"}) == []


@pytest.mark.slow  # a real node
def test_typed_errors_name_the_field_and_the_limit(node: NodeProcess) -> None:
    with SutraClient(node.address, retry_deadline=0) as c:
        with pytest.raises(InvalidArgument) as bad:
            c.vector_search(np.ones(DIM + 1, np.float32))
        e = bad.value
        assert isinstance(e, grpc.RpcError) and isinstance(e, server_errors.InvalidArgument)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and f"VECTOR_DIMENSION is {DIM}" in e.details()
        cases: list[tuple[Callable[[], object], str]] = [
            (lambda: c.count(filter={f"k{i}": "v" for i in range(reads.MAX_FILTER_CONDITIONS + 1)}),
             f"filter has {reads.MAX_FILTER_CONDITIONS + 1} conditions, the limit is {reads.MAX_FILTER_CONDITIONS}"),
            (lambda: c.vector_search(unit(1), filter={"k": [str(i) for i in range(reads.MAX_FILTER_VALUES + 1)]}),
             f"filter[0].values has {reads.MAX_FILTER_VALUES + 1} values, the limit is {reads.MAX_FILTER_VALUES}"),
            (lambda: c.scroll(filter={"k": []}), "filter[0].values is empty"),
            (lambda: c.scroll(limit=reads.MAX_SCROLL_LIMIT + 1),
             f"limit is {reads.MAX_SCROLL_LIMIT + 1}, the limit is {reads.MAX_SCROLL_LIMIT}"),
            (lambda: c.get_concepts([f"x{i}" for i in range(501)]), "concept_ids has 501 ids, SUTRA_MAX_BATCH is 500"),
            (lambda: c.get_concepts(["ok", ""]), "concept_ids[1] is empty"),
            (lambda: c.vector_search(unit(1), score_threshold=1.5), "score_threshold is 1.5"),
            (lambda: c.scroll(after_id="x" * 300), "after_id has 300 bytes"),
        ]
        for call, words in cases:
            with pytest.raises(InvalidArgument) as info:
                call()
            assert words in info.value.details(), (words, info.value.details())
        # A duplicate key cannot be built from a dict; the wire refuses it too.
        dup = pb.CountConceptsRequest(filter=[pb.AttributeFilter(key="a", values=["1"]),
                                              pb.AttributeFilter(key="a", values=["2"])])
        with pytest.raises(grpc.RpcError) as raw:
            c.stub.CountConcepts(dup)
        assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "filter[1].key 'a'" in raw.value.details()
        # The new reads wait for their sequence as QueryConcept does: a leader
        # refuses one it never issued.
        last = c.stats().last_lsn
        for call2 in (lambda: c.get_concepts(["a"], sequence=last + 100), lambda: c.count(sequence=last + 100),
                      lambda: c.scroll(sequence=last + 100)):
            with pytest.raises(FailedPrecondition) as fp:
                call2()
            assert f"past this leader's last LSN {last}" in fp.value.details()


class _Raw(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        self._c, self._r = code, reason

    def code(self) -> grpc.StatusCode:
        return self._c

    def details(self) -> str:
        return "server words"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("sutra-reason", self._r),) if self._r else ()


@pytest.mark.parametrize("code,reason,cls,server_cls", [
    (grpc.StatusCode.FAILED_PRECONDITION, "not-leader", NotLeader, server_errors.NotLeader),
    (grpc.StatusCode.FAILED_PRECONDITION, "wrong-shard", WrongShard, server_errors.WrongShard),
    (grpc.StatusCode.FAILED_PRECONDITION, "", FailedPrecondition, server_errors.FailedPrecondition),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "not-visible", NotVisible, server_errors.NotVisible),
    (grpc.StatusCode.UNAVAILABLE, "", Unavailable, server_errors.Unavailable),
    (grpc.StatusCode.UNAVAILABLE, "not-leader", Unavailable, server_errors.Unavailable),  # reason of another code
    (grpc.StatusCode.INTERNAL, "", SutraRpcError, server_errors.SutraError),
])
def test_error_mapping_follows_code_and_reason(code: grpc.StatusCode, reason: str, cls: type,
                                               server_cls: type) -> None:
    e = from_rpc_error(_Raw(code, reason))
    assert type(e) is cls and isinstance(e, server_cls) and isinstance(e, grpc.RpcError)
    assert e.code() == code and e.reason == reason and e.details() == "server words"


def test_url_forms() -> None:
    t = parse_url("sutra://h1:1,h2:2?tls=true&ca=/ca.pem&timeout=3")
    assert (t.addresses, t.etcd, t.tls, t.ca, t.timeout) == (("h1:1", "h2:2"), False, True, "/ca.pem", 3.0)
    e = parse_url("sutra+etcd://e1:2379,e2:2379/prod?shard=2&read_preference=replica&cert=c&key=k")
    assert (e.addresses, e.etcd, e.cluster, e.shard, e.read_preference, e.tls) == (
        ("e1:2379", "e2:2379"), True, "prod", 2, "replica", True)
    for url, words in [("http://h:1", "scheme"), ("sutra://h", "not host:port"), ("sutra://h:1?tsl=1", "tsl"),
                       ("sutra://h:1/x", "path"), ("sutra://h:1?tls=maybe", "tls='maybe'"),
                       ("sutra://h:1?ca=x&tls=false", "tls=false"), ("sutra://h:1?shard=1", "shard=")]:
        with pytest.raises(ConfigError) as info:
            parse_url(url)
        assert words in str(info.value), (url, info.value)
    with pytest.raises(ConfigError) as missing:
        SutraClient("sutra://127.0.0.1:1?ca=/no/such/ca.pem")
    assert "ca_cert='/no/such/ca.pem'" in str(missing.value)


def test_old_names_are_thin_constructors() -> None:
    assert issubclass(ClusterClient, SutraClient) and issubclass(ShardedClient, SutraClient)
    from sutra_cluster.sharding.client import ShardedClient as Old

    assert Old is ShardedClient
    with pytest.raises(ConfigError):
        ShardedClient()


def test_read_fence_refuses_the_new_reads(tmp_path: Path) -> None:
    """The new reads go through the same wait as QueryConcept: a node behind a
    read fence (a rejoining former leader) refuses them UNAVAILABLE."""
    from sutra_cluster.api.storage_service import StorageServicer
    from sutra_cluster.config import Config
    from sutra_cluster.storage.engine import Engine

    class Ctx:
        def abort(self, code: grpc.StatusCode, details: str) -> None:
            raise _Aborted(code, details)

        def set_trailing_metadata(self, md: object) -> None:
            pass

        def peer(self) -> str:
            return "ipv4:127.0.0.1:1"

    eng = Engine(Config(storage_path=str(tmp_path / "d"), vector_dimension=DIM, node_id="fenced"))
    try:
        svc = StorageServicer(eng)
        eng.fence_reads("history unchecked")
        calls = [(svc.GetConcepts, pb.GetConceptsRequest(concept_ids=["a"])),
                 (svc.ScrollConcepts, pb.ScrollConceptsRequest()), (svc.CountConcepts, pb.CountConceptsRequest()),
                 (svc.QueryConcept, pb.QueryConceptRequest(concept_id="a"))]
        for fn, req in calls:
            with pytest.raises(_Aborted) as info:
                fn(req, Ctx())  # type: ignore[operator]
            assert info.value.code == grpc.StatusCode.UNAVAILABLE and "history unchecked" in info.value.details
        eng.lift_read_fence()
        assert svc.CountConcepts(pb.CountConceptsRequest(), Ctx()).count == 0  # type: ignore[arg-type]
    finally:
        eng.close()


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


@pytest.mark.slow  # a real node
def test_tls_and_mutual_tls_options(tmp_path: Path, node_factory: Callable[..., NodeProcess]) -> None:
    from tests.test_tls import make_ca, make_cert

    ca_key, ca, ca_crt = make_ca(tmp_path / "ca", "client-test-ca")
    crt, key = make_cert(tmp_path / "node", "node-x", ca_key, ca)
    app_crt, app_key = make_cert(tmp_path / "app", "app", ca_key, ca)
    n = node_factory("mtls", env={"SUTRA_TLS_CERT": crt, "SUTRA_TLS_KEY": key, "SUTRA_TLS_CA": ca_crt,
                                  "VECTOR_DIMENSION": str(DIM)}, start=False)
    n.start(wait=False)
    url = f"sutra://{n.address}?ca={ca_crt}&cert={app_crt}&key={app_key}&timeout=5"

    def up() -> bool:
        with SutraClient(url, retry_deadline=0) as probe:
            return probe.health().healthy

    wait_for(up, 60, "the mutual-TLS node")
    with SutraClient(url) as c:
        seq = c.learn_concept("tls-1", "over mutual TLS", unit(1))
        assert c.get("tls-1", sequence=seq) is not None
    with SutraClient(n.address, ca_cert=ca_crt, client_cert=app_crt, client_key=app_key) as kw:
        assert kw.count() == 1
    with SutraClient(n.address, tls=True, ca_cert=ca_crt, retry_deadline=0, timeout=5) as no_cert:
        with pytest.raises(Unavailable):  # the handshake fails without a client certificate
            no_cert.stats()
    with SutraClient(n.address, retry_deadline=0, timeout=5) as plain:
        with pytest.raises(Unavailable):
            plain.stats()


@pytest.mark.slow  # a real node
def test_async_client_same_api_on_one_node(node: NodeProcess) -> None:
    import asyncio

    from sutra_cluster.client import AsyncSutraClient

    async def run() -> None:
        async with AsyncSutraClient(f"sutra://{node.address}?timeout=10") as c:
            seq = await c.learn_batch([Concept(f"as-{i}", "async", unit(500 + i), attributes={"a": str(i % 2)})
                                       for i in range(6)], [Association("as-0", "as-1")])
            got = await c.get("as-0", sequence=seq, include_embedding=True)
            assert got is not None and got.embedding is not None and got.embedding.dtype == np.float32
            assert await c.get_neighbors("as-1", "incoming") == ["as-0"]
            assert await c.find_path("as-0", "as-1") == ["as-0", "as-1"]
            assert await c.get_neighbors_batch(["as-1", "as-0"], "outgoing") == [[], ["as-1"]]
            hits = await c.vector_search(unit(501), k=2, filter={"a": "1"}, with_fields=["content"])
            assert hits[0].concept_id == "as-1" and hits[0].concept and hits[0].concept.content == "async"
            assert await c.count(filter={"a": "0"}) == 3
            page = await c.scroll(after_id="as-", limit=4, filter={"a": ["0", "1"]})
            assert [x.concept_id for x in page.concepts] == ["as-0", "as-1", "as-2", "as-3"]
            assert page.next_after_id == "as-3"
            assert [x.concept_id async for x in c.iterate(filter={"a": "1"}, page_size=2)] == ["as-1", "as-3", "as-5"]
            assert [g.concept_id if g else None for g in await c.get_concepts(["as-5", "nope"])] == ["as-5", None]
            assert (await c.stats()).role == "leader" and (await c.health()).healthy
            with pytest.raises(InvalidArgument) as bad:
                await c.scroll(limit=5000)
            assert "limit is 5000, the limit is 1000" in bad.value.details()
            gather = await asyncio.gather(*(c.vector_search(unit(500 + i), k=1) for i in range(6)))
            assert [g[0].concept_id for g in gather] == [f"as-{i}" for i in range(6)]
            loaded = await c.bulk_load(batches_of((Concept(f"as-bulk{i}", "b", unit(600 + i)) for i in range(5)), 2))
            assert (loaded.batches, loaded.concepts) == (3, 5)
            assert await c.get("as-bulk4", sequence=loaded.sequence) is not None

    asyncio.run(run())


def test_concept_scan_pages_end_exactly_and_skip_what_changed() -> None:
    """ConceptScan (the node's scroll): a last page that is exactly full says
    there is no more; ids deleted or re-attributed since the sort are skipped;
    the byte bound ends a page early with a cursor that goes on from there."""
    import threading
    import types

    from sutra_cluster.storage.state import Concept as Stored
    from sutra_cluster.storage.state import GraphState

    st = GraphState()
    for i in range(10):
        cid, attrs = f"k{i}", {"p": "even" if i % 2 == 0 else "odd"}
        st.concepts[cid] = Stored("x" * 100, 1.0, 1.0, attrs, b"", 0, 0)
        st.by_attr.setdefault("p", {}).setdefault(attrs["p"], set()).add(cid)
    eng = types.SimpleNamespace(applied_lsn=1, _lock=threading.RLock(), state=st)
    scan = reads.ConceptScan(eng)

    def ids(after: str, limit: int, where: reads.Where, max_bytes: int = 1 << 20) -> tuple[list[str], str]:
        page, cursor = scan.page(after, limit, where, False, max_bytes)
        return [m.concept_id for m in page], cursor

    assert ids("", 5, {}) == ([f"k{i}" for i in range(5)], "k4")
    assert ids("k4", 5, {}) == ([f"k{i}" for i in range(5, 10)], "")
    evens = {"p": frozenset({"even"})}
    assert ids("", 5, evens) == (["k0", "k2", "k4", "k6", "k8"], "")
    assert scan.count(evens) == 5 and scan.count({}) == 10
    del st.concepts["k1"]  # deleted after the ids were sorted (same applied LSN: no re-sort)
    st.concepts["k2"] = st.concepts["k2"]._replace(attributes={"p": "odd"})  # re-attributed
    assert ids("", 3, {}) == (["k0", "k2", "k3"], "k3")
    assert ids("", 3, evens)[0] == ["k0", "k4", "k6"]
    one = reads.concept_message("k0", st.concepts["k0"]).ByteSize() + 8
    assert ids("", 5, {}, max_bytes=2 * one) == (["k0", "k2"], "k2")


@pytest.mark.slow  # a real node and grpcurl
def test_new_reads_from_grpcurl(node: NodeProcess) -> None:
    """The documented grpcurl lines for the new reads (docs/API.md) work as printed."""
    import json
    import subprocess

    from tests.helpers import tool

    with SutraClient(node.address) as c:
        seq = c.learn_batch([Concept(f"gc-{i}", "grpcurl", unit(700 + i), attributes={"gclang": "en" if i else "de"})
                             for i in range(3)])
        c.digest(seq)

    def call(method: str, body: dict[str, object]) -> dict[str, object]:
        p = subprocess.run([tool("grpcurl"), "-plaintext", "-d", json.dumps(body), node.address,
                            f"sutra.storage.StorageService/{method}"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)  # type: ignore[no-any-return]

    assert call("CountConcepts", {"filter": [{"key": "gclang", "values": ["en"]}]})["count"] == "2"
    got = call("GetConcepts", {"concept_ids": ["gc-0", "gc-9"]})["concepts"]
    assert got[0]["found"] and got[0]["attributes"] == {"gclang": "de"} and "found" not in got[1]  # type: ignore[index]
    page = call("ScrollConcepts", {"after_id": "gc-", "limit": 2, "filter": [{"key": "gclang", "values": ["en", "de"]}]})
    assert [x["concept_id"] for x in page["concepts"]] == ["gc-0", "gc-1"] and page["next_after_id"] == "gc-1"  # type: ignore[index,union-attr]
    hits = call("VectorSearch", {"query_vector": [float(x) for x in unit(701)], "k": 1,
                                 "filter": [{"key": "gclang", "values": ["en"]}], "with_fields": {"content": True}})
    assert hits["results"][0]["concept_id"] == "gc-1" and hits["results"][0]["concept"]["content"] == "grpcurl"  # type: ignore[index,call-overload]
