"""What receiving large gRPC messages costs a Python process, with glibc's
default malloc thresholds and with the ones a node sets (process.tune_malloc).

    .venv/bin/python bench/bench_grpc_stream.py [--rounds 4] [--messages 200] [--size 3300000]

A leader streams 1,000-concept records (3.3 MB) to each replica, and a client's
LearnBatch brings the leader as much. Here a bare grpcio server streams
--messages messages of --size bytes to a client process, nothing of Sutra in
either. Each round runs both modes, in fresh processes, in alternating order;
the table gives medians of the receiver's and the sender's CPU per MB and the
receiver's minor page faults per MB. JSON goes to bench/results/grpc_stream.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sutra_cluster import process  # noqa: E402
from tests.helpers import free_port  # noqa: E402

METHOD = "/bench.Stream/Go"
OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
MODES = ("default", "tuned")


def _usage() -> tuple[float, int]:
    """(CPU seconds, minor faults) of this process so far."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime, u.ru_minflt


def serve(port: int, messages: int, size: int, report: Path) -> None:
    body = os.urandom(size)

    def stream(request: bytes, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        cpu0, _ = _usage()
        for _ in range(messages):
            yield body
        report.write_text(json.dumps({"sender_cpu_ms_per_mb": (_usage()[0] - cpu0) * 1e3 / (messages * size / 1e6)}))

    handler = grpc.method_handlers_generic_handler("bench.Stream", {
        "Go": grpc.unary_stream_rpc_method_handler(stream)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=(handler,), options=OPTIONS)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def receive(port: int) -> dict[str, float]:
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        cpu0, flt0 = _usage()
        got = 0
        for m in ch.unary_stream(METHOD)(b"", timeout=300):
            got += len(m)
        cpu1, flt1 = _usage()
    mb = got / 1e6
    return {"receiver_cpu_ms_per_mb": (cpu1 - cpu0) * 1e3 / mb, "receiver_faults_per_mb": (flt1 - flt0) / mb}


def run_mode(mode: str, messages: int, size: int, tmp: Path) -> dict[str, float]:
    port = free_port()
    report = tmp / f"sender-{mode}-{port}.json"
    cmd = [sys.executable, __file__, "--mode", mode]
    server = subprocess.Popen([*cmd, "--serve", str(port), "--messages", str(messages), "--size", str(size),
                               "--report", str(report)], start_new_session=True)
    try:
        out = subprocess.run([*cmd, "--receive", str(port)], capture_output=True, text=True, timeout=600,
                             check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        deadline = time.monotonic() + 30
        while not report.exists():  # the sender writes it once its generator is done
            if time.monotonic() > deadline:
                raise RuntimeError("the sender did not report")
            time.sleep(0.01)
        row.update(json.loads(report.read_text()))
        return row  # type: ignore[no-any-return]
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--size", type=int, default=3_300_000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "grpc_stream.json"))
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--receive", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--report", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode == "tuned" and not process.tune_malloc():
        raise SystemExit("this C library has no mallopt")
    if args.serve:
        serve(args.serve, args.messages, args.size, Path(args.report))
        return 0
    if args.receive:
        print(json.dumps(receive(args.receive)))
        return 0
    import tempfile

    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="bench-grpc-stream-") as d:
        for rnd in range(args.rounds):
            for mode in MODES if rnd % 2 == 0 else MODES[::-1]:
                runs[mode].append(run_mode(mode, args.messages, args.size, Path(d)))
            print(f"round {rnd + 1}: " + ", ".join(
                f"{m} {runs[m][-1]['receiver_cpu_ms_per_mb']:.2f} ms/MB" for m in MODES), flush=True)
    med = {m: {k: statistics.median(r[k] for r in v) for k in v[0]} for m, v in runs.items()}
    print(f"\n{args.messages} messages of {args.size:,} B, server to client, medians of {args.rounds}\n")
    print("| malloc thresholds | receiver CPU ms / MB | receiver minor faults / MB | sender CPU ms / MB |\n"
          "|---|---:|---:|---:|")
    for m, r in med.items():
        label = "glibc's defaults" if m == "default" else (
            f"a node's (mmap {process.MMAP_THRESHOLD >> 20} MiB, trim {process.TRIM_THRESHOLD >> 20} MiB)")
        print(f"| {label} | {r['receiver_cpu_ms_per_mb']:.2f} | {r['receiver_faults_per_mb']:.0f} | "
              f"{r['sender_cpu_ms_per_mb']:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"medians": med, "runs": runs, "args": vars(args)}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
