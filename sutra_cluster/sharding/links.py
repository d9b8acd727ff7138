"""One shard as seen from a router or a client: its leader and replicas.

With etcd, the leader is the value of ``/<cluster>/shards/<n>/leader``, kept
fresh by a watch, and the members are the keys the nodes publish beside it.
Without etcd (a static map), the leader is whichever member reports the
leader role. Calls follow leader changes: on UNAVAILABLE, or "this node is a
replica", the leader is looked up again and the same request (same request
id, so a write is applied once) is sent again, until a deadline. A shard that
cannot be reached before the deadline raises ``ShardUnavailable`` naming it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from sutra_cluster.errors import Unavailable
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import storage_pb2_grpc
from sutra_cluster.retry import Retry, classify

log = logging.getLogger(__name__)


class ShardUnavailable(Unavailable):
    """A shard could not be reached (no leader, or no member answering) before the deadline."""

    def __init__(self, shard: int, detail: str) -> None:
        self.shard = shard
        self.detail = detail
        super().__init__(f"shard {shard} is unavailable: {detail}")


class Channels:
    """One channel per address, shared by every shard link of a router or client."""

    def __init__(self, credentials: grpc.ChannelCredentials | None = None, max_message_bytes: int = 128 << 20,
                 wrap: Callable[[grpc.Channel], grpc.Channel] | None = None) -> None:
        self.credentials = credentials
        self.wrap = wrap  # e.g. auth.with_identity, for admin tools' calls (the reshard driver)
        self.options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # A restarted node is reachable again within ~0.5 s, not after gRPC's default backoff (up to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ]
        self._lock = threading.Lock()
        self._stubs: dict[str, tuple[grpc.Channel, storage_pb2_grpc.StorageServiceStub]] = {}

    def stub(self, address: str) -> storage_pb2_grpc.StorageServiceStub:
        got = self._stubs.get(address)
        if got is None:
            with self._lock:
                got = self._stubs.get(address)
                if got is None:
                    ch = (grpc.secure_channel(address, self.credentials, options=self.options) if self.credentials
                          else grpc.insecure_channel(address, options=self.options))
                    if self.wrap is not None:
                        ch = self.wrap(ch)
                    got = (ch, storage_pb2_grpc.StorageServiceStub(ch))
                    self._stubs[address] = got
        return got[1]

    def channel(self, address: str) -> grpc.Channel:
        """The shared channel to ``address`` (for services other than StorageService)."""
        self.stub(address)
        return self._stubs[address][0]

    def close(self) -> None:
        with self._lock:
            for ch, _ in self._stubs.values():
                ch.close()
            self._stubs.clear()


def _code(exc: grpc.RpcError) -> grpc.StatusCode:
    return exc.code()  # type: ignore[attr-defined,no-any-return]


def _details(exc: grpc.RpcError) -> str:
    return exc.details() or ""  # type: ignore[attr-defined]


def retryable(exc: grpc.RpcError, write: bool) -> bool:
    """Whether another node of the shard (or the same one later) may answer
    (the project's one rule: ``sutra_cluster.retry.classify``)."""
    return classify(exc, write=write) == Retry.NEW_LEADER


class ShardLink:
    def __init__(self, shard: int, channels: Channels, *, etcd_endpoints: Sequence[str] = (),
                 cluster: str = "sutra", members: Sequence[str] = (), timeout: float = 10.0,
                 write_deadline: float = 15.0, read_deadline: float = 15.0, watch: bool = True) -> None:
        self.shard = shard
        self.channels = channels
        self.timeout = timeout
        self.write_deadline = write_deadline
        self.read_deadline = read_deadline
        self.static_members = tuple(members)
        self._static_leader = ""
        self._members: tuple[str, ...] = tuple(members)
        self._rr = itertools.count()
        self._watch: Any = None
        if etcd_endpoints:
            from sutra_cluster.failover.discovery import ShardWatch

            self._watch = ShardWatch(list(etcd_endpoints), cluster, shard, name="router", timeout=1.0, watch=watch)

    @property
    def leader_address(self) -> str:
        return self._watch.leader if self._watch is not None else self._static_leader

    def _forget(self, address: str) -> None:
        if self._watch is not None:
            self._watch.forget(address)
        elif self._static_leader == address:
            self._static_leader = ""

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()

    # ---- discovery -------------------------------------------------------
    def _lookup(self) -> str:
        """One attempt at finding the leader; refreshes the member list. '' when none."""
        if self._watch is not None:
            address = self._watch.lookup()
            if self._watch.members_at:
                self._members = self._watch.members
            return address
        best, best_term = "", -1
        for addr in self.static_members:
            try:
                st = self.channels.stub(addr).GetStats(pb.GetStatsRequest(), timeout=1.0)
            except grpc.RpcError:
                continue
            if st.role == "leader" and st.term > best_term:
                best, best_term = addr, st.term
        self._static_leader = best
        return best

    def find_leader(self, deadline: float) -> str:
        while True:
            addr = self._lookup()
            if addr:
                return addr
            if time.monotonic() > deadline:
                where = "in etcd" if self._watch is not None else f"among {', '.join(self.static_members)}"
                raise ShardUnavailable(self.shard, f"no leader found {where}")
            time.sleep(0.05)

    def members(self) -> tuple[str, ...]:
        if self._watch is not None and time.monotonic() - self._watch.members_at > 2.0:
            self._lookup()
        return self._members

    def replicas(self) -> list[str]:
        others = [m for m in self.members() if m != self.leader_address]
        if not others:
            return []
        i = next(self._rr) % len(others)
        return others[i:] + others[:i]

    # ---- calls -----------------------------------------------------------
    def call(self, method: str, request: Any, *, write: bool, replica: bool = False,
             deadline_s: float | None = None, service: Any = None) -> Any:
        """Send ``request`` to the leader (or, for a read with ``replica``, to a
        replica first), following leader changes until the deadline. ``service``:
        a stub class of another service on the same port (default StorageService)."""
        stub = self.channels.stub if service is None else (lambda a: service(self.channels.channel(a)))
        if replica and not write:
            for addr in self.replicas():
                try:
                    return getattr(stub(addr), method)(request, timeout=self.timeout)
                except grpc.RpcError as exc:
                    # A replica that is down, or too far behind to show the
                    # read's sequence in time: try the next one, then the leader.
                    if not retryable(exc, write=False) and _code(exc) != grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise
        budget = deadline_s if deadline_s is not None else (self.write_deadline if write else self.read_deadline)
        deadline = time.monotonic() + budget
        last = ""
        while True:
            try:
                addr = self.leader_address or self.find_leader(deadline)
            except ShardUnavailable as exc:
                if last:
                    raise ShardUnavailable(self.shard, f"{exc.detail}; last error {last}") from None
                raise
            try:
                remaining = max(0.05, deadline - time.monotonic())
                return getattr(stub(addr), method)(request, timeout=min(self.timeout, remaining))
            except grpc.RpcError as exc:
                if not retryable(exc, write):
                    raise
                last = f"{addr}: {_code(exc).name}: {_details(exc)}"
                self._forget(addr)
                if time.monotonic() > deadline:
                    raise ShardUnavailable(self.shard, last) from exc
                time.sleep(0.02)
