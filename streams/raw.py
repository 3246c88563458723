"""The raw webhook as appended to `returns.raw` (SPEC §2), before any adapter has read it.

The body is kept byte for byte: signatures and snapshot event ids are computed over the exact
bytes, and a replay of `returns.raw` must see what the platform sent, not a re-serialisation.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson

from streams.errors import Reason, RejectedInput
from streams.events import format_time, parse_time

SIGNATURE_HEADERS = frozenset(
    {
        "x-loop-signature",
        "x-shopify-hmac-sha256",
        "authorization",  # Redo's bearer secret
        "proxy-authorization",
        "as-signature-hmac-sha256",
        "am-webhook-signature",
        "x-swap-signature",
    }
)
"""Headers that carry secrets or signatures: never written to a topic (a signature over a known
body is an oracle for the secret's holder, and Redo's header *is* the secret)."""

_MAX_KEY = 200


@dataclass(frozen=True, slots=True)
class RawWebhook:
    """One delivery as received. Header names are lower-cased and signature headers removed on
    construction, so no code path can hold a RawWebhook that still carries a secret."""

    source: str
    received_at: datetime
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __post_init__(self) -> None:
        if self.received_at.tzinfo is None:
            raise ValueError("received_at must be timezone-aware")
        object.__setattr__(self, "received_at", self.received_at.astimezone(UTC))
        object.__setattr__(self, "headers", _clean_headers(self.headers.items(), SIGNATURE_HEADERS))

    @classmethod
    def received(
        cls,
        source: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes,
        received_at: datetime,
        *,
        strip: Iterable[str] = (),
    ) -> RawWebhook:
        """From an HTTP request. `strip` names further secret headers (a configured Swap
        signature header); repeated headers keep their last value."""
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        extra = SIGNATURE_HEADERS | {name.lower() for name in strip}
        return cls(source, received_at, _clean_headers(pairs, extra), body)


def _clean_headers(pairs: Iterable[tuple[str, str]], strip: frozenset[str]) -> Mapping[str, str]:
    cleaned = {name.lower(): value for name, value in pairs if name.lower() not in strip}
    return MappingProxyType(cleaned)


def encode_raw(raw: RawWebhook) -> bytes:
    """The `returns.raw` value: the body as text when it is UTF-8 (readable in any Kafka tool),
    base64 otherwise; `body_encoding` says which."""
    try:
        body, encoding = raw.body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(raw.body).decode("ascii"), "base64"
    return orjson.dumps(
        {
            "source": raw.source,
            "received_at": format_time(raw.received_at),
            "headers": dict(raw.headers),
            "body": body,
            "body_encoding": encoding,
        }
    )


def decode_raw(data: bytes) -> RawWebhook:
    try:
        envelope = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"not JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise _bad("not a JSON object")
    source = envelope.get("source")
    if not isinstance(source, str) or not source:
        raise _bad("source must be a non-empty string")
    try:
        received_at = parse_time(envelope.get("received_at"), "received_at")
    except (RejectedInput, OverflowError) as exc:
        raise _bad(f"received_at: {exc}") from None
    headers = envelope.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise _bad("headers must be an object of strings")
    return RawWebhook(source, received_at, headers, _body(envelope))


def _body(envelope: dict[str, Any]) -> bytes:
    body = envelope.get("body")
    if not isinstance(body, str):
        raise _bad("body must be a string")
    encoding = envelope.get("body_encoding", "utf-8")
    if encoding == "utf-8":
        try:
            return body.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escaped in the JSON text
            raise _bad("body is not valid UTF-8 text") from None
    if encoding == "base64":
        try:
            return base64.b64decode(body, validate=True)
        except binascii.Error:
            raise _bad("body is not valid base64") from None
    raise _bad(f"unknown body_encoding {encoding!r}")


def _bad(detail: str) -> RejectedInput:
    return RejectedInput(Reason.BAD_ENVELOPE, detail)


def raw_key(source: str, body_obj: Any) -> str | None:
    """The `returns.raw` key, `<source>:<return id>`, when the body names its return.

    Best effort and never raising: the key only spreads load and keeps one return's deliveries
    in order, so an unrecognised body is simply unkeyed.
    """
    if not isinstance(body_obj, Mapping):
        return None
    return_id = _id(_RETURN_ID[source](body_obj)) if source in _RETURN_ID else None
    if return_id is None or len(return_id) > _MAX_KEY:
        return None
    return f"{source}:{return_id}"


def _id(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value).strip() or None


def _get(value: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(name)
    return value


def _loop(body: Mapping[str, Any]) -> Any:
    # giftcard and label.request bodies have their own `id` and name the return in `return_id`.
    if "return_id" in body:
        return body["return_id"]
    return body.get("id") if body.get("topic") in {"return", "label", "restock"} else None


def _shopify(body: Mapping[str, Any]) -> Any:
    # Shopify bodies do not say what they are; the GraphQL id does (topic is only in a header).
    gid = body.get("admin_graphql_api_id")
    if not isinstance(gid, str):
        return None
    if gid.startswith("gid://shopify/Return/"):
        return body.get("id")
    if gid.startswith("gid://shopify/Refund/"):
        return _get(body, "return", "id")
    return None


_RETURN_ID: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "loop": _loop,
    "redo": lambda body: _get(body, "return", "id"),
    "swap": lambda body: _get(body, "return", "return_id"),
    "shopify": _shopify,
    "aftership": lambda body: _get(body, "data", "id"),
}
