"""`sutra-cluster reinit NODE` as a user runs it, against real etcd and real nodes:
it refuses the leader and (without --force) a sync-set member, asks for --yes
when it cannot prompt, and rebuilds a replica from its leader's snapshot: the
old files are set aside, the node streams again and holds the leader's state."""

from __future__ import annotations

from pathlib import Path

import grpc

from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc
from tests.cluster import DIM, assert_same_digest, wait_lsn
from tests.helpers import wait_for
from tests.shard_cluster import sharded_cluster
from tests.test_cli import cli


def write(address: str, prefix: str, n: int) -> int:
    """``n`` concepts through the leader; the last acknowledged LSN."""
    with grpc.insecure_channel(address) as ch:
        stub = storage_pb2_grpc.StorageServiceStub(ch)
        seq = 0
        for i in range(n):
            resp = stub.LearnConcept(pb.LearnConceptRequest(concept_id=f"{prefix}{i}", content=f"c {prefix}{i}",
                                                            embedding=[0.1 * (i % 7 + 1)] * DIM), timeout=10)
            seq = resp.sequence
        return seq


def test_reinit_refuses_the_leader_and_the_sync_member_then_rebuilds_a_replica(tmp_path: Path) -> None:
    with sharded_cluster(tmp_path, shards=1, per_shard=3, mode="sync", routers=0) as c:
        ep = c.etcd.endpoint
        leader = c.wait_shard_healthy(0)
        lsn = write(leader.address, "a", 40)

        def sync_member() -> str | None:
            r = cli("status", "--etcd", ep, "--json")
            import json

            sync = json.loads(r.stdout)["shards"][0]["sync_set"]
            return sync[0] if sync else None

        held = wait_for(sync_member, 30, "a published sync set")
        other = next(n for n in c.shards[0] if n is not leader and n.name != held)

        r = cli("reinit", leader.name, "--etcd", ep, "--yes")
        assert r.returncode == 1 and f"refused: {leader.name} is the leader of shard 0" in r.stderr, r.stderr
        r = cli("reinit", leader.address, "--yes")  # by address, no etcd: the node itself says it leads
        assert r.returncode == 1 and "is the leader" in r.stderr, r.stderr
        r = cli("reinit", held, "--etcd", ep, "--yes")
        assert r.returncode == 1 and "sync set" in r.stderr and "--force" in r.stderr, r.stderr
        r = cli("reinit", other.name, "--etcd", ep)  # no terminal to ask on: --yes is required
        assert r.returncode == 2 and "--yes" in r.stderr
        r = cli("reinit", "nobody", "--etcd", ep, "--yes")
        assert r.returncode == 1 and "nobody is not a member" in r.stderr

        wait_lsn([other], lsn)
        r = cli("reinit", other.name, "--etcd", ep, "--yes")
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert f"reinit done: {other.name} rebuilt from {leader.address}: snapshot at LSN" in r.stdout
        aside = list(other.data_dir.glob("replaced-*"))
        assert aside and any(aside[0].iterdir()), "the old WAL and storage files were not set aside"
        assert "installed snapshot at LSN" in other.log_text()

        # It streams again: later writes reach it and it holds exactly the leader's state.
        lsn = write(leader.address, "b", 20)
        assert_same_digest(c.shards[0], lsn)
        wait_for(lambda: other.status().follow_state == "streaming", 30, f"{other.name} to stream again")
