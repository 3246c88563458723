"""How every process logs (worker, Faust's own loggers, every command): text for a terminal, one
JSON object per line for a log shipper. `RETURNSYNC_LOG_FORMAT`: json, text, or auto (text when
stderr is a terminal, json otherwise). Logs go to stderr; stdout is for command output.

A JSON record has time (UTC, ISO 8601), level, logger and message, plus the structured fields a
call site passes with `extra=` (FIELDS): a customer appears only as its hash (customer_ref), never
as an email, and no secret is ever a field.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

FIELDS = ("customer", "tenant", "topic", "partition", "offset", "stage", "reason", "status")
"""Structured fields a record may carry (`log.warning(..., extra={"customer": customer_ref(key)})`)."""

TEXT_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage().strip(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def resolve(log_format: str) -> str:
    """auto -> text on a terminal, json otherwise."""
    if log_format != "auto":
        return log_format
    return "text" if sys.stderr.isatty() else "json"


def logging_config(log_format: str, level: str) -> dict[str, Any]:
    """A logging.config.dictConfig for the whole process, Faust's loggers included (the worker
    hands it to Faust, which would otherwise install its own colour format on stdout)."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter} if resolve(log_format) == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"returnsync": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "returnsync"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
    }
