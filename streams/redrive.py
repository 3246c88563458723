"""Where a dead letter goes back in: the start of the stage that gave up on it.

- webhook (refused for a missing secret or a bad signature): verified now, with the secret
  configured now; only then appended to `returns.raw`, as the HTTP edge would have.
- normalize: the envelope back onto `returns.raw`.
- state: the event back onto `returns.events`, keyed by its customer.
- sync: the customer's state is derived again: their events are published again, the state
  agent counts them as duplicates and hands on the current state (klaviyo/outbox: duplicates are
  re-sent), and Klaviyo drops timeline events it already has by unique_id.

Every path is idempotent: each original keeps its ids, so a second re-drive changes nothing in
Klaviyo. What cannot be re-driven says why, so the operator knows what is left to fix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

import orjson

from streams.codec import decode_event
from streams.deadletter import DeadLetter
from streams.errors import RejectedInput, Stage
from streams.raw import decode_raw, encode_raw, raw_key

Verify = Callable[[str, Mapping[str, str], bytes], bool | None]
"""(source, kept proof, body) -> signed by the configured secret; None when none is configured."""


class Target(Enum):
    RAW = "raw"
    EVENTS = "events"
    CUSTOMER = "customer"
    """Derive the customer's state again (publish their events again)."""


@dataclass(frozen=True, slots=True)
class Redrive:
    target: Target
    key: bytes | None = None
    value: bytes = b""
    customer_key: str = ""


@dataclass(frozen=True, slots=True)
class Refused:
    """Not re-driven: why, in words an operator can act on."""

    why: str


def redrive(letter: DeadLetter, key: bytes | None, verify: Verify) -> Redrive | Refused:
    """What re-driving `letter` (its Kafka key `key`) publishes, or why it cannot be re-driven."""
    if letter.stage == Stage.WEBHOOK:
        return _webhook(letter, verify)
    if letter.stage == Stage.NORMALIZE:
        try:
            raw = decode_raw(letter.original)
        except RejectedInput as exc:
            return Refused(f"the envelope is still unreadable: {exc}")
        return Redrive(Target.RAW, _raw_key(raw.source, raw.body) or key, letter.original)
    if letter.stage == Stage.STATE:
        try:
            event = decode_event(letter.original)
        except RejectedInput as exc:
            return Refused(f"the event is still refused: {exc}")
        return Redrive(Target.EVENTS, event.customer_key.encode(), letter.original)
    if letter.stage == Stage.SYNC:
        customer = key.decode("utf-8", "replace") if key else ""
        if not customer:
            return Refused("the record names no customer (a Klaviyo import error without a row match)")
        return Redrive(Target.CUSTOMER, customer_key=customer)
    return Refused(f"unknown stage {letter.stage!r}")


def _webhook(letter: DeadLetter, verify: Verify) -> Redrive | Refused:
    try:
        raw = decode_raw(letter.original)
        proof = orjson.loads(letter.original).get("proof") or {}
    except (RejectedInput, orjson.JSONDecodeError, AttributeError) as exc:
        return Refused(f"the kept webhook is unreadable: {exc}")
    signed = verify(raw.source, proof, raw.body)
    variable = f"{raw.source.upper()}_WEBHOOK_SECRET"
    if signed is None:
        return Refused(f"{variable} is still not configured")
    if not signed:
        return Refused(f"the signature does not match {variable}")
    return Redrive(Target.RAW, _raw_key(raw.source, raw.body), encode_raw(raw))


def _raw_key(source: str, body: bytes) -> bytes | None:
    try:
        key = raw_key(source, orjson.loads(body))
    except orjson.JSONDecodeError:
        return None
    return key.encode() if key else None
