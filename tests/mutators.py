"""Named corruptions for on-disk format tests, as etcd's ``corruptFunc`` and
LevelDB's ``IncrementByte``/``ShrinkSize``: each damages one file in place, in
one way, and returns the file's new contents so a test can assert that nothing
else changed it afterwards."""

from __future__ import annotations

import os
from pathlib import Path

SECTOR = 512


def truncate_to(path: Path, n: int) -> bytes:
    """Cut ``path`` to its first ``n`` bytes (a write torn at byte ``n``)."""
    size = path.stat().st_size
    assert 0 <= n <= size, f"cannot truncate {path} of {size} bytes to {n}"
    os.truncate(path, n)
    return path.read_bytes()


def zero_sector(path: Path, off: int) -> bytes:
    """Zero the 512-byte sector at ``off`` (a sector the disk never wrote)."""
    data = bytearray(path.read_bytes())
    assert off % SECTOR == 0 and off + SECTOR <= len(data), f"no whole sector at {off} in {path}"
    data[off : off + SECTOR] = bytes(SECTOR)
    path.write_bytes(data)
    return bytes(data)


def flip_bit(path: Path, off: int, mask: int) -> bytes:
    """XOR the byte at ``off`` with ``mask`` (bit rot; ``mask`` 0xFF flips the whole byte)."""
    assert 0 < mask <= 0xFF
    data = bytearray(path.read_bytes())
    data[off] ^= mask
    path.write_bytes(data)
    return bytes(data)


def append_bytes(path: Path, extra: bytes) -> bytes:
    """Append ``extra`` to ``path`` (garbage or preallocated zeros after the last write)."""
    with open(path, "ab") as f:
        f.write(extra)
    return path.read_bytes()
