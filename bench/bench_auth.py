#!/usr/bin/env python3
"""What the authentication interceptor costs per call (docs/HA.md, Security).

    .venv/bin/python bench/bench_auth.py [--calls 100000] [--rpcs 2000]

1. CPU per call inside ``AuthInterceptor``, timed in-process: a client-plane
   call (passed through untouched) and a node-plane call (identity from the
   cluster secret, checked in constant time), 100,000 of each.
2. Loopback round trips of a real gRPC server with and without the interceptor,
   interleaved (HealthCheck as the client plane, GetReplicationStatus as the node
   plane), median of 6 rounds: the interceptor's share of a whole call. On a busy
   machine this part is noisy; part 1 is the stable figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import namedtuple
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sutra_cluster import auth  # noqa: E402
from sutra_cluster.pb import replication_pb2 as rpb  # noqa: E402
from sutra_cluster.pb import replication_pb2_grpc  # noqa: E402

SECRET = "bench-secret-" + "0" * 32
Details = namedtuple("Details", "method invocation_metadata")


class _Ctx:
    def peer(self) -> str:
        return "ipv4:10.0.0.7:5555"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"transport_security_type": [b"insecure"]}

    def abort(self, code: Any, message: str) -> None:
        raise RuntimeError(message)


def in_process(calls: int) -> dict[str, float]:
    handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)
    icpt = auth.AuthInterceptor(auth.Policy(mtls=False, secret=SECRET))
    out = {}
    for name, d in (("client_plane_us", Details("/sutra.storage.StorageService/LearnConcept", (("user-agent", "x"),))),
                    ("node_plane_us", Details("/sutra.replication.ReplicationService/GetReplicationStatus",
                                              (("user-agent", "x"), (auth.SECRET_HEADER, SECRET))))):
        ctx = _Ctx()
        t = time.perf_counter()
        for _ in range(calls):
            h = icpt.intercept_service(lambda _d: handler, d)
            if h is not handler:
                h.unary_unary(None, ctx)
        out[name] = (time.perf_counter() - t) / calls * 1e6
    return out


class _Status(replication_pb2_grpc.ReplicationServiceServicer):
    def GetReplicationStatus(self, request: Any, context: Any) -> rpb.ReplicationStatus:
        return rpb.ReplicationStatus(role="leader")


def _server(interceptors: list[grpc.ServerInterceptor]) -> tuple[grpc.Server, int]:
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=interceptors)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), s)
    replication_pb2_grpc.add_ReplicationServiceServicer_to_server(_Status(), s)
    port = s.add_insecure_port("127.0.0.1:0")
    s.start()
    return s, port


def _round(port: int, n: int) -> tuple[float, float]:
    ch = auth.with_identity(grpc.insecure_channel(f"127.0.0.1:{port}"), SECRET)
    try:
        hs, rs = health_pb2_grpc.HealthStub(ch), replication_pb2_grpc.ReplicationServiceStub(ch)
        hs.Check(health_pb2.HealthCheckRequest())
        t = time.perf_counter()
        for _ in range(n):
            hs.Check(health_pb2.HealthCheckRequest())
        a = (time.perf_counter() - t) / n * 1e6
        t = time.perf_counter()
        for _ in range(n):
            rs.GetReplicationStatus(rpb.ReplicationStatusRequest())
        return a, (time.perf_counter() - t) / n * 1e6
    finally:
        ch.close()


def round_trips(n: int) -> dict[str, float]:
    servers = {"without": _server([]), "with": _server([auth.AuthInterceptor(auth.Policy(mtls=False, secret=SECRET))])}
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in servers}
    try:
        for _ in range(6):
            for k, (_, port) in servers.items():
                got[k].append(_round(port, n))
    finally:
        for s, _ in servers.values():
            s.stop(0)
    return {f"{k}_{plane}_rpc_us": statistics.median(x[i] for x in v)
            for k, v in got.items() for i, plane in enumerate(("client", "node"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--rpcs", type=int, default=2000)
    args = ap.parse_args()
    for k, v in {**in_process(args.calls), **round_trips(args.rpcs)}.items():
        print(f"{k:<28} {v:8.1f}")


if __name__ == "__main__":
    main()
