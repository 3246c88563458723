"""The `returns.deadletter` record (SPEC §2): stage, reason, error, the original as received, at."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import orjson

from streams.errors import Reason, Stage
from streams.events import format_time


def dead_letter(
    *,
    stage: Stage,
    reason: Reason,
    error: str,
    original: bytes | Any,
    at: datetime,
    origin: dict[str, Any] | None = None,
) -> bytes:
    """`original` is kept byte for byte when it is bytes (text if UTF-8, else base64)."""
    record: dict[str, Any] = {
        "stage": stage.value,
        "reason": reason.value,
        "error": error,
        "at": format_time(at),
    }
    if isinstance(original, bytes):
        try:
            record["original"] = original.decode("utf-8")
        except UnicodeDecodeError:
            record["original"] = base64.b64encode(original).decode("ascii")
            record["original_encoding"] = "base64"
    else:
        record["original"] = original
    if origin:
        # Where it came from (topic, partition, offset, key) so an operator can find and replay it.
        record["origin"] = origin
    return orjson.dumps(record, default=str)
