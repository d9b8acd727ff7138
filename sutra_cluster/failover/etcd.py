"""The etcd coordinator, on the maintained etcd v3 client ``pyetcd``
(etcd-sdk-python; see docs/HA.md for why not the old ``etcd3`` package)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import NoReturn, TypeVar

import grpc
import pyetcd
from pyetcd import etcdrpc
from pyetcd.client import Endpoint, MultiEndpointEtcd3Client

from sutra_cluster.credentials import EtcdSecurity
from sutra_cluster.failover.coordinator import (
    ClusterSnapshot,
    Coordinator,
    CoordinatorUnavailable,
    LeaderKey,
    MemberInfo,
    SyncState,
    parse_snapshot,
)
from sutra_cluster.failover.keys import shard_prefix  # noqa: F401 - callers' import path

log = logging.getLogger(__name__)
T = TypeVar("T")

# A member lease is refreshed this many times per TTL (5 s: once a second). A dead
# node's member key then goes 4-5 s after it died, where a refresh every tick made it
# 5 s: no later than before.
MEMBER_REFRESHES_PER_TTL = 5

# gRPC's default reconnect backoff grows to seconds while etcd is down, so writes
# resumed 1.4-4.8 s after etcd answered again; the HA loop retries every tick
# itself, so the channel should reconnect within a tick or two.
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]


class EtcdCoordinator(Coordinator):
    def __init__(self, endpoints: tuple[str, ...] | list[str], prefix: str, node_id: str, *, ttl: int = 2,
                 member_ttl: int = 5, timeout: float = 0.4, security: EtcdSecurity | None = None) -> None:
        """``security`` (TLS files, user/password) defaults to SUTRA_ETCD_* in the
        environment, so every tool that reaches etcd speaks as the node does."""
        self.security = security if security is not None else EtcdSecurity.from_env()
        creds = self.security.channel_credentials()
        eps = []
        for ep in endpoints:
            host, _, port = ep.rpartition(":")
            # A failed endpoint is retried after 0.5 s (the library's default waits 300 s).
            eps.append(Endpoint(host, int(port), secure=creds is not None, creds=creds, time_retry=0.5,
                                opts=RECONNECT_OPTIONS))
        # User/password auth is done here, not by the library: it would send the
        # token as call credentials, which gRPC sends only over TLS, and it never
        # renews the token (etcd's simple tokens expire after --auth-token-ttl).
        self.client = MultiEndpointEtcd3Client(endpoints=eps, timeout=timeout, failover=True)
        self.prefix, self.node_id, self.ttl, self.member_ttl = prefix, node_id, ttl, member_ttl
        self.member_lease: int = 0
        # The member key is put every HA tick, its lease refreshed only this often. A
        # refresh opens a keep-alive stream: 0.9 ms of a node's CPU against 0.25 ms for the
        # put, and at 10 ticks a second a fifth of an idle cluster's CPU with etcd's.
        self.member_refresh_s = member_ttl / MEMBER_REFRESHES_PER_TTL
        self._member_refreshed = 0.0
        self.clock: Callable[[], float] = time.monotonic
        self._lock = threading.Lock()

    def _authenticate(self) -> None:
        """Get an auth token for SUTRA_ETCD_USER; raises CoordinatorUnavailable naming the user when refused."""
        sec = self.security
        try:
            resp = self.client.authstub.Authenticate(
                etcdrpc.AuthenticateRequest(name=sec.user, password=sec.password), self.client.timeout)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,  # type: ignore[attr-defined]
                              grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                raise CoordinatorUnavailable(f"etcd refused SUTRA_ETCD_USER={sec.user!r} with SUTRA_ETCD_PASSWORD: "
                                             f"{exc.details()}") from None  # type: ignore[attr-defined]
            raise
        self.client.metadata = (("token", resp.token),)

    def _call(self, fn: Callable[[], T]) -> T:
        for attempt in (1, 2):
            try:
                if self.security.user and self.client.metadata is None:
                    self._authenticate()
                return fn()
            except grpc.RpcError as exc:
                if (attempt == 1 and self.security.user
                        and exc.code() == grpc.StatusCode.UNAUTHENTICATED):  # type: ignore[attr-defined]
                    self.client.metadata = None  # the token expired (or etcd restarted): log in again, once
                    continue
                self._unavailable(exc)
            except (pyetcd.Etcd3Exception, ValueError, ConnectionError) as exc:
                self._unavailable(exc)
        raise AssertionError("unreachable")  # pragma: no cover

    def _unavailable(self, exc: BaseException) -> NoReturn:
        for ep in self.client.endpoints.values():
            ep.last_failed = 0  # let the next call try again rather than wait out time_retry
        raise CoordinatorUnavailable(f"etcd unreachable: {type(exc).__name__}: {exc}") from exc

    def snapshot(self) -> ClusterSnapshot:
        def read() -> ClusterSnapshot:
            kv = {}
            revision = 0
            for value, meta in self.client.get_prefix(self.prefix):
                kv[meta.key.decode()] = value.decode()
                revision = max(revision, meta.mod_revision)
            return parse_snapshot(self.prefix, kv, revision)

        return self._call(read)

    def publish_member(self, info: MemberInfo) -> None:
        def put() -> None:
            with self._lock:
                now = self.clock()
                if self.member_lease and now - self._member_refreshed >= self.member_refresh_s:
                    alive = list(self.client.refresh_lease(self.member_lease))
                    if not alive or alive[0].TTL <= 0:
                        self.member_lease = 0  # it expired (a pause longer than the TTL, say)
                    else:
                        self._member_refreshed = now
                if not self.member_lease:
                    self._new_member_lease(now)
                key, value = f"{self.prefix}members/{info.node_id}", info.encode()
                try:
                    self.client.put(key, value, lease=self.member_lease)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                        raise
                    # "requested lease not found": gone since its last refresh (revoked, or
                    # expired in etcd's clock before ours): publish under a new one.
                    self._new_member_lease(now)
                    self.client.put(key, value, lease=self.member_lease)

        self._call(put)

    def _new_member_lease(self, now: float) -> None:
        self.member_lease = self.client.lease(self.member_ttl).id
        self._member_refreshed = now

    def acquire(self, key: LeaderKey, expected_term: int) -> LeaderKey | None:
        def txn() -> LeaderKey | None:
            lease = self.client.lease(self.ttl)
            stored = LeaderKey(key.node_id, key.address, key.term, lease.id)
            t = self.client.transactions
            term_cmp = (t.version(self.prefix + "term") == 0 if expected_term == 0
                        else t.value(self.prefix + "term") == str(expected_term))
            ok, _ = self.client.transaction(
                compare=[t.create(self.prefix + "leader") == 0, term_cmp],
                success=[t.put(self.prefix + "leader", stored.encode(), lease=lease.id),
                         t.put(self.prefix + "term", str(key.term))],
                failure=[],
            )
            if not ok:
                self.client.revoke_lease(lease.id)
                return None
            return stored

        return self._call(txn)

    def renew(self, key: LeaderKey) -> bool:
        def refresh() -> bool:
            value, _ = self.client.get(self.prefix + "leader")
            if value is None or value.decode() != key.encode():
                return False
            alive = list(self.client.refresh_lease(key.lease))
            return bool(alive) and alive[0].TTL > 0

        return self._call(refresh)

    def release(self, key: LeaderKey) -> bool:
        return self.revoke(key)

    def revoke(self, key: LeaderKey) -> bool:
        def rev() -> bool:
            t = self.client.transactions
            ok, _ = self.client.transaction(
                compare=[t.value(self.prefix + "leader") == key.encode()],
                success=[t.delete(self.prefix + "leader")], failure=[],
            )
            if ok:
                try:
                    self.client.revoke_lease(key.lease)
                except pyetcd.Etcd3Exception:
                    pass  # the key is gone already; an unrevoked lease only expires later
            return bool(ok)

        return self._call(rev)

    def set_sync(self, leader: LeaderKey, sync: SyncState) -> bool:
        def put() -> bool:
            t = self.client.transactions
            ok, _ = self.client.transaction(
                compare=[t.value(self.prefix + "leader") == leader.encode()],
                success=[t.put(self.prefix + "sync", sync.encode())], failure=[],
            )
            return bool(ok)

        return self._call(put)

    def request_switchover(self, target: str) -> None:
        self._call(lambda: self.client.put(self.prefix + "switchover", target))

    def clear_switchover(self) -> None:
        self._call(lambda: self.client.delete(self.prefix + "switchover"))

    # ---- plain keys (the shard map), so nobody outside failover/ touches the client ----
    def get(self, key: str) -> str | None:
        """The value at ``key`` (absolute), or None."""
        value, _ = self._call(lambda: self.client.get(key))
        return None if value is None else value.decode()

    def put(self, key: str, value: str) -> None:
        """Put ``value`` at ``key`` (absolute), without a lease."""
        self._call(lambda: self.client.put(key, value))

    def delete(self, key: str) -> bool:
        """Delete ``key``; True when it existed."""
        return bool(self._call(lambda: self.client.delete(key)))

    def read_prefix(self, prefix: str) -> dict[str, str]:
        """Every key under ``prefix`` (absolute) with its value, in one read."""
        def read() -> dict[str, str]:
            return {meta.key.decode(): value.decode() for value, meta in self.client.get_prefix(prefix)}

        return self._call(read)

    def create(self, key: str, value: str) -> tuple[bool, str]:
        """Put ``value`` unless ``key`` exists; returns (created, the value stored now)."""
        def txn() -> tuple[bool, str]:
            t = self.client.transactions
            ok, resp = self.client.transaction(compare=[t.create(key) == 0], success=[t.put(key, value)],
                                               failure=[t.get(key)])
            return (True, value) if ok else (False, resp[0][0][0].decode())

        return self._call(txn)

    def compare_and_put(self, key: str, expected: str, value: str) -> bool:
        """Put ``value`` only if ``key`` still holds ``expected``."""
        def txn() -> bool:
            t = self.client.transactions
            ok, _ = self.client.transaction(compare=[t.value(key) == expected], success=[t.put(key, value)], failure=[])
            return bool(ok)

        return self._call(txn)

    def watch(self, key: str, on_value: Callable[[str | None], None]) -> object:
        """Call ``on_value`` with each new value of ``key`` (None: deleted); returns a
        handle for ``cancel_watch``. Raises CoordinatorUnavailable."""
        def callback(event: object) -> None:
            for ev in getattr(event, "events", []) or []:
                raw = getattr(ev, "value", b"")
                on_value(raw.decode() if raw else None)

        return self._call(lambda: self.client.add_watch_callback(key, callback))

    def cancel_watch(self, handle: object) -> None:
        try:
            self.client.cancel_watch(handle)
        except Exception:  # noqa: BLE001 - cancelling on close: the connection goes too
            pass

    def close(self) -> None:
        try:
            if self.member_lease:
                self.client.revoke_lease(self.member_lease)
        except Exception:  # closing: the member key expires with its lease anyway
            pass
        self.client.close()


def etcd_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when an etcd server at ``host:port`` answers a status call and has a
    raft leader, so it can serve writes (tools waiting for a local etcd to start
    use this, not the client library)."""
    try:
        c = pyetcd.client(host, port, timeout=timeout)
        try:
            return c.status().leader is not None
        finally:
            c.close()
    except Exception:  # not up yet: refused, timed out, or still electing
        return False
