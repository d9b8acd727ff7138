"""File operations shared by the WAL, the checkpoint and the term history.

Durable writes, one recipe written once: write a temporary file and fsync it,
rename it over the target, fsync the directory. After a crash at any point the
target holds either its old or its new contents, complete, and once these
functions return the new contents survive power loss.

And read-only mappings of files nothing rewrites in place (sealed WAL
segments, storage.dat), mapped in one call rather than a page fault per 4 KB.
"""

from __future__ import annotations

import io
import mmap
import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

__all__ = ["fsync_dir", "map_readonly", "populate", "replace_durably", "write_file_synced"]

_MADV_POPULATE_READ = 22  # Linux 5.14+: map a range's pages in one call (not in Python's mmap module)


def map_readonly(stream: BinaryIO) -> mmap.mmap | None:
    """A read-only shared mapping of the whole file behind ``stream``, or None
    when it has no descriptor or is empty."""
    try:
        fd = stream.fileno()
        if os.fstat(fd).st_size == 0:
            return None
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def populate(mapping: mmap.mmap, offset: int, n: int) -> None:
    """Map ``[offset, offset + n)`` of a read-only mapping in one call before it
    is read: a page fault per 4 KB page cost more than the read itself.  Best
    effort (older kernels refuse the advice; the pages then fault in as they
    are read)."""
    if n < (1 << 20):
        return
    start = offset - offset % mmap.PAGESIZE
    try:
        mapping.madvise(_MADV_POPULATE_READ, start, min(len(mapping) - start, n + offset - start))
    except (OSError, ValueError):
        pass


def fsync_dir(path: Path) -> None:
    """fsync a directory, making renames, creations and unlinks in it durable.

    Raises OSError (an fsync error included: the caller decides whether the
    page cache can still be trusted).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_synced(path: Path, data: bytes | Iterable[bytes], *, fsync: bool = True) -> int:
    """Create or overwrite ``path`` with ``data`` (bytes or an iterable of blocks)
    and, unless ``fsync`` is False, fsync it; returns the bytes written.

    The directory entry is NOT made durable: follow with :func:`replace_durably`
    or :func:`fsync_dir`. Raises OSError; ``path`` may then be partly written.
    """
    blocks = (data,) if isinstance(data, bytes | bytearray | memoryview) else data
    size = 0
    with open(path, "wb", buffering=1 << 20) as f:
        for block in blocks:
            f.write(block)
            size += len(block)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    return size


def replace_durably(src: Path, dst: Path, *, fsync: bool = True) -> None:
    """Atomically rename ``src`` over ``dst`` and, unless ``fsync`` is False,
    fsync ``dst``'s directory so the rename survives power loss.

    ``src`` must already be fsynced (:func:`write_file_synced`) and live in the
    same file system. Raises OSError.
    """
    os.replace(src, dst)
    if fsync:
        fsync_dir(dst.parent)
