"""Dead-letter reasons: every way an input can be refused, as a value."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a record went to `returns.deadletter`. Stable strings: dashboards and alerts use them."""

    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_SOURCE = "unknown_source"
    BAD_ENVELOPE = "bad_envelope"
    UNSUPPORTED_PAYLOAD = "unsupported_payload"
    KLAVIYO_REJECTED = "klaviyo_rejected"
    KLAVIYO_IMPORT_ERROR = "klaviyo_import_error"
    PROCESSING_ERROR = "processing_error"
    """A bug met this input. The record is kept so it can be replayed once fixed."""


class Stage(StrEnum):
    """Where in the pipeline a record was refused."""

    NORMALIZE = "normalize"
    STATE = "state"
    SYNC = "sync"


class RejectedInput(ValueError):
    """An input that cannot become a canonical event. Carries a dead-letter reason."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
