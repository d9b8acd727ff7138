"""The metrics endpoint of a real node: after a few writes and a Flush, the
documented series exist with sane values, and the exposition passes the real
``promtool check metrics`` (Prometheus' own linter) with nothing to report."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sutra_cluster.client import Association, Concept
from tests.helpers import NodeProcess, free_port, wait_for

pytestmark = pytest.mark.slow  # starts a node and runs promtool

DIM = 8


def promtool() -> str:
    """promtool from Debian's ``prometheus`` package (installed by ./dev setup).
    Missing, it fails the test, in CI and locally alike: no skip."""
    path = shutil.which("promtool")
    assert path, "promtool is not installed: run ./dev setup (it installs Debian's prometheus package)"
    return path


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        return resp.read().decode()


def samples(text: str) -> dict[str, list[Sample]]:
    """Samples by sample name (``x_bucket``, ``x_count``, ...), across families."""
    out: dict[str, list[Sample]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def value(by_name: dict[str, list[Sample]], name: str) -> float:
    assert name in by_name, f"{name} missing from /metrics; have {sorted(by_name)}"
    got = by_name[name]
    assert len(got) == 1, f"{name}: expected one unlabelled sample, got {got}"
    return got[0].value


def check_histogram(by_name: dict[str, list[Sample]], name: str, at_least: int) -> None:
    buckets = by_name.get(f"{name}_bucket")
    assert buckets, f"{name} has no _bucket series"
    bounds = [float(b.labels["le"]) for b in buckets]
    counts = [b.value for b in buckets]
    assert bounds == sorted(bounds) and bounds[-1] == float("inf"), f"{name}: bucket bounds {bounds}"
    assert len(bounds) >= 5, f"{name}: only {len(bounds)} buckets"
    assert counts == sorted(counts), f"{name}: buckets not cumulative: {counts}"
    count = value(by_name, f"{name}_count")
    total = value(by_name, f"{name}_sum")
    assert counts[-1] == count >= at_least, (
        f"{name}: +Inf bucket {counts[-1]}, count {count}, want >= {at_least}")
    assert 0 < total < 60 * count, f"{name}: sum {total}s over {count} observations"
    # Every write here is a loopback write of a few hundred bytes: a sane
    # latency has most observations well under a second.
    under_1s = counts[bounds.index(1.0)] if 1.0 in bounds else counts[-1]
    assert under_1s >= count / 2, f"{name}: most observations over 1 s: {list(zip(bounds, counts))}"


def test_metrics_endpoint_has_sane_values_and_passes_promtool(
        tmp_path: Path, node_factory: Callable[..., NodeProcess]) -> None:
    tool = promtool()
    mport = free_port()
    node = node_factory("n1", env={"SUTRA_METRICS_PORT": str(mport), "VECTOR_DIMENSION": str(DIM)})
    wait_for(lambda: scrape(mport), 30, "the metrics endpoint to answer")

    rng = np.random.default_rng(5)
    write_rpcs = 0
    with node.client() as c:
        for i in range(5):
            c.learn_concept(f"m{i}", f"concept {i}", rng.random(DIM, dtype=np.float32) + 0.1)
            write_rpcs += 1
        batch = [Concept(f"b{i}", f"batch concept {i}", rng.random(DIM, dtype=np.float32) + 0.1)
                 for i in range(4)]
        c.learn_batch(batch, [Association("b0", "b1"), Association("m0", "b2")])
        write_rpcs += 1
        flushed = c.flush()
        assert flushed.success
        stats = c.stats()
    concepts = 9

    text = scrape(mport)
    by = samples(text)

    assert value(by, "sutra_concepts") == concepts == stats.concepts
    # Flush drains: nothing acknowledged may be pending after it.
    assert value(by, "sutra_pending_writes") == 0
    assert value(by, "sutra_flushes_total") >= 1
    wal = value(by, "sutra_wal_size_bytes")
    assert wal == stats.wal_bytes, (wal, stats.wal_bytes)
    # At least wal.log's header; at most the few records of this test (the
    # segments the backup checkpoint still needs), nowhere near a megabyte.
    assert 0 < wal < 1 << 20, wal
    check_histogram(by, "sutra_write_latency_seconds", at_least=write_rpcs)
    check_histogram(by, "sutra_wal_fsync_duration_seconds", at_least=1)
    # Every logged record went through some group commit.
    assert value(by, "sutra_wal_group_commit_records_sum") == stats.durable_lsn
    assert value(by, "sutra_vector_index_pending") >= 0
    assert value(by, "sutra_writes_total") == concepts + 2  # items: 9 concepts + 2 associations

    lint = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=60, check=False)
    problems = (lint.stdout + lint.stderr).strip()
    assert lint.returncode == 0 and not problems, (
        f"promtool check metrics (exit {lint.returncode}):\n{problems}")
