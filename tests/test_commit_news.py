"""Sync mode: how a replica learns the leader's commit LSN (what it may show).

Every records message carries the commit LSN the leader had when it built it,
so a stream of writes tells replicas without a heartbeat (and an
acknowledgement of it) per write; after the last write, a heartbeat tells them
within about COMMIT_NEWS_S. Runs a real engine and the leader's stream handler
in this process, with the test as the replica."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from sutra_cluster import config
from sutra_cluster.pb import replication_pb2 as rpb
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import wal_pb2
from sutra_cluster.replication.follower import FollowerLoop
from sutra_cluster.replication.leader import COMMIT_NEWS_S
from sutra_cluster.replication.manager import ReplicationManager
from sutra_cluster.storage.engine import Engine
from sutra_cluster.storage.wal_format import RT_BATCH

DEADLINE_S = 30.0


class Context:
    """The parts of grpc.ServicerContext the stream handler uses; active until ended."""

    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active

    def abort(self, code: object, details: str) -> None:
        raise AssertionError(f"stream aborted: {code}: {details}")

    def set_trailing_metadata(self, md: object) -> None:
        pass


class Replica:
    """The test as a replica: a hello, then the acknowledgements it puts in."""

    def __init__(self, m: ReplicationManager) -> None:
        self.acks: queue.Queue[rpb.FollowerMessage | None] = queue.Queue()
        self.context = Context()
        self.flushed = 0
        self.stream = m.leader.stream(self._requests(), self.context)  # type: ignore[arg-type]

    def _requests(self) -> Iterator[rpb.FollowerMessage]:
        yield rpb.FollowerMessage(hello=rpb.Hello(node_id="r1", address="127.0.0.1:1"))
        while (m := self.acks.get()) is not None:
            yield m

    def next(self) -> rpb.LeaderMessage:
        """The next message (the stream handler runs in this thread until it yields)."""
        return next(self.stream)

    def ack(self, msg: rpb.LeaderMessage) -> None:
        if msg.WhichOneof("kind") == "records":
            self.flushed = max(self.flushed, msg.records.entries[-1].lsn)
        self.acks.put(rpb.FollowerMessage(ack=rpb.Ack(written_lsn=self.flushed, flushed_lsn=self.flushed)))

    def records_until(self, lsn: int) -> list[rpb.LeaderMessage]:
        """Messages up to the records message holding ``lsn``, each acknowledged."""
        got = []
        deadline = time.monotonic() + DEADLINE_S
        while self.flushed < lsn:
            assert time.monotonic() < deadline, f"LSN {lsn} was not streamed within {DEADLINE_S}s"
            msg = self.next()
            got.append(msg)
            self.ack(msg)
        return got

    def close(self) -> None:
        self.context.active = False
        self.acks.put(None)
        self.stream.close()


def _write(eng: Engine, cid: str) -> int:
    batch = wal_pb2.WalBatch()
    batch.concepts.append(pb.LearnConceptRequest(concept_id=cid, content=cid))
    return eng.submit(batch)


def test_records_carry_the_commit_of_every_write_acknowledged_before_them(
        leader: tuple[Engine, ReplicationManager]) -> None:
    eng, m = leader
    r = Replica(m)
    pool = ThreadPoolExecutor(1)
    try:
        r.records_until(eng.wal.durable_lsn)  # the term record
        acknowledged = 0
        for i in range(5):
            lsn = eng.wal.last_lsn + 1
            write: Future[int] = pool.submit(_write, eng, f"c{i}")
            # The write's own records message carries every commit made before it.
            msgs = r.records_until(lsn)
            records = [x for x in msgs if x.WhichOneof("kind") == "records"]
            assert records and records[-1].records.commit_lsn >= acknowledged, (
                f"write {i}: records carried commit {records[-1].records.commit_lsn}, "
                f"but LSN {acknowledged} was acknowledged before it was logged")
            acknowledged = write.result(timeout=DEADLINE_S)  # committed by the ack above
            assert acknowledged == lsn
        # After the last write, no records come: a heartbeat tells the commit.
        t0 = time.monotonic()
        while True:
            msg = r.next()
            r.ack(msg)
            if msg.WhichOneof("kind") == "heartbeat" and msg.heartbeat.commit_lsn >= acknowledged:
                break
            assert time.monotonic() - t0 < DEADLINE_S, f"no heartbeat told commit {acknowledged}"
        assert m.leader.followers["r1"].commit_sent >= acknowledged
    finally:
        r.close()
        pool.shutdown(wait=True)


def test_an_unacknowledged_write_is_never_announced_as_committed(
        leader: tuple[Engine, ReplicationManager]) -> None:
    # The replica flushed the write but its ack is withheld: nothing it is told
    # (records or heartbeats) may name the write as committed.
    eng, m = leader
    r = Replica(m)
    pool = ThreadPoolExecutor(1)
    try:
        r.records_until(eng.wal.durable_lsn)
        before = eng.wal.durable_lsn
        write: Future[int] = pool.submit(_write, eng, "pending")
        deadline = time.monotonic() + DEADLINE_S
        while True:
            msg = r.next()  # not acknowledged
            if msg.WhichOneof("kind") == "records":
                assert msg.records.commit_lsn <= before
                break
            assert time.monotonic() < deadline, "the write was not streamed"
        quiet_until = time.monotonic() + 20 * COMMIT_NEWS_S
        while time.monotonic() < quiet_until:
            msg = r.next()
            if msg.WhichOneof("kind") == "heartbeat":
                assert msg.heartbeat.commit_lsn <= before, "an unacknowledged write was announced as committed"
        assert not write.done()
        r.ack(rpb.LeaderMessage(records=rpb.Records(entries=[rpb.WalEntry(lsn=eng.wal.last_lsn)])))
        assert write.result(timeout=DEADLINE_S) == eng.wal.last_lsn
    finally:
        r.close()
        pool.shutdown(wait=True)


def test_a_replica_takes_the_commit_from_records(tmp_path: Path) -> None:
    env = {"STORAGE_PATH": str(tmp_path / "r"), "VECTOR_DIMENSION": "4", "SUTRA_NODE_ID": "r1",
           "SUTRA_NODE_ROLE": "replica", "SUTRA_LEADER": "127.0.0.1:9"}
    eng = Engine(config.load(env))
    try:
        loop = FollowerLoop(eng, eng.cfg, "127.0.0.1:9")
        acks: queue.Queue[rpb.FollowerMessage] = queue.Queue()
        payload = wal_pb2.WalBatch(concepts=[pb.LearnConceptRequest(concept_id="a", content="a")]).SerializeToString()
        msg = rpb.LeaderMessage(term=1, leader_id="n1", records=rpb.Records(
            entries=[rpb.WalEntry(lsn=1, term=1, rtype=RT_BATCH, payload=payload)], commit_lsn=1))
        loop._handle(msg, None, acks, None)  # type: ignore[arg-type]
        assert loop.leader_commit == 1
        assert acks.get_nowait().ack.flushed_lsn == 1
    finally:
        eng.close()
