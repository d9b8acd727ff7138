"""A real node under a concurrent write load is killed with SIGKILL again and
again, half of the times in the middle of a checkpoint (paused at each step in
turn). After every restart: every acknowledged batch is there in full, and no
unacknowledged batch is half there."""

from __future__ import annotations

import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from sutra_cluster.client import Association, Concept, SutraClient
from sutra_cluster.pb import storage_pb2 as pb
from tests.helpers import NodeProcess, free_port, wait_for

pytestmark = pytest.mark.slow  # kills and restarts node processes

ROUNDS = int(os.environ.get("SUTRA_CRASH_ROUNDS", "10"))
STEPS = ["wal-rotated", "tmp-written", "backup-linked", "renamed", "segments-dropped"]
PER_BATCH = 5
DIM = 8


@dataclass
class Ledger:
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: dict[str, list[str]] = field(default_factory=dict)
    unknown: dict[str, list[str]] = field(default_factory=dict)
    round_acks: int = 0


def make_batch(batch_id: str, rng: random.Random) -> tuple[list[Concept], list[Association]]:
    ids = [f"{batch_id}-c{j}" for j in range(PER_BATCH)]
    concepts = [Concept(cid, f"content of {cid}", np.asarray([rng.random() + 0.1 for _ in range(DIM)], dtype=np.float32))
                for cid in ids]
    assocs = [Association(ids[j], ids[j + 1], j % 5, 0.5) for j in range(PER_BATCH - 1)]
    return concepts, assocs


def writer(address: str, prefix: str, ledger: Ledger, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    with SutraClient(address, timeout=20, retry_deadline=0) as c:
        i = 0
        while not stop.is_set():
            batch_id = f"{prefix}-b{i}"
            i += 1
            concepts, assocs = make_batch(batch_id, rng)
            ids = [x.concept_id for x in concepts]
            try:
                c.learn_batch(concepts, assocs)
            except grpc.RpcError:
                with ledger.lock:
                    ledger.unknown[batch_id] = ids
                return
            with ledger.lock:
                ledger.acked[batch_id] = ids
                ledger.round_acks += 1


def present(client: SutraClient, ids: list[str]) -> list[bool]:
    out = []
    for cid in ids:
        got = client.query_concept(cid)
        out.append(got is not None and got.content == f"content of {cid}")
    return out


def verify(address: str, ledger: Ledger) -> None:
    def check(item: tuple[str, list[str], bool]) -> str | None:
        batch_id, ids, acked = item
        with SutraClient(address, timeout=20, retry_deadline=0) as c:
            here = present(c, ids)
            if acked and not all(here):
                return f"acknowledged batch {batch_id} lost {here.count(False)} concepts"
            if any(here) and not all(here):
                return f"unacknowledged batch {batch_id} is half there: {here}"
            if all(here):
                first = c.get_neighbors(ids[0], direction=pb.OUTGOING)
                if first != [ids[1]]:
                    return f"batch {batch_id}: edge missing, neighbours of {ids[0]} are {first}"
        return None

    items = [(b, ids, True) for b, ids in ledger.acked.items()]
    items += [(b, ids, False) for b, ids in ledger.unknown.items()]
    with ThreadPoolExecutor(4) as pool:
        problems = [p for p in pool.map(check, items) if p]
    assert not problems, problems[:10]


def test_sigkill_under_load_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    seed = int(os.environ.get("SUTRA_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"seed {seed}")
    data = tmp_path / "data"
    port = free_port()
    ledger = Ledger()
    node: NodeProcess | None = None
    try:
        for rnd in range(ROUNDS):
            step = STEPS[(rnd // 2) % len(STEPS)] if rnd % 2 == 0 else ""
            env = {"VECTOR_DIMENSION": str(DIM), "MEMORY_THRESHOLD": "400",
                   "SUTRA_FAULT_CHECKPOINT_PAUSE": f"{step}:20000" if step else ""}
            log_path = tmp_path / f"round-{rnd}.log"
            node = NodeProcess(data, env=env, port=port, log_path=log_path).start()
            verify(node.address, ledger)
            ledger.round_acks = 0
            stop = threading.Event()
            threads = [threading.Thread(target=writer, args=(node.address, f"r{rnd}t{t}", ledger, stop,
                                                             rng.randrange(1 << 30))) for t in range(4)]
            for t in threads:
                t.start()
            try:
                if step:
                    wait_for(lambda: f"checkpoint paused at step {step}" in log_path.read_text(), 60,
                             f"the checkpoint to reach step {step}")
                else:
                    target = rng.randint(20, 200)
                    wait_for(lambda: ledger.round_acks >= target, 60, f"{target} acknowledged batches")
                node.kill()
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=60)
            print(f"round {rnd}: killed {'during checkpoint step ' + step if step else 'under load'}, "
                  f"{ledger.round_acks} batches acknowledged this round")
        node = NodeProcess(data, env={"VECTOR_DIMENSION": str(DIM)}, port=port,
                           log_path=tmp_path / "final.log").start()
        verify(node.address, ledger)
        assert len(ledger.acked) > ROUNDS * 10
    finally:
        if node is not None:
            node.stop()
