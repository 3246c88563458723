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
    TIME_OUT_OF_RANGE = "time_out_of_range"
    """An event time Klaviyo never accepts (before 2000-01-01)."""
    FUTURE_TIME = "future_time"
    """An event dated more than RETURNSYNC_MAX_FUTURE_SKEW after it was received."""
    BAD_ENVELOPE = "bad_envelope"
    UNSUPPORTED_PAYLOAD = "unsupported_payload"
    KLAVIYO_REJECTED = "klaviyo_rejected"
    KLAVIYO_IMPORT_ERROR = "klaviyo_import_error"
    RECORD_TOO_LARGE = "record_too_large"
    """The customer's new state, or its sync record, is over RETURNSYNC_MAX_STATE_BYTES: the event
    is not applied (the state stays as it was), so a re-drive applies it once the limit allows."""
    STATE_WRITE_FAILED = "state_write_failed"
    """The new state or its sync record could not be encoded or written: not applied either."""
    PROCESSING_ERROR = "processing_error"
    """A bug met this input. The record is kept so it can be replayed once fixed."""
    NO_SECRET = "no_secret"  # noqa: S105 - a reason name, not a password
    """A webhook refused (403) because its source has no secret configured: kept, unverified."""
    BAD_SIGNATURE = "bad_signature"
    """A webhook refused (401) because its signature did not match: kept, unverified."""


class Stage(StrEnum):
    """Where in the pipeline a record was refused."""

    WEBHOOK = "webhook"
    """Refused at the HTTP edge, kept so a fixed secret can re-drive it (never processed unverified)."""
    NORMALIZE = "normalize"
    STATE = "state"
    SYNC = "sync"


class RejectedInput(ValueError):
    """An input that cannot become a canonical event. Carries a dead-letter reason."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
