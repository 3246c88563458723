"""The one dead-letter writer (SPEC §2: `returns.deadletter`), for every stage that gives up on a
record: normalize, state, sync (the worker) and replay. Counted by stage and reason, logged with
where the record came from (never its content), written with the original as received.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from agents import metrics
from streams.deadletter import dead_letter
from streams.errors import Reason, Stage

log = logging.getLogger(__name__)
Send = Callable[[bytes | None, bytes], Awaitable[Any]]
"""(key, record) to the dead-letter topic, acknowledged when awaited."""


def origin_of(message: Any) -> dict[str, Any]:
    """Where a Kafka record came from, so an operator can find it and publish it again."""
    key = message.key.decode("utf-8", "replace") if message.key else None
    return {"topic": message.topic, "partition": message.partition, "offset": message.offset, "key": key}


class DeadLetters:
    def __init__(self, send: Send) -> None:
        self._send = send

    async def write(self, stage: Stage, reason: Reason, error: str, original: bytes | Any, *,
                    key: bytes | None = None, origin: dict[str, Any] | None = None) -> None:
        metrics.DEADLETTERS.labels(stage.value, reason.value).inc()
        record = dead_letter(stage=stage, reason=reason, error=error, original=original,
                             at=datetime.now(UTC), origin=origin)
        await self._send(key, record)
        where: dict[str, Any] = {name: origin[name] for name in ("topic", "partition", "offset")
                                 if origin and name in origin}
        log.info("dead-lettered stage=%s reason=%s origin=%s", stage.value, reason.value, origin,
                 extra={"stage": stage.value, "reason": reason.value, **where})

    async def message(self, stage: Stage, reason: Reason, error: str, message: Any) -> None:
        """A Kafka record this stage gives up on, kept byte for byte with its origin."""
        await self.write(stage, reason, error, message.value, key=message.key, origin=origin_of(message))

    async def send(self, customer_key: str, record: bytes) -> None:
        """A record already built (Klaviyo's rejections carry their own detail), counted by its maker."""
        await self._send(customer_key.encode(), record)
