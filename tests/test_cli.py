"""The operator CLI as a user runs it (`sutra-cluster ...` as a process) against a
real etcd and real nodes: --version, status of every shard as a table, JSON and
YAML, dead members shown as down with a failing exit code, watch mode ended by
Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import yaml

from sutra_cluster import __version__
from tests.helpers import tool, wait_for
from tests.shard_cluster import ShardedCluster, sharded_cluster


def cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("sutra-cluster"), *args], capture_output=True, text=True, timeout=timeout)


def status_json(c: ShardedCluster, *extra: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    r = cli("status", "--etcd", c.etcd.endpoint, "--cluster", c.name, "-o", "json", *extra)
    assert r.returncode in (0, 1), (r.returncode, r.stdout, r.stderr)
    return r.returncode, json.loads(r.stdout)


def test_version() -> None:
    r = cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"sutra-cluster {__version__}"


def test_status_usage_and_etcd_down_exit_codes(tmp_path: Path) -> None:
    env_less = subprocess.run([tool("sutra-cluster"), "status"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60, env={k: v for k, v in os.environ.items() if k != "SUTRA_ETCD_ENDPOINTS"})
    assert env_less.returncode == 2 and "--etcd" in env_less.stderr
    bad_watch = cli("status", "--etcd", "127.0.0.1:1", "--watch", "0.01")
    assert bad_watch.returncode == 2 and "--watch 0.01" in bad_watch.stderr and "0.2..3600" in bad_watch.stderr
    from tests.helpers import free_port

    down = cli("status", "--etcd", f"127.0.0.1:{free_port()}", "-o", "json")
    assert down.returncode == 3, (down.stdout, down.stderr)
    assert "etcd unreachable" in down.stderr and "error" in json.loads(down.stdout)


def test_status_every_shard_dead_member_down_and_watch(tmp_path: Path) -> None:
    with sharded_cluster(tmp_path, shards=2, per_shard=2, mode="async", routers=0) as c:
        def healthy() -> dict | None:  # type: ignore[type-arg]
            code, doc = status_json(c)
            streaming = all(m["state"] in ("running", "streaming") for s in doc["shards"] for m in s["members"])
            return doc if code == 0 and streaming else None

        doc = wait_for(healthy, 60, "status to exit 0 with every replica streaming", interval=0.2)
        assert [s["shard"] for s in doc["shards"]] == [0, 1]
        for s, group in zip(doc["shards"], c.shards, strict=True):
            assert sorted(m["node"] for m in s["members"]) == sorted(n.name for n in group)
            assert s["leader"] in {n.name for n in group} and s["term"] >= 1 and not s["paused"]
            assert {m["version"] for m in s["members"]} == {__version__}
            assert sorted(m["role"] for m in s["members"]) == ["leader", "replica"]
            assert all(m["lag_bytes"] == 0 for m in s["members"])
        assert doc["healthy"] is True and doc["problems"] == []

        # YAML carries the same document; the table has a row per member and a version column.
        y = cli("status", "--etcd", c.etcd.endpoint, "-o", "yaml")
        assert y.returncode == 0, y.stderr
        ydoc = yaml.safe_load(y.stdout)
        assert [[m["node"] for m in s["members"]] for s in ydoc["shards"]] == \
            [[m["node"] for m in s["members"]] for s in doc["shards"]]
        t = cli("status", "--etcd", c.etcd.endpoint)
        assert t.returncode == 0, t.stderr
        lines = t.stdout.splitlines()
        assert "4 of 4 members up" in lines[0] and "VERSION" in lines[1] and "LAST SEEN" in lines[1]
        assert sum(1 for ln in lines[2:] if __version__ in ln) == 4
        # No flags, in a folder where `local up` left its state: that cluster.
        here = tmp_path / "work"
        (here / ".local-cluster").mkdir(parents=True)
        (here / ".local-cluster" / "cluster.json").write_text(json.dumps(
            [{"name": "etcd", "role": "etcd", "pid": 0, "port": c.etcd.client_port, "metrics_port": 0, "data": "",
              "log": ""}]))
        env = {k: v for k, v in os.environ.items() if k != "SUTRA_ETCD_ENDPOINTS"}
        bare = subprocess.run([tool("sutra-cluster"), "status", "--json"], cwd=here, env=env, capture_output=True,
                              text=True, timeout=60)
        assert bare.returncode == 0, bare.stderr
        assert len(json.loads(bare.stdout)["shards"]) == 2
        one = cli("status", "--etcd", c.etcd.endpoint, "--shard", "1", "--json")
        assert [s["shard"] for s in json.loads(one.stdout)["shards"]] == [1]
        # Without etcd: the listed nodes, named and versioned by themselves.
        direct = cli("status", "--nodes", ",".join(n.address for n in c.shards[0]), "-o", "json")
        assert direct.returncode == 0, direct.stderr
        rows = json.loads(direct.stdout)["shards"][0]["members"]
        assert sorted(m["node"] for m in rows) == sorted(n.name for n in c.shards[0])
        assert {m["version"] for m in rows} == {__version__}

        # SIGKILL a replica of shard 1: its row stays, as down (once its member lease ends), exit 1.
        victim = next(n for n in c.shards[1] if n.name != doc["shards"][1]["leader"])
        victim.kill()

        def shown_down() -> dict | None:  # type: ignore[type-arg]
            code, d = status_json(c)
            row = next((m for m in d["shards"][1]["members"] if m["node"] == victim.name), None)
            assert row is not None, f"{victim.name}'s row disappeared: {d}"
            assert code == 1 or row["role"] not in ("down", "unreachable"), (code, row)
            return d if row["role"] == "down" else None

        d = wait_for(shown_down, 30, f"status to show {victim.name} as down", interval=0.2)
        row = next(m for m in d["shards"][1]["members"] if m["node"] == victim.name)
        assert row["address"] == victim.address and row["last_seen_s"] is not None and row["last_seen_s"] >= 0
        assert d["healthy"] is False and f"shard 1: {victim.name} is down" in d["problems"]
        t = cli("status", "--etcd", c.etcd.endpoint)
        assert t.returncode == 1
        assert "3 of 4 members up" in t.stdout and f"! shard 1: {victim.name} is down" in t.stdout
        assert any(victim.name in ln and " down " in ln and "s ago" in ln for ln in t.stdout.splitlines())

        # Watch mode: one JSON document per refresh until Ctrl-C, then exit 0.
        w = subprocess.Popen([tool("sutra-cluster"), "status", "--etcd", c.etcd.endpoint, "--watch", "0.3",
                              "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert w.stdout is not None
            docs = [json.loads(w.stdout.readline()) for _ in range(3)]
            assert all(len(x["shards"]) == 2 for x in docs)
            assert docs[0]["time"] < docs[1]["time"] < docs[2]["time"]
            w.send_signal(signal.SIGINT)
            assert w.wait(timeout=10) == 0, w.stderr.read() if w.stderr else ""
        finally:
            if w.poll() is None:
                w.kill()
                w.wait(timeout=10)

        # A removed member: forget drops its registration; status is healthy again.
        f = cli("forget", victim.name, "--etcd", c.etcd.endpoint, "--shard", "1")
        assert f.returncode == 0, f.stderr
        code, d = status_json(c)
        assert code == 0 and victim.name not in [m["node"] for m in d["shards"][1]["members"]]
        live = cli("forget", c.shards[0][0].name, "--etcd", c.etcd.endpoint, "--shard", "0")
        assert live.returncode == 1 and "live member" in live.stderr


def test_certs_list_as_table_json_and_yaml(tmp_path: Path) -> None:
    d = str(tmp_path / "certs")
    assert cli("certs", "create-ca", "--certs-dir", d).returncode == 0
    assert cli("certs", "create-node", "n1", "localhost", "127.0.0.1", "--certs-dir", d).returncode == 0
    j = cli("certs", "list", "--certs-dir", d, "--json")
    assert j.returncode == 0, j.stderr
    doc = json.loads(j.stdout)
    assert [(c["file"], c["role"], c["name"], c["hosts"]) for c in doc] == \
        [("ca.crt", "ca", "", []), ("node.n1.crt", "node", "n1", ["localhost", "127.0.0.1"])]
    assert yaml.safe_load(cli("certs", "list", "--certs-dir", d, "-o", "yaml").stdout) == doc
    table = cli("certs", "list", "--certs-dir", d).stdout.splitlines()
    assert table[1].startswith("node.n1.crt") and "role node" in table[1] and "localhost,127.0.0.1" in table[1]
