"""What the leader spends per batched record, in process (no gRPC, no client):
the LearnBatch handler's path for requests of 1,000 concepts as bench_peers
sends them (id, ~200 B content, 768-d float32 bytes), stage by stage:
parse (the request bytes into a WalBatch), log (validation, the shard check,
the WAL append, fsync and commit: ``StorageServicer._log_batch``) and apply
(``Engine.reconcile_once``: graph records, stored vector forms, fingerprints,
the vector index).

    .venv/bin/python bench/bench_leader_batch.py [--rounds 5] [--before ../before] [--profile bench/profiles/leader-batch.txt]
    .venv/bin/python bench/bench_leader_batch.py --instructions [--before ../before]   # valgrind: instructions per record
    .venv/bin/python bench/bench_leader_batch.py --damage-check 20000 [--before ../before]  # a snapshot's check per vector

Each round runs in a fresh process per tree, alternating with ``--before``'s
tree (an older checkout) so both see the same machine load; medians are
printed, the JSON keeps every round. CPU is the calling thread's CPU time
(the leader's writer flushes its own group, so the fsync's CPU is in "log").
``--profile`` writes a cProfile summary of this tree's last round.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r'''
import cProfile, dataclasses, io, json, pstats, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from sutra_cluster.config import Config
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.api.storage_service import StorageServicer, parse_raw_batch
from sutra_cluster.storage.engine import Engine

batches, size, dim, profile = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
submit = int(sys.argv[6]) if len(sys.argv) > 6 else batches  # requests built, requests written
digest = len(sys.argv) <= 7  # --instructions leaves it out: its cost would count as the records' own
time.time_ns = lambda: 1_764_000_000_000_000_000  # one timestamp: the state digest compares the trees
rng = np.random.default_rng(1)
pad = "lorem ipsum dolor sit amet " * 8
reqs = []
for b in range(batches):
    vecs = rng.standard_normal((size, dim), dtype=np.float32).astype("<f4")
    req = pb.LearnBatchRequest()
    for i in range(size):
        req.concepts.add(concept_id=f"r{b}-{i:07d}", content=f"{i} {pad}"[:200], embedding_f32=vecs[i].tobytes())
    reqs.append(req.SerializeToString())
with tempfile.TemporaryDirectory() as d:
    cfg = dataclasses.replace(Config(), storage_path=d, vector_dimension=dim, ann_threshold=1 << 40,
                              memory_threshold=10**12, reconcile_interval_ms=10**7)
    eng = Engine(cfg)
    eng.lead("bench")
    svc = StorageServicer(eng)
    t = {"parse": 0.0, "log": 0.0, "apply": 0.0}
    prof = cProfile.Profile() if profile else None
    for q in reqs[:submit]:
        if prof is not None:
            prof.enable()
        c0 = time.thread_time()
        r = parse_raw_batch(q)
        c1 = time.thread_time()
        svc._log_batch(r)
        c2 = time.thread_time()
        eng.reconcile_once()
        c3 = time.thread_time()
        if prof is not None:
            prof.disable()
        t["parse"] += c1 - c0
        t["log"] += c2 - c1
        t["apply"] += c3 - c2
    n = submit * size
    out = {k + "_us": v / n * 1e6 for k, v in t.items()}
    out["total_us"] = sum(t.values()) / n * 1e6
    try:  # the fingerprint's version 1 (blake2b): what a tree from before version 2 digests, so trees compare
        out["digest"] = eng.state.digest(version=1) if digest else ""
    except TypeError:
        out["digest"] = eng.digest()[1]
    eng.close()
    if prof is not None:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
        with open(profile, "w") as f:
            f.write(f"# leader, in process: {batches} LearnBatch requests of {size} {dim}-d concepts "
                    "(parse, _log_batch, reconcile_once), cProfile sorted by own time\n")
            f.write(s.getvalue().replace(sys.argv[1] + "/", ""))
    print(json.dumps(out))
'''

CHECK_PROBE = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from sutra_cluster.pb import storage_pb2 as pb, wal_pb2
from sutra_cluster.storage import checkpoint as ckpt
from sutra_cluster.storage.state import ApplyResult, GraphState, iter_vectors
from sutra_cluster.storage.vectors import VectorIndex

n, dim, rounds = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
store = VectorIndex(dim, background=False)
state = GraphState(store)
rng = np.random.default_rng(2)
for lo in range(0, n, 1000):
    batch = wal_pb2.WalBatch(timestamp_us=1)
    vecs = rng.standard_normal((min(n, lo + 1000) - lo, dim), dtype=np.float32)
    for i, v in enumerate(vecs):
        batch.concepts.append(pb.LearnConceptRequest(concept_id=f"c{lo + i}", content="x", embedding_f32=v.tobytes()))
    vec = ApplyResult({}, set())
    state.apply_batch(batch, vec)
    for keys, mat, norms in iter_vectors(vec.upserts, dim):
        store.upsert(keys, mat, norms)
concepts, edges = state.capture()
header = wal_pb2.SnapshotHeader(lsn=1, term=1, concepts=n, vector_dimension=dim)
out = {}
for verify in (False, True) * rounds:
    c0 = time.thread_time()
    size = sum(map(len, ckpt.encode_snapshot(header, concepts, edges, store.stored_batches(ckpt.CHUNK_CONCEPTS),
                                             verify=verify)))
    out.setdefault(str(verify), []).append((time.thread_time() - c0) / n * 1e6)
print(json.dumps({"plain_us": min(out["False"]), "verify_us": min(out["True"]),
                  "check_us": min(out["True"]) - min(out["False"])}))
'''


def damage_check(tree: Path, n: int, dim: int) -> dict[str, float]:
    """CPU per vector of encoding a snapshot (version 3 here, 2 before) without and
    with the mapped storage's damage check (encode_snapshot's verify), in process."""
    out = subprocess.run([sys.executable, "-c", CHECK_PROBE, str(tree), str(n), str(dim), "3"], cwd=tree,
                         capture_output=True, text=True, check=True, timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


STAGES = ("parse_us", "log_us", "apply_us", "total_us")


def probe(tree: Path, batches: int, size: int, dim: int, profile: str = "") -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(tree), str(batches), str(size), str(dim), profile],
                         cwd=tree, capture_output=True, text=True, check=True, timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def instructions(tree: Path, size: int, dim: int, out_dir: Path) -> tuple[float, dict[str, float]]:
    """Instructions per record (valgrind's callgrind: deterministic, where CPU
    time on a shared machine is not), total and by function: a run writing 5
    requests minus one writing 1, both building the same 5 (and neither
    computing the state digest, whose cost grows with the records written)."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        raise SystemExit("--instructions needs valgrind and callgrind_annotate (Debian's valgrind package: "
                         "apt-get install valgrind)")
    totals: dict[int, int] = {}
    funcs: dict[int, dict[str, int]] = {}
    for k in (1, 5):
        cg = out_dir / f"callgrind.{tree.name}.{k}"
        run = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}", sys.executable, "-c",
                              PROBE, str(tree), "5", str(size), str(dim), "", str(k), "no-digest"],
                             cwd=tree, capture_output=True, text=True, check=True, timeout=1800)
        totals[k] = int(re.findall(r"Collected : (\d+)", run.stderr)[-1])
        ann = subprocess.run(["callgrind_annotate", "--threshold=100", str(cg)], capture_output=True, text=True,
                             check=True).stdout
        funcs[k] = {}
        for line in ann.splitlines():
            m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*?)(\s+\[[^\]]*\])?$", line)
            if m and "PROGRAM TOTALS" not in m.group(2):
                name = re.sub(r"^.*/Python-3[^/]*/", "cpython/", m.group(2))
                funcs[k][name] = funcs[k].get(name, 0) + int(m.group(1).replace(",", ""))
    n = 4 * size
    by_fn = {f: (funcs[5].get(f, 0) - funcs[1].get(f, 0)) / n for f in set(funcs[1]) | set(funcs[5])}
    return (totals[5] - totals[1]) / n, by_fn


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--before", type=Path, default=None, help="an older checkout, measured alternating with this tree")
    p.add_argument("--profile", default="", help="write a cProfile summary of this tree's last round here")
    p.add_argument("--out", default="bench/results/leader_batch.json")
    p.add_argument("--instructions", action="store_true",
                   help="count instructions per record with valgrind instead (each tree once; minutes)")
    p.add_argument("--damage-check", type=int, default=0, metavar="N",
                   help="instead: CPU per vector of a snapshot of N vectors without and with the damage check "
                        "(SUTRA_VECTOR_STORAGE=mmap hashes every stored row again)")
    a = p.parse_args()
    if a.instructions:
        return count_instructions(a)
    if a.damage_check:
        return measure_damage_check(a)
    trees = {"this tree": ROOT} if a.before is None else {"before": a.before.resolve(), "this tree": ROOT}
    runs: dict[str, list[dict[str, object]]] = {k: [] for k in trees}
    for rnd in range(a.rounds):
        for label, tree in trees.items():
            prof = str(Path(a.profile).resolve()) if a.profile and label == "this tree" and rnd == a.rounds - 1 else ""
            runs[label].append(probe(tree, a.batches, a.size, a.dim, prof))
    digests = {r["digest"] for rs in runs.values() for r in rs}
    print(f"{a.batches} LearnBatch requests of {a.size} {a.dim}-d concepts per round, medians of {a.rounds} "
          f"rounds (CPU of the calling thread, µs per record); state digests (version 1) "
          f"{'agree' if len(digests) == 1 else 'DIFFER'}")
    print("| tree | parse | validate + log + fsync | apply | total |")
    print("|---|---:|---:|---:|---:|")
    for label, rs in runs.items():
        med = [statistics.median(float(r[k]) for r in rs) for k in STAGES]  # type: ignore[arg-type]
        print(f"| {label} | " + " | ".join(f"{m:.1f}" for m in med) + " |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "runs": runs}, indent=2))
    return 0 if len(digests) == 1 else 1


def measure_damage_check(a: argparse.Namespace) -> int:
    trees = {"this tree": ROOT} if a.before is None else {"before": a.before.resolve(), "this tree": ROOT}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
    for _ in range(a.rounds):
        for label, tree in trees.items():
            runs[label].append(damage_check(tree, a.damage_check, a.dim))
    print(f"snapshot of {a.damage_check} {a.dim}-d vectors, CPU µs per vector, medians of {a.rounds} rounds "
          "(each the best of 3 encodings)")
    print("| tree | encode | encode with the damage check | the check |")
    print("|---|---:|---:|---:|")
    for label, rs in runs.items():
        med = [statistics.median(r[k] for r in rs) for k in ("plain_us", "verify_us", "check_us")]
        print(f"| {label} | " + " | ".join(f"{m:.2f}" for m in med) + " |")
    return 0


def count_instructions(a: argparse.Namespace) -> int:
    trees = {"this tree": ROOT} if a.before is None else {"before": a.before.resolve(), "this tree": ROOT}
    out_dir = Path(a.out).resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    got = {label: instructions(tree, a.size, a.dim, out_dir) for label, tree in trees.items()}
    labels = list(got)
    print(f"instructions per batched record (callgrind; LearnBatch requests of {a.size} {a.dim}-d concepts): " +
          ", ".join(f"{k} {v[0]:,.0f}" for k, v in got.items()))
    print("| " + " | ".join(labels) + " | function (own instructions per record) |")
    print("|" + "---:|" * len(labels) + "---|")
    names = sorted({f for _, fns in got.values() for f in fns}, key=lambda f: -max(got[k][1].get(f, 0) for k in labels))
    for f in names[:30]:
        print("| " + " | ".join(f"{got[k][1].get(f, 0):,.0f}" for k in labels) + f" | {f[:120]} |")
    Path(a.out).write_text(json.dumps({k: {"total": v[0], "functions": v[1]} for k, v in got.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
