"""Prometheus: the alert rules (promtool check/test), every node's exposition
(promtool check metrics), and a real Prometheus server (Debian's package)
scraping a local three-node cluster, asked through its HTTP API."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster import WriteLoad, running_cluster, wait_streaming
from tests.helpers import free_port, wait_for
from tests.prom import DEPLOY, promtool, running_prometheus, scrape_config

pytestmark = pytest.mark.slow  # runs promtool and a prometheus server


def test_alert_rules_check_and_pass_their_unit_tests() -> None:
    r = promtool("check", "rules", str(DEPLOY / "alerts.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    r = promtool("test", "rules", "alerts_test.yml", cwd=DEPLOY)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    for config in ("prometheus.yml", "prometheus-local.yml"):
        r = promtool("check", "config", str(DEPLOY / config))
        assert r.returncode == 0, config + ": " + r.stdout + r.stderr
    # Every alert the brief asks for exists.
    text = (DEPLOY / "alerts.yml").read_text()
    for metric in ("sutra_replication_lag_seconds", "sutra_is_leader", "sutra_wal_size_bytes",
                   "sutra_wal_fsync_duration_seconds_bucket", 'up{job="sutra"}'):
        assert metric in text, metric


def test_prometheus_scrapes_every_node_and_sees_replica_lag(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "cluster", replicas=2, mode="sync") as c:
        wait_streaming(c.leader, ["r1", "r2"])
        with WriteLoad(c.leader.address, threads=2, per_thread=100):
            pass
        # Every node's exposition (leader and replicas, histograms filled) passes promtool.
        for node in c.nodes:
            text = node.metrics()
            assert "sutra_is_leader" in text and "sutra_wal_fsync_duration_seconds_bucket" in text
            r = promtool("check", "metrics", stdin=text)
            assert r.returncode == 0, f"{node.name}: {r.stdout}{r.stderr}"

        port = free_port()
        targets = {"sutra": [f"127.0.0.1:{n.metrics_port}" for n in c.nodes], "prometheus": [f"127.0.0.1:{port}"]}
        with running_prometheus(scrape_config(targets), tmp_path / "prometheus", port=port) as prom, \
                WriteLoad(c.leader.address, threads=2, per_thread=2000, prefix="p") as load:
            leader_instance = f"127.0.0.1:{c.leader.metrics_port}"

            def lag_series() -> dict[tuple[str, str], float] | None:
                got = {(s["metric"]["instance"], s["metric"]["replica"]): float(s["value"][1])
                       for s in prom.query('sutra_replication_lag_seconds{job="sutra"}')}
                want = [(leader_instance, r.name) for r in c.replicas]
                want += [(f"127.0.0.1:{r.metrics_port}", r.name) for r in c.replicas]
                return got if all(w in got for w in want) else None

            lags = wait_for(lag_series, 30, "Prometheus to scrape each replica's lag", interval=0.2)
            assert lags is not None
            assert load.count() > 0 and not load.errors(), load.errors()
            print("sutra_replication_lag_seconds:", lags)
            for key, value in lags.items():
                assert 0 <= value < 60, f"insane lag {value} for {key}"

            up = {s["metric"]["instance"]: s["value"][1] for s in prom.query('up{job="sutra"}')}
            assert up == {t: "1" for t in targets["sutra"]}, up
            leaders = prom.query('sum by (shard) (sutra_is_leader{job="sutra"})')
            assert [(s["metric"]["shard"], s["value"][1]) for s in leaders] == [("0", "1")], leaders

            # Every alert rule evaluates on the real series without error.
            def evaluated() -> list[dict[str, object]] | None:
                rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
                return rules if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None

            rules = wait_for(evaluated, 15, "the alert rules to be evaluated", interval=0.2)
            assert rules is not None
            bad = [(r["name"], r.get("health"), r.get("lastError")) for r in rules if r.get("health") != "ok"]
            assert not bad, bad
            assert len(rules) >= 5
