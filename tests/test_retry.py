"""The one retry rule: the reason a server attaches (trailing metadata
``sutra-reason``) decides, never the message text. Checked through a real gRPC
server whose handler raises the project's errors through ``grpc_errors``."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from sutra_cluster import errors
from sutra_cluster.api.status import grpc_errors
from sutra_cluster.retry import NOT_LEADER, NOT_VISIBLE, WRONG_SHARD, Retry, classify, reason

RAISE: dict[str, Exception] = {}


class Servicer:
    @grpc_errors
    def Call(self, request: bytes, context: grpc.ServicerContext) -> bytes:  # noqa: N802 - gRPC method name
        raise RAISE["exc"]


class Router:
    """Passes a downstream error on, as the router does with a shard's."""

    def __init__(self, downstream: grpc.Channel) -> None:
        self.call = downstream.unary_unary("/t.S/Call")

    @grpc_errors
    def Call(self, request: bytes, context: grpc.ServicerContext) -> bytes:  # noqa: N802
        return self.call(request, timeout=5)  # type: ignore[no-any-return]


def _serve(servicer: Any) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler("t.S", {"Call": grpc.unary_unary_rpc_method_handler(servicer.Call)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture(scope="module")
def channels() -> Iterator[tuple[grpc.Channel, grpc.Channel]]:
    node, port = _serve(Servicer())
    node_ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    router, rport = _serve(Router(node_ch))
    router_ch = grpc.insecure_channel(f"127.0.0.1:{rport}")
    try:
        yield node_ch, router_ch
    finally:
        router_ch.close()
        node_ch.close()
        router.stop(0)
        node.stop(0)


def _fail(channel: grpc.Channel, exc: Exception) -> grpc.RpcError:
    RAISE["exc"] = exc
    with pytest.raises(grpc.RpcError) as got:
        channel.unary_unary("/t.S/Call")(b"", timeout=5)
    return got.value


@pytest.mark.parametrize("via", ["node", "router"])
@pytest.mark.parametrize(("exc", "why", "write", "read"), [
    (errors.NotLeader("a replica; send writes to the leader at x:1"), NOT_LEADER, Retry.NEW_LEADER, Retry.NEW_LEADER),
    (errors.NoLeader("no leader is known yet"), "no-leader", Retry.NEW_LEADER, Retry.NEW_LEADER),
    (errors.Unavailable("sync commit: 0 of 1"), "", Retry.NEW_LEADER, Retry.NEW_LEADER),
    (errors.NotVisible("sequence 9 is not visible"), NOT_VISIBLE, Retry.NEW_LEADER, Retry.NEVER),
    # The message says "replica", the reason says wrong shard: the reason wins.
    (errors.WrongShard("belongs to shard 1; not for this replica"), WRONG_SHARD, Retry.NEVER, Retry.NEVER),
    (errors.FailedPrecondition("a replica said so in prose"), "", Retry.NEVER, Retry.NEVER),
    (errors.InvalidArgument("embedding has 3 values, VECTOR_DIMENSION is 8"), "", Retry.NEVER, Retry.NEVER),
])
def test_reason_travels_with_the_status_and_decides_the_retry(
        channels: tuple[grpc.Channel, grpc.Channel], via: str, exc: Exception, why: str,
        write: Retry, read: Retry) -> None:
    err = _fail(channels[0] if via == "node" else channels[1], exc)
    assert reason(err) == why
    assert err.details() == str(exc)  # type: ignore[attr-defined]
    assert classify(err, write=True) == write
    assert classify(err, write=False) == read
