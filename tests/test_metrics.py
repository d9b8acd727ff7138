"""The metrics endpoint of a real node: after a few writes and a Flush, the
documented series exist with sane values, and the exposition passes the real
``promtool check metrics`` (Prometheus' own linter) with nothing to report."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import sutra_cluster
from sutra_cluster import admin
from sutra_cluster.client import Association, Concept
from tests.cluster import Node, running_cluster, wait_streaming
from tests.helpers import NodeProcess, free_port, wait_for
from tests.shard_cluster import DIM as SHARD_DIM
from tests.shard_cluster import sharded_cluster, vec

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

    # No _created series (prometheus_client's are disabled); the version in sutra_node_info.
    assert not [n for n in by if n.endswith("_created")], sorted(n for n in by if n.endswith("_created"))
    (info,) = by["sutra_node_info"]
    assert info.labels["version"] == sutra_cluster.__version__ and info.labels["role"] == "leader", info
    # The configured leader started leading once, and never stopped.
    changes = {s.labels["change"]: s.value for s in by["sutra_leader_changes_total"]}
    assert changes == {"started": 1, "stopped": 0}, changes
    lint_clean(tool, text)


def lint_clean(tool: str, text: str) -> None:
    lint = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=60, check=False)
    problems = (lint.stdout + lint.stderr).strip()
    assert lint.returncode == 0 and not problems, (
        f"promtool check metrics (exit {lint.returncode}):\n{problems}")


def test_leader_changes_count_a_manual_promotion_and_demotion(tmp_path: Path) -> None:
    """sutra_leader_changes_total: `started` on the promoted replica, `stopped` on the
    old leader when it is made to follow, as the handbook's manual failover does."""
    with running_cluster(tmp_path, replicas=1) as c:
        wait_streaming(c.leader, ["r1"])
        replica = c.replicas[0]
        admin.promote(replica.address, [c.leader.address])

        def changes(node: Node) -> dict[str, float]:
            return {s.labels["change"]: s.value for s in samples(node.metrics())["sutra_leader_changes_total"]}

        wait_for(lambda: changes(c.leader) == {"started": 1, "stopped": 1}, 30, "the old leader to count its step-down")
        assert changes(replica) == {"started": 1, "stopped": 0}, changes(replica)
        lint_clean(promtool(), replica.metrics())


def test_router_metrics_and_json_logs(tmp_path: Path) -> None:
    """The router's own /metrics: requests by method and code, fan-out latency, and
    errors per shard once a shard is down; promtool-clean. Its log lines are JSON
    with SUTRA_LOG_FORMAT=json."""
    mport = free_port()
    with sharded_cluster(tmp_path, shards=2, per_shard=1, mode="async", routers=0) as c:
        router = c.add_router("router", {"VECTOR_DIMENSION": str(SHARD_DIM), "SUTRA_METRICS_PORT": str(mport),
                                         "SUTRA_LOG_FORMAT": "json", "SUTRA_ROUTER_READ_DEADLINE_MS": "2000"})
        rng = np.random.default_rng(2)
        with router.client(timeout=10) as rc:
            for cid in c.ids_on(0, 2) + c.ids_on(1, 2):
                rc.learn_concept(cid, f"text of {cid}", vec(rng))
            # (No read-your-writes token here: wait until the shards' reconcilers showed the writes.)
            query = vec(rng)
            wait_for(lambda: len(rc.vector_search(query, k=3)) == 3, 30, "the four concepts to be searchable")
            c.shards[1][0].kill()
            with pytest.raises(grpc.RpcError) as failed:
                rc.vector_search(vec(rng), k=3)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        text = scrape(mport)
        by = samples(text)
        reqs = {(s.labels["method"], s.labels["code"]): s.value for s in by["sutra_router_requests_total"]
                if s.labels["service"] == "sutra.storage.StorageService"}
        assert reqs[("LearnConcept", "OK")] == 4 and reqs[("VectorSearch", "OK")] >= 1, reqs
        assert reqs[("VectorSearch", "UNAVAILABLE")] >= 1, reqs
        errors = {(s.labels["shard"], s.labels["code"]): s.value for s in by["sutra_router_shard_errors_total"]}
        assert errors.get(("1", "UNAVAILABLE"), 0) >= 1 and not any(k[0] == "0" for k in errors), errors
        assert value(by, "sutra_router_fanout_duration_seconds_count") >= 2
        latency = [s for s in by["sutra_router_request_duration_seconds_count"]
                   if s.labels["method"] == "LearnConcept"]
        assert latency and latency[0].value == 4, latency
        assert not [n for n in by if n.endswith("_created")]
        lint_clean(promtool(), text)
        router.stop()
        lines = [line for line in router.log_path.read_text().splitlines() if line.strip()]
        assert lines, "the router logged nothing"
        for line in lines:
            rec = json.loads(line)  # every line one JSON object
            assert {"time", "level", "logger", "message"} <= set(rec) and rec["process_name"] == "router", rec
        assert any("serving on" in json.loads(line)["message"] for line in lines), lines


def test_node_logs_one_json_object_a_line(node_factory: Callable[..., NodeProcess]) -> None:
    """SUTRA_LOG_FORMAT=json: every line the node writes is a JSON object with the
    node's context (node, shard, term), for log shippers."""
    node = node_factory("n1", env={"SUTRA_LOG_FORMAT": "json", "VECTOR_DIMENSION": str(DIM),
                                   "SUTRA_NODE_ID": "json-node"})
    with node.client() as c:
        c.learn_concept("j1", "logged as JSON", np.ones(DIM, np.float32))
    node.stop()
    lines = [line for line in node.log_path.read_text().splitlines() if line.strip()]
    assert lines, "the node logged nothing"
    records = [json.loads(line) for line in lines]  # every line one JSON object
    for rec in records:
        assert {"time", "level", "logger", "message", "node", "shard", "term"} <= set(rec), rec
        assert rec["node"] == "json-node" and rec["time"].endswith("Z"), rec
    assert any(r["level"] == "warning" and "promoted self" in r["message"] for r in records), records
