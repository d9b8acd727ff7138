"""The one place where errors become gRPC status codes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from sutra_cluster import errors, retry

log = logging.getLogger(__name__)

CODES: dict[type[errors.SutraError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.StorageFailure: grpc.StatusCode.UNAVAILABLE,
    errors.ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
}

F = TypeVar("F", bound=Callable[..., Any])


def code_for(exc: errors.SutraError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in CODES:
            return CODES[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


def grpc_errors(fn: F) -> F:
    """Decorate a servicer method: map SutraError to its status code; an error
    from a downstream call (the router calling a shard) is passed on with its own
    code and message; anything else is a bug, logged with its traceback and
    answered INTERNAL."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except errors.SutraError as exc:
            if exc.reason:
                context.set_trailing_metadata(((retry.REASON_KEY, exc.reason), *getattr(exc, "trailers", ())))
            context.abort(code_for(exc), str(exc))
        except grpc.RpcError as exc:
            why = retry.reason(exc)  # a shard's reason travels through the router unchanged
            if why:
                version = retry.map_version(exc)  # and the map version a reshard refusal names
                extra = ((retry.MAP_VERSION_KEY, str(version)),) if version else ()
                context.set_trailing_metadata(((retry.REASON_KEY, why), *extra))
            context.abort(exc.code(), exc.details() or "")  # type: ignore[attr-defined]
        except Exception as exc:  # a bug: answer INTERNAL, keep the traceback in the log
            log.exception("%s failed", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")

    return wrapper  # type: ignore[return-value]
