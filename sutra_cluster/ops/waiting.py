"""The one wait/retry policy of the operator tools (``sutra-cluster`` commands
and ``local``), on tenacity, and the one rule for which errors are worth
waiting through.

- Policy: poll with exponential backoff and jitter, from ``FIRST_S`` to at most
  ``MAX_S`` between tries, until a deadline; a timeout names what was awaited
  and the last error seen.
- Rule: ``retryable``. A gRPC error is retried when ``retry.classify`` (the
  rule every client in the project uses) says a retry can help; the consensus
  store being unreachable and a refused or reset connection (a process still
  starting) are retried too; anything else (a process that exited, bad input,
  a refused permission) ends the wait at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_delay, wait_exponential, wait_random

from sutra_cluster import retry
from sutra_cluster.failover.coordinator import CoordinatorUnavailable

T = TypeVar("T")

FIRST_S = 0.02
MAX_S = 0.5


class NotYet(Exception):
    """The awaited condition does not hold yet (a falsy answer)."""


def retryable(exc: BaseException) -> bool:
    if isinstance(exc, NotYet | CoordinatorUnavailable | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, grpc.RpcError):
        return retry.classify(exc, write=False) is not retry.Retry.NEVER
    return False


def policy(timeout: float, reraise: bool = False, first_s: float = FIRST_S, max_s: float = MAX_S) -> Retrying:
    """The tenacity policy: backoff with jitter, stop at ``timeout`` seconds
    (``reraise``: then raise the last error itself, not tenacity's RetryError).
    ``max_s`` lower for a wait whose duration is reported (a switchover's)."""
    # wait_exponential + wait_random rather than wait_exponential_jitter: the same
    # curve, and its arguments mean the same in every tenacity the project allows.
    return Retrying(stop=stop_after_delay(timeout),
                    wait=wait_exponential(multiplier=first_s, max=max_s) + wait_random(0, first_s),
                    retry=retry_if_exception(retryable), reraise=reraise)


def wait_until(cond: Callable[[], T], timeout: float, what: str, *, first_s: float = FIRST_S,
               max_s: float = MAX_S) -> T:
    """Call ``cond`` until it returns something truthy and return that. A
    non-retryable error from ``cond`` is raised at once; at the deadline
    TimeoutError says ``what`` did not happen and the last reason."""
    try:
        for attempt in policy(timeout, first_s=first_s, max_s=max_s):
            with attempt:
                value = cond()
                if not value:
                    raise NotYet()
                return value
    except RetryError as exc:
        last = exc.last_attempt.exception()
        why = "" if last is None or isinstance(last, NotYet) else f" (last: {_describe(last)})"
        raise TimeoutError(f"{what}: not within {timeout:g} s{why}") from None
    raise AssertionError("unreachable")  # pragma: no cover


def call(fn: Callable[[], T], timeout: float = 5.0) -> T:
    """``fn()``, retried through retryable errors (the same policy) for up to
    ``timeout`` seconds; then the last error is raised as it was. For the CLI's
    idempotent etcd reads and writes, so one slow or failed connection to etcd
    is not an operator-visible failure."""
    return policy(timeout, reraise=True)(fn)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
    return f"{type(exc).__name__}: {exc}"
