"""Klaviyo's documented field rules that the OAS schemas do not encode (klaviyo-api.md §3).

Limits use decimal units (100 KB = 100,000 bytes): where Klaviyo's docs are ambiguous the
sandbox picks the stricter reading, so a client that passes here also passes in production.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from klaviyo_sandbox.validation import Violation, escape, parse_date_time

EMAIL_MAX = 100  # "valid and <100 chars"
METRIC_NAME_MAX = 128  # "must be less than 128 characters"
UNIQUE_ID_MAX = 255
EVENT_PROPERTIES_MAX = 400
ARRAY_ITEMS_MAX = 4000
NESTING_MAX = 10
STRING_BYTES_MAX = 100_000
EVENT_PROFILE_BYTES_MAX = 95_000
EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_EVENT_AHEAD = timedelta(days=365)

# Deliberately simple: one @, no spaces, a dotted domain. Klaviyo's exact grammar is not
# published; this rejects the mistakes a returns platform actually produces.
_EMAIL = re.compile(r"^[^@\s\"<>()\[\],;:\\]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$")
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
PROFILE_IDENTIFIERS = ("email", "phone_number", "external_id")
EVENT_ONLY_IDENTIFIERS = ("anonymous_id", "_kx")

# Keys that carry consent anywhere in a Klaviyo body. `$consent`/`$sms_consent` are the
# legacy Track/Identify consent properties: sending them as custom properties is still an
# attempt to write consent, so they count even inside `properties`.
CONSENT_FIELDS = frozenset(
    {"subscriptions", "subscription", "consent", "consented_at", "suppression", "suppressions",
     "list_suppressions", "sms_consent", "email_consent"}
)
LEGACY_CONSENT_PROPERTIES = frozenset({"$consent", "$sms_consent", "$email_consent"})
# Objects whose keys are the customer's own property names, not Klaviyo fields.
CUSTOM_CONTAINERS = frozenset({"properties", "append", "unappend"})


def email_problem(email: str) -> str | None:
    if len(email) >= EMAIL_MAX:
        return f"Email must be fewer than {EMAIL_MAX} characters."
    if not _EMAIL.match(email.strip()):
        return f"Invalid email address: '{email}'."
    return None


def profile_identity(
    attributes: Mapping[str, Any], has_id: bool, pointer: str, *, event_profile: bool = False
) -> list[Violation]:
    """At least one identifier, and the identifiers given must be well formed."""
    out: list[Violation] = []
    email = attributes.get("email")
    if isinstance(email, str) and (problem := email_problem(email)):
        out.append(Violation(f"{pointer}/email", problem))
    phone = attributes.get("phone_number")
    if isinstance(phone, str) and not _E164.match(phone):
        out.append(Violation(f"{pointer}/phone_number", f"Invalid phone number '{phone}': use E.164."))
    names = PROFILE_IDENTIFIERS + (EVENT_ONLY_IDENTIFIERS if event_profile else ())
    if not has_id and not any(isinstance(attributes.get(name), str) and attributes[name] for name in names):
        out.append(Violation(pointer, "A profile needs at least one identifier: id, email, phone_number "
                                      "or external_id."))
    return out


def event_attributes(attributes: Mapping[str, Any], pointer: str, now: datetime) -> list[Violation]:
    out: list[Violation] = []
    name = attributes.get("metric", {}).get("data", {}).get("attributes", {}).get("name")
    if isinstance(name, str) and not 0 < len(name) < METRIC_NAME_MAX:
        out.append(Violation(f"{pointer}/metric/data/attributes/name",
                             f"Metric name must be 1 to {METRIC_NAME_MAX - 1} characters."))
    unique_id = attributes.get("unique_id")
    if isinstance(unique_id, str) and not 0 < len(unique_id) <= UNIQUE_ID_MAX:
        out.append(Violation(f"{pointer}/unique_id", f"unique_id must be 1 to {UNIQUE_ID_MAX} characters."))
    time = attributes.get("time")
    parsed = parse_date_time(time) if isinstance(time, str) else None
    if parsed is not None and not EARLIEST_EVENT_TIME <= parsed <= now + LATEST_EVENT_AHEAD:
        out.append(Violation(f"{pointer}/time",
                             "Event time must be after the year 2000 and at most 1 year in the future."))
    properties = attributes.get("properties")
    if isinstance(properties, dict):
        if len(properties) > EVENT_PROPERTIES_MAX:
            out.append(Violation(f"{pointer}/properties",
                                 f"Events may have at most {EVENT_PROPERTIES_MAX} properties."))
        out.extend(_shape(properties, f"{pointer}/properties", 1))
    return out


def _shape(value: Any, pointer: str, depth: int) -> Iterator[Violation]:
    """Array length and nesting depth inside event properties."""
    if depth > NESTING_MAX:
        yield Violation(pointer, f"Event properties may nest at most {NESTING_MAX} levels.")
        return
    children: Iterator[tuple[str, Any]]
    if isinstance(value, list):
        if len(value) > ARRAY_ITEMS_MAX:
            yield Violation(pointer, f"Arrays may hold at most {ARRAY_ITEMS_MAX} items.")
        children = ((str(index), item) for index, item in enumerate(value))
    elif isinstance(value, dict):
        children = ((escape(key), item) for key, item in value.items())
    else:
        return
    for key, item in children:
        if isinstance(item, dict | list):
            yield from _shape(item, f"{pointer}/{key}", depth + 1)


def long_strings(value: Any, pointer: str = "") -> Iterator[Violation]:
    """Every string in a body, keys included, must fit in 100 KB."""
    if isinstance(value, str):
        if len(value) * 4 > STRING_BYTES_MAX and len(value.encode()) > STRING_BYTES_MAX:
            yield Violation(pointer, "Strings may be at most 100 KB.")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from long_strings(item, f"{pointer}/{index}")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from long_strings(key, f"{pointer}/{escape(key)}")
            yield from long_strings(item, f"{pointer}/{escape(key)}")


def consent_fields(value: Any, pointer: str = "", in_custom: bool = False) -> Iterator[str]:
    """Pointers to consent-carrying keys. Custom `properties` are free text, so only the
    legacy `$consent` keys count inside them."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield from consent_fields(item, f"{pointer}/{index}", in_custom)
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{pointer}/{escape(key)}"
            if key in LEGACY_CONSENT_PROPERTIES or (not in_custom and key.lower() in CONSENT_FIELDS):
                yield child
            elif not in_custom:
                yield from consent_fields(item, child, in_custom=key in CUSTOM_CONTAINERS)


def identity_key(profile_data: Mapping[str, Any]) -> tuple[str, str]:
    """How one request names a profile, for the bulk-events duplicate check."""
    attributes = profile_data.get("attributes") or {}
    for name in ("email", "external_id", "phone_number", "anonymous_id", "_kx"):
        value = attributes.get(name)
        if isinstance(value, str) and value:
            return name, value.strip().lower() if name == "email" else value
    return "id", str(profile_data.get("id"))
