"""Typed client errors mirroring the server's tree (``sutra_cluster.errors``).

Every failed call raises a subclass of ``SutraRpcError``, chosen by the status
code and the server's ``sutra-reason`` (see ``sutra_cluster.retry``):

====================  =========================  ==========================
status code           reason                     raised
====================  =========================  ==========================
INVALID_ARGUMENT                                 ``InvalidArgument``
NOT_FOUND                                        ``NotFound``
FAILED_PRECONDITION   ``not-leader``             ``NotLeader``
FAILED_PRECONDITION   ``wrong-shard``            ``WrongShard``
FAILED_PRECONDITION                              ``FailedPrecondition``
UNAVAILABLE           ``no-leader``              ``NoLeader``
UNAVAILABLE                                      ``Unavailable``
DEADLINE_EXCEEDED     ``not-visible``            ``NotVisible``
DEADLINE_EXCEEDED                                ``DeadlineExceeded``
RESOURCE_EXHAUSTED                               ``ResourceExhausted``
ALREADY_EXISTS                                   ``AlreadyExists``
UNAUTHENTICATED,      PERMISSION_DENIED          ``PermissionDenied``
anything else                                    ``SutraRpcError``
====================  =========================  ==========================

Each class is also the server's class of the same name (``except
sutra_cluster.errors.InvalidArgument`` catches it) and a ``grpc.RpcError``
with ``code()``, ``details()`` and ``trailing_metadata()``, so code written
against raw gRPC errors keeps working. A shard the routing client cannot
reach raises ``sutra_cluster.sharding.links.ShardUnavailable`` (an
``Unavailable``); a fan-out read with shards down raises ``ShardsUnavailable``
naming them all.
"""

from __future__ import annotations

from typing import Any

import grpc

from sutra_cluster import errors, retry
from sutra_cluster.sharding.core import ShardsUnavailable
from sutra_cluster.sharding.links import ShardUnavailable

__all__ = [
    "SutraRpcError", "InvalidArgument", "NotFound", "FailedPrecondition", "NotLeader", "WrongShard",
    "Unavailable", "NoLeader", "DeadlineExceeded", "NotVisible", "ResourceExhausted", "AlreadyExists",
    "PermissionDenied", "ShardUnavailable", "ShardsUnavailable", "from_rpc_error",
]


class SutraRpcError(grpc.RpcError, errors.SutraError):
    """A call the server answered with an error. ``code``/``details``/``reason``
    as the server sent them; the message is the server's (it names the field,
    setting or limit)."""

    def __init__(self, code: grpc.StatusCode, details: str, reason: str = "", metadata: Any = ()) -> None:
        super().__init__(details)
        self._code, self._details, self._metadata = code, details, tuple(metadata or ())
        self.reason = reason  # type: ignore[misc]  # per instance: the server's word

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[Any, ...]:
        return self._metadata

    def __str__(self) -> str:
        return f"{self._code.name}: {self._details}"


class InvalidArgument(SutraRpcError, errors.InvalidArgument):
    """The request was refused before anything was written; the message names the field and the limit."""


class NotFound(SutraRpcError, errors.NotFound):
    pass


class FailedPrecondition(SutraRpcError, errors.FailedPrecondition):
    pass


class NotLeader(FailedPrecondition, errors.NotLeader):
    """A write reached a replica (the clients that follow the leader retry it themselves)."""


class WrongShard(FailedPrecondition, errors.WrongShard):
    """The concept belongs to another shard: talk to a router, or use a routing client."""


class Unavailable(SutraRpcError, errors.Unavailable):
    """Not acknowledged: the node is down, stopping, electing, or a sync commit
    found too few replicas. Retry with the same request id."""


class NoLeader(Unavailable, errors.NoLeader):
    pass


class DeadlineExceeded(SutraRpcError, errors.DeadlineExceeded):
    pass


class NotVisible(DeadlineExceeded, errors.NotVisible):
    """A read's ``sequence`` (or token) did not become visible in time."""


class ResourceExhausted(SutraRpcError, errors.ResourceExhausted):
    """A per-request or per-client bound; the message names the setting."""


class AlreadyExists(SutraRpcError, errors.AlreadyExists):
    """A request id was reused with a different payload; the first write stands."""


class PermissionDenied(SutraRpcError):
    """The credentials do not allow this call (UNAUTHENTICATED or PERMISSION_DENIED)."""


_BY_REASON: dict[str, type[SutraRpcError]] = {
    retry.NOT_LEADER: NotLeader, retry.WRONG_SHARD: WrongShard, retry.NO_LEADER: NoLeader,
    retry.NOT_VISIBLE: NotVisible,
}
_BY_CODE: dict[grpc.StatusCode, type[SutraRpcError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument, grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition, grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists, grpc.StatusCode.UNAUTHENTICATED: PermissionDenied,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def from_rpc_error(exc: grpc.RpcError) -> SutraRpcError:
    """The typed error for a raw gRPC error (a typed one is returned as it is)."""
    if isinstance(exc, SutraRpcError):
        return exc
    code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
    why = retry.reason(exc)
    cls = _BY_REASON.get(why)
    if cls is None or _BY_CODE.get(code) not in cls.__mro__:
        cls = _BY_CODE.get(code, SutraRpcError)
    try:
        md = exc.trailing_metadata() or ()  # type: ignore[attr-defined]
    except Exception:  # an error raised before any response carries no metadata
        md = ()
    return cls(code, exc.details() or "", why, md)  # type: ignore[attr-defined]
