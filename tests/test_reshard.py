"""Online resharding: the map's reshard fields, the guard's fence, and real
processes (etcd, shard groups of ``sutra-cluster serve``, a router, the
``sutra-cluster reshard`` driver) growing 1 -> 2 -> 3 and shrinking 3 -> 2
under a sync write load, with the driver killed at every phase and rerun.
After each move the router answers as a single node holding the acknowledged
writes does, and no acknowledged write is missing."""

from __future__ import annotations

import collections
from pathlib import Path

import grpc
import pytest

from sutra_cluster.client import SutraClient
from sutra_cluster.config import Config
from sutra_cluster.errors import ConfigError, InvalidArgument, WrongShard
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc, wal_pb2
from sutra_cluster.retry import MAP_VERSION_KEY, Retry, classify
from sutra_cluster.sharding import shardmap
from sutra_cluster.sharding.reshard_node import moving_parts
from sutra_cluster.sharding.reshard_rescue import FreezeRescue
from sutra_cluster.sharding.reshard_state import ReshardRecord, lock_key
from sutra_cluster.sharding.shardmap import ShardMap
from sutra_cluster.storage.state import ApplyResult, GraphState
from tests.helpers import wait_for
from tests.reshard_support import Load, add_shard, replay, reshard, shard_concepts, wait_equal
from tests.shard_cluster import sharded_cluster
from tests.test_sharding import reference_node

# ---- pure ------------------------------------------------------------------------


def test_map_reshard_fields_round_trip_and_moving_keys_follow_jump_hash() -> None:
    m = ShardMap(shards=2).evolve(next_shards=3)
    assert ShardMap.from_json(m.to_json()) == m and m.version == 2 and m.mixed
    assert "next_shards" not in ShardMap(shards=2).to_json()  # a plain map reads as before
    ids = [f"id{i}" for i in range(6000)]
    moving = [i for i in ids if m.moving(i)]
    assert 0.27 < len(moving) / len(ids) < 0.40  # ~1/3 moves from 2 to 3 shards ...
    assert all(m.next_owner(i) == 2 for i in moving)  # ... all of it to the new shard
    shrink = ShardMap(shards=3).evolve(next_shards=2)
    assert all(shrink.owner(i) == 2 for i in ids if shrink.moving(i))  # shrinking moves only the removed shard's
    with pytest.raises(Exception, match="frozen is set without next_shards"):
        ShardMap(shards=2, frozen=True)


def test_moving_parts_keep_request_ids_and_send_purges_for_deletes() -> None:
    m = ShardMap(shards=1).evolve(next_shards=2)
    moving = next(f"x{i}" for i in range(100) if m.moving(f"x{i}"))
    staying = next(f"x{i}" for i in range(100) if not m.moving(f"x{i}"))
    b = wal_pb2.WalBatch(request_id="r1", delete_concept_ids=[staying])
    b.concepts.add(concept_id=moving, content="m")
    b.concepts.add(concept_id=staying, content="s")
    b.associations.add(source_id=moving, target_id=staying)
    parts = moving_parts(0, m, b)
    assert list(parts) == [1]
    main, purge = parts[1]
    assert main.request_id == "r1" and [c.concept_id for c in main.concepts] == [moving]
    assert len(main.associations) == 1 and not main.delete_concept_ids
    assert purge.request_id == f"r1:purge:{staying}" and list(purge.delete_concept_ids) == [staying]


def test_drop_keeps_edges_into_the_concept_from_others() -> None:
    st = GraphState()
    b = wal_pb2.WalBatch()
    b.concepts.add(concept_id="x", content="x")
    for src, dst in (("y", "x"), ("x", "z"), ("x", "x")):
        b.associations.add(source_id=src, target_id=dst)
    st.apply_batch(b, ApplyResult({}, set()))
    st.apply_batch(wal_pb2.WalBatch(drop_concept_ids=["x"]), ApplyResult({}, set()))
    assert "x" not in st.concepts and st.edges == 1
    assert st.neighbors("x", True, True) == [("y", 0, 0.0, False)]
    assert st.neighbors("z", True, True) == []


def test_guard_fence_refuses_moving_keys_while_frozen_and_drops_from_clients(tmp_path: Path) -> None:
    from sutra_cluster.api.shard_guard import Moving, ShardGuard, internal_writes

    g = ShardGuard(Config(shard=0, storage_path=str(tmp_path)))
    g.adopt(ShardMap(shards=1, version=5).evolve(next_shards=2, frozen=True))
    m = g.map
    moving = next(f"k{i}" for i in range(100) if m.moving(f"k{i}"))
    staying = next(f"k{i}" for i in range(100) if not m.moving(f"k{i}"))
    b = wal_pb2.WalBatch()
    b.concepts.add(concept_id=staying)
    g.check(staying)
    g.admit(b)  # keys that do not move never pause
    b.concepts.add(concept_id=moving)
    with pytest.raises(Moving):
        g.admit(b)
    g.adopt(ShardMap(shards=2, version=7))
    with pytest.raises(WrongShard) as wrong:
        g.check(moving)
    assert dict(wrong.value.trailers)[MAP_VERSION_KEY] == "7"  # type: ignore[attr-defined]
    with pytest.raises(InvalidArgument, match="drop_concept_ids"):
        g.admit(wal_pb2.WalBatch(drop_concept_ids=[moving]))
    with internal_writes():
        g.admit(wal_pb2.WalBatch(drop_concept_ids=[moving]))


def test_refusals_with_a_map_version_are_retried_on_a_new_map() -> None:
    class Err(grpc.RpcError):
        def __init__(self, code: grpc.StatusCode, md: tuple[tuple[str, str], ...]) -> None:
            self._c, self._md = code, md

        def code(self) -> grpc.StatusCode:
            return self._c

        def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
            return self._md

    fp = grpc.StatusCode.FAILED_PRECONDITION
    assert classify(Err(fp, (("sutra-reason", "wrong-shard"), (MAP_VERSION_KEY, "4"))), write=True) == Retry.NEW_MAP
    assert classify(Err(fp, (("sutra-reason", "wrong-shard"),)), write=True) == Retry.NEVER  # a static map
    un = grpc.StatusCode.UNAVAILABLE
    assert classify(Err(un, (("sutra-reason", "moving"), (MAP_VERSION_KEY, "4"))), write=True) == Retry.NEW_MAP


def test_record_phases_and_roles() -> None:
    grow = ReshardRecord.new(2, 3, 1)
    assert (grow.source_shards(), grow.target_shards()) == ([0, 1], [2])
    shrink = ReshardRecord.new(3, 1, 1)
    assert (shrink.source_shards(), shrink.target_shards()) == ([1, 2], [0])
    assert ReshardRecord.decode(grow.encode()) == grow


class _Etcd:
    def __init__(self, **kv: str) -> None:
        self.kv = dict(kv)

    def get(self, key: str) -> str | None:
        return self.kv.get(key)

    def compare_and_put(self, key: str, expected: str, value: str) -> bool:
        if self.kv.get(key) != expected:
            return False
        self.kv[key] = value
        return True


class _Lock:
    def __init__(self, etcd: _Etcd, holder: str = "") -> None:
        self.etcd, self.holder, self.released = etcd, holder, False

    def acquire(self, wait_s: float = 0.0) -> None:
        if lock_key("sutra") in self.etcd.kv:
            raise ConfigError("another reshard driver is running")
        self.etcd.kv[lock_key("sutra")] = "rescue"

    def release(self) -> None:
        self.etcd.kv.pop(lock_key("sutra"), None)
        self.released = True


def _rescue(etcd: _Etcd, leading: bool = True) -> FreezeRescue:
    def current() -> ShardMap:
        return ShardMap.from_json(etcd.kv[shardmap.map_key("sutra")])

    return FreezeRescue([], "sutra", current, lambda: leading, lock_factory=lambda: _Lock(etcd), store=etcd)


FROZEN = ShardMap(shards=2, version=7, next_shards=3, frozen=True)


def test_a_freeze_without_a_driver_is_lifted_on_the_second_look_under_the_driver_lock() -> None:
    etcd = _Etcd(**{shardmap.map_key("sutra"): FROZEN.to_json()})
    r = _rescue(etcd)
    assert r.check() is False, "one look is not enough: the driver may be between two calls"
    assert r.check() is True
    m = ShardMap.from_json(etcd.kv[shardmap.map_key("sutra")])
    assert (m.version, m.frozen, m.next_shards, m.shards) == (8, False, 3, 2)
    assert lock_key("sutra") not in etcd.kv, "the rescue lets the driver lock go"
    assert r.check() is False and r.lifted == 1


def test_a_freeze_is_left_alone_while_a_driver_holds_the_lock_or_the_map_moves_or_a_replica_looks() -> None:
    held = _Etcd(**{shardmap.map_key("sutra"): FROZEN.to_json(), lock_key("sutra"): "host:123"})
    r = _rescue(held)
    assert not any(r.check() for _ in range(4))
    assert ShardMap.from_json(held.kv[shardmap.map_key("sutra")]).frozen

    replica = _Etcd(**{shardmap.map_key("sutra"): FROZEN.to_json()})
    r = _rescue(replica, leading=False)
    assert not any(r.check() for _ in range(4))

    moving = _Etcd(**{shardmap.map_key("sutra"): FROZEN.to_json()})
    r = _rescue(moving)
    assert r.check() is False
    # The driver came back and froze again at a newer version between the two looks.
    moving.kv[shardmap.map_key("sutra")] = FROZEN.evolve().to_json()
    assert r.check() is False, "a different frozen version starts the count again"
    assert ShardMap.from_json(moving.kv[shardmap.map_key("sutra")]).frozen


# ---- processes -----------------------------------------------------------------------


def _run(c, *args: str, fault: str = "") -> None:  # type: ignore[no-untyped-def]
    r = reshard(c, *args, fault=fault)
    want = 70 if fault else 0
    assert r.returncode == want, f"reshard {args} fault={fault!r}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"


def _unfrozen(c) -> ShardMap | None:  # type: ignore[no-untyped-def]
    m = shardmap.load_from_etcd([c.etcd.endpoint], c.name, timeout=5.0)
    return m if m is not None and not m.frozen else None


def _map(c) -> ShardMap:  # type: ignore[no-untyped-def]
    m = wait_for(lambda: shardmap.load_from_etcd([c.etcd.endpoint], c.name, timeout=5.0), 60, "the shard map")
    assert m is not None
    return m


@pytest.mark.slow
def test_grow_and_shrink_under_sync_load_with_the_driver_killed_at_every_phase(tmp_path: Path) -> None:
    with sharded_cluster(tmp_path / "c", shards=1, per_shard=2, mode="sync") as c, \
            SutraClient(etcd=[c.etcd.endpoint], cluster=c.name, timeout=30.0) as client:
        # An in-process routing client made on the 1-shard map: it must follow every move by itself.
        load = Load(c.router.address).start()
        try:
            add_shard(c, 1)
            # 1 -> 2: killed after prepare, then after the first copy; the third run finishes.
            _run(c, "--to", "2", fault="prepare")
            _run(c, "--to", "2", fault="copy")
            _run(c, "--to", "2")
            assert (_map(c).shards, _map(c).mixed) == (2, False)
            add_shard(c, 2)
            # 2 -> 3, aborted once at catch-up (the copies on shard 2 are dropped), then
            # killed with the moving keys frozen (writes to them wait for the rerun).
            _run(c, "--to", "3", fault="catchup")
            _run(c, "abort")
            assert shard_concepts(c, 2) == 0 and not _map(c).next_shards
            _run(c, "--to", "3", fault="frozen")
            # Nobody reruns it at once: a shard leader lifts the orphaned freeze once the
            # driver's lock has expired, and writes to the moving keys resume meanwhile.
            frozen_at = _map(c).version
            lifted = wait_for(lambda: _unfrozen(c), 60, "the orphaned freeze to be lifted")
            assert lifted is not None and lifted.version == frozen_at + 1 and lifted.next_shards == 3
            _run(c, "--to", "3")
            assert _map(c).shards == 3
            # 3 -> 2: killed at catch-up (the map is mixed: shard 0 and 1 hold copies),
            # compared there, then killed after the switch and before the cleanup.
            _run(c, "--to", "2", fault="catchup")
            assert _map(c).mixed
            load.pause()
            with reference_node(tmp_path / "ref-mid") as ref:
                replay(load.acked, ref)
                wait_equal(c.router.address, ref, load.all_keys(), on_fail=c.logs)
            load.resume()
            _run(c, "--to", "2", fault="switched")
            _run(c, "--to", "2", fault="cleanup")
            _run(c, "--to", "2")
        finally:
            load.finish()
        assert not load.failed, load.failed[:3]
        m = _map(c)
        assert (m.shards, m.mixed, m.next_shards) == (2, False, 0)
        assert load.count() > 200, "the load kept writing through the moves"
        with reference_node(tmp_path / "ref") as ref:
            replay(load.acked, ref)
            wait_equal(c.router.address, ref, load.all_keys(), on_fail=c.logs)
            # Each shard holds exactly what it owns: the moved keys were dropped at the source.
            want = ref.GetStats(pb.GetStatsRequest())
            per_shard = [shard_concepts(c, s) for s in range(3)]
            assert per_shard[2] == 0 and sum(per_shard) == want.concepts, per_shard
            for k in load.all_keys()[::17]:
                got = client.query_concept(k)
                expect = ref.QueryConcept(pb.QueryConceptRequest(concept_id=k))
                assert (got.content if got else None) == (expect.content if expect.found else None), k
        owners = collections.Counter(m.owner(k) for k in load.all_keys())
        assert set(owners) == {0, 1}
        # A node refuses a key it no longer owns, naming the map version (what routers retry on).
        moved = next(k for k in load.all_keys() if m.owner(k) == 1)
        stub = storage_pb2_grpc.StorageServiceStub(grpc.insecure_channel(c.leader(0).address))
        with pytest.raises(grpc.RpcError) as refused:
            stub.LearnConcept(pb.LearnConceptRequest(concept_id=moved, content="x"), timeout=10)
        assert classify(refused.value, write=True) == Retry.NEW_MAP
        client.learn_concept(moved, "written after the moves", request_id="after-moves")
        got = client.query_concept(moved)
        assert got is not None and got.content == "written after the moves"
