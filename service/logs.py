"""Logging: one line per event, readable text or one JSON object a line."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

from service.timestamps import utc_now

# Fields a log call may attach with `extra=`; they become keys of the line.
EVENT_FIELDS = (
    "request_id",
    "trace_id",
    "method",
    "route",
    "path",
    "status",
    "duration_ms",
    "client",
    "limit",
)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in EVENT_FIELDS if hasattr(record, name)}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": utc_now().isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return line


def configure_logging(level: str, log_format: str) -> None:
    """Send every logger (ours, uvicorn's, databases') to stderr in one format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Our middleware writes the access line; uvicorn's would be a second one.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("asyncpg.pool").addFilter(_without_traceback)


def _without_traceback(record: logging.LogRecord) -> bool:
    """asyncpg's pool logs a full traceback each time it fails to reopen a connection (about once
    a second while the database is away): one line each, naming the error, is enough."""
    if record.exc_info and record.exc_info[1] is not None:
        error = record.exc_info[1]
        record.msg = f"{record.getMessage()}: {type(error).__name__}: {error}".rstrip(": ")
        record.args = None
        record.exc_info = None
        record.exc_text = None
    return True
