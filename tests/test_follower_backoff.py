"""A replica's reconnect delay when the node it was told to follow is not leading yet.

In managed mode a replica follows the node etcd's leader key names as soon as
it sees the key; the winner takes the key first and starts leading (its term
record, its commit bookkeeping) a few milliseconds later. A replica that
connects in that window is refused "not the leader". That refusal must not
cost it a full second: in sync mode the new leader acknowledges nothing until
a sync-set replica streams, so the second was the failover's (a chaos run of
60 kills saw 1.1 s instead of 0.1-0.2 s). Real engines, a real gRPC server and
the real follower loop run in this process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from sutra_cluster.pb import replication_pb2_grpc
from sutra_cluster.replication.follower import FollowerLoop
from sutra_cluster.replication.manager import ReplicationManager
from sutra_cluster.replication.service import ReplicationServicer
from sutra_cluster.storage.engine import Engine
from tests.helpers import free_port, in_process_leader, wait_for

DEADLINE_S = 30.0
# The longest wait allowed after a "not the leader" refusal: the backoff of a
# first network error (50 ms) with room, well under the one second it was.
SHORT_S = 0.2


class RecordingStop(threading.Event):
    """The follower loop's stop event, noting every backoff it waits (until it
    is stopped) and the error that preceded it."""

    def __init__(self, loop: FollowerLoop) -> None:
        super().__init__()
        self.loop = loop
        self.waits: list[tuple[float, str]] = []

    def wait(self, timeout: float | None = None) -> bool:
        if not self.is_set():
            self.waits.append((-1.0 if timeout is None else timeout, self.loop.last_error))
        return super().wait(timeout)


def _env(tmp_path: Path, name: str) -> dict[str, str]:
    # Managed (an etcd endpoint is set, never contacted: no HA loop runs here), so
    # the node starts as a replica and leads only when told to, as the HA loop would.
    return {"STORAGE_PATH": str(tmp_path / name), "SUTRA_NODE_ID": name, "VECTOR_DIMENSION": "8",
            "SUTRA_COMMIT_MODE": "sync", "SUTRA_ETCD_ENDPOINTS": "127.0.0.1:9",
            "SUTRA_ADVERTISE": f"127.0.0.1:{free_port('127.0.0.1')}"}


@pytest.fixture
def winner(tmp_path: Path) -> Iterator[tuple[Engine, ReplicationManager, str]]:
    """The election's winner before it leads: a replica serving the replication service."""
    with in_process_leader(_env(tmp_path, "w")) as (eng, m):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        replication_pb2_grpc.add_ReplicationServiceServicer_to_server(ReplicationServicer(m), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            yield eng, m, f"127.0.0.1:{port}"
        finally:
            server.stop(0).wait()


def test_a_replica_refused_by_a_winner_not_yet_leading_retries_within_a_backoff_step(
        tmp_path: Path, winner: tuple[Engine, ReplicationManager, str]) -> None:
    weng, wm, address = winner
    term = weng.term + 1  # the term etcd's key names
    with in_process_leader(_env(tmp_path, "r")) as (reng, _):
        loop = FollowerLoop(reng, reng.cfg, address, expected_term=term)
        stop = RecordingStop(loop)
        loop._stop = stop
        loop.start()
        try:
            wait_for(lambda: "is not the leader" in loop.last_error, DEADLINE_S, "the winner to refuse the stream")
            wm.lead(term)
            wait_for(lambda: loop.state == "streaming", DEADLINE_S, "the replica to stream from the new leader")
        finally:
            loop.stop()
        # The first wait after the first refusal: later ones double (as after a network
        # error), and how many there are depends on how soon lead() ran here.
        refused = [t for t, err in stop.waits if "is not the leader" in err]
        assert refused, f"no wait followed the refusal: {stop.waits}"
        assert refused[0] <= SHORT_S, (
            f"after 'not the leader' the replica waited {refused[0]} s before trying again (waits {refused}): "
            f"the winner leads milliseconds after taking the key, and in sync mode that wait is the failover's")
