"""The topic plan (SPEC §2): every topic the worker touches, with the configs its role needs."""

from __future__ import annotations

import pytest

from agents.settings import Settings
from agents.topic_plan import (
    DEADLETTER_RETENTION_MS,
    TABLES,
    TRANSIENT_RETENTION_MS,
    Found,
    Role,
    TopicSpec,
    changelog_topic,
    fix_hint,
    mismatches,
    sync_topic,
    topic_plan,
)

SETTINGS = Settings(app_id="rs", topic_prefix="shop1.", partitions=12, replication_factor=3)


def by_name(settings: Settings = SETTINGS) -> dict[str, TopicSpec]:
    return {spec.name: spec for spec in topic_plan(settings)}


def test_the_plan_names_every_topic_the_worker_reads_or_writes() -> None:
    assert set(by_name()) == {
        "shop1.returns.raw", "shop1.returns.events", "shop1.returns.deadletter",
        "rs-shop1.returns.events-customer_key-repartition", "rs-shop1.returns.raw-shopify_order-repartition",
        "rs-klaviyo-sync", "rs-klaviyo-sync-versions", "rs-deadletter-redrives",
        "rs-customer_returns-changelog", "rs-shopify_order_customers-changelog", "rs-shopify_held-changelog",
        "rs-__assignor-__leader",
    }


def test_partitions_and_replication_come_from_the_settings_except_fausts_leader_topic() -> None:
    for name, spec in by_name().items():
        assert spec.replication_factor == 3, name
        assert spec.partitions == (1 if spec.role is Role.FAUST else 12), name


def test_configs_follow_each_role() -> None:
    plan = by_name()
    for name in ("shop1.returns.raw", "shop1.returns.events"):
        assert plan[name].configs == {"retention.ms": "-1", "retention.bytes": "-1"}
    for name in ("rs-klaviyo-sync-versions", "rs-customer_returns-changelog", "rs-shopify_held-changelog"):
        assert plan[name].configs == {"cleanup.policy": "compact"}
    for name in ("rs-klaviyo-sync", "rs-shop1.returns.raw-shopify_order-repartition"):
        assert plan[name].configs == {"cleanup.policy": "delete", "retention.ms": str(TRANSIENT_RETENTION_MS)}
    assert plan["shop1.returns.deadletter"].configs["retention.ms"] == str(DEADLETTER_RETENTION_MS)


def test_a_deliberately_shorter_source_retention_is_planned_as_asked() -> None:
    settings = Settings.from_env({"RETURNSYNC_SOURCE_RETENTION_MS": str(90 * 86_400_000)})
    assert by_name(settings)["returns.events"].configs["retention.ms"] == "7776000000"


SOURCE = by_name()["shop1.returns.events"]
VERSIONS = by_name()["rs-klaviyo-sync-versions"]
OUTBOX = by_name()["rs-klaviyo-sync"]


def test_a_topic_exactly_as_planned_has_no_mismatch() -> None:
    assert mismatches(SOURCE, Found(12, 3, {"retention.ms": "-1", "retention.bytes": "-1"})) == []
    assert mismatches(VERSIONS, Found(12, 3, {"cleanup.policy": "compact"})) == []


def test_more_replication_or_compact_delete_or_a_chosen_outbox_retention_are_fine() -> None:
    assert mismatches(VERSIONS, Found(12, 5, {"cleanup.policy": "compact,delete"})) == []
    assert mismatches(OUTBOX, Found(12, 3, {"retention.ms": "3600000"})) == []


@pytest.mark.parametrize(("found", "problem"), [
    (Found(4, 3, {"retention.ms": "-1", "retention.bytes": "-1"}), "4 partitions, needs 12"),
    (Found(12, 1, {"retention.ms": "-1", "retention.bytes": "-1"}), "replication factor 1, needs 3"),
    (Found(12, 3, {"retention.ms": "604800000", "retention.bytes": "-1"}),
     "retention.ms=604800000, needs -1 (or longer)"),
    (Found(12, 3, {"retention.bytes": "-1"}), "retention.ms=the broker's default, needs -1 (or longer)"),
    (Found(12, 3, {"retention.ms": "-1", "retention.bytes": "1073741824"}), "retention.bytes=1073741824"),
])
def test_what_a_source_topic_must_not_lack(found: Found, problem: str) -> None:
    assert any(problem in line for line in mismatches(SOURCE, found))


def test_a_table_topic_that_is_not_compacted_is_a_mismatch_with_the_command_that_fixes_it() -> None:
    found = Found(12, 3, {"cleanup.policy": "delete"})
    assert mismatches(VERSIONS, found) == ["cleanup.policy=delete, needs compact"]
    assert fix_hint(VERSIONS, found) == ("kafka-configs --alter --entity-type topics --entity-name "
                                         "rs-klaviyo-sync-versions --add-config cleanup.policy=compact")


def test_a_partition_mismatch_names_both_ways_out() -> None:
    hint = fix_hint(SOURCE, Found(4, 3, {}))
    assert "recreate shop1.returns.events with 12 partitions" in hint and "RETURNSYNC_PARTITIONS=4" in hint


def test_a_state_limit_over_the_brokers_default_raises_the_state_topics_limit() -> None:
    # A state the fold accepts must fit its changelog and sync records, or the broker refuses the
    # changelog write Faust makes in the background and the worker stops.
    default = {spec.name: spec for spec in topic_plan(Settings())}
    assert not any("max.message.bytes" in spec.configs for spec in default.values())
    big = Settings(max_state_bytes=4_000_000)
    assert big.max_record_bytes >= 4_000_000 + 4096
    sized = {spec.name for spec in topic_plan(big) if spec.configs.get("max.message.bytes")
             == str(4_000_000 + 4096)}
    assert sized == {sync_topic(big), *(changelog_topic(big, table) for table in TABLES)}
