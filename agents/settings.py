"""The one settings object (SPEC §7). Nothing else in the code reads `os.environ`."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TypeVar

import orjson

from agents.kafka import KafkaConnection, KafkaSecurity
from agents.klaviyo.accounts import DEFAULT_ACCOUNT, KlaviyoAccount, account_for, parse_accounts
from streams.events import DEFAULT_MAX_FUTURE_SKEW, KLAVIYO_MAX_AHEAD
from streams.projection import DEFAULT_METRIC_NAMES, ProjectionConfig
from streams.topics import TopicNames

SOURCES_WITH_SECRETS = ("loop", "redo", "swap", "shopify", "aftership")
T = TypeVar("T")
DEFAULT_MAX_STATE_BYTES = 1_000_000
"""Key + value: under Kafka's default message.max.bytes (1,048,588), with room for the batch's own
overhead."""
# Kafka's legal topic characters: the app id and the prefix end up in topic names.
_KAFKA_NAME = re.compile(r"[A-Za-z0-9._-]{0,100}")
_KAFKA_HINT = "at most 100 of letters, digits, '.', '_', '-'"
_REVISION = re.compile(r"\d{4}-\d{2}-\d{2}(\.[a-z]+)?")
# A DNS name or an IPv4 address: what another worker puts in a URL to reach this one.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - recognised, not bound


_TITLE = re.compile(r"[^\x00-\x1f]{1,255}")


class SettingsError(ValueError):
    """One line per bad variable, so an operator fixes them all in one go."""


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str | None = None
    # TLS and SASL for every Kafka client in the process (agents/kafka.py); holds the password.
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity, repr=False)
    klaviyo_api_key: str | None = field(default=None, repr=False)
    klaviyo_base_url: str = "https://a.klaviyo.com"
    klaviyo_revision: str = "2026-07-15"
    # Tenant (or its KLAVIYO_API_KEY_<TENANT> spelling) -> its own account; others use the default.
    klaviyo_accounts: Mapping[str, KlaviyoAccount] = field(default_factory=dict, repr=False)
    # Share of Klaviyo's published per-endpoint limits this service may spend (other apps may
    # share the account); the sandbox's rate_limit_scale in tests.
    klaviyo_rate_limit_scale: float = 1.0
    klaviyo_auth_pause_seconds: float = 30.0
    webhook_secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    swap_signature_header: str = "X-Swap-Signature"
    web_host: str = "0.0.0.0"  # noqa: S104 - a worker in a container must be scrapeable
    web_port: int = 6066
    # How the other workers reach this one (Faust routes /customers/{email} to the owner of the
    # key through it). None: the bind host, or this machine's hostname when binding every address.
    advertised_host: str | None = None
    app_id: str = "returnsync"
    topic_prefix: str = ""
    partitions: int = 8
    # None: returns.raw and returns.events keep everything, as replay needs (agents/topic_plan.py).
    source_retention_ms: int | None = None
    replication_factor: int = 1
    standby_replicas: int = 1
    store: str = "memory://"
    data_dir: Path = Path(".returnsync-data")
    dev_stack: bool = False
    customer_api_token: str | None = field(default=None, repr=False)
    events_api_token: str | None = field(default=None, repr=False)
    webhook_max_bytes: int = 1024 * 1024
    webhook_ack_timeout: float = 10.0
    max_future_skew: timedelta = DEFAULT_MAX_FUTURE_SKEW
    """An event dated later than this after it was received is refused (400 on POST /events,
    dead-lettered `future_time` from Kafka): it would pin its return's status for good."""
    max_state_bytes: int = DEFAULT_MAX_STATE_BYTES
    """The largest customer state or sync record the state agent writes (key + value); an event
    that would make a larger one is dead-lettered `record_too_large` and not applied. Keep it
    under the broker's message.max.bytes (the changelog and sync topics' max.message.bytes)."""
    keep_refused_webhooks: bool = True
    """Webhooks refused for a missing secret or a bad signature are also kept (dead-letter topic,
    stage webhook), so `returnsync deadletters redrive` can verify them once the secret is right."""
    shopify_hold_per_order: int = 50
    shopify_hold_max: int = 10_000
    log_level: str = "info"
    log_format: str = "auto"
    """json, text, or auto: text on a terminal, json otherwise (agents/logs.py)."""
    session_timeout: float = 30.0
    sync_batch_size: int = 500
    sync_batch_seconds: float = 0.5
    delivery_enabled: bool = True
    reconcile_interval: float = 0.0
    reconcile_sample: int = 200
    reconcile_repair: bool = False
    custom_objects: bool = False
    """Also keep one Klaviyo custom-object record per return (needs the custom-objects:write scope)."""
    custom_objects_title: str = "returnsync returns"
    """The title of the data source those records go to: found by it again, never created twice."""
    custom_objects_type: str = "Return"
    """The title of the object type the merchant mapped over it: drift reports read records there."""
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)

    @property
    def web_advertised_host(self) -> str:
        if self.advertised_host:
            return self.advertised_host
        return socket.gethostname() if self.web_host in _WILDCARD_BINDS else self.web_host

    @property
    def canonical_url(self) -> str:
        """This worker's web server as the other workers address it."""
        host = self.web_advertised_host
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        return f"http://{host}:{self.web_port}"

    @property
    def max_record_bytes(self) -> int:
        """The largest record the producer must send: a webhook body can double when escaped into
        its returns.raw envelope, and double again when a dead letter quotes that envelope; and a state
        of `max_state_bytes` in its changelog record or sync record (with the event beside it)."""
        # (The fold refuses a state or sync record over max_state_bytes, key included: 4 KiB covers
        # the record and batch headers, as agents.topic_plan.STATE_RECORD_OVERHEAD.)
        return max(1_048_576, 4 * self.webhook_max_bytes + 64 * 1024, self.max_state_bytes + 4096)

    def kafka(self, bootstrap_servers: str | None = None) -> KafkaConnection:
        """How every Kafka client reaches the cluster: these servers (the dev stack's embedded
        broker) or KAFKA_BOOTSTRAP_SERVERS, with the configured security."""
        servers = bootstrap_servers or self.kafka_bootstrap_servers
        if not servers:
            raise SettingsError("KAFKA_BOOTSTRAP_SERVERS is not set")
        return KafkaConnection(servers, self.kafka_security)

    @property
    def topics(self) -> TopicNames:
        return TopicNames.with_prefix(self.topic_prefix)

    @property
    def default_klaviyo_account(self) -> KlaviyoAccount:
        return KlaviyoAccount(DEFAULT_ACCOUNT, self.klaviyo_api_key or "", self.klaviyo_base_url)

    def klaviyo_account(self, tenant: str) -> KlaviyoAccount:
        return account_for(tenant, self.klaviyo_accounts, self.default_klaviyo_account)

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        defaults = cls()
        secrets = {
            source: value
            for source in SOURCES_WITH_SECRETS
            if (value := env.get(f"{source.upper()}_WEBHOOK_SECRET"))
        }
        projection = ProjectionConfig(
            property_prefix=reader.text("RETURNSYNC_PROPERTY_PREFIX", "returns_"),
            serial_returner_threshold=reader.number(
                "RETURNSYNC_SERIAL_RETURNER_THRESHOLD", 3, int, minimum=1
            ),
            serial_returner_rate=reader.fraction(
                "RETURNSYNC_SERIAL_RETURNER_RATE", Decimal("0.01"), Decimal(1)
            ),
            serial_returner_min_orders=reader.number(
                "RETURNSYNC_SERIAL_RETURNER_MIN_ORDERS", 5, int, 1, 1_000_000
            ),
            metric_names=reader.metric_names("RETURNSYNC_METRIC_NAMES"),
        )
        klaviyo_base_url = reader.url("KLAVIYO_BASE_URL", defaults.klaviyo_base_url)
        accounts_file = reader.text("KLAVIYO_ACCOUNTS_FILE", "")
        settings = cls(
            kafka_bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS") or None,
            kafka_security=KafkaSecurity.from_env(env, reader.errors),
            klaviyo_api_key=env.get("KLAVIYO_API_KEY") or None,
            klaviyo_base_url=klaviyo_base_url,
            klaviyo_accounts=parse_accounts(
                env, Path(accounts_file) if accounts_file else None, klaviyo_base_url, reader.errors
            ),
            klaviyo_rate_limit_scale=reader.number("KLAVIYO_RATE_LIMIT_SCALE", 1.0, float, 0.001, 1.0),
            klaviyo_auth_pause_seconds=reader.number(
                "RETURNSYNC_KLAVIYO_AUTH_PAUSE_SECONDS", 30.0, float, 0.1, 3600.0
            ),
            klaviyo_revision=reader.matching(
                "KLAVIYO_REVISION", defaults.klaviyo_revision, _REVISION, "a revision like 2026-07-15"
            ),
            webhook_secrets=secrets,
            swap_signature_header=reader.text("SWAP_SIGNATURE_HEADER", defaults.swap_signature_header),
            web_host=reader.text("RETURNSYNC_WEB_HOST", defaults.web_host),
            web_port=reader.number("RETURNSYNC_WEB_PORT", defaults.web_port, int, 1, 65535),
            advertised_host=reader.host("RETURNSYNC_ADVERTISED_HOST"),
            app_id=reader.matching("RETURNSYNC_APP_ID", defaults.app_id, _KAFKA_NAME, _KAFKA_HINT),
            topic_prefix=reader.matching("RETURNSYNC_TOPIC_PREFIX", "", _KAFKA_NAME, _KAFKA_HINT),
            partitions=reader.number("RETURNSYNC_PARTITIONS", defaults.partitions, int, 1, 1024),
            source_retention_ms=reader.optional_number(
                "RETURNSYNC_SOURCE_RETENTION_MS", int, 3_600_000, 100 * 365 * 86_400_000
            ),
            replication_factor=reader.number("RETURNSYNC_REPLICATION_FACTOR", 1, int, 1, 16),
            standby_replicas=reader.number("RETURNSYNC_STANDBY_REPLICAS", 1, int, 0, 16),
            store=reader.choice("RETURNSYNC_STORE", defaults.store, ("memory://", "rocksdb://")),
            data_dir=Path(reader.text("RETURNSYNC_DATA_DIR", str(defaults.data_dir))),
            dev_stack=reader.flag("RETURNSYNC_DEV", False),
            customer_api_token=env.get("RETURNSYNC_CUSTOMER_API_TOKEN") or None,
            events_api_token=env.get("RETURNSYNC_EVENTS_API_TOKEN") or None,
            webhook_max_bytes=reader.number(
                "RETURNSYNC_WEBHOOK_MAX_BYTES", defaults.webhook_max_bytes, int, 1024, 64 * 1024 * 1024
            ),
            webhook_ack_timeout=reader.number("RETURNSYNC_WEBHOOK_ACK_TIMEOUT", 10.0, float, 0.1, 300.0),
            max_future_skew=timedelta(seconds=reader.number(
                "RETURNSYNC_MAX_FUTURE_SKEW", DEFAULT_MAX_FUTURE_SKEW.total_seconds(), float, 0.0,
                KLAVIYO_MAX_AHEAD.total_seconds())),
            max_state_bytes=reader.number(
                "RETURNSYNC_MAX_STATE_BYTES", defaults.max_state_bytes, int, 1024, 64 * 1024 * 1024),
            keep_refused_webhooks=reader.flag("RETURNSYNC_KEEP_REFUSED_WEBHOOKS", True),
            shopify_hold_per_order=reader.number("RETURNSYNC_SHOPIFY_HOLD_PER_ORDER", 50, int, 1, 10_000),
            shopify_hold_max=reader.number("RETURNSYNC_SHOPIFY_HOLD_MAX", 10_000, int, 1, 10_000_000),
            log_level=reader.choice(
                "RETURNSYNC_LOG_LEVEL", "info", ("debug", "info", "warning", "error")
            ),
            log_format=reader.choice("RETURNSYNC_LOG_FORMAT", "auto", ("auto", "json", "text")),
            session_timeout=reader.number("RETURNSYNC_SESSION_TIMEOUT", 30.0, float, 1.0, 600.0),
            sync_batch_size=reader.number("RETURNSYNC_SYNC_BATCH_SIZE", 500, int, 1, 10_000),
            sync_batch_seconds=reader.number("RETURNSYNC_SYNC_BATCH_SECONDS", 0.5, float, 0.0, 60.0),
            delivery_enabled=reader.flag("RETURNSYNC_DELIVERY_ENABLED", True),
            reconcile_interval=reader.number("RETURNSYNC_RECONCILE_INTERVAL", 0.0, float, 0.0, 86_400.0),
            reconcile_sample=reader.number("RETURNSYNC_RECONCILE_SAMPLE", 200, int, 1, 100_000),
            reconcile_repair=reader.flag("RETURNSYNC_RECONCILE_REPAIR", False),
            custom_objects=reader.flag("RETURNSYNC_CUSTOM_OBJECTS", False),
            custom_objects_title=reader.matching(
                "RETURNSYNC_CUSTOM_OBJECTS_TITLE", defaults.custom_objects_title, _TITLE,
                "1 to 255 characters (a Klaviyo data source title)"),
            custom_objects_type=reader.matching(
                "RETURNSYNC_CUSTOM_OBJECTS_TYPE", defaults.custom_objects_type, _TITLE,
                "1 to 255 characters (a Klaviyo object type title)"),
            projection=projection,
        )
        reader.raise_if_errors()
        return settings


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.errors: list[str] = []

    def text(self, name: str, default: str) -> str:
        value = self.env.get(name)
        return value.strip() if value and value.strip() else default

    def matching(self, name: str, default: str, pattern: re.Pattern[str], hint: str) -> str:
        value = self.text(name, default)
        if not pattern.fullmatch(value):
            self.errors.append(f"{name}={value!r}: must be {hint}")
            return default
        return value

    def host(self, name: str) -> str | None:
        value = self.text(name, "")
        if not value:
            return None
        if _HOSTNAME.fullmatch(value) or _is_ip(value.strip("[]")):
            return value.strip("[]")
        self.errors.append(f"{name}={value!r}: must be a host name or IP address, without scheme or port")
        return None

    def url(self, name: str, default: str) -> str:
        value = self.text(name, default).rstrip("/")
        if not value.startswith(("http://", "https://")):
            self.errors.append(f"{name}={value!r}: must start with http:// or https://")
        return value

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(name, default).lower()
        if value not in allowed:
            self.errors.append(f"{name}={value!r}: must be one of {', '.join(allowed)}")
            return default
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = (self.env.get(name) or "").strip().lower()
        if value == "":
            return default
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        self.errors.append(f"{name}={value!r}: must be true or false")
        return default

    def number(
        self,
        name: str,
        default: T,
        kind: Callable[[str], T],
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> T:
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = kind(raw.strip())
        except ValueError:
            self.errors.append(f"{name}={raw!r}: must be a number")
            return default
        number = float(value)  # type: ignore[arg-type]
        # NaN compares false with every bound, so it would pass the range check unnoticed.
        if (
            math.isnan(number)
            or (minimum is not None and number < minimum)
            or (maximum is not None and number > maximum)
        ):
            self.errors.append(f"{name}={raw!r}: must be {_bounds(minimum, maximum)}")
            return default
        return value

    def optional_number(
        self, name: str, kind: Callable[[str], T], minimum: float, maximum: float
    ) -> T | None:
        if not (self.env.get(name) or "").strip():
            return None
        return self.number(name, None, kind, minimum, maximum)

    def fraction(self, name: str, minimum: Decimal, maximum: Decimal) -> Decimal | None:
        """An optional decimal ratio, kept exact (it is compared with counts, never as a float)."""
        raw = (self.env.get(name) or "").strip()
        if not raw:
            return None
        try:
            value = Decimal(raw)
        except InvalidOperation:
            value = Decimal("NaN")
        if not value.is_finite() or not minimum <= value <= maximum:
            self.errors.append(f"{name}={raw!r}: must be a decimal between {minimum} and {maximum} "
                               "(e.g. 0.5: at least half of the orders returned), or unset")
            return None
        return value

    def metric_names(self, name: str) -> dict[str, str]:
        names = dict(DEFAULT_METRIC_NAMES)
        raw = self.env.get(name)
        if not raw:
            return names
        try:
            overrides = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.errors.append(f"{name}: must be a JSON object of canonical type -> metric name")
            return names
        if not isinstance(overrides, dict) or not all(
            key in names and isinstance(value, str) and 0 < len(value) < 128
            for key, value in overrides.items()
        ):
            self.errors.append(
                f"{name}: keys must be canonical return types (or 'item'; order.placed has no metric), "
                "values names under 128 chars"
            )
            return names
        names.update(overrides)
        return names

    def raise_if_errors(self) -> None:
        if self.errors:
            raise SettingsError("invalid configuration:\n  " + "\n  ".join(self.errors))


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if maximum is None:
        return f"a number >= {_number(minimum)}" if minimum is not None else "a number"
    if minimum is None:
        return f"a number <= {_number(maximum)}"
    return f"between {_number(minimum)} and {_number(maximum)}"


def _number(value: float) -> str:
    """3600000, not 3.6e+06: operators copy these into their configuration."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
