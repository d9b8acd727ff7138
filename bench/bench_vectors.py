"""Vector index benchmark: HNSW build speed, recall@10 and queries/s against
exact search, on clustered and gaussian 768-d data (20,000 vectors).

    .venv/bin/python bench/bench_vectors.py [--out bench/results/vectors.json]
    .venv/bin/python bench/bench_vectors.py --ef-construction 64,128   # side by side, alternating
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sutra_cluster.storage.vectors import DEFAULT_EF_CONSTRUCTION, VectorIndex
from tests.test_vectors import _clustered_with_queries, _keys, _recall


def run(kind: str, n: int, nq: int, ef_construction: int = DEFAULT_EF_CONSTRUCTION) -> dict[str, object]:
    rng = np.random.default_rng(13)
    if kind == "gaussian":
        data = rng.standard_normal((n, 768), dtype=np.float32)
        queries = rng.standard_normal((nq, 768), dtype=np.float32)
    else:
        data, queries = _clustered_with_queries(seed=13, n=n, nq=nq, dim=768)
    keys = _keys(len(data))
    index = VectorIndex(768, background=False, ef_construction=ef_construction)
    index.upsert(keys, data)
    start = time.perf_counter()
    index.build_pending()
    out: dict[str, object] = {"data": kind, "vectors": n, "ef_construction": ef_construction,
                              "hnsw_build_per_s": n / (time.perf_counter() - start)}
    for ef in (0, 128, 256, 512):
        start = time.perf_counter()
        for q in queries:
            index.search(q, 10, ef_search=ef)
        out[f"ef_{ef or 'default'}"] = {"qps": nq / (time.perf_counter() - start),
                                        "recall_at_10": _recall(index, keys, data, queries, ef=ef)}
    exact = VectorIndex(768, exact_limit=10**9, background=False)
    exact.upsert(keys, data)
    start = time.perf_counter()
    for q in queries:
        exact.search(q, 10)
    out["exact_qps"] = nq / (time.perf_counter() - start)
    index.close()
    exact.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/results/vectors.json")
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--ef-construction", default=str(DEFAULT_EF_CONSTRUCTION),
                   help="comma-separated HNSW efConstruction values, run alternating per data kind")
    a = p.parse_args()
    efcs = [int(x) for x in a.ef_construction.split(",")]
    results = [run(kind, a.n, a.queries, efc) for kind in ("clustered", "gaussian") for efc in efcs]
    print(f"{'data':<10} {'efC':>4} {'build/s':>8} {'ef':>8} {'recall@10':>10} {'qps':>8} {'exact qps':>10}")
    for r in results:
        for key in ("ef_default", "ef_128", "ef_256", "ef_512"):
            v = r[key]  # type: ignore[index]
            print(f"{r['data']!s:<10} {r['ef_construction']!s:>4} {r['hnsw_build_per_s']:>8.0f} {key[3:]:>8} "
                  f"{v['recall_at_10']:>10.3f} {v['qps']:>8.0f} {r['exact_qps']:>10.0f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
