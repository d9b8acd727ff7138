"""What a node process and a router process share: the gRPC server with health
and reflection, binding its port, and waiting for SIGTERM or SIGINT."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sutra_cluster.errors import StartupError

log = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 8 << 20
TRIM_THRESHOLD = 32 << 20


def tune_malloc() -> bool:
    """Keep a node's megabyte-sized buffers in malloc's heap instead of a
    fresh mapping each time. A 1,000-concept batch is 3.3 MB on the wire, in
    the WAL and in numpy. glibc's defaults map such a block on its own (or,
    once its threshold has risen, trim the heap back as soon as twice that is
    free at its top), so each batch's buffers were faulted in page by page and
    handed back. Receiving 3.3 MB gRPC messages cost ~1.3-1.7 ms of CPU per MB
    that way, 0.7-0.9 ms with these thresholds (docs/HA.md, Write path speed).
    Blocks from 8 MiB up (the vector store's 12.6 MB chunks) are still mapped
    on their own; an arena keeps up to 32 MiB free at its top, and the
    maintainer's ``malloc_trim`` still hands free pages back when it is idle.
    Returns False where the C library has no ``mallopt`` (nothing changes)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def grpc_server(workers: int, options: Sequence[tuple[str, Any]],
                interceptors: Sequence[grpc.ServerInterceptor]) -> tuple[grpc.Server, health.HealthServicer]:
    """A threaded gRPC server with the standard health service registered."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
                         options=list(options), interceptors=list(interceptors))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, health_servicer


def enable_reflection(server: grpc.Server, services: Sequence[str]) -> None:
    """Server reflection for ``services`` plus health and reflection itself (grpcurl needs it)."""
    reflection.enable_server_reflection((*services, HEALTH_SERVICE, reflection.SERVICE_NAME), server)


def bind(server: grpc.Server, address: str, creds: grpc.ServerCredentials | None, setting: str) -> None:
    """Listen on ``address`` (TLS when ``creds``); raises StartupError naming
    ``setting`` (e.g. ``STORAGE_PORT=50051``) when the port is taken."""
    bound = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    if bound == 0:
        raise StartupError(f"{setting}: cannot listen on {address}")


def serve_metrics(serve: Callable[[int, str], None], port: int, host: str) -> None:
    """Start the Prometheus endpoint (``serve(port, host)``) before anything else
    serves, so a taken port stops the start in one line naming the setting."""
    try:
        serve(port, host)
    except OSError as exc:
        raise StartupError(f"SUTRA_METRICS_PORT={port}: cannot listen on {host}:{port}: "
                           f"{exc.strerror or exc}") from exc


def wait_for_signal() -> None:
    """Block until SIGTERM or SIGINT (the process's graceful stop)."""
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not done.wait(1.0):
        pass
