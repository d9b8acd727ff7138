"""Keeping long-lived, acyclic records out of CPython's cyclic collector.

The collector walks every tracked object at each full collection, and a full
collection runs each time the tracked heap grows by a quarter, so objects kept
per concept or per log record make the pauses grow with the data. CPython stops
tracking a plain tuple that holds only untracked values, but never a NamedTuple
or a slotted dataclass: at 60K applied concepts (two tracked tuples each) a full
collection stopped the node for 30-67 ms of CPU (0.1-0.4 s of wall time on a
loaded 2-core machine: replication lag and latency tails), and collections took
~3 us of CPU per applied record. Only objects that can never be part of a
reference cycle may be untracked (strings, numbers, dicts of strings, other
such records, objects that refer to none of them): reference counting still
frees them when they are replaced or dropped.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _gc_untracker() -> Callable[[object], None]:
    """CPython's PyObject_GC_UnTrack (safe on an untracked object), or a no-op
    where it cannot be reached."""
    try:
        fn = ctypes.pythonapi.PyObject_GC_UnTrack
    except AttributeError:  # not CPython
        return lambda _obj: None
    fn.argtypes = [ctypes.py_object]
    fn.restype = None
    return fn  # type: ignore[no-any-return]


untrack = _gc_untracker()
