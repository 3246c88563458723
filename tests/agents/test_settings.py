"""Settings (SPEC §7): defaults, every variable, one error listing every bad value, no secrets shown."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agents.settings import Settings, SettingsError
from streams.events import EventType
from streams.projection import DEFAULT_METRIC_NAMES
from streams.topics import TopicNames

SECRETS = {
    "KLAVIYO_API_KEY": "pk_live_0123456789abcdef",
    "LOOP_WEBHOOK_SECRET": "loop-shh-1",
    "SHOPIFY_WEBHOOK_SECRET": "shopify-shh-2",
    "REDO_WEBHOOK_SECRET": "redo-shh-3",
    "SWAP_WEBHOOK_SECRET": "swap-shh-4",
    "AFTERSHIP_WEBHOOK_SECRET": "aftership-shh-5",
    "RETURNSYNC_CUSTOMER_API_TOKEN": "support-token-6",
}


def error_lines(env: dict[str, str]) -> list[str]:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert message.startswith("invalid configuration:")
    return message.splitlines()[1:]


def test_defaults_from_an_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.kafka_bootstrap_servers is None
    assert settings.klaviyo_api_key is None
    assert settings.klaviyo_base_url == "https://a.klaviyo.com"
    assert settings.klaviyo_revision == "2026-07-15"
    assert settings.webhook_secrets == {}
    assert settings.web_port == 6066
    assert settings.app_id == "returnsync"
    assert settings.topic_prefix == ""
    assert settings.topics == TopicNames("returns.raw", "returns.events", "returns.deadletter")
    assert (settings.partitions, settings.replication_factor, settings.standby_replicas) == (8, 1, 1)
    assert settings.store == "memory://"
    assert settings.data_dir == Path(".returnsync-data")
    assert settings.dev_stack is False
    assert settings.customer_api_token is None
    assert settings.log_level == "info"
    assert (settings.session_timeout, settings.sync_batch_size, settings.sync_batch_seconds) == (
        30.0,
        500,
        0.5,
    )
    assert settings.projection.property_prefix == "returns_"
    assert settings.projection.serial_returner_threshold == 3
    assert settings.projection.serial_returner_rate is None  # by count only until configured
    assert settings.projection.serial_returner_min_orders == 5
    assert dict(settings.projection.metric_names) == dict(DEFAULT_METRIC_NAMES)


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "expected"),
    [
        ("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092", "kafka_bootstrap_servers", "k1:9092,k2:9092"),
        ("KAFKA_BOOTSTRAP_SERVERS", "", "kafka_bootstrap_servers", None),
        ("KLAVIYO_API_KEY", "pk_abc", "klaviyo_api_key", "pk_abc"),
        ("KLAVIYO_BASE_URL", "http://127.0.0.1:8090/", "klaviyo_base_url", "http://127.0.0.1:8090"),
        ("KLAVIYO_REVISION", "2025-10-15", "klaviyo_revision", "2025-10-15"),
        ("KLAVIYO_REVISION", "2026-07-15.pre", "klaviyo_revision", "2026-07-15.pre"),
        pytest.param(
            "SWAP_SIGNATURE_HEADER", "X-Swap-Hmac", "swap_signature_header", "X-Swap-Hmac", id="SWAP_HEADER"
        ),
        ("RETURNSYNC_WEB_HOST", "127.0.0.1", "web_host", "127.0.0.1"),
        ("RETURNSYNC_WEB_PORT", "8080", "web_port", 8080),
        ("RETURNSYNC_WEB_PORT", " 8080 ", "web_port", 8080),
        ("RETURNSYNC_APP_ID", "returnsync-eu", "app_id", "returnsync-eu"),
        ("RETURNSYNC_TOPIC_PREFIX", "acme.", "topic_prefix", "acme."),
        ("RETURNSYNC_PARTITIONS", "24", "partitions", 24),
        ("RETURNSYNC_REPLICATION_FACTOR", "3", "replication_factor", 3),
        ("RETURNSYNC_STANDBY_REPLICAS", "0", "standby_replicas", 0),
        ("RETURNSYNC_STORE", "rocksdb://", "store", "rocksdb://"),
        ("RETURNSYNC_STORE", "RocksDB://", "store", "rocksdb://"),
        ("RETURNSYNC_DATA_DIR", "/var/lib/returnsync", "data_dir", Path("/var/lib/returnsync")),
        ("RETURNSYNC_CUSTOMER_API_TOKEN", "tok", "customer_api_token", "tok"),
        ("RETURNSYNC_LOG_LEVEL", "DEBUG", "log_level", "debug"),
        ("RETURNSYNC_SESSION_TIMEOUT", "45.5", "session_timeout", 45.5),
        ("RETURNSYNC_SYNC_BATCH_SIZE", "100", "sync_batch_size", 100),
        ("RETURNSYNC_SYNC_BATCH_SECONDS", "0", "sync_batch_seconds", 0.0),
    ],
)  # fmt: skip
def test_each_variable(variable: str, value: str, attribute: str, expected: Any) -> None:
    settings = Settings.from_env({variable: value})
    assert getattr(settings, attribute) == expected
    assert type(getattr(settings, attribute)) is type(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("YES", True), ("on", True), (" true ", True),
     ("0", False), ("false", False), ("No", False), ("off", False), ("", False)],
)  # fmt: skip
def test_dev_flag(value: str, expected: bool) -> None:
    assert Settings.from_env({"RETURNSYNC_DEV": value}).dev_stack is expected


def test_topic_prefix_applies_to_every_topic() -> None:
    topics = Settings.from_env({"RETURNSYNC_TOPIC_PREFIX": "staging-"}).topics
    assert topics == TopicNames("staging-returns.raw", "staging-returns.events", "staging-returns.deadletter")


def test_webhook_secrets_per_source() -> None:
    settings = Settings.from_env(
        {"LOOP_WEBHOOK_SECRET": "a", "SHOPIFY_WEBHOOK_SECRET": "b", "REDO_WEBHOOK_SECRET": ""}
    )
    assert settings.webhook_secrets == {"loop": "a", "shopify": "b"}
    assert Settings.from_env(SECRETS).webhook_secrets == {
        "loop": "loop-shh-1",
        "shopify": "shopify-shh-2",
        "redo": "redo-shh-3",
        "swap": "swap-shh-4",
        "aftership": "aftership-shh-5",
    }


def test_projection_settings() -> None:
    settings = Settings.from_env(
        {
            "RETURNSYNC_PROPERTY_PREFIX": "rs_",
            "RETURNSYNC_SERIAL_RETURNER_THRESHOLD": "5",
            "RETURNSYNC_METRIC_NAMES": '{"return.requested": "Retoure angemeldet", '
            '"item": "Retoure Artikel"}',
        }
    )
    assert settings.projection.property_prefix == "rs_"
    assert settings.projection.serial_returner_threshold == 5
    names = settings.projection.metric_names
    assert names[EventType.RETURN_REQUESTED] == "Retoure angemeldet"
    assert names["item"] == "Retoure Artikel"
    assert names[EventType.REFUND_ISSUED] == "Refund Issued"
    assert len(names) == len(DEFAULT_METRIC_NAMES), "an override replaces a name, it adds no key"


def test_serial_returner_rate_settings_are_exact_decimals() -> None:
    settings = Settings.from_env(
        {"RETURNSYNC_SERIAL_RETURNER_RATE": " 0.5 ", "RETURNSYNC_SERIAL_RETURNER_MIN_ORDERS": "4"}
    )
    assert settings.projection.serial_returner_rate == Decimal("0.5")
    assert type(settings.projection.serial_returner_rate) is Decimal
    assert settings.projection.serial_returner_min_orders == 4
    assert Settings.from_env({"RETURNSYNC_SERIAL_RETURNER_RATE": "1"}).projection.serial_returner_rate == 1


def test_a_bad_serial_returner_rate_says_what_is_allowed() -> None:
    (line,) = error_lines({"RETURNSYNC_SERIAL_RETURNER_RATE": "50%"})
    assert line.strip().startswith(
        "RETURNSYNC_SERIAL_RETURNER_RATE='50%': must be a decimal between 0.01 and 1")
    assert "0.5" in line and "unset" in line


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KLAVIYO_BASE_URL", "a.klaviyo.com"),
        ("KLAVIYO_BASE_URL", "ftp://a.klaviyo.com"),
        ("KLAVIYO_REVISION", "latest"),
        ("KLAVIYO_REVISION", "2026/07/15"),
        ("RETURNSYNC_WEB_PORT", "0"),
        ("RETURNSYNC_WEB_PORT", "65536"),
        ("RETURNSYNC_WEB_PORT", "http"),
        ("RETURNSYNC_WEB_PORT", "80.5"),
        ("RETURNSYNC_APP_ID", "return sync"),
        ("RETURNSYNC_APP_ID", "returnsync/eu"),
        ("RETURNSYNC_TOPIC_PREFIX", "acme:"),
        ("RETURNSYNC_TOPIC_PREFIX", "p" * 101),
        ("RETURNSYNC_PARTITIONS", "0"),
        ("RETURNSYNC_PARTITIONS", "2000"),
        ("RETURNSYNC_REPLICATION_FACTOR", "0"),
        ("RETURNSYNC_STANDBY_REPLICAS", "-1"),
        ("RETURNSYNC_STORE", "redis://"),
        ("RETURNSYNC_DEV", "maybe"),
        ("RETURNSYNC_LOG_LEVEL", "verbose"),
        ("RETURNSYNC_SESSION_TIMEOUT", "0.5"),
        ("RETURNSYNC_SESSION_TIMEOUT", "nan"),
        ("RETURNSYNC_SESSION_TIMEOUT", "inf"),
        ("RETURNSYNC_SYNC_BATCH_SIZE", "20000"),
        ("RETURNSYNC_SYNC_BATCH_SECONDS", "-1"),
        ("RETURNSYNC_SYNC_BATCH_SECONDS", "NaN"),
        ("RETURNSYNC_SERIAL_RETURNER_THRESHOLD", "0"),
        ("RETURNSYNC_SERIAL_RETURNER_THRESHOLD", "three"),
        ("RETURNSYNC_SERIAL_RETURNER_RATE", "0"),
        ("RETURNSYNC_SERIAL_RETURNER_RATE", "1.5"),
        ("RETURNSYNC_SERIAL_RETURNER_RATE", "half"),
        ("RETURNSYNC_SERIAL_RETURNER_RATE", "NaN"),
        ("RETURNSYNC_SERIAL_RETURNER_RATE", "Infinity"),
        ("RETURNSYNC_SERIAL_RETURNER_RATE", "-0.5"),
        ("RETURNSYNC_SERIAL_RETURNER_MIN_ORDERS", "0"),
        ("RETURNSYNC_SERIAL_RETURNER_MIN_ORDERS", "five"),
        ("RETURNSYNC_METRIC_NAMES", '{"order.placed": "Placed Order"}'),
        ("RETURNSYNC_METRIC_NAMES", "{not json"),
        ("RETURNSYNC_METRIC_NAMES", '["Return Requested"]'),
        ("RETURNSYNC_METRIC_NAMES", '{"return.shipped": "Return Shipped"}'),
        ("RETURNSYNC_METRIC_NAMES", '{"item.restocked": "Restocked"}'),
        ("RETURNSYNC_METRIC_NAMES", '{"return.requested": ""}'),
        ("RETURNSYNC_METRIC_NAMES", '{"return.requested": 7}'),
        ("RETURNSYNC_METRIC_NAMES", '{"return.requested": "' + "x" * 128 + '"}'),
    ],
)
def test_each_invalid_value_is_reported_by_name(variable: str, value: str) -> None:
    (line,) = error_lines({variable: value})
    assert line.strip().startswith(variable)
    assert "must" in line


def test_every_bad_variable_is_listed_at_once() -> None:
    env = {
        "KLAVIYO_BASE_URL": "klaviyo",
        "RETURNSYNC_WEB_PORT": "99999",
        "RETURNSYNC_PARTITIONS": "many",
        "RETURNSYNC_STORE": "s3://",
        "RETURNSYNC_DEV": "sometimes",
        "RETURNSYNC_SESSION_TIMEOUT": "nan",
        "RETURNSYNC_METRIC_NAMES": "[]",
        "RETURNSYNC_APP_ID": "a b",
        # valid ones do not appear
        "RETURNSYNC_LOG_LEVEL": "warning",
        "RETURNSYNC_SYNC_BATCH_SIZE": "10",
    }
    lines = error_lines(env)
    named = sorted(line.strip().split("=")[0].split(":")[0] for line in lines)
    assert named == sorted(
        [
            "KLAVIYO_BASE_URL",
            "RETURNSYNC_WEB_PORT",
            "RETURNSYNC_PARTITIONS",
            "RETURNSYNC_STORE",
            "RETURNSYNC_DEV",
            "RETURNSYNC_SESSION_TIMEOUT",
            "RETURNSYNC_METRIC_NAMES",
            "RETURNSYNC_APP_ID",
        ]
    )


def test_range_messages_are_readable() -> None:
    (line,) = error_lines({"RETURNSYNC_SERIAL_RETURNER_THRESHOLD": "0"})
    assert "None" not in line
    assert ">= 1" in line
    (line,) = error_lines({"RETURNSYNC_WEB_PORT": "0"})
    assert "between 1 and 65535" in line


def test_secrets_never_appear_in_repr_or_str() -> None:
    settings = Settings.from_env(SECRETS)
    assert settings.klaviyo_api_key == SECRETS["KLAVIYO_API_KEY"]
    assert settings.customer_api_token == SECRETS["RETURNSYNC_CUSTOMER_API_TOKEN"]
    for text in (repr(settings), str(settings)):
        for secret in SECRETS.values():
            assert secret not in text


def test_secrets_never_appear_in_configuration_errors() -> None:
    lines = error_lines({**SECRETS, "RETURNSYNC_WEB_PORT": "-1"})
    for secret in SECRETS.values():
        assert all(secret not in line for line in lines)


def test_only_from_env_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETURNSYNC_WEB_PORT", "7070")
    assert Settings.from_env().web_port == 7070
    assert Settings.from_env({}).web_port == 6066, "an explicit mapping wins over os.environ"
    assert Settings().web_port == 6066


def test_settings_are_frozen_and_overridable() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.web_port = 1  # type: ignore[misc]
    changed = settings.with_overrides(web_port=7000, topic_prefix="t-")
    assert (changed.web_port, changed.topics.events) == (7000, "t-returns.events")
    assert settings.web_port == 6066


def test_max_future_skew_is_seconds_within_klaviyos_year() -> None:
    assert Settings.from_env({}).max_future_skew == timedelta(hours=1)
    assert Settings.from_env({"RETURNSYNC_MAX_FUTURE_SKEW": "86400"}).max_future_skew == timedelta(days=1)
    assert Settings.from_env({"RETURNSYNC_MAX_FUTURE_SKEW": "0"}).max_future_skew == timedelta(0)
    for bad in ("-1", "31536001", "an hour", "nan"):
        [line] = error_lines({"RETURNSYNC_MAX_FUTURE_SKEW": bad})
        assert line.strip().startswith("RETURNSYNC_MAX_FUTURE_SKEW=")


def test_max_state_bytes_defaults_under_kafkas_message_limit_and_is_bounded() -> None:
    assert Settings.from_env({}).max_state_bytes == 1_000_000 < 1_048_588  # Kafka's message.max.bytes
    assert Settings.from_env({"RETURNSYNC_MAX_STATE_BYTES": "6000"}).max_state_bytes == 6000
    for bad in ("1023", "67108865", "1 MB"):
        [line] = error_lines({"RETURNSYNC_MAX_STATE_BYTES": bad})
        assert line.strip().startswith("RETURNSYNC_MAX_STATE_BYTES=")
