"""Registering StorageService with a deserializer that never raises: bytes that
are not the request message are answered INVALID_ARGUMENT naming the method
(grpcio's default answers INTERNAL and logs a traceback for each: review L1).
Shared by the node and the router."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc

from sutra_cluster.errors import InvalidArgument
from sutra_cluster.pb import storage_pb2 as pb


class Malformed:
    """What the deserializer hands on for bytes that are not the request message
    (grpcio would answer INTERNAL and log a traceback for each one)."""

    def __init__(self, method: str, message_type: str, exc: Exception) -> None:
        self.message = f"{method}: the request is not a valid {message_type} ({type(exc).__name__}: {exc})"


def _tolerant(method: str, message_type: str, parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except Exception as exc:  # DecodeError, invalid UTF-8 in a string field, ...
            return Malformed(method, message_type, exc)
    return deserialize


def _refuse_malformed(fn: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
    if streaming:
        def checked_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            def each() -> Iterator[Any]:
                for i, r in enumerate(requests):
                    if isinstance(r, Malformed):
                        raise InvalidArgument(f"stream message {i}: {r.message}")
                    yield r
            return fn(each(), context)
        return checked_stream

    def checked(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return fn(request, context)
    return checked


def add_storage_service(servicer: Any, server: grpc.Server,
                        parsers: Mapping[str, Callable[[bytes], Any]] | None = None) -> None:
    """Register ``servicer`` for every StorageService method, as the generated
    helper does; ``parsers`` replaces the request parser of some methods."""
    service = pb.DESCRIPTOR.services_by_name["StorageService"]
    handlers = {}
    for m in service.methods:
        req_cls = getattr(pb, m.input_type.name)
        resp_cls = getattr(pb, m.output_type.name)
        deser = (parsers or {}).get(m.name, req_cls.FromString)
        kind = {(False, False): grpc.unary_unary_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}[(m.client_streaming, m.server_streaming)]
        handlers[m.name] = kind(_refuse_malformed(getattr(servicer, m.name), m.client_streaming),
                                request_deserializer=_tolerant(m.name, m.input_type.name, deser),
                                response_serializer=resp_cls.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
