"""Online backup and restore (``sutra-cluster backup`` / ``restore``).

How the expected digest is known. A backup holds the state of one node at one
LSN L, taken while writes go on, so no live node can be asked for "the state at
L" afterwards. The source of truth is the leader's WAL: the state at L is what
replaying the leader's records 1..L gives. After the load, the cluster is
stopped, the leader's data folder is copied, an Engine is opened in-process on
the copy, ``Engine.rewind_to(L)`` cuts every record after L and rebuilds the
state from the checkpoint and the records up to L (the cluster runs with a huge
MEMORY_THRESHOLD, so no checkpoint passes L), and its digest is taken. That
path (WAL replay on the leader) shares nothing with the backup path (a
replica's or the leader's applied state, captured, streamed, decoded, written,
restored and loaded by a new process), so equal digests show the backup is the
exact state at L.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sutra_cluster import admin
from sutra_cluster.client import Concept, SutraClient
from sutra_cluster.config import Config
from sutra_cluster.storage.engine import Engine
from sutra_cluster.tlsutil import peer_credentials
from tests.cluster import DIM, WriteLoad, running_cluster, wait_lsn, wait_streaming
from tests.helpers import ROOT, NodeProcess, wait_for

pytestmark = pytest.mark.slow  # starts node processes

NO_CHECKPOINT = {"MEMORY_THRESHOLD": str(1 << 40)}


def cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sutra_cluster", *args], check=False, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def replay_digest(data_dir: Path, lsn: int, work: Path) -> str:
    """Digest of the state that the records 1..``lsn`` in ``data_dir``'s WAL give (on a copy)."""
    shutil.copytree(data_dir, work)
    eng = Engine(Config(storage_path=str(work), vector_dimension=DIM, node_id="replay", memory_threshold=1 << 40))
    try:
        assert eng.checkpoint_lsn <= lsn, f"checkpoint {eng.checkpoint_lsn} is past the backup LSN {lsn}"
        assert eng.wal.last_lsn >= lsn, f"the leader's WAL ends at {eng.wal.last_lsn}, before {lsn}"
        eng.rewind_to(lsn, work / "after-backup.cut")
        applied, digest, _, _ = eng.digest()
        assert applied == lsn
        return digest
    finally:
        eng.close()


def test_backup_during_writes_restores_the_state_at_its_lsn(
        tmp_path: Path, node_factory: Callable[..., NodeProcess]) -> None:
    bk_replica, bk_leader = tmp_path / "bk-replica", tmp_path / "bk-leader.snap"
    runs = []
    with running_cluster(tmp_path / "src", replicas=1, env=NO_CHECKPOINT) as c:
        wait_streaming(c.leader, ["r1"])
        with c.leader.client(timeout=60) as cl:  # some bulk, so that the snapshot takes a while to stream
            rng = np.random.default_rng(1)
            for b in range(10):
                cl.learn_batch([Concept(f"bulk-{b}-{i}", f"bulk concept {b}/{i} " * 4,
                                        rng.random(DIM, dtype=np.float32) + 0.1) for i in range(1000)])
        with WriteLoad(c.leader.address, threads=3) as load:
            wait_for(lambda: load.count() >= 200, 60, "200 batches written before the backup")
            # As the handbook writes it: `--out /backup/sutra/now`, no trailing "/", makes a folder.
            for node, out in ((c.replicas[0], str(bk_replica)), (c.leader, str(bk_leader))):
                before = load.count()
                t0 = time.monotonic()
                r = cli("backup", "--node", node.address, "--out", out)
                assert r.returncode == 0, r.stderr
                runs.append((node.name, time.monotonic() - t0, load.count() - before, r.stdout, r.stderr))
                assert load.count() > before, "no write was acknowledged while the backup ran"
            after = load.count()
            wait_for(lambda: load.count() > after + 20, 30, "writes going on after the backups")
        assert not load.errors(), load.errors()
        final = load.last_lsn()
        wait_lsn(c.nodes, final)
    for name, secs, writes, out, err in runs:
        print(f"backup of {name}: {secs:.2f} s wall, {writes} batches acknowledged meanwhile\n{out}{err}")

    # The folder backup: manifest, file, and the progress bar on stderr.
    assert bk_replica.is_dir() and sorted(p.name for p in bk_replica.iterdir()) == ["manifest.json", "storage.dat"]
    assert bk_leader.is_file(), "a name ending in .snap is one bare snapshot file"
    m = json.loads((bk_replica / "manifest.json").read_text())
    data = (bk_replica / m["file"]).read_bytes()
    assert m["bytes"] == len(data) and m["sha256"] == hashlib.sha256(data).hexdigest()
    assert m["node"] == "r1" and m["term"] >= 1 and m["vector_dimension"] == DIM
    assert "[" in runs[0][4] and "100.0%" in runs[0][4], "no progress bar on stderr"
    lsn = int(m["lsn"])
    assert 0 < lsn < final, f"backup LSN {lsn} is not inside the load (last LSN {final})"
    expected = replay_digest(tmp_path / "src" / "leader", lsn, tmp_path / "replay-1")
    assert m["digest"] == expected, "the backup's own digest is not the leader's state at its LSN"

    # Restore into a new node's folder and serve it: it starts at the backup's LSN.
    r = cli("restore", "--from", str(bk_replica), "--data-dir", str(tmp_path / "restored"))
    assert r.returncode == 0, r.stderr
    restored = node_factory("restored", env={"SUTRA_NODE_ROLE": "leader"})
    st = admin.replication_status(restored.address)
    assert (st.last_lsn, st.applied_lsn) == (lsn, lsn), st
    with restored.client() as cl:
        got = cl.digest()
        assert (got.lsn, got.digest) == (lsn, expected)
        assert got.concepts == m["concepts"] and got.edges == m["edges"]
        seq = cl.learn_concept("after-restore", "written to the restored node", np.full(DIM, 0.5, np.float32))
    assert seq == lsn + 1

    # A new cluster from it: a fresh replica bootstraps from the restored node by snapshot.
    fresh = node_factory("fresh", env={"SUTRA_NODE_ROLE": "replica", "SUTRA_LEADER": restored.address})
    wait_for(lambda: admin.replication_status(fresh.address, 2.0).applied_lsn >= seq, 30,
             "the fresh replica to catch up with the restored node")
    with restored.client() as ca, fresh.client() as cb:
        assert ca.digest(seq).digest == cb.digest(seq).digest

    # The file backup, taken from the leader: a non-empty folder is refused, --force replaces.
    target = tmp_path / "restored"  # not empty: the node above ran there
    r = cli("restore", "--from", str(bk_leader), "--data-dir", str(target))
    assert r.returncode != 0 and "not empty" in r.stderr, r.stderr
    restored.stop()
    fresh.stop()
    r = cli("restore", "--from", str(bk_leader), "--data-dir", str(target), "--force")
    assert r.returncode == 0, r.stderr
    assert not (target / "wal.log").exists() and not (target / "wal").exists()
    eng = Engine(Config(storage_path=str(target), vector_dimension=DIM, node_id="check"))
    try:
        header_lsn, digest, _, _ = eng.digest()
        assert eng.wal.last_lsn == header_lsn and eng.terms.highest >= 1
    finally:
        eng.close()
    assert lsn < header_lsn < final, (lsn, header_lsn, final)
    assert digest == replay_digest(tmp_path / "src" / "leader", header_lsn, tmp_path / "replay-2")


def test_restore_refuses_a_damaged_backup(tmp_path: Path, node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory("n1")
    with node.client() as c:
        for i in range(300):
            c.learn_concept(f"c{i}", f"concept {i}", np.full(DIM, i % 7 + 1, np.float32))
    bk = tmp_path / "bk"
    r = cli("backup", "--node", node.address, "--out", str(bk) + "/", "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", "--quiet still drew a progress bar"
    r = cli("backup", "--node", node.address, "--out", str(bk) + "/")
    assert r.returncode != 0 and "already holds a backup" in r.stderr

    # One flipped byte: every frame's CRC is checked before anything is written,
    # from the folder (with its manifest) or from the bare file.
    snap = bk / "storage.dat"
    raw = bytearray(snap.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    snap.write_bytes(bytes(raw))
    for source in (bk, snap):
        target = tmp_path / f"restore-{source.name}"
        r = cli("restore", "--from", str(source), "--data-dir", str(target))
        assert r.returncode != 0 and "not restoring" in r.stderr, r.stderr
        assert not (target / "storage.dat").exists() and not list(target.glob("*.restore"))
    # A truncated file is refused too.
    cut = tmp_path / "cut.snap"
    cut.write_bytes(bytes(raw[: len(raw) // 3]))
    r = cli("restore", "--from", str(cut), "--data-dir", str(tmp_path / "restore-cut"))
    assert r.returncode != 0 and "truncated" in r.stderr, r.stderr


def test_cron_script_backs_up_and_keeps_30_days(tmp_path: Path, node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory("n1")
    with node.client() as c:
        seq = c.learn_concept("one", "a concept", np.ones(DIM, np.float32))
    root = tmp_path / "backups"
    old, recent, other = root / "20000101-020000", root / "recent", root / "not-a-backup"
    for d in (old, recent, other):
        d.mkdir(parents=True)
    (old / "manifest.json").write_text("{}")
    (recent / "manifest.json").write_text("{}")
    month_ago = time.time() - 40 * 86400
    for d in (old, other):
        os.utime(d, (month_ago, month_ago))
    env = {**os.environ, "SUTRA_BACKUP_NODE": node.address, "SUTRA_BACKUP_DIR": str(root),
           "SUTRA_CLI": str(Path(sys.executable).parent / "sutra-cluster")}
    r = subprocess.run(["bash", str(ROOT / "deploy" / "backup-sutra.sh")], check=False, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "backup completed" in r.stdout
    made = [d for d in root.iterdir() if d not in (recent, other)]
    assert len(made) == 1 and not old.exists(), sorted(root.iterdir())
    assert recent.exists() and other.exists(), "retention deleted a recent backup or a folder that is no backup"
    m = json.loads((made[0] / "manifest.json").read_text())
    assert m["lsn"] == seq and m["sha256"]
    # A node that does not answer: the script fails and leaves no folder.
    env["SUTRA_BACKUP_NODE"] = "127.0.0.1:1"
    r = subprocess.run(["bash", str(ROOT / "deploy" / "backup-sutra.sh")], check=False, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "backup FAILED" in r.stderr, r.stdout + r.stderr
    assert len(list(root.iterdir())) == 3


def test_backup_over_mutual_tls_needs_a_member_certificate(
        tmp_path: Path, node_factory: Callable[..., NodeProcess]) -> None:
    from tests.test_tls import make_ca, make_cert

    ca_key, ca, ca_crt = make_ca(tmp_path / "ca", "sutra-cluster-ca")
    cert, key = make_cert(tmp_path / "member", "node", ca_key, ca)
    tls = {"SUTRA_TLS_CERT": cert, "SUTRA_TLS_KEY": key, "SUTRA_TLS_CA": ca_crt}
    node = node_factory("n1", env=tls, start=False).start(wait=False)
    creds = peer_credentials(cert, key, ca_crt)
    with SutraClient(node.address, timeout=5, retry_deadline=0, credentials=creds) as c:
        wait_for(lambda: c.health().healthy, 60, "the node healthy over mutual TLS")
        seq = c.learn_concept("secret", "members only", np.ones(DIM, np.float32))
    # The admin tools' TLS settings come from the environment, as for `sutra-cluster status`.
    plain = {k: v for k, v in os.environ.items() if not k.startswith("SUTRA_TLS_")}
    r = subprocess.run([sys.executable, "-m", "sutra_cluster", "backup", "--node", node.address, "--out",
                        str(tmp_path / "stranger.snap"), "--timeout", "10"], check=False, cwd=ROOT, env=plain,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "UNAVAILABLE" in r.stderr, r.stderr
    assert not (tmp_path / "stranger.snap").exists() and not (tmp_path / "stranger.snap.partial").exists()
    r = subprocess.run([sys.executable, "-m", "sutra_cluster", "backup", "--node", node.address, "--out",
                        str(tmp_path / "member.snap")], check=False, cwd=ROOT, env={**plain, **tls},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"at LSN {seq}," in r.stdout
