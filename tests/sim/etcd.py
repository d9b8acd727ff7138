"""Each node's link to etcd: cut (every call raises ``CoordinatorUnavailable``)
or slow (every call takes simulated time).

A slow call must let the rest of the world go on while the node's HA loop
waits, exactly as the real loop thread blocks on etcd while the node's writer
threads keep acknowledging. So a tick on a slow link runs in a helper thread
that hands control back and forth with the scheduler: only one of the two ever
runs, so the run stays deterministic. The request reaches etcd halfway through
its latency (a renewal is applied there, whatever happens to the caller); a
call slower than ``SUTRA_RETRY_TIMEOUT_MS`` raises at that deadline, applied or
not, as a real client's deadline does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sutra_cluster.failover.coordinator import (
    ClusterSnapshot,
    Coordinator,
    CoordinatorUnavailable,
    LeaderKey,
    MemberInfo,
    SyncState,
)
from sutra_cluster.failover.memory import MemoryCoordinator

if TYPE_CHECKING:
    from tests.sim.cluster import SimCluster


class _Abort(BaseException):
    """Ends a tick whose node crashed (or whose run ended) mid-call. A
    BaseException, so the loop's own ``except Exception`` does not catch it."""


class TickThread:
    """One HA-loop tick on a slow etcd link, run in lockstep with the scheduler."""

    def __init__(self, c: SimCluster, node: str, body: Callable[[], None]) -> None:
        self.c, self.node, self.body = c, node, body
        self._go = threading.Semaphore(0)  # the tick may run
        self._back = threading.Semaphore(0)  # the scheduler may run
        self.abort = False
        self.done = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"sim-tick-{node}", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self._wait()

    def _run(self) -> None:
        try:
            self.body()
        except _Abort:
            pass
        except BaseException as exc:  # a Violation or a model bug: the scheduler re-raises it
            self.error = exc
        finally:
            self.done = True
            self._back.release()

    def _wait(self) -> None:
        self._back.acquire()
        if self.done:
            self.thread.join()
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], latency: float, timeout: float) -> Any:
        """In the tick's thread: ``fn(*args)`` as etcd sees it, ``latency`` later."""
        out: dict[str, Any] = {}

        def at_etcd() -> None:
            try:
                out["value"] = fn(*args)
            except CoordinatorUnavailable as exc:
                out["error"] = exc

        if latency / 2 < timeout:
            self.c.sched.after(latency / 2, at_etcd)
        self.c.sched.after(min(latency, timeout), self._resume, node=self.node)
        self._back.release()
        self._go.acquire()
        if self.abort:
            raise _Abort()
        if latency > timeout:
            raise CoordinatorUnavailable(f"etcd call took over {timeout * 1000:.0f} ms (SUTRA_RETRY_TIMEOUT_MS)")
        if "error" in out:
            raise out["error"]
        return out["value"]

    def _resume(self) -> None:
        self._go.release()
        self._wait()

    def kill(self) -> None:
        """The node crashed, or the run ended: end the tick where it waits."""
        if not self.done:
            self.abort = True
            self._go.release()
            self._wait()


class EtcdLink(Coordinator):
    """A node's coordinator behind its own link to etcd."""

    def __init__(self, inner: MemoryCoordinator, cluster: SimCluster, node_id: str) -> None:
        self.inner, self.c, self.node_id = inner, cluster, node_id

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        c = self.c
        if self.node_id in c.etcd_cut:
            raise CoordinatorUnavailable(f"{self.node_id} is cut off from etcd")
        latency = c.etcd_latency.get(self.node_id, 0.0)
        t = c.ticking.get(self.node_id)
        if latency <= 0 or t is None or threading.current_thread() is not t.thread:
            return fn(*args)
        return t.call(fn, args, latency, c.cfg.retry_timeout_ms / 1000.0)

    def snapshot(self) -> ClusterSnapshot:
        return self._call(self.inner.snapshot)  # type: ignore[no-any-return]

    def publish_member(self, info: MemberInfo) -> None:
        self._call(self.inner.publish_member, info)

    def acquire(self, key: LeaderKey, expected_term: int) -> LeaderKey | None:
        return self._call(self.inner.acquire, key, expected_term)  # type: ignore[no-any-return]

    def renew(self, key: LeaderKey) -> bool:
        return self._call(self.inner.renew, key)  # type: ignore[no-any-return]

    def release(self, key: LeaderKey) -> bool:
        return self._call(self.inner.release, key)  # type: ignore[no-any-return]

    def revoke(self, key: LeaderKey) -> bool:
        return self._call(self.inner.revoke, key)  # type: ignore[no-any-return]

    def set_sync(self, leader: LeaderKey, sync: SyncState) -> bool:
        return self._call(self.inner.set_sync, leader, sync)  # type: ignore[no-any-return]

    def request_switchover(self, target: str) -> None:
        self._call(self.inner.request_switchover, target)

    def clear_switchover(self) -> None:
        self._call(self.inner.clear_switchover)
