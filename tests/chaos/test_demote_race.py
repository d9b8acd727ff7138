"""The race the SIGSTOP, SIGTERM and switchover chaos tests hit, pinned down
in one process: a write that is waiting for its fsync when the node demotes
(lease lost, key taken, SIGTERM, switchover) must not be acknowledged.

The chaos tests show the effect: the old leader acknowledges writes after it
lost leadership, and in sync mode those writes were never replicated, so they
are cut from its log when it rejoins (acknowledged writes lost). Here the HA
loop's demotion is made to happen exactly inside that window.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sutra_cluster.errors import SutraError
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import wal_pb2
from sutra_cluster.replication.manager import ReplicationManager
from sutra_cluster.storage.engine import Engine
from tests.helpers import in_process_leader

pytestmark = pytest.mark.slow  # starts etcd and a node cluster


@pytest.fixture(params=["sync", "async"])
def leader(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Engine, ReplicationManager]]:
    with in_process_leader({
        "STORAGE_PATH": str(tmp_path / "n"), "VECTOR_DIMENSION": "8", "SUTRA_NODE_ID": "n0",
        "SUTRA_COMMIT_MODE": request.param, "SUTRA_NODE_ROLE": "leader", "SUTRA_REPLICAS": "127.0.0.1:9",
    }) as pair:
        yield pair


def _batch(cid: str) -> wal_pb2.WalBatch:
    b = wal_pb2.WalBatch(request_id=f"rid-{cid}")
    b.concepts.append(pb.LearnConceptRequest(concept_id=cid, content=f"content of {cid}"))
    return b


def test_a_write_in_flight_when_the_leader_demotes_is_not_acknowledged(
        leader: tuple[Engine, ReplicationManager]) -> None:
    eng, m = leader
    assert eng.role == "leader"
    durable = eng.wal.wait_durable

    def demote_during_fsync(lsn: int, timeout: float | None = None) -> bool:
        ok = durable(lsn, timeout)
        # Only the writer's own wait (no timeout) demotes: the reconciler asks with timeout=0 while it
        # holds the append lock, which a step-down takes too.
        if timeout is None:
            m.step_down("lease lost")  # what HaLoop._demote does when the lease is lost, on SIGTERM, or in a handover
        return ok

    eng.wal.wait_durable = demote_during_fsync  # type: ignore[method-assign]
    try:
        lsn = eng.submit(_batch("c1"))
    except SutraError:
        return  # refused: correct
    pytest.fail(f"the write was acknowledged (LSN {lsn}, {eng.cfg.commit_mode} mode) by a node that demoted "
                f"before acknowledging it (role now {eng.role}); engine._submit reads commit_gate after the "
                "fsync, and ReplicationManager.demote has set it to None")
