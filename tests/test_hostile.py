"""Security review 2026-12-01, medium and low findings on files and start-up:
each test makes the fault or the attack and asserts it is refused in one line
that names the file or the setting, and that nothing good was lost.

- M3: after a start that fell back to storage.dat.backup, the next checkpoint
  keeps the good backup (the damaged file is set aside, not made the backup).
- M4/M6: corrupt terms.json, corrupt WAL, read-only data folder, STORAGE_PATH
  a file, busy metrics port: ``sutra-cluster: cannot start: ...``, no traceback.
- M5: restore refuses a manifest whose ``file`` leads outside the backup folder,
  and malformed manifests, in one line.
- L5: Flush on a full disk answers UNAVAILABLE naming the disk and leaves no
  storage.dat.tmp.
- L6: data files 0600 and a new data folder 0700 under a 022 umask.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from sutra_cluster import backup
from sutra_cluster.pb import storage_pb2 as pb
from sutra_cluster.pb import wal_pb2
from sutra_cluster.storage import checkpoint as ckpt
from sutra_cluster.storage.state import Concept
from tests.helpers import ROOT, NodeProcess, free_port
from tests.mutators import flip_bit
from tests.test_disk_faults import run

pytestmark = pytest.mark.slow  # starts node processes

DIM = 8


def _write(node: NodeProcess, n: int, prefix: str = "c", content: str = "x") -> int:
    seq = 0
    with node.client() as c:
        for i in range(n):
            seq = c.learn_concept(f"{prefix}{i}", content, np.ones(DIM, dtype=np.float32) + i)
    return seq


def _digest(node: NodeProcess) -> str:
    with node.client() as c:
        return str(c.digest(c.stats().last_lsn).digest)


def _loads(path: Path) -> int:
    """The LSN of a snapshot file that decodes completely (raises SnapshotError otherwise)."""
    with open(path, "rb") as f:
        dec = ckpt.SnapshotDecoder(f, str(path))
        for _ in dec:
            pass
        return int(dec.header.lsn)


def test_fallback_to_the_backup_keeps_the_backup_good(tmp_path: Path) -> None:
    data = tmp_path / "data"
    node = NodeProcess(data, log_path=tmp_path / "node.log")
    try:
        node.start()
        _write(node, 20)
        with node.client() as c:
            c.flush()
            _write(node, 5, prefix="d")
            c.flush()
        before = _digest(node)
        node.stop()
        backup_lsn = _loads(data / ckpt.BACKUP_FILE)
        flip_bit(data / ckpt.STORAGE_FILE, (data / ckpt.STORAGE_FILE).stat().st_size // 2, 0x10)
        node.start()
        assert _digest(node) == before, "the fallback start lost data"
        assert (data / "storage.dat.damaged").exists(), "the damaged checkpoint was not kept aside"
        _write(node, 3, prefix="e")
        with node.client() as c:
            c.flush()
        after = _digest(node)
        # The good backup stayed the backup; the new storage.dat loads too.
        assert _loads(data / ckpt.BACKUP_FILE) == backup_lsn
        _loads(data / ckpt.STORAGE_FILE)
        node.stop()
        node.start()
        assert _digest(node) == after
    finally:
        node.stop()


def _serve(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.update({"SUTRA_HOST": "127.0.0.1", "VECTOR_DIMENSION": str(DIM), "SUTRA_NODE_ID": "n1",
                 "STORAGE_PORT": str(free_port())})
    full.update(env)
    return subprocess.run([sys.executable, "-m", "sutra_cluster", "serve"], env=full, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _seeded(tmp_path: Path) -> Path:
    """A data folder with a checkpoint and 10 records in the WAL after it."""
    data = tmp_path / "data"
    node = NodeProcess(data, log_path=tmp_path / "seed.log")
    try:
        node.start()
        _write(node, 5)
        with node.client() as c:
            c.flush()
        _write(node, 10, prefix="w", content="y" * 200)
    finally:
        node.stop()
    return data


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    mounted: list[Path] = []

    def make(path: Path) -> None:
        assert os.geteuid() == 0, "a read-only data folder needs a bind mount: run as root (CI does)"
        run("mount", "--bind", str(path), str(path))
        mounted.append(path)
        run("mount", "-o", "remount,ro,bind", str(path))

    yield make
    for p in mounted:
        subprocess.run(["umount", str(p)], check=False, capture_output=True, timeout=60)


FAULTS: dict[str, tuple[Callable[[Path, Callable[[Path], None]], dict[str, str]], tuple[str, ...]]] = {
    "terms_json_garbage": (lambda d, ro: ((d / "terms.json").write_text("{not json"), {})[1], ("terms.json",)),
    "terms_json_wrong_type": (lambda d, ro: ((d / "terms.json").write_text('{"highest": "x", "history": []}'),
                                              {})[1], ("terms.json",)),
    "wal_corrupt_mid_file": (lambda d, ro: (flip_bit(d / "wal.log", (d / "wal.log").stat().st_size // 3, 0x01),
                                            {})[1], ("wal.log",)),
    "data_folder_read_only": (lambda d, ro: (ro(d), {})[1], (str(Path("data")), "Read-only file system")),
    "storage_path_is_a_file": (lambda d, ro: {"STORAGE_PATH": str(d / "storage.dat")}, ("storage.dat", "exists")),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_start_time_faults_end_in_one_line_naming_the_file(tmp_path: Path, fault: str,
                                                           read_only: Callable[[Path], None]) -> None:
    data = _seeded(tmp_path)
    make, needles = FAULTS[fault]
    env = {"STORAGE_PATH": str(data), **make(data, read_only)}
    res = _serve(env)
    assert res.returncode == 1, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("sutra-cluster: cannot start: "), last
    for needle in needles:
        assert needle in last, f"{needle!r} not in {last!r}"


def test_busy_metrics_port_is_refused_before_serving(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = _serve({"STORAGE_PATH": str(tmp_path / "data"), "SUTRA_METRICS_PORT": str(port)})
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert f"SUTRA_METRICS_PORT={port}: cannot listen on 127.0.0.1:{port}" in last, last
    assert "serving on" not in res.stderr, "the node served before it found the metrics port busy"


def _backup_folder(tmp_path: Path) -> Path:
    """A real backup folder written by this tool's encoder, and a victim snapshot outside it."""
    header = wal_pb2.SnapshotHeader(lsn=3, term=1, concepts=1, vector_dimension=DIM, node_id="x")
    concepts = {"a": Concept("secret", 1.0, 1.0, {}, b"", 1, 1)}
    victim = tmp_path / "victim" / "storage.dat"
    victim.parent.mkdir()
    victim.write_bytes(b"".join(ckpt.encode_snapshot(header, concepts, [])))
    folder = tmp_path / "bk"
    folder.mkdir()
    (folder / "storage.dat").write_bytes(victim.read_bytes())
    return folder


@pytest.mark.parametrize("manifest,needle", [
    ({"file": "../victim/storage.dat"}, "refusing to read outside the backup folder"),
    ({"file": "ABSOLUTE"}, "refusing to read outside the backup folder"),
    ({"file": "sub/../../victim/storage.dat"}, "refusing to read outside the backup folder"),
    ({"file": "storage.dat", "lsn": "abc"}, "'lsn' is 'abc', a int is expected"),
    ([1, 2], "not a valid manifest (a JSON object is expected, not list)"),
    ("{not json", "not a valid manifest"),
    ({"file": 7}, "'file' is 7, a str is expected"),
])
def test_restore_refuses_a_hostile_or_malformed_manifest(tmp_path: Path, manifest: object, needle: str) -> None:
    folder = _backup_folder(tmp_path)
    if isinstance(manifest, dict) and manifest.get("file") == "ABSOLUTE":
        manifest = {"file": str(tmp_path / "victim" / "storage.dat")}
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (folder / backup.MANIFEST).write_text(text)
    target = tmp_path / "restored"
    with pytest.raises(backup.BackupError) as info:
        backup.restore(folder, target, progress=False)
    assert needle in str(info.value), str(info.value)
    assert "\n" not in str(info.value)
    assert not target.exists() or not any(target.iterdir()), "a refused restore wrote into the data folder"
    # The command line says it in one line too.
    res = subprocess.run([sys.executable, "-m", "sutra_cluster", "restore", "--from", str(folder), "--data-dir",
                          str(target), "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "Traceback" not in res.stderr and needle in res.stderr, res.stderr


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs, unmounted afterwards whatever happens."""
    assert os.geteuid() == 0, "this test mounts a tmpfs and must run as root (CI does)"
    mnt = tmp_path / "small"
    mnt.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt))
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False, capture_output=True, timeout=60).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True, timeout=60)


def test_flush_on_a_full_disk_is_unavailable_and_leaves_no_temporary(small_disk: Path, tmp_path: Path) -> None:
    data = small_disk / "data"
    node = NodeProcess(data, log_path=tmp_path / "node.log", env={"SUTRA_WAL_SEGMENT_BYTES": str(1 << 16)})
    try:
        node.start()
        _write(node, 40, content="z" * 20_000)  # about 800 KB of state
        with node.client() as c:
            c.flush()
        before = _digest(node)
        good = (data / ckpt.STORAGE_FILE).read_bytes()
        # Fill what is left of the disk, so the next checkpoint cannot be written.
        filler = small_disk / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        with grpc.insecure_channel(node.address) as ch:
            from sutra_cluster.pb import storage_pb2_grpc
            stub = storage_pb2_grpc.StorageServiceStub(ch)
            with pytest.raises(grpc.RpcError) as info:
                stub.Flush(pb.FlushRequest(), timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, (info.value.code(), info.value.details())
        assert "ENOSPC" in info.value.details() and str(data) in info.value.details(), info.value.details()
        assert not (data / (ckpt.STORAGE_FILE + ".tmp")).exists(), "the half checkpoint was left on the full disk"
        assert (data / ckpt.STORAGE_FILE).read_bytes() == good
        assert _digest(node) == before
        filler.unlink()
        with node.client() as c:
            assert c.flush().success
    finally:
        node.stop()


def test_data_files_are_private_under_a_permissive_umask(tmp_path: Path) -> None:
    data = tmp_path / "node" / "data"  # made by the node itself
    old = os.umask(0o022)
    try:
        node = NodeProcess(tmp_path / "node", env={"STORAGE_PATH": str(data)}, log_path=tmp_path / "node.log")
        try:
            node.start()
            _write(node, 3)
            with node.client() as c:
                c.flush()
                _write(node, 1, prefix="after")
        finally:
            node.stop()
    finally:
        os.umask(old)
    paths = [data, *data.rglob("*")]
    assert any(p.name == ckpt.STORAGE_FILE for p in paths) and any(p.name == "wal.log" for p in paths)
    for p in paths:
        mode = stat.S_IMODE(p.lstat().st_mode)
        assert mode & 0o077 == 0, f"{p} is {oct(mode)}, want {'0o700' if p.is_dir() else '0o600'}"


def test_compose_publishes_every_port_on_loopback_by_default() -> None:
    # Docker's published ports bypass ufw/iptables INPUT rules, so "ufw deny 50051"
    # does not protect a compose install: nothing is published beyond loopback
    # unless the operator opts in for the router (SUTRA_ROUTER_BIND).
    spec = yaml.safe_load((ROOT / "deploy" / "compose-ha.yml").read_text())
    published = [(name, p) for name, svc in spec["services"].items() for p in svc.get("ports", [])]
    assert published, "the compose file publishes no port at all"
    for name, port in published:
        host = str(port).rsplit(":", 2)[0] if str(port).count(":") >= 2 else ""
        assert host in ("127.0.0.1", "${SUTRA_ROUTER_BIND:-127.0.0.1}"), f"{name} publishes {port!r} beyond loopback"
    assert [n for n, p in published if "SUTRA_ROUTER_BIND" in str(p)] == ["router"]


def test_request_id_fingerprints_survive_a_restart(tmp_path: Path) -> None:
    """M1 across a restart: the ids rebuilt from the WAL keep their fingerprints, for
    single writes and raw-logged batches alike."""
    node = NodeProcess(tmp_path / "data", log_path=tmp_path / "node.log")
    try:
        node.start()
        with grpc.insecure_channel(node.address) as ch:
            from sutra_cluster.pb import storage_pb2_grpc
            stub = storage_pb2_grpc.StorageServiceStub(ch)
            one = pb.LearnConceptRequest(concept_id="a", content="first", confidence=0.5, request_id="rid-1")
            batch = pb.LearnBatchRequest(concepts=[pb.LearnConceptRequest(concept_id="b", content="x", confidence=0.5)],
                                         request_id="rid-2")
            s1, s2 = stub.LearnConcept(one).sequence, stub.LearnBatch(batch).sequence
        node.stop()
        node.start()
        with grpc.insecure_channel(node.address) as ch:
            stub = storage_pb2_grpc.StorageServiceStub(ch)
            assert stub.LearnConcept(one).sequence == s1, "a retry after the restart was not recognised"
            assert stub.LearnBatch(batch).sequence == s2, "a batch retry after the restart was not recognised"
            last = stub.GetStats(pb.GetStatsRequest()).last_lsn
            for call, req in ((stub.LearnConcept, pb.LearnConceptRequest(concept_id="a", content="other",
                                                                         confidence=0.5, request_id="rid-1")),
                              (stub.LearnBatch, pb.LearnBatchRequest(delete_concept_ids=["b"], request_id="rid-2"))):
                with pytest.raises(grpc.RpcError) as info:
                    call(req)
                assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS, info.value.details()
            assert stub.GetStats(pb.GetStatsRequest()).last_lsn == last
    finally:
        node.stop()
