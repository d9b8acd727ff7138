"""Prometheus for tests: the Debian ``prometheus`` and ``promtool`` binaries
(installed by ``./dev setup``), a server process that is always stopped, and
its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import ROOT, free_port, wait_for

DEPLOY = ROOT / "deploy"


def binary(name: str) -> str:
    """Path of promtool or prometheus; a missing one fails the test."""
    path = shutil.which(name)
    assert path, f"{name} is not installed; run ./dev setup (it installs Debian's prometheus package)"
    return path


def promtool(*args: str, stdin: str | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], check=False, input=stdin, capture_output=True, text=True, cwd=cwd,
                          timeout=60)


def scrape_config(targets: dict[str, list[str]], scrape_interval: str = "1s",
                  source: Path = DEPLOY / "prometheus.yml") -> dict[str, Any]:
    """deploy/prometheus.yml with each job's targets replaced (job name -> host:port
    list; the target groups' labels are kept), intervals shortened for a test, and
    rule files made absolute."""
    cfg = yaml.safe_load(source.read_text())
    cfg["global"]["scrape_interval"] = cfg["global"]["evaluation_interval"] = scrape_interval
    cfg["rule_files"] = [str((source.parent / f).resolve()) for f in cfg.get("rule_files", [])]
    for job in cfg["scrape_configs"]:
        job["scrape_interval"] = scrape_interval
        job.pop("scrape_timeout", None)
        if job["job_name"] in targets:
            groups = job["static_configs"]
            groups[0]["targets"] = targets[job["job_name"]]
            del groups[1:]
    return cfg


class Prometheus:
    """A running Prometheus server; ``query`` asks its HTTP API."""

    def __init__(self, proc: subprocess.Popen[bytes], address: str, log: Path) -> None:
        self.proc, self.address, self.log = proc, address, log

    def api(self, path: str, **params: str) -> Any:
        url = f"http://{self.address}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; a list of {"metric": labels, "value": [time, "text"]}."""
        data = self.api("query", query=expr)
        return list(data["result"])

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


@contextmanager
def running_prometheus(config: dict[str, Any], workdir: Path, host: str = "127.0.0.1", port: int | None = None,
                       extra_args: list[str] | None = None) -> Iterator[Prometheus]:
    """Start ``prometheus`` with ``config`` (a dict, written as YAML) on ``host``;
    it is stopped when the block exits, pass or fail."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / "prometheus.yml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = port or free_port(host)
    log = workdir / "prometheus.log"
    args = [binary("prometheus"), f"--config.file={cfg_path}", f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={host}:{port}", *(extra_args or [])]
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    prom = Prometheus(proc, f"{host}:{port}", log)
    try:
        wait_for(lambda: _ready(prom), 30, f"Prometheus on {prom.address} to be ready")
        yield prom
    finally:
        stop(proc)


def _ready(prom: Prometheus) -> bool:
    if prom.proc.poll() is not None:
        raise AssertionError(f"prometheus exited with {prom.proc.returncode}:\n{prom.log_tail()}")
    with urllib.request.urlopen(f"http://{prom.address}/-/ready", timeout=2) as r:
        return r.status == 200


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
