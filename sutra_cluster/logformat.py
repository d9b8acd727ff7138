"""Log output of the node and router processes, by ``SUTRA_LOG_FORMAT``.

``text`` (the default) is one readable line a record. ``json`` is one JSON
object a line on stderr, for log shippers (Loki/Promtail, Fluent Bit, Vector,
Kubernetes' log collection): keys ``time`` (RFC 3339, UTC, milliseconds),
``level``, ``logger``, ``message``, the process's context fields (a node's
``node``, ``shard`` and ``term``; a router's ``process``), and ``exception``
when the record carries a traceback. Newlines inside a message stay inside the
JSON string, so a traceback never splits into several log entries.
"""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``fields`` are record attributes added by a
    filter (absent ones are left out)."""

    def __init__(self, fields: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.fields = fields

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, object] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in self.fields:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


def install(log_format: str, level: str, text_format: str, fields: tuple[str, ...] = (),
            context: logging.Filter | None = None) -> None:
    """Make one stderr handler the root logger's only one: ``text_format`` (a
    logging format string) for ``text``, JsonFormatter(``fields``) for ``json``.
    ``context`` adds the fields to every record."""
    handler = logging.StreamHandler(sys.stderr)
    if context is not None:
        handler.addFilter(context)
    handler.setFormatter(JsonFormatter(fields) if log_format == "json" else logging.Formatter(text_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
