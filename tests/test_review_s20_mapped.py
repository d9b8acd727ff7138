"""Review of the mapped start (SUTRA_VECTOR_STORAGE=mmap keeps storage.dat's
whole vector blocks as the flat store's chunks, views of the file).

Before that change a start copied every vector out of storage.dat, so the file
could be damaged, edited or cut after the start without any effect on the
running node: the damage was found by the CRC at the next start (which falls
back to storage.dat.backup), or simply replaced by the next checkpoint. With
the file mapped, its bytes ARE the node's vectors for as long as the node
runs: the CRC is checked once, at the start. The review found two defects;
these tests pin what was done about them: a snapshot (checkpoint, replica
bootstrap, backup) hashes every row again and refuses damage, fail-stopping
the node's writes, and a file cut in place kills the node loudly (the
documented contract: never edit a data file under a running node)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sutra_cluster.errors import StorageFailure
from sutra_cluster.storage import checkpoint as ckpt
from sutra_cluster.storage.engine import Engine
from tests.test_scale_mapped_load import _cfg, _probe, _seeded, _stored

REPO = Path(__file__).resolve().parents[1]


def _first_vector_byte(path: Path) -> int:
    """Offset in storage.dat of a byte of the first columns frame's vectors (row 0, c0)."""
    with open(path, "rb") as f:
        dec = ckpt.SnapshotDecoder(f, str(path))
        first = dec.offset
    return first + ckpt.FRAME.size + 16 + 5  # as test_damaged_mapped_block_is_a_checksum_mismatch


def _flip_in_place(path: Path, off: int) -> None:
    """Bit rot as a disk or a stray writer makes it: the same inode, one byte
    changed, no truncation (tests/mutators.flip_bit rewrites the whole file)."""
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x10]))
        f.flush()
        os.fsync(f.fileno())


def test_review_s20_damage_after_a_mapped_start_is_not_laundered_into_the_next_checkpoint(tmp_path: Path) -> None:
    """Damage done to storage.dat while a mapped node runs reaches the node's
    vectors (they are the file's pages). The next checkpoint hashes every row
    again and refuses, so the damage is never written with a fresh, valid CRC
    (nor sent to a replica): the damaged file stays, and the next start finds
    it by its CRC."""
    _, stored, _ = _seeded(tmp_path)
    path = tmp_path / ckpt.STORAGE_FILE
    engine = Engine(_cfg(tmp_path))
    engine.lead("single-node")
    try:
        assert _stored(engine, _probe()) == stored
        _flip_in_place(path, _first_vector_byte(path))
        damaged = path.read_bytes()
        with pytest.raises(StorageFailure, match=r"concept 'c0' no longer matches"):
            engine.checkpoint(drain=True)
        assert path.read_bytes() == damaged, "a checkpoint replaced the damaged file"
        assert not (tmp_path / (ckpt.STORAGE_FILE + ".tmp")).exists(), "the refused checkpoint left its half file"
        with pytest.raises(StorageFailure, match=r"concept 'c0' no longer matches"):
            b"".join(engine.snapshot_blocks()[1])  # what a replica's bootstrap or a backup would receive
        assert engine.write_failure and "no longer matches" in engine.write_failure  # fail-stop: no more writes
    finally:
        engine.close()
    with pytest.raises(StorageFailure, match="storage.dat"):
        Engine(_cfg(tmp_path, "memory"))  # found by its CRC: never loaded as if it were whole


_CHILD = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from sutra_cluster.cli import install_fault_trace
    from sutra_cluster.storage.engine import Engine
    from tests.test_scale_mapped_load import _cfg
    install_fault_trace()  # as `sutra-cluster serve` does
    path = Path({path!r})
    engine = Engine(_cfg(path))
    os.truncate(path / "storage.dat", 0)   # as `cp other storage.dat` or `: > storage.dat` begin
    got = engine.vectors.stored("c0")
    engine.close()
    print("alive", got is not None)
""")


def test_review_s20_storage_dat_cut_in_place_kills_a_mapped_node_loudly(tmp_path: Path) -> None:
    """The contract under SUTRA_VECTOR_STORAGE=mmap (docs/HA.md, Scale): storage.dat
    is the node's memory, so cutting it in place while the node runs (an operator's
    cp over it, a restore tool writing in place) kills the node with SIGBUS on its
    next vector read, as a disk read error on a mapped page would. It must not
    serve on, and it must say where it died: `serve` installs a fault trace that
    writes the Python stack to its log (stderr)."""
    _seeded(tmp_path)
    code = _CHILD.format(repo=str(REPO), path=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert "alive" not in proc.stdout
    assert "Fatal Python error: Bus error" in proc.stderr and "vectors.py" in proc.stderr, proc.stderr[-2000:]
