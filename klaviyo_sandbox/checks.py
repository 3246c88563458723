"""Request checks Klaviyo makes before looking at what a body means: key, revision,
media type, size and JSON syntax."""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from klaviyo_sandbox.errors import ApiError, invalid

MEDIA_TYPES = frozenset({"application/json", "application/vnd.api+json"})
ENCODINGS = frozenset({"identity", "gzip", "deflate"})  # aiohttp inflates these itself
_REVISION = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[A-Za-z0-9]+)?$")


def api_key(request: web.Request) -> str | None:
    scheme, _, key = request.headers.get("Authorization", "").strip().partition(" ")
    return key.strip() or None if scheme.lower() == "klaviyo-api-key" else None


def check_revision(request: web.Request) -> None:
    revision = request.headers.get("revision")
    if revision is None:
        detail = "The 'revision' header is required, e.g. revision: 2026-07-15."
        raise invalid(detail, parameter="revision")
    if not _REVISION.match(revision.strip()):
        raise invalid(f"'{revision}' is not a valid revision (YYYY-MM-DD).", parameter="revision")


async def read_json(request: web.Request, limit: int) -> Any:
    if request.content_type not in MEDIA_TYPES:
        raise ApiError.single(415, f"Unsupported media type '{request.content_type}': Content-Type "
                                   "must be application/vnd.api+json or application/json.")
    if request.headers.get("Content-Encoding", "identity").lower() not in ENCODINGS:
        raise ApiError.single(415, "Content-Encoding header is set incorrectly.")
    # Read the whole upload even when its declared length is already too big: answering
    # early leaves aiohttp draining it for up to 10 s, and a client still sending could miss
    # the 413. The server's read cap keeps this bounded.
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(limit) from None
    if len(raw) > limit:
        raise too_large(limit)
    if not raw.strip():
        raise invalid("A request body is required.", pointer="/data")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise invalid(f"Request body is not valid JSON: {error.msg}.", pointer="/") from None


def too_large(limit: int) -> ApiError:
    detail = f"Request body exceeds this endpoint's {limit // 1000} KB limit."
    return ApiError.single(413, detail, pointer="/data")


async def peek_json(request: web.Request) -> Any:
    """Best effort, for email-scoped faults; the real parse comes later, with proper errors."""
    try:
        return orjson.loads(await request.read())
    except (orjson.JSONDecodeError, web.HTTPRequestEntityTooLarge):
        return None
