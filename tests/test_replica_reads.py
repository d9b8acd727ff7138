"""Sync mode: a replica shows only what the leader committed (issue 10's
invariant "a node serves no read from a divergent tail", found open by the HA
simulator). A write that reached one replica but was never acknowledged (the
other sync replica is paused) stays invisible there until it commits."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.cluster import DIM, running_cluster, wait_streaming
from tests.helpers import wait_for

pytestmark = pytest.mark.slow  # starts a leader and two replicas


def test_a_sync_replica_never_shows_an_unacknowledged_write(tmp_path: Path) -> None:
    env = {"SUTRA_SYNC_REPLICAS": "2", "SUTRA_SYNC_TIMEOUT_MS": "300"}
    with running_cluster(tmp_path, replicas=2, mode="sync", env=env) as c:
        wait_streaming(c.leader, ["r1", "r2"])
        r1, r2 = c.replicas
        with c.leader.client() as lc:
            first = lc.learn_concept("committed", "seen everywhere", np.ones(DIM, dtype=np.float32))
        with r1.client() as rc:
            assert rc.query_concept("committed", sequence=first) is not None

        r2.pause()
        try:
            with c.leader.client() as lc, pytest.raises(grpc.RpcError) as refused:
                got = lc.learn_concept("pending", "never acknowledged", np.ones(DIM, dtype=np.float32))
                # Seen once under load (cause not found yet): say what the leader counted.
                st = c.leader.status()
                pytest.fail(f"acknowledged at LSN {got} with r2 stopped; leader: durable {st.durable_lsn}, replicas "
                            f"{[(r.node_id, r.state, r.flushed_lsn) for r in st.replicas]}\n--- leader log ---\n"
                            f"{c.leader.log_tail()}\n--- r2 log ---\n{r2.log_tail()}")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            assert "1 of 2 required replicas acknowledged" in (refused.value.details() or "")  # type: ignore[attr-defined]
            lsn = c.leader.status().durable_lsn
            # r1 holds the record on disk...
            wait_for(lambda: r1.status().durable_lsn >= lsn, 30, "r1 to flush the unacknowledged write")
            with r1.client() as rc:
                # ...and does not show it: a failover to r2 would cut it.
                assert rc.query_concept("pending") is None, "a sync replica showed a write that was never acknowledged"
                assert rc.stats().pending >= 1
        finally:
            r2.resume()
        # Once r2 flushes it too, the record is committed and shows on r1 as well.
        with r1.client() as rc:
            wait_for(lambda: rc.query_concept("pending") is not None, 30, "the record to commit and show on r1")
