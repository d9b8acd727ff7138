"""LearnBatch ingest against one real node: N batches of 500 x 768-d concepts
(raw request bytes, the server's fast path) from 4 client threads; prints a
table and writes JSON with concepts/s and the server's CPU per concept.

To compare two releases side by side on the same machine, check the other one
out beside this one and run this script from each checkout in turn; it imports
the node code (and the test harness that starts it) from the current directory:

    git worktree add /tmp/prev <commit>
    (cd /tmp/prev && /path/to/.venv/bin/python /path/to/bench/bench_learnbatch.py --label prev)
    .venv/bin/python bench/bench_learnbatch.py --label now
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from sutra_cluster.pb import storage_pb2 as pb  # noqa: E402
from tests.helpers import NodeProcess  # noqa: E402


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def batch(b: int, rng: np.random.Generator) -> bytes:
    req = pb.LearnBatchRequest(request_id=f"r{b}")
    for i in range(500):
        c = req.concepts.add(concept_id=f"c{b}-{i}", content="x" * 200)
        c.embedding_f32 = rng.standard_normal(768).astype("<f4").tobytes()
    return req.SerializeToString()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=120)
    ap.add_argument("--ann-threshold", default="100000000", help="SUTRA_ANN_THRESHOLD (default: exact search only)")
    ap.add_argument("--label", default="this checkout")
    ap.add_argument("--out", default="", help="JSON file (default: bench/results/learnbatch-<label>.json here)")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    reqs = [batch(b, rng) for b in range(args.batches)]
    node = NodeProcess(Path(tempfile.mkdtemp()) / "n", env={
        "VECTOR_DIMENSION": "768", "SUTRA_ANN_THRESHOLD": args.ann_threshold, "MEMORY_THRESHOLD": str(1 << 40)})
    node.start()
    opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    chans = [grpc.insecure_channel(node.address, options=opts) for _ in range(4)]
    try:
        calls = [ch.unary_unary("/sutra.storage.StorageService/LearnBatch") for ch in chans]
        calls[0](reqs[0], timeout=60)  # warm-up
        assert node.proc is not None
        c0, t0 = cpu_seconds(node.proc.pid), time.perf_counter()

        def work(k: int) -> None:
            for r in reqs[1 + k::4]:
                calls[k](r, timeout=120)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall, cpu = time.perf_counter() - t0, cpu_seconds(node.proc.pid) - c0
    finally:
        for ch in chans:
            ch.close()
        node.stop()
    n = (args.batches - 1) * 500
    result = {"label": args.label, "concepts": n, "concepts_per_s": n / wall, "server_cpu_us_per_concept": cpu / n * 1e6,
              "ann_threshold": args.ann_threshold}
    print("| label | concepts/s | server CPU µs/concept |\n|---|---:|---:|")
    print(f"| {args.label} | {result['concepts_per_s']:,.0f} | {result['server_cpu_us_per_concept']:.1f} |")
    out = Path(args.out or Path(__file__).resolve().parent / "results" / f"learnbatch-{args.label.replace(' ', '-')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
