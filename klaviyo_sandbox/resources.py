"""JSON:API rendering, `filter=` parsing and cursor pagination for the read endpoints."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from klaviyo_sandbox.errors import invalid
from klaviyo_sandbox.store import ImportErrorRow, ImportJob, Profile

T = TypeVar("T")
PAGE_SIZE_DEFAULT = 20
PAGE_SIZE_MAX = 100
FILTER_FIELDS = ("email", "external_id", "phone_number", "id", "_kx")
PROFILE_ATTRIBUTES = ("email", "phone_number", "external_id", "first_name", "last_name", "organization",
                      "locale", "title", "image")

_CONDITION = re.compile(r"^\s*(equals|any)\(\s*([A-Za-z_.]+)\s*,\s*(.*)\)\s*$", re.DOTALL)
_QUOTED = re.compile(r"\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)'")


@dataclass(frozen=True)
class ProfileFilter:
    field: str
    values: tuple[str, ...]


def parse_filter(text: str | None) -> ProfileFilter | None:
    """The two filters returnsync needs: equals(f,"v") and any(f,["a","b"]), either quote style."""
    if text is None or not text.strip():
        return None
    match = _CONDITION.match(text)
    if match is None:
        raise invalid(f"Unsupported filter '{text}'; the sandbox supports equals() and any().",
                      parameter="filter")
    operator, field, argument = match.groups()
    if field not in FILTER_FIELDS:
        raise invalid(f"'{field}' is not a valid filter field for profiles.", parameter="filter")
    argument = argument.strip()
    values = tuple(a if a or not b else b for a, b in _QUOTED.findall(argument))
    values = tuple(v.replace('\\"', '"').replace("\\'", "'") for v in values)
    shaped = argument.startswith("[") and argument.endswith("]") if operator == "any" else len(values) == 1
    if not values or not shaped:
        raise invalid(f"Malformed {operator}() value in filter '{text}'.", parameter="filter")
    return ProfileFilter(field, values)


def paginate(request: web.Request, items: Sequence[T]) -> tuple[Sequence[T], dict[str, str | None]]:
    """Cursor pagination; the cursor is an opaque token, as with Klaviyo, holding an offset."""
    raw_size = request.query.get("page[size]", str(PAGE_SIZE_DEFAULT))
    if not raw_size.isdigit() or not 1 <= int(raw_size) <= PAGE_SIZE_MAX:
        raise invalid(f"page[size] must be an integer from 1 to {PAGE_SIZE_MAX}.", parameter="page[size]")
    size = int(raw_size)
    offset = _decode_cursor(request.query.get("page[cursor]"))
    page = items[offset:offset + size]

    def link(to: int) -> str:
        query = dict(request.query)
        query["page[cursor]"] = _encode_cursor(to)
        return str(request.url.with_query(query))

    links: dict[str, str | None] = {
        "self": str(request.url),
        "next": link(offset + size) if offset + size < len(items) else None,
        "prev": link(max(0, offset - size)) if offset > 0 else None,
    }
    return page, links


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        text = ""
    prefix, _, number = text.partition(":")
    if prefix != "offset" or not number.isdigit():
        raise invalid("Invalid page[cursor].", parameter="page[cursor]")
    return int(number)


def base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def profile_resource(profile: Profile, base: str, fields: Sequence[str] | None = None) -> dict[str, Any]:
    attributes: dict[str, Any] = {name: profile.fields.get(name) for name in PROFILE_ATTRIBUTES}
    attributes.update(
        created=profile.created,
        updated=profile.updated,
        last_event_date=profile.last_event_date,
        location=dict(profile.location),
        properties=dict(profile.properties),
    )
    if fields:
        attributes = {name: value for name, value in attributes.items() if name in fields}
    self_link = f"{base}/api/profiles/{profile.id}/"
    return {
        "type": "profile",
        "id": profile.id,
        "attributes": attributes,
        "relationships": {
            relation: {"links": {"self": f"{self_link}relationships/{relation}/",
                                 "related": f"{self_link}{relation}/"}}
            for relation in ("lists", "segments")
        },
        "links": {"self": self_link},
    }


def job_resource(job: ImportJob, base: str) -> dict[str, Any]:
    self_link = f"{base}/api/profile-bulk-import-jobs/{job.id}/"
    return {
        "type": "profile-bulk-import-job",
        "id": job.id,
        "attributes": {
            "status": job.status,
            "created_at": job.created_at,
            "total_count": job.total_count,
            "completed_count": job.completed_count,
            "failed_count": job.failed_count,
            "completed_at": job.completed_at,
            "expires_at": None,
            "started_at": job.started_at,
        },
        "relationships": {
            "lists": {"data": [{"type": "list", "id": list_id} for list_id in job.list_ids]},
            "profiles": {"links": {"self": f"{self_link}relationships/profiles/",
                                   "related": f"{self_link}profiles/"}},
            "import-errors": {"links": {"related": f"{self_link}import-errors/"}},
        },
        "links": {"self": self_link},
    }


def import_error_resource(row: ImportErrorRow) -> dict[str, Any]:
    return {
        "type": "import-error",
        "id": row.id,
        "attributes": {
            "code": row.code,
            "title": row.title,
            "detail": row.detail,
            "source": {"pointer": row.pointer},
            "original_payload": row.original_payload,
        },
    }


def field_list(request: web.Request, resource: str) -> list[str] | None:
    raw = request.query.get(f"fields[{resource}]")
    return [name.strip() for name in raw.split(",") if name.strip()] if raw else None

