"""The fold's one write per event: the new state to the table, its sync record to the outbox.

Or, when either cannot be written, neither: the event is dead-lettered (stage `state`, reason
`record_too_large` or `state_write_failed`), counted in `returnsync_state_write_failures_total`,
and the customer keeps the state it had, so a re-drive once the cause is fixed applies the event
as new. Size is checked before writing because the table's changelog record is sent in the
background: a record the producer or broker refuses there would stop the worker, not this event.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agents import metrics
from agents.deadletters import DeadLetters
from agents.settings import DEFAULT_MAX_STATE_BYTES
from streams.codec import encode_state
from streams.errors import Reason, Stage
from streams.outbox import sync_record_bytes
from streams.reducer import Applied, Result

log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class Refusal:
    reason: Reason
    detail: str


def size_refusal(key: bytes, state: bytes | None, record: bytes, limit: int) -> Refusal | None:
    """Why this write must not happen, if it must not: `state` (None when unchanged, as for a
    duplicate) or `record`, each with its key, over `limit` bytes."""
    for what, value in (("customer state", state), ("sync record", record)):
        if value is not None and len(key) + len(value) > limit:
            return Refusal(Reason.RECORD_TOO_LARGE,
                           f"{what} of {len(key) + len(value):,} bytes is over the {limit:,} byte limit "
                           "(RETURNSYNC_MAX_STATE_BYTES)")
    return None


class StateWrites:
    """Writes what the fold made of one event, or dead-letters the event."""

    def __init__(self, table: MutableMapping[bytes, bytes],
                 sync: Callable[[bytes, bytes, int], Awaitable[Any]], dead_letters: DeadLetters,
                 max_bytes: int = DEFAULT_MAX_STATE_BYTES) -> None:
        self.table, self.sync, self.dead_letters, self.max_bytes = table, sync, dead_letters, max_bytes

    async def write(self, key: bytes, stored: bytes | None, result: Result, message: Any,
                    ingested_at: datetime) -> bytes | None:
        """The customer's stored state after `message` (its event reduced to `result`; `stored`
        the value before), written with its sync record; None if refused."""
        changed = result.applied is not Applied.DUPLICATE
        try:
            state = encode_state(result.state) if changed or stored is None else stored
            record = sync_record_bytes(state, message.value, result.applied, ingested_at)
        except Exception as exc:  # any encoding failure refuses this event only
            await self._refuse(Refusal(Reason.STATE_WRITE_FAILED, f"encoding failed: {exc!r}"), message)
            return None
        refusal = size_refusal(key, state if changed else None, record, self.max_bytes)
        if refusal is not None:
            await self._refuse(refusal, message)
            return None
        try:
            if changed:
                self.table[key] = state
            # Re-sent for duplicates too: if a crash fell between the table write and this send,
            # the redelivered event is the only chance to deliver it; Klaviyo dedupes by unique_id.
            await self.sync(key, record, message.partition)
        except Exception as exc:  # the producer or the store refused: this event only
            if changed:
                self._restore(key, stored)
            await self._refuse(Refusal(Reason.STATE_WRITE_FAILED, f"write failed: {exc!r}"), message)
            return None
        return state

    def _restore(self, key: bytes, stored: bytes | None) -> None:
        if stored is not None:
            self.table[key] = stored
        elif key in self.table:
            del self.table[key]

    async def _refuse(self, refusal: Refusal, message: Any) -> None:
        metrics.STATE_WRITE_FAILURES.labels(refusal.reason.value).inc()
        log.warning("state not written reason=%s offset=%s", refusal.reason.value, message.offset,
                    extra={"topic": message.topic, "partition": message.partition, "offset": message.offset})
        await self.dead_letters.message(Stage.STATE, refusal.reason, refusal.detail, message)
