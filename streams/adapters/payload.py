"""Typed readers over untrusted webhook JSON.

Every reader either returns a value of the promised type or raises `RejectedInput` naming the
path that was wrong (`at` is the parent's path: `text(line, "sku", "line_items[2]")` reports
`line_items[2].sku`), so adapters read like a description of the payload and can never leak a
KeyError/TypeError from a malformed body. Absent and null are the same thing: the platforms
disagree with themselves about which they send.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from streams.codec import loads
from streams.errors import Reason, RejectedInput
from streams.events import parse_money, parse_time

Json = Mapping[str, Any]


def load_object(body: bytes) -> Json:
    value = loads(body)
    if not isinstance(value, Mapping):
        raise RejectedInput(Reason.NOT_AN_OBJECT, f"expected a JSON object, got {type(value).__name__}")
    return value


def path_of(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


def obj(parent: Json, key: str, at: str = "") -> Json | None:
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise RejectedInput(Reason.INVALID_FIELD, f"{path_of(at, key)} must be an object")
    return value


def required_obj(parent: Json, key: str, at: str = "") -> Json:
    value = obj(parent, key, at)
    if value is None:
        raise RejectedInput(Reason.MISSING_FIELD, f"{path_of(at, key)} is required")
    return value


def array(parent: Json, key: str, at: str = "") -> list[Any]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise RejectedInput(Reason.INVALID_FIELD, f"{path_of(at, key)} must be a list")
    return value


def objects(parent: Json, key: str, at: str = "") -> list[Json]:
    values = array(parent, key, at)
    for index, value in enumerate(values):
        if not isinstance(value, Mapping):
            raise RejectedInput(Reason.INVALID_FIELD, f"{path_of(at, key)}[{index}] must be an object")
    return values


def as_text(value: Any, path: str) -> str | None:
    """A string, or an integer id written as a string (platforms flip between the two)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RejectedInput(Reason.INVALID_FIELD, f"{path} must be a string")
    stripped = str(value).strip()
    return stripped or None


def text(parent: Json, key: str, at: str = "") -> str | None:
    return as_text(parent.get(key), path_of(at, key))


def required_text(parent: Json, key: str, at: str = "") -> str:
    value = text(parent, key, at)
    if value is None:
        raise RejectedInput(Reason.MISSING_FIELD, f"{path_of(at, key)} is required")
    return value


def texts(parent: Json, key: str, at: str = "") -> list[str]:
    path = path_of(at, key)
    found = (as_text(value, f"{path}[{index}]") for index, value in enumerate(array(parent, key, at)))
    return [value for value in found if value is not None]


def money(value: Any, path: str) -> Decimal | None:
    """Decimal text or a JSON number (Loop and Swap send both), never through a float.
    `parse_money` bounds it far below where Decimal sums could overflow."""
    return parse_money(value, path)


def money_field(parent: Json, key: str, at: str = "") -> Decimal | None:
    return money(parent.get(key), path_of(at, key))


def money_object(parent: Json, key: str, at: str = "") -> tuple[Decimal | None, str | None]:
    """`{"amount": "12.50", "currency": "USD"}`; Redo sometimes nests it once more in `amount`."""
    path = path_of(at, key)
    value = obj(parent, key, at)
    while value is not None and isinstance(value.get("amount"), Mapping):
        value = obj(value, "amount", path)
        path = f"{path}.amount"
    if value is None:
        return None, None
    return money_field(value, "amount", path), text(value, "currency", path)


def time(value: Any, path: str) -> datetime | None:
    """RFC 3339 with an offset, in UTC. Naive times are refused by `parse_time`, never guessed."""
    if value is None or value == "":
        return None
    return parse_time(value, path)


def time_field(parent: Json, key: str, at: str = "") -> datetime | None:
    return time(parent.get(key), path_of(at, key))


def quantity(parent: Json, key: str, at: str = "") -> int:
    value = parent.get(key)
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
        raise RejectedInput(Reason.INVALID_FIELD, f"{path_of(at, key)} must be an integer from 1 to 100000")
    return value


def currency(value: str | None) -> str | None:
    # Event validation accepts only three upper-case letters; platforms are not all that strict.
    return value.upper() if value else None


def positive(amount: Decimal | None) -> Decimal | None:
    """A money fact of zero did not happen (an unprocessed refund line, an empty gift card)."""
    return amount if amount is not None and amount > 0 else None
