"""What a refused bulk request says about its items, and the dead-letter records for them.

Klaviyo refuses a whole bulk request for one bad item. Its errors usually point at the item
(`source.pointer`), so the others can be resent at once; when they do not (a 409 on identifiers,
a 413), the caller bisects until the culprit stands alone.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from datetime import UTC, datetime
from typing import Any

from agents.klaviyo.client import KlaviyoRejected
from streams.deadletter import dead_letter
from streams.errors import Reason, Stage

_PROFILE_ITEM = re.compile(r"^/data/attributes/profiles/data/(\d+)(?:/|$)")
_EVENT_ITEM = re.compile(
    r"^/data/attributes/events-bulk-create/data/(\d+)(?:/attributes/events/data/(\d+))?(?:/|$)"
)
# Below this many items a refused bulk request is retried item by item on the single endpoint.
SINGLE_FALLBACK = 4

Errors = list[dict[str, Any]]
# Profile states and events remembered as refused for good, most recent kept.
KNOWN_MAX = 100_000


class Known:
    """What Klaviyo refused for good (or would: too large), so that a redelivered batch, or the
    next batch carrying the same state, neither sends it again nor dead-letters it twice.

    Profiles are remembered by (customer, state version): a newer state is a different request
    and is tried. Events by (email, metric, unique_id), which is what makes one Klaviyo event.
    Bounded, oldest forgotten first: forgetting only costs one more request and dead letter.
    A state or event handed on again on purpose (a duplicate event: a re-drive, or a platform
    sending it again) is forgotten first, so that it is tried again.
    """

    def __init__(self, capacity: int = KNOWN_MAX) -> None:
        self.capacity = capacity
        self._profiles: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._events: OrderedDict[Hashable, None] = OrderedDict()

    def profile_refused(self, customer_key: str, version: int) -> bool:
        return (customer_key, version) in self._profiles

    def event_refused(self, key: Hashable) -> bool:
        return key in self._events

    def refuse_profile(self, customer_key: str, version: int) -> bool:
        """Remember it; False when it already was (its dead letter is written)."""
        return _remember(self._profiles, (customer_key, version), self.capacity)

    def refuse_event(self, key: Hashable) -> bool:
        return _remember(self._events, key, self.capacity)

    def forget_profile(self, customer_key: str, version: int) -> None:
        self._profiles.pop((customer_key, version), None)

    def forget_event(self, key: Hashable) -> None:
        self._events.pop(key, None)


def _remember(known: OrderedDict[Any, None], key: Hashable, capacity: int) -> bool:
    if key in known:
        known.move_to_end(key)
        return False
    known[key] = None
    if len(known) > capacity:
        known.popitem(last=False)
    return True


def pointed_profiles(rejection: KlaviyoRejected, count: int) -> dict[int, Errors]:
    """Profile index -> its errors; empty when any error points at no single profile."""
    found: dict[int, Errors] = {}
    for error in rejection.errors:
        match = _PROFILE_ITEM.match(_pointer(error))
        if match is None or int(match.group(1)) >= count:
            return {}
        found.setdefault(int(match.group(1)), []).append(error)
    return found


def pointed_events(
    rejection: KlaviyoRejected, entries: Sequence[Sequence[object]]
) -> dict[tuple[int, int], Errors]:
    """(entry, event) -> errors; an error on an entry's profile counts for all its events."""
    found: dict[tuple[int, int], Errors] = {}
    for error in rejection.errors:
        match = _EVENT_ITEM.match(_pointer(error))
        if match is None or int(match.group(1)) >= len(entries):
            return {}
        entry = int(match.group(1))
        if match.group(2) is None:
            indexes = range(len(entries[entry]))
        elif int(match.group(2)) < len(entries[entry]):
            indexes = range(int(match.group(2)), int(match.group(2)) + 1)
        else:
            return {}
        for index in indexes:
            found.setdefault((entry, index), []).append(error)
    return found


def rejected_record(
    rejection: KlaviyoRejected, request: Any, errors: Errors | None = None, *, version: int | None = None,
) -> bytes:
    """returns.deadletter record for a request (or items of one) Klaviyo refused for good.
    `version`: the customer's state version a refused profile write carried."""
    errors = rejection.errors if errors is None else errors
    detail = errors[0].get("detail", rejection.detail) if errors else rejection.detail
    original: dict[str, Any] = {"request": request, "klaviyo_errors": errors}
    if version is not None:
        original["version"] = version
    return dead_letter(
        stage=Stage.SYNC,
        reason=Reason.KLAVIYO_REJECTED,
        error=f"klaviyo {rejection.status}: {detail}",
        original=original,
        at=datetime.now(UTC),
    )


def too_large(why: str) -> KlaviyoRejected:
    """The refusal Klaviyo would answer (413), made here so that the request is never sent."""
    detail = f"{why} (refused before sending)"
    return KlaviyoRejected(413, detail, [{"status": 413, "code": "too_large", "detail": detail}])


def import_error_record(row: dict[str, Any]) -> bytes:
    """returns.deadletter record for one import-error row of a bulk profile import job."""
    attributes = row.get("attributes") or {}
    return dead_letter(
        stage=Stage.SYNC,
        reason=Reason.KLAVIYO_IMPORT_ERROR,
        error=f"klaviyo import error {attributes.get('code')}: {attributes.get('detail')}",
        original=row,
        at=datetime.now(UTC),
    )


def row_index(row: dict[str, Any]) -> int | None:
    pointer = ((row.get("attributes") or {}).get("source") or {}).get("pointer") or ""
    match = _PROFILE_ITEM.match(pointer)
    return int(match.group(1)) if match else None


def row_email(row: dict[str, Any]) -> str | None:
    payload = (row.get("attributes") or {}).get("original_payload") or {}
    email = (payload.get("attributes") or {}).get("email") if isinstance(payload, dict) else None
    return email.strip().lower() if isinstance(email, str) else None


def _pointer(error: dict[str, Any]) -> str:
    return str((error.get("source") or {}).get("pointer") or "")
