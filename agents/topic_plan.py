"""Every topic returnsync reads or writes, with its partitions, replication and configs (SPEC §2).

The one place a derived topic name is spelled. The worker creates the plan before it subscribes
and refuses to start on any mismatch (agents/topic_admin.py); `returnsync topics` prints it for
operators who pre-create topics (Terraform, Strimzi). Nothing may depend on broker auto-creation:
Apache Kafka auto-creates with 1 partition and 7 days' retention, which splits customers across
partitions (a Faust join then fails with PartitionsMismatch) and silently expires the history
replay rebuilds Klaviyo from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from agents.settings import Settings

DAY_MS = 86_400_000
DEADLETTER_RETENTION_MS = 30 * DAY_MS
"""Long enough for an on-call engineer to find, fix and re-drive what was dead-lettered."""
TRANSIENT_RETENTION_MS = 7 * DAY_MS
"""Outbox and repartition records are derived: a week outlasts any outage, replay rebuilds beyond."""

STATE_TABLE = "customer_returns"
SHOPIFY_CUSTOMERS_TABLE = "shopify_order_customers"
SHOPIFY_HELD_TABLE = "shopify_held"
TABLES = (STATE_TABLE, SHOPIFY_CUSTOMERS_TABLE, SHOPIFY_HELD_TABLE)
"""The Faust tables; each has a compacted changelog."""


class Role(Enum):
    SOURCE = "source"  # the source of truth: kept forever
    CHANGELOG = "changelog"  # compacted: one record per key is the table
    VERSIONS = "versions"  # compacted: the delivery floors
    TRANSIENT = "transient"  # outbox and repartition: time-bounded
    DEADLETTER = "deadletter"
    FAUST = "faust"  # Faust's own bookkeeping (the assignor's leader topic)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    role: Role
    configs: Mapping[str, str] = field(default_factory=dict)


def rekey_topic(settings: Settings) -> str:
    """Faust's naming for repartition topics: "<app id>-<topic>-<key>-repartition"."""
    return f"{settings.app_id}-{settings.topics.events}-customer_key-repartition"


def shopify_join_topic(settings: Settings) -> str:
    return f"{settings.app_id}-{settings.topics.raw}-shopify_order-repartition"


def sync_topic(settings: Settings) -> str:
    return f"{settings.app_id}-klaviyo-sync"


def versions_topic(settings: Settings) -> str:
    """Live delivery's version floors (agents/klaviyo/highwater.py)."""
    return f"{sync_topic(settings)}-versions"


def redrives_topic(settings: Settings) -> str:
    """What `returnsync deadletters redrive` re-drove, keyed by dead letter (commands/deadletters.py)."""
    return f"{settings.app_id}-deadletter-redrives"


def changelog_topic(settings: Settings, table: str) -> str:
    return f"{settings.app_id}-{table}-changelog"


def leader_topic(settings: Settings) -> str:
    """Faust's LeaderAssignor topic (faust/assignor/leader_assignor.py): always 1 partition."""
    return f"{settings.app_id}-__assignor-__leader"


def source_configs(settings: Settings) -> dict[str, str]:
    if settings.source_retention_ms is None:
        return {"retention.ms": "-1", "retention.bytes": "-1"}
    return {"retention.ms": str(settings.source_retention_ms), "retention.bytes": "-1"}


KAFKA_DEFAULT_MESSAGE_MAX_BYTES = 1_048_588
STATE_RECORD_OVERHEAD = 4096
"""Record and batch headers around a state or sync record the fold let through (key included)."""


def state_sized(settings: Settings) -> dict[str, str]:
    """Configs for the topics a whole customer state is written to (the table's changelog, the
    sync topic): a state up to RETURNSYNC_MAX_STATE_BYTES must fit, or the broker would refuse its
    changelog record, which Faust sends in the background, and stop the worker. Only set when
    the broker's default would not do."""
    needed = settings.max_state_bytes + STATE_RECORD_OVERHEAD
    if needed <= KAFKA_DEFAULT_MESSAGE_MAX_BYTES:
        return {}
    return {"max.message.bytes": str(needed)}


def topic_plan(settings: Settings) -> list[TopicSpec]:
    topics, partitions, rf = settings.topics, settings.partitions, settings.replication_factor
    compacted = {"cleanup.policy": "compact"}
    transient = {"cleanup.policy": "delete", "retention.ms": str(TRANSIENT_RETENTION_MS)}

    def spec(name: str, role: Role, configs: Mapping[str, str], count: int = partitions) -> TopicSpec:
        return TopicSpec(name, count, rf, role, dict(configs))

    return [
        spec(topics.raw, Role.SOURCE, source_configs(settings)),
        spec(topics.events, Role.SOURCE, source_configs(settings)),
        spec(topics.deadletter, Role.DEADLETTER,
             {"cleanup.policy": "delete", "retention.ms": str(DEADLETTER_RETENTION_MS)}),
        spec(redrives_topic(settings), Role.DEADLETTER,
             {"cleanup.policy": "delete", "retention.ms": str(DEADLETTER_RETENTION_MS)}),
        spec(rekey_topic(settings), Role.TRANSIENT, transient),
        spec(shopify_join_topic(settings), Role.TRANSIENT, transient),
        spec(sync_topic(settings), Role.TRANSIENT, {**transient, **state_sized(settings)}),
        spec(versions_topic(settings), Role.VERSIONS, compacted),
        *(spec(changelog_topic(settings, table), Role.CHANGELOG, {**compacted, **state_sized(settings)})
          for table in TABLES),
        spec(leader_topic(settings), Role.FAUST, {}, count=1),
    ]


@dataclass(frozen=True)
class Found:
    """What the cluster says of one planned topic; configs the broker did not report are absent."""

    partitions: int
    replication_factor: int
    configs: Mapping[str, str]


def mismatches(spec: TopicSpec, found: Found) -> list[str]:
    """Why an existing topic cannot serve as planned; empty when it can.

    Checked: what correctness rests on. Partition count (state is partitioned by customer key),
    replication below the plan, compaction where a topic is a table, and a source topic that
    would forget sooner than planned (replay would rebuild from part of the history). A
    transient topic's retention is the operator's choice and is not checked.
    """
    problems = []
    if found.partitions != spec.partitions:
        problems.append(f"{found.partitions} partitions, needs {spec.partitions}")
    if found.replication_factor < spec.replication_factor:
        problems.append(f"replication factor {found.replication_factor}, needs {spec.replication_factor}")
    wanted_policy = spec.configs.get("cleanup.policy")
    if wanted_policy == "compact" and "compact" not in found.configs.get("cleanup.policy", "delete"):
        problems.append(f"cleanup.policy={found.configs.get('cleanup.policy', 'delete (default)')}, "
                        "needs compact")
    if spec.role is Role.SOURCE:
        for name in ("retention.ms", "retention.bytes"):
            if _shorter(found.configs.get(name), spec.configs[name]):
                have = found.configs.get(name, "the broker's default")
                problems.append(f"{name}={have}, needs {spec.configs[name]} (or longer)")
    return problems


def _shorter(have: str | None, need: str) -> bool:
    """Whether a retention `have` keeps less than `need`; -1 is forever, absent the broker default
    (7 days or less on every managed Kafka we know, so treated as shorter than a plan of forever)."""
    if have is None:
        return True
    if have == "-1":
        return False
    if need == "-1":
        return True
    return int(have) < int(need)


def fix_hint(spec: TopicSpec, found: Found) -> str:
    if found.partitions != spec.partitions and spec.role is Role.FAUST:
        return f"recreate {spec.name} with {spec.partitions} partition (Faust's own topic)"
    if found.partitions != spec.partitions:
        return (f"recreate {spec.name} with {spec.partitions} partitions, or set "
                f"RETURNSYNC_PARTITIONS={found.partitions} if every topic has that many")
    configs = ",".join(f"{key}={value}" for key, value in spec.configs.items())
    return f"kafka-configs --alter --entity-type topics --entity-name {spec.name} --add-config {configs}"
