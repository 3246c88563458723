"""Every Prometheus metric returnsync exports, in one place (SPEC §8).

Conventions: `returnsync_` prefix, base units, `_total` counters. Labels are bounded sets
(source, type, stage, reason, endpoint, status, topic, partition, tenant); never a customer.
Dashboards (grafana/) and alert rules (prometheus/) refer to these names; a test checks that
every expression there returns data from a running worker.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from streams.errors import Reason, Stage

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000)

# --- ingestion -------------------------------------------------------------------------------
WEBHOOKS_RECEIVED = Counter(
    "returnsync_webhooks_received_total",
    "Webhook requests by platform and result (accepted, bad_signature, not_json, too_large, ...).",
    ["source", "result"],
    registry=REGISTRY,
)
WEBHOOK_ACK_SECONDS = Histogram(
    "returnsync_webhook_ack_seconds",
    "Time from request to 2xx, which includes the broker acknowledging the raw record.",
    ["source"],
    buckets=_HTTP_BUCKETS,
    registry=REGISTRY,
)
EVENTS_INGESTED = Counter(
    "returnsync_events_ingested_total",
    "Valid canonical events read from returns.events by the state agent.",
    ["source", "type"],
    registry=REGISTRY,
)
UNKNOWN_STATUSES = Counter(
    "returnsync_unknown_status_total",
    "Platform statuses with no canonical mapping: kept in returns.raw, no status change.",
    ["source"],
    registry=REGISTRY,
)
WEBHOOKS_SKIPPED = Counter(
    "returnsync_webhooks_skipped_total",
    "Well-formed platform webhooks that mean no canonical event by design, by source and reason.",
    ["source", "reason"],
    registry=REGISTRY,
)
HELD_EVENTS = Gauge(
    "returnsync_held_events",
    "Platform events held until the customer they belong to is known (Shopify orders).",
    ["source"],
    registry=REGISTRY,
)

# --- state -----------------------------------------------------------------------------------
EVENTS_PROCESSED = Counter(
    "returnsync_events_processed_total",
    "Canonical events through the reducer by result: applied, duplicate, out_of_order, repeated.",
    ["type", "result"],
    registry=REGISTRY,
)
EVENTS_REKEYED = Counter(
    "returnsync_events_rekeyed_total",
    "Events whose Kafka key or partition did not match their customer and were re-keyed.",
    registry=REGISTRY,
)
DEADLETTERS = Counter(
    "returnsync_deadletters_total",
    "Records written to returns.deadletter by stage and reason.",
    ["stage", "reason"],
    registry=REGISTRY,
)
STATE_WRITE_FAILURES = Counter(
    "returnsync_state_write_failures_total",
    "Events not applied because their customer's new state or sync record could not be written "
    "(record_too_large, state_write_failed); each is also a dead letter.",
    ["reason"],
    registry=REGISTRY,
)
STATE_WRITE_FAILURE_REASONS = (Reason.RECORD_TOO_LARGE, Reason.STATE_WRITE_FAILED)
CUSTOMERS_WITH_ACTIVE_RETURN = Gauge(
    "returnsync_customers_with_active_return",
    "Customers in this worker's partitions with at least one open return.",
    registry=REGISTRY,
)

# --- delivery --------------------------------------------------------------------------------
EVENTS_DELIVERED = Counter(
    "returnsync_events_delivered_total",
    "Canonical events whose profile and timeline changes Klaviyo accepted (or that needed none).",
    ["source", "type"],
    registry=REGISTRY,
)
SYNC_LATENCY_SECONDS = Histogram(
    "returnsync_sync_latency_seconds",
    "Seconds from an event (occurred at the source, or ingested) to Klaviyo accepting it.",
    ["since"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
SYNC_BACKLOG = Gauge(
    "returnsync_sync_backlog",
    "Sync records taken from Kafka and not yet delivered to Klaviyo (in memory).",
    registry=REGISTRY,
)
KLAVIYO_REQUESTS = Counter(
    "returnsync_klaviyo_requests_total",
    "Klaviyo API requests by endpoint and HTTP status (`error` when no response came).",
    ["endpoint", "status"],
    registry=REGISTRY,
)
KLAVIYO_REQUEST_SECONDS = Histogram(
    "returnsync_klaviyo_request_seconds",
    "Klaviyo API request duration.",
    ["endpoint"],
    buckets=_HTTP_BUCKETS,
    registry=REGISTRY,
)
KLAVIYO_RATE_LIMITED = Counter(
    "returnsync_klaviyo_rate_limited_total",
    "429 responses from Klaviyo.",
    ["endpoint"],
    registry=REGISTRY,
)
KLAVIYO_RETRIES = Counter(
    "returnsync_klaviyo_retries_total",
    "Klaviyo requests retried after 429, 5xx, timeouts or dropped connections.",
    ["endpoint"],
    registry=REGISTRY,
)
KLAVIYO_BATCH_SIZE = Histogram(
    "returnsync_klaviyo_batch_size",
    "Items (profiles or events) per Klaviyo request.",
    ["endpoint"],
    buckets=_BATCH_BUCKETS,
    registry=REGISTRY,
)
KLAVIYO_AUTH_FAILED = Gauge(
    "returnsync_klaviyo_auth_failed",
    "1 while Klaviyo answers 401/403 for an account and delivery is paused.",
    ["tenant"],
    registry=REGISTRY,
)
KLAVIYO_BUDGET_SHARE = Gauge(
    "returnsync_klaviyo_budget_share",
    "Share of every Klaviyo account's rate limits this worker plans for: the share of the sync "
    "topic's partitions it owns; the fleet's shares add up to 1.",
    registry=REGISTRY,
)
# Before its first assignment a worker plans for the whole budget, as a single worker does.
KLAVIYO_BUDGET_SHARE.set(1)

# --- reconciliation -------------------------------------------------------------------------
RECONCILE_DRIFT_PROFILES = Gauge(
    "returnsync_reconcile_drift_profiles",
    "Profiles whose Klaviyo properties differed from the derived state at the last reconcile.",
    registry=REGISTRY,
)

# --- consumption -----------------------------------------------------------------------------
CONSUMER_LAG_MESSAGES = Gauge(
    "returnsync_consumer_lag_messages",
    "Messages between the partition's end offset and this worker's position.",
    ["topic", "partition"],
    registry=REGISTRY,
)
CONSUMER_LAG_SECONDS = Gauge(
    "returnsync_consumer_lag_seconds",
    "Age of the oldest unprocessed message: now minus the timestamp of the next record.",
    ["topic", "partition"],
    registry=REGISTRY,
)
WORKER_READY = Gauge(
    "returnsync_worker_ready",
    "1 when partitions are assigned and tables recovered.",
    registry=REGISTRY,
)


# --- series that exist from the first scrape -------------------------------------------------

WEBHOOK_SOURCES = ("loop", "redo", "swap", "shopify", "aftership")
WEBHOOK_RESULTS = ("accepted", "bad_signature", "not_json", "too_large", "no_secret", "unavailable")
"""The usual outcomes of POST /webhooks/{source} and POST /events (source `api`), as
agents/worker/webhooks.py counts them: 2xx, 401, 400, 413, 403 (no secret configured), 503 (the broker
did not acknowledge). Rarer results (bad_header, bad_tenant) appear on first use."""
HELD_SOURCES = ("shopify",)
"""Platforms whose events can wait for the customer to be known (Shopify returns before orders)."""

DEADLETTER_REASONS: dict[Stage, tuple[Reason, ...]] = {
    Stage.WEBHOOK: (Reason.NO_SECRET, Reason.BAD_SIGNATURE),
    Stage.NORMALIZE: (
        Reason.BAD_ENVELOPE, Reason.NOT_JSON, Reason.NOT_AN_OBJECT, Reason.MISSING_FIELD,
        Reason.INVALID_FIELD, Reason.UNSUPPORTED_PAYLOAD, Reason.UNKNOWN_SOURCE, Reason.PROCESSING_ERROR,
    ),
    Stage.STATE: (
        Reason.NOT_JSON, Reason.NOT_AN_OBJECT, Reason.MISSING_FIELD, Reason.INVALID_FIELD,
        Reason.UNKNOWN_TYPE, Reason.UNKNOWN_SOURCE, Reason.PROCESSING_ERROR, *STATE_WRITE_FAILURE_REASONS,
    ),
    Stage.SYNC: (Reason.KLAVIYO_REJECTED, Reason.KLAVIYO_IMPORT_ERROR, Reason.PROCESSING_ERROR),
}
"""What each stage can dead-letter for. Other pairs still count; they appear on first use."""


def preinitialise() -> None:
    """Create the zero-valued series of bounded label sets, once at worker start.

    A labelled series is otherwise born on its first increment, which rate() and increase() then
    miss (there is no earlier sample to compare with): the first burst of dead letters or bad
    signatures would not count towards an alert, the first webhook's latency would chart as NaN,
    and panels would show "No data" where the answer is 0. Only label sets known in advance:
    never Klaviyo endpoints or statuses, tenants or partitions. Idempotent.
    """
    for source in WEBHOOK_SOURCES:
        UNKNOWN_STATUSES.labels(source)
    for source in HELD_SOURCES:
        HELD_EVENTS.labels(source)
    for source in (*WEBHOOK_SOURCES, "api"):
        WEBHOOK_ACK_SECONDS.labels(source)
        for result in WEBHOOK_RESULTS:
            WEBHOOKS_RECEIVED.labels(source, result)
    WEBHOOKS_RECEIVED.labels("api", "invalid")
    for since in ("occurred", "ingested"):
        SYNC_LATENCY_SECONDS.labels(since)
    for reason in STATE_WRITE_FAILURE_REASONS:
        STATE_WRITE_FAILURES.labels(reason.value)
    for stage, reasons in DEADLETTER_REASONS.items():
        for reason in reasons:
            DEADLETTERS.labels(stage.value, reason.value)


class LabelledCounters:
    """A two-label counter's children, looked up once per label set: `labels()` costs a lock and
    a dict walk, paid per event on the state agent's path (the label sets are small and fixed)."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._children: dict[tuple[str, str], Counter] = {}

    def inc(self, first: str, second: str) -> None:
        child = self._children.get((first, second))
        if child is None:
            child = self._children[(first, second)] = self._counter.labels(first, second)
        child.inc()
