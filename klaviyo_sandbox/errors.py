"""Klaviyo-shaped error bodies, so clients exercise the same parsing they need in production.

Shape per klaviyo-api.md §4.4: `{"errors":[{id, status (int), code, title, detail,
source, links, meta}]}`; body errors point at `source.pointer`, query errors name
`source.parameter`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

THROTTLE_DOC = "https://developers.klaviyo.com/en/docs/rate_limits_and_error_handling#rate-limits"

# Titles Klaviyo uses per code; one table keeps every error consistent.
TITLES = {
    "invalid": "Invalid input.",
    "not_authenticated": "Authentication credentials were not provided.",
    "authentication_failed": "Incorrect authentication credentials.",
    "permission_denied": "You do not have permission to perform this action.",
    "not_found": "Not found.",
    "method_not_allowed": "Method not allowed.",
    "duplicate_profile": "Conflict.",
    "request_too_large": "Request entity too large.",
    "unsupported_media_type": "Unsupported media type.",
    "throttled": "Request was throttled.",
    "error": "A server error occurred.",
    "service_unavailable": "Service unavailable.",
    "gateway_timeout": "Gateway timeout.",
}

CODES_BY_STATUS = {
    400: "invalid",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    409: "duplicate_profile",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "throttled",
    500: "error",
    503: "service_unavailable",
    504: "gateway_timeout",
}


@dataclass(frozen=True)
class ErrorItem:
    status: int
    detail: str
    code: str = ""
    pointer: str | None = None
    parameter: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    links: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        code = self.code or CODES_BY_STATUS.get(self.status, "error")
        source: dict[str, str] = {}
        if self.pointer is not None:
            source["pointer"] = self.pointer
        if self.parameter is not None:
            source["parameter"] = self.parameter
        return {
            "id": str(uuid.uuid4()),
            "status": self.status,
            "code": code,
            "title": TITLES.get(code, "Error."),
            "detail": self.detail,
            "source": source,
            "links": dict(self.links),
            "meta": dict(self.meta),
        }


class ApiError(Exception):
    """Raised anywhere in request handling; the server turns it into the response."""

    def __init__(self, items: Sequence[ErrorItem], headers: Mapping[str, str] | None = None) -> None:
        super().__init__(items[0].detail if items else "error")
        self.status = items[0].status if items else 500
        self.items = list(items)
        self.headers = dict(headers or {})

    @classmethod
    def single(cls, status: int, detail: str, **kwargs: Any) -> ApiError:
        headers = kwargs.pop("headers", None)
        return cls([ErrorItem(status, detail, **kwargs)], headers)

    def body(self) -> dict[str, Any]:
        return {"errors": [item.to_json() for item in self.items]}


def invalid(detail: str, pointer: str | None = None, parameter: str | None = None) -> ApiError:
    return ApiError.single(400, detail, pointer=pointer, parameter=parameter)


def throttled(retry_after: int) -> ApiError:
    unit = "second" if retry_after == 1 else "seconds"
    return ApiError.single(
        429,
        f"Request was throttled. Expected available in {retry_after} {unit}.",
        pointer="/data",
        links={"type": THROTTLE_DOC},
        headers={"Retry-After": str(retry_after)},
    )


def duplicate_profile(profile_id: str) -> ApiError:
    return ApiError.single(
        409,
        "A profile already exists with one of these identifiers.",
        pointer="/data/attributes",
        meta={"duplicate_profile_id": profile_id},
    )
