"""Replica side of WAL streaming: connects to the leader, appends and fsyncs the
records it streams (one fsync per message), reports written/flushed/applied
LSNs, rejects leaders from stale terms, and bootstraps from a snapshot when
the leader says it must."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator

import grpc

from sutra_cluster import retry
from sutra_cluster.config import Config
from sutra_cluster.pb import replication_pb2 as rpb
from sutra_cluster.pb import replication_pb2_grpc
from sutra_cluster.roles import MAX_TERM
from sutra_cluster.storage import checkpoint as ckpt
from sutra_cluster.storage import lagtrace
from sutra_cluster.storage.engine import Engine
from sutra_cluster.storage.identity import ClusterIdentity, ForeignCluster

log = logging.getLogger(__name__)

INCOMING = "storage.dat.incoming"


class StaleLeader(Exception):
    pass


class FollowerLoop:
    """Follows one leader address until stopped; reconnects with backoff."""

    def __init__(self, engine: Engine, cfg: Config, leader_address: str,
                 channel_factory=None, expected_term: int = 0, reinit: bool = False,  # type: ignore[no-untyped-def]
                 identity: ClusterIdentity | None = None) -> None:
        """``identity``: this node's cluster id, sent in the hello and checked against
        the leader's (default: the one in the engine's data directory).
        ``reinit``: first replace this node's state with the leader's snapshot
        (``sutra-cluster reinit``), then stream; ``reinit_done`` is set once that
        ended, with ``reinit_result`` (lsn, term, bytes, seconds) or ``reinit_error``."""
        self.engine = engine
        self.reinit = reinit
        self.identity = identity if identity is not None else ClusterIdentity(engine.dir, cfg.cluster_name)
        self.reinit_done = threading.Event()
        self.reinit_result: tuple[int, int, int, float] | None = None
        self.reinit_error = ""
        self.cfg = cfg
        self.leader_address = leader_address
        # Managed mode: the term etcd's leader key names. A stream claiming a higher
        # term is not believed (and not saved): only etcd hands out terms.
        self.expected_term = expected_term
        self.channel_factory = channel_factory or (lambda addr: grpc.insecure_channel(addr))
        self.state = "connecting"
        self.leader_id = ""
        self.leader_last = 0
        # The leader's commit LSN as last reported (sync mode: what this replica may show).
        self.leader_commit = 0
        self.caught_up_at = time.monotonic()
        self.last_error = ""
        self._stop = threading.Event()
        self._call: grpc.Future | None = None
        self._thread = threading.Thread(target=self._run, name="follower", daemon=True)

    def start(self) -> FollowerLoop:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def stop(self) -> None:
        """Stop following; returns once no more records will be appended."""
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
        self.state = "stopped"

    def _run(self) -> None:
        if self.reinit:
            self._reinit()
        backoff = 0.05
        while not self._stop.is_set():
            try:
                self._stream_once()
                backoff = 0.05
            except StaleLeader as exc:
                self.state, self.last_error = "rejected-stale-leader", str(exc)
                log.warning("%s", exc)
                backoff = 1.0
            except ForeignCluster as exc:
                self.state, self.last_error = "rejected-foreign-cluster", str(exc)
                log.error("refused the stream from %s: %s", self.leader_address, exc)
                backoff = 1.0
            except grpc.RpcError as exc:
                if not self._stop.is_set():
                    details = exc.details() or ""  # type: ignore[attr-defined]
                    self.last_error = f"{exc.code().name}: {details}"  # type: ignore[attr-defined]
                    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:  # type: ignore[attr-defined]
                        # The node refused to feed us: it is stale (our hello carried a newer
                        # term) or not a leader. Shown as such, not as a network blip.
                        why = retry.reason(exc)
                        self.state = {retry.STALE_LEADER: "rejected-stale-leader",
                                      retry.FOREIGN_CLUSTER: "rejected-foreign-cluster"}.get(why or "", "rejected")
                        if why == retry.FOREIGN_CLUSTER:
                            log.error("leader %s refused this node: %s", self.leader_address, details)
                        # "Not the leader" is mostly an election seen early: etcd's key names
                        # the winner milliseconds before it leads, and in sync mode it acknowledges
                        # nothing until a replica streams. So it backs off from 50 ms as a network
                        # error does; a stale or foreign leader waits the full second.
                        if why != retry.NOT_LEADER:
                            backoff = 1.0
                    else:
                        self.state = "disconnected"
                    log.info("stream from %s ended: %s", self.leader_address, self.last_error)
            except Exception as exc:  # keep following; the next hello resynchronises
                self.state, self.last_error = "error", f"{type(exc).__name__}: {exc}"
                log.exception("replication from %s failed", self.leader_address)
                backoff = 1.0
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 1.0)

    def _reinit(self) -> None:
        """Rebuild from the leader's snapshot before streaming. A failure leaves the
        old state in place (nothing is replaced before the whole snapshot is
        received, fsynced and validated) and streaming goes on as before."""
        channel = self.channel_factory(self.leader_address)
        t0 = time.monotonic()
        try:
            got = self._bootstrap(replication_pb2_grpc.ReplicationServiceStub(channel))
            if got is None:
                self.reinit_error = "stopped before the snapshot was installed (the node's leader changed?)"
            else:
                self.reinit_result = (got[0], self.engine.terms.last_term, got[1], time.monotonic() - t0)
        except grpc.RpcError as exc:
            self.reinit_error = f"snapshot from {self.leader_address}: {exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
        except Exception as exc:  # reported to the caller; the node keeps its old state and streams on
            log.exception("reinit from %s failed", self.leader_address)
            self.reinit_error = f"{type(exc).__name__}: {exc}"
        finally:
            channel.close()
            self.reinit_done.set()

    def _ack(self) -> rpb.FollowerMessage:
        eng = self.engine
        return rpb.FollowerMessage(ack=rpb.Ack(
            written_lsn=eng.wal.last_lsn, flushed_lsn=eng.wal.durable_lsn, applied_lsn=eng.applied_lsn))

    def _stream_once(self) -> None:
        eng = self.engine
        acks: queue.Queue[rpb.FollowerMessage | None] = queue.Queue()
        last = eng.wal.last_lsn
        hello = rpb.Hello(node_id=self.cfg.node_id, address=self.cfg.address, last_lsn=last,
                          last_term=eng.terms.term_at(last) if last else 0, highest_term=eng.term,
                          cluster_name=self.identity.name, cluster_uuid=self.identity.uuid)

        def requests() -> Iterator[rpb.FollowerMessage]:
            yield rpb.FollowerMessage(hello=hello)
            while True:
                m = acks.get()
                if m is None:
                    return
                yield m

        channel = self.channel_factory(self.leader_address)
        try:
            stub = replication_pb2_grpc.ReplicationServiceStub(channel)
            call = stub.StreamWal(requests())
            self._call = call
            if self._stop.is_set():
                call.cancel()
                return
            if not self.state.startswith("rejected"):  # a rejection stands until a message is accepted
                self.state = "connected"
            for msg in call:
                if self._stop.is_set():
                    break
                self._handle(msg, call, acks, stub)
                if msg.WhichOneof("kind") in ("need_snapshot", "diverged"):
                    break
        finally:
            acks.put(None)
            self._call = None
            channel.close()

    def _check_cluster(self, msg: rpb.LeaderMessage, call: grpc.Future) -> None:
        """A leader of another cluster is refused before its term, records, cut or
        snapshot touch anything; a node without an id yet adopts the leader's."""
        if not msg.cluster_uuid or msg.cluster_uuid == self.identity.uuid:  # the same, or an older leader's
            return
        try:
            self.identity.adopt(msg.cluster_uuid)
        except ForeignCluster as exc:
            call.cancel()
            raise ForeignCluster(f"leader {msg.leader_id or self.leader_address}: {exc}") from None

    def _handle(self, msg: rpb.LeaderMessage, call: grpc.Future, acks: queue.Queue, stub) -> None:  # type: ignore[no-untyped-def,type-arg]
        eng = self.engine
        self._check_cluster(msg, call)
        if msg.term < eng.term:
            call.cancel()
            raise StaleLeader(f"rejected stream from {msg.leader_id or self.leader_address}: its term {msg.term} "
                              f"is older than term {eng.term} this node has seen")
        if msg.term > MAX_TERM or (self.expected_term and msg.term != self.expected_term):
            call.cancel()
            raise StaleLeader(f"rejected stream from {msg.leader_id or self.leader_address}: it claims term "
                              f"{msg.term}, but etcd's leader key says term {self.expected_term or 'at most ' + str(MAX_TERM)}")
        if msg.term > eng.term:
            eng.terms.observe(msg.term)
        self.leader_id = msg.leader_id
        if msg.WhichOneof("kind") in ("records", "heartbeat") and eng.read_fence:
            # The leader accepted our hello: our history is a prefix of its own.
            log.info("history checked against leader %s: serving reads again", msg.leader_id)
            eng.lift_read_fence()
        kind = msg.WhichOneof("kind")
        if kind == "records":
            entries = [(e.lsn, e.term, e.rtype, e.payload) for e in msg.records.entries]
            if lagtrace.ON and entries:
                lagtrace.mark("recv", entries[-1][0])
            if any(e[1] > msg.term for e in entries):
                call.cancel()
                raise StaleLeader(f"leader {msg.leader_id} sent a record from a term above its own ({msg.term})")
            eng.append_replicated(entries)
            # The commit LSN rides on records (leaders before it send 0 here and
            # tell it in heartbeats only).
            self.leader_commit = max(self.leader_commit, msg.records.commit_lsn)
            self.state = "streaming"
        elif kind == "heartbeat":
            self.leader_last = msg.heartbeat.last_lsn
            self.leader_commit = max(self.leader_commit, msg.heartbeat.commit_lsn)
            self.state = "streaming"  # connected and accepted: an idle stream is still a stream
        elif kind == "diverged":
            self._rewind(msg, stub)
            return
        elif kind == "need_snapshot":
            log.warning("leader %s says: %s; bootstrapping from a snapshot", msg.leader_id, msg.need_snapshot.reason)
            self._bootstrap(stub)
            return
        if eng.wal.durable_lsn >= self.leader_last:
            self.caught_up_at = time.monotonic()
        ack = self._ack()
        acks.put(ack)
        if lagtrace.ON:
            lagtrace.mark("ackq", ack.ack.flushed_lsn)

    def _rewind(self, msg: rpb.LeaderMessage, stub) -> None:  # type: ignore[no-untyped-def]
        eng = self.engine
        lsn = msg.diverged.truncate_after
        log.warning("leader %s says: %s; cutting this node's log after LSN %d", msg.leader_id, msg.diverged.reason, lsn)
        keep = eng.dir / f"divergent-{eng.terms.last_term}-{lsn + 1:016x}-{int(time.time())}.wal"
        try:
            eng.rewind_to(lsn, keep)
        except ValueError as exc:
            log.warning("cannot cut the log back (%s); bootstrapping from a snapshot", exc)
            self._bootstrap(stub)

    def _bootstrap(self, stub) -> tuple[int, int] | None:  # type: ignore[no-untyped-def]
        """Install the leader's snapshot; returns (its LSN, bytes received), or None when stopped first."""
        eng = self.engine
        self.state = "snapshot"
        tmp = eng.dir / INCOMING
        t0 = shown = time.monotonic()
        size = 0
        with open(tmp, "wb", buffering=1 << 20) as f:
            request = rpb.SnapshotRequest(node_id=self.cfg.node_id, cluster_name=self.identity.name,
                                          cluster_uuid=self.identity.uuid)
            for block in stub.GetSnapshot(request):
                if self._stop.is_set():
                    return None
                f.write(block.data)
                size += len(block.data)
                if time.monotonic() - shown >= 2.0:  # progress for long bootstraps
                    shown = time.monotonic()
                    log.info("snapshot bootstrap: %.1f MB received (%.1f MB/s)", size / 1e6,
                             size / 1e6 / max(1e-6, shown - t0))
            f.flush()
            os.fsync(f.fileno())
        with open(tmp, "rb", buffering=1 << 20) as f:
            for _ in ckpt.SnapshotDecoder(f, str(tmp)):
                pass  # validate every frame before the old state is thrown away
        lsn = eng.install_snapshot(tmp)
        log.info("bootstrapped from a %d-byte snapshot at LSN %d in %.2fs", size, lsn, time.monotonic() - t0)
        return lsn, size

    def lag(self) -> tuple[int, float]:
        """(records, seconds) this replica is behind what the leader last reported."""
        behind = max(0, self.leader_last - self.engine.wal.durable_lsn)
        return behind, 0.0 if behind == 0 else time.monotonic() - self.caught_up_at
