"""How an incoming profile write changes a stored profile: pure functions, no storage.

profile-import and events clear a field sent as null and leave an omitted field alone;
bulk import ignores nulls entirely (klaviyo-api.md §3.2), so the one switch is `clear_nulls`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Fields held on the profile itself rather than in custom `properties`.
STANDARD_FIELDS = (
    "email", "phone_number", "external_id", "anonymous_id", "_kx", "first_name", "last_name",
    "organization", "locale", "title", "image",
)


def merge_fields(
    current: Mapping[str, Any], incoming: Mapping[str, Any], *, clear_nulls: bool
) -> dict[str, Any]:
    """Shallow merge: a sent value replaces the stored one whole (Klaviyo does not deep-merge)."""
    out = dict(current)
    for key, value in incoming.items():
        if value is None:
            if clear_nulls:
                out.pop(key, None)
        else:
            out[key] = value
    return out


def merge_section(
    current: Mapping[str, Any], incoming: Any, *, clear_nulls: bool
) -> dict[str, Any]:
    """`location` and `properties`: null clears the whole section, an object merges key by key."""
    if incoming is None:
        return {} if clear_nulls else dict(current)
    return merge_fields(current, incoming, clear_nulls=clear_nulls)


def apply_attributes(
    fields: Mapping[str, Any],
    location: Mapping[str, Any],
    properties: Mapping[str, Any],
    attributes: Mapping[str, Any],
    *,
    clear_nulls: bool,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    standard = {key: value for key, value in attributes.items() if key in STANDARD_FIELDS}
    if isinstance(standard.get("email"), str):
        standard["email"] = normalise_email(standard["email"])
    new_fields = merge_fields(fields, standard, clear_nulls=clear_nulls)
    new_location = dict(location)
    if "location" in attributes:
        new_location = merge_section(location, attributes["location"], clear_nulls=clear_nulls)
    new_properties = dict(properties)
    if "properties" in attributes:
        new_properties = merge_section(properties, attributes["properties"], clear_nulls=clear_nulls)
    return new_fields, new_location, new_properties


def patch_properties(properties: Mapping[str, Any], patch: Mapping[str, Any] | None) -> dict[str, Any]:
    """meta.patch_properties: append, then unappend, then unset.

    Append does not de-duplicate: Klaviyo documents none, and a sandbox that silently
    de-duplicated would hide a client that appends again on every replay.
    """
    out = dict(properties)
    if not patch:
        return out
    for key, values in (patch.get("append") or {}).items():
        existing = out.get(key)
        base = [] if existing is None else list(existing) if isinstance(existing, list) else [existing]
        base.extend(values if isinstance(values, list) else [values])
        out[key] = base
    for key, values in (patch.get("unappend") or {}).items():
        existing = out.get(key)
        if isinstance(existing, list):
            removed = values if isinstance(values, list) else [values]
            out[key] = [item for item in existing if item not in removed]
    unset = patch.get("unset")
    for key in [unset] if isinstance(unset, str) else unset or []:
        out.pop(key, None)
    return out


def normalise_email(email: str) -> str:
    """Klaviyo matches emails case-insensitively; storing one form keeps lookups simple."""
    return email.strip().lower()
