"""Output for read commands: an aligned table for people, JSON or YAML for
scripts (``-o json|yaml``, ``--json``), as ``patronictl -f`` and ``etcdctl -w`` do.

Contract: JSON and YAML carry the same document (plain dicts, lists, strings,
numbers, booleans and None); the table is a view of it and may drop fields.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TextIO

FORMATS = ("table", "json", "yaml")


def dump(doc: object, fmt: str, out: TextIO = sys.stdout) -> None:
    """Write ``doc`` as JSON (one line: watch mode emits one document per refresh) or YAML."""
    if fmt == "json":
        out.write(json.dumps(doc, sort_keys=False) + "\n")
    elif fmt == "yaml":
        import yaml

        out.write("---\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
    else:
        raise ValueError(f"output format {fmt!r}: choose one of {', '.join(FORMATS)}")
    out.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[str] = ()) -> str:
    """An aligned text table: widths come from the values, numbers (columns in
    ``right``) align right, ``None`` shows as '-'."""
    cells = [[("-" if v is None else str(v)) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if h in right else v.ljust(w) for v, w, h in zip(values, widths, headers, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in cells)])


def ago(seconds: float | None) -> str:
    """'3 s ago', '5 min ago', '2 h ago' (None: '-')."""
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 120:
        return f"{s:.0f} s ago"
    if s < 7200:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"
