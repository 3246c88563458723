"""The `returns.deadletter` record (SPEC §2): stage, reason, error, the original as received, at;
written by `dead_letter`, read back by `read_dead_letter` (the `returnsync deadletters` commands)."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from streams.errors import Reason, RejectedInput, Stage
from streams.events import format_time, parse_time


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


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A `returns.deadletter` record read back: what `dead_letter` wrote."""

    stage: str
    reason: str
    error: str
    at: datetime | None
    original: bytes
    """As received: the bytes a stage gave up on; a structured original (Klaviyo's) as JSON."""
    origin: Mapping[str, Any] = field(default_factory=dict)


def read_dead_letter(data: bytes) -> DeadLetter:
    """Raises ValueError for a record that is not a dead letter."""
    try:
        record = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(record, dict) or not {"stage", "reason", "original"} <= record.keys():
        raise ValueError("not a dead-letter record (needs stage, reason and original)")
    original = record["original"]
    if isinstance(original, str):
        raw = (base64.b64decode(original) if record.get("original_encoding") == "base64"
               else original.encode("utf-8"))
    else:
        raw = orjson.dumps(original)
    try:
        at = parse_time(record.get("at"), "at") if record.get("at") is not None else None
    except RejectedInput:
        at = None
    origin = record.get("origin")
    return DeadLetter(str(record["stage"]), str(record["reason"]), str(record.get("error", "")), at, raw,
                      origin if isinstance(origin, dict) else {})


_EMAIL = re.compile(r"[^\s@'\"<>(),;:\[\]]+@[^\s@'\"<>(),;:\[\]]+")


def hide_emails(text: str) -> str:
    """Error texts quote what Klaviyo refused, emails included: shown as `<email>` by default."""
    return _EMAIL.sub("<email>", text)
