"""Log records (agents/logs.py): JSON lines with the fields a shipper indexes, text for people."""

from __future__ import annotations

import io
import logging
import logging.config
import sys

import orjson
import pytest

from agents.logs import JsonFormatter, logging_config, resolve
from streams.events import customer_ref

EMAIL = "ada.lovelace@example.com"


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("agents.test", logging.WARNING, __file__, 1, message, args, None)
    entry.__dict__.update(extra)
    return entry


def test_a_json_record_has_time_level_logger_message_and_the_structured_fields_given() -> None:
    ref = customer_ref(f"default/{EMAIL}")
    line = JsonFormatter().format(record("klaviyo rejected status=%s customer=%s", 409, ref,
                                         status=409, customer=ref, topic="returns.events", partition=3,
                                         offset=41, unrelated="not a field"))
    entry = orjson.loads(line)
    assert set(entry) == {"time", "level", "logger", "message", "status", "customer", "topic", "partition",
                          "offset"}
    assert entry["time"].endswith("+00:00")
    assert (entry["level"], entry["logger"]) == ("warning", "agents.test")
    assert entry["message"] == f"klaviyo rejected status=409 customer={ref}"
    assert (entry["customer"], entry["partition"], entry["offset"]) == (ref, 3, 41)
    assert EMAIL not in line


def test_an_exception_is_kept_in_the_same_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        entry = logging.LogRecord("agents.test", logging.ERROR, __file__, 1, "failed", (), None)
        entry.exc_info = sys.exc_info()
    line = JsonFormatter().format(entry)
    assert "\n" not in line and "ValueError: boom" in orjson.loads(line)["exception"]


@pytest.mark.parametrize(("chosen", "json_lines"), [("json", True), ("text", False)])
def test_the_configuration_applies_to_every_logger_of_the_process(
    chosen: str, json_lines: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    logging.config.dictConfig(logging_config(chosen, "info"))
    try:
        logging.getLogger("faust.transport.consumer").info("Revoking previously assigned partitions")
        logging.getLogger("agents.worker").debug("below the level: not written")
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False,
                                   "root": {"handlers": [], "level": "WARNING"}})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    if json_lines:
        assert orjson.loads(lines[0])["logger"] == "faust.transport.consumer"
    else:
        assert "level=INFO logger=faust.transport.consumer Revoking" in lines[0]


def test_auto_is_text_on_a_terminal_and_json_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    assert resolve("auto") == "text"
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert resolve("auto") == "json"
    assert resolve("text") == "text"
