"""Cross-shard atomic writes through the router, with real processes and real
etcd: a batch or a delete spanning shards is whole or absent on every node,
also when the router dies between the phases (no client retry)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc
from sutra_cluster.txn.decision import DecisionStore, txn_id_for
from tests.shard_cluster import sharded_cluster
from tests.txn_check import XBatch, open_txns, settle, spread, start_router, state_of, token

pytestmark = pytest.mark.slow


def _router_stub(address: str) -> tuple[grpc.Channel, storage_pb2_grpc.StorageServiceStub]:
    ch = grpc.insecure_channel(address)
    return ch, storage_pb2_grpc.StorageServiceStub(ch)


def test_batches_and_deletes_across_two_and_three_shards_are_whole(tmp_path: Path) -> None:
    with sharded_cluster(tmp_path, shards=3, per_shard=1, mode="async") as c:
        ch, r = _router_stub(c.router.address)
        try:
            two = XBatch("two", spread(c, "a", [0, 1]))
            two.edges = [(two.concepts[0], two.concepts[2]), (two.concepts[2], two.concepts[0])]
            three = XBatch("three", spread(c, "b", [0, 1, 2]))
            three.edges = [(three.concepts[i], three.concepts[(i + 2) % 6]) for i in range(6)]
            for b in (two, three):
                resp = r.LearnBatch(b.request(), timeout=30)
                assert sorted(e.shard for e in resp.shard_sequences) == sorted({c.owner(x) for x in b.concepts})
                # Whole on every shard at the write's token (read-your-writes).
                assert state_of(c, b, token=token(resp)) == "whole", b.request_id
            assert not any(open_txns(n.address) for n in c.nodes)
            # A repeat with the same request id is answered, not applied again.
            again = r.LearnBatch(three.request(), timeout=30)
            assert sorted(e.shard for e in again.shard_sequences) == [0, 1, 2]

            # Deleting a concept removes it and every edge pointing at it, on every shard, atomically.
            victim = three.concepts[0]  # on shard 0; edges point at it from shard 2 (three.concepts[4])
            pointing = [s for s, t in three.edges if t == victim]
            assert pointing and {c.owner(s) for s in pointing} != {0}
            d = r.DeleteConcept(pb.DeleteConceptRequest(concept_id=victim, request_id="del-1"), timeout=30)
            assert sorted(e.shard for e in d.shard_sequences) == [0, 1, 2]
            tok = d.shard_sequences
            assert not r.QueryConcept(pb.QueryConceptRequest(concept_id=victim, shard_sequences=tok), timeout=10).found
            for s in pointing:
                n = r.GetNeighbors(pb.GetNeighborsRequest(concept_id=s, direction=pb.OUTGOING, shard_sequences=tok),
                                   timeout=10)
                assert victim not in n.neighbor_ids
            inc = r.GetNeighbors(pb.GetNeighborsRequest(concept_id=victim, direction=pb.BOTH, shard_sequences=tok),
                                 timeout=10)
            assert list(inc.neighbor_ids) == []

            # A batch that deletes goes to every shard as one transaction too.
            mixed = pb.LearnBatchRequest(request_id="mixed", delete_concept_ids=[two.concepts[0]],
                                         concepts=[pb.LearnConceptRequest(concept_id=two.concepts[2], content="v2")])
            tok = r.LearnBatch(mixed, timeout=30).shard_sequences
            assert not r.QueryConcept(pb.QueryConceptRequest(concept_id=two.concepts[0], shard_sequences=tok),
                                      timeout=10).found
            n = r.GetNeighbors(pb.GetNeighborsRequest(concept_id=two.concepts[2], direction=pb.BOTH,
                                                      shard_sequences=tok), timeout=10)
            assert two.concepts[0] not in n.neighbor_ids
        finally:
            ch.close()


def test_router_dying_between_the_phases_leaves_every_batch_whole_or_absent(tmp_path: Path) -> None:
    env = {"SUTRA_TXN_TIMEOUT_MS": "1000"}
    with sharded_cluster(tmp_path, shards=2, per_shard=2, mode="sync", env=env) as c:
        store = DecisionStore([c.etcd.endpoint], c.name, "test")
        try:
            outcome = {}
            batches = {}
            for i, fault in enumerate(("exit-after-prepare", "exit-after-decision", "exit-after-first-commit")):
                b = XBatch(f"b-{fault}", spread(c, f"f{i}x", [0, 1]))
                b.edges = [(b.concepts[0], b.concepts[3]), (b.concepts[3], b.concepts[0])]
                batches[fault] = b
                dying = start_router(c, f"r-{fault}", {"SUTRA_FAULT_TXN": fault})
                ch, r = _router_stub(dying.address)
                with pytest.raises(grpc.RpcError) as err:
                    r.LearnBatch(b.request(), timeout=30)
                ch.close()
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value  # type: ignore[attr-defined]
                assert dying.proc is not None and dying.proc.wait(timeout=30) == 137
                # No client retry: the nodes' resolvers finish it from etcd.
                outcome[fault] = settle(c, b)
                d = store.get(txn_id_for(b.request_id))
                assert d is not None
                assert outcome[fault] == ("whole" if d.commit else "absent"), (fault, d, outcome[fault])
            assert outcome == {"exit-after-prepare": "absent", "exit-after-decision": "whole",
                               "exit-after-first-commit": "whole"}, outcome

            # The aborted batch, sent again with the same request id, commits (a new attempt);
            # the committed one is answered without being applied twice.
            ch, r = _router_stub(c.router.address)
            try:
                resp = r.LearnBatch(batches["exit-after-prepare"].request(), timeout=30)
                assert state_of(c, batches["exit-after-prepare"], nodes="leaders", token=token(resp)) == "whole"
                d1 = store.get(txn_id_for("b-exit-after-prepare", 1))
                assert d1 is not None and d1.commit
                r.LearnBatch(batches["exit-after-decision"].request(), timeout=30)
            finally:
                ch.close()
            for b in batches.values():
                assert settle(c, b) == "whole"
            # Every node restarted: prepared state comes back from the WAL, and nothing is in doubt.
            for n in c.nodes:
                n.kill()
            for n in c.nodes:
                n.restart()
            for s in range(2):
                c.wait_shard_healthy(s)
            for b in batches.values():
                assert settle(c, b) == "whole"
        finally:
            store.close()
