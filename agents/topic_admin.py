"""The topic plan against a live cluster: create what is missing, check what exists.

`ensure_plan` runs before a worker subscribes to anything; `returnsync topics --check/--create`
runs it for operators. Every mismatch is reported in one message, with what the topic has, what
it needs and the fix, so one run tells the operator everything.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from agents.kafka import KafkaConnection, admin_client
from agents.topic_plan import Found, Role, TopicSpec, fix_hint, mismatches

log = logging.getLogger(__name__)


class TopicPlanError(RuntimeError):
    """Existing topics that cannot serve as planned; the message lists each with its fix."""


@dataclass
class PlanReport:
    created: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    matching: list[str] = field(default_factory=list)
    # (topic, what is wrong, the fix)
    problems: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.missing

    def message(self) -> str:
        count = len(self.problems) + len(self.missing)
        lines = [f"{count} topic(s) do not match returnsync's topic plan (`returnsync topics` prints it):"]
        lines += [f"  {name}: {what}; fix: {fix}" for name, what, fix in self.problems]
        lines += [f"  {name}: missing; fix: `returnsync topics --create`" for name in self.missing]
        return "\n".join(lines)


async def apply_plan(kafka: KafkaConnection, plan: Sequence[TopicSpec], *, create: bool) -> PlanReport:
    """Compare the cluster with `plan`; with `create`, create the missing topics as planned."""
    async with admin_client(kafka) as admin:
        existing = set(await admin.list_topics())
        report = PlanReport()
        absent = [spec for spec in plan if spec.name not in existing]
        if absent and create:
            response = await admin.create_topics([
                NewTopic(spec.name, spec.partitions, spec.replication_factor,
                         topic_configs=dict(spec.configs))
                for spec in absent
            ])
            refused = []
            for name, code, *rest in response.topic_errors:
                if code == TopicAlreadyExistsError.errno:  # another worker was faster: checked below
                    existing.add(name)
                elif code:
                    why = rest[0] if rest and rest[0] else errors.for_code(code).__name__
                    refused.append(f"{name}: {why}")
                else:
                    report.created.append(name)
            if refused:
                raise TopicPlanError("the cluster refused to create topics as planned:\n  "
                                     + "\n  ".join(refused))
            if report.created:
                log.info("topics created as planned: %s", ", ".join(report.created))
        elif absent:
            report.missing = [spec.name for spec in absent]
        present = [spec for spec in plan if spec.name in existing and spec.name not in report.created]
        found = await _describe(admin, [spec.name for spec in present])
        for spec in present:
            problems = mismatches(spec, found[spec.name])
            if problems:
                report.problems.append((spec.name, "; ".join(problems), fix_hint(spec, found[spec.name])))
            else:
                report.matching.append(spec.name)
        return report


async def ensure_plan(kafka: KafkaConnection, plan: Sequence[TopicSpec]) -> PlanReport:
    """Create what is missing; raise TopicPlanError listing every topic that does not match."""
    report = await apply_plan(kafka, plan, create=True)
    if report.problems:
        raise TopicPlanError(report.message())
    return report


async def _describe(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, Found]:
    if not names:
        return {}
    configs: dict[str, dict[str, str]] = {name: {} for name in names}
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    responses = await admin.describe_configs(resources)
    for response in responses:
        for resource in response.resources:
            _error, _message, _type, name, entries = resource[:5]
            for entry in entries:
                key, value = entry[0], entry[1]
                if value is not None and name in configs:
                    configs[name][key] = value
    found = {}
    for topic in await admin.describe_topics(names):
        partitions: list[dict[str, Any]] = topic["partitions"]
        replication = min((len(p["replicas"]) for p in partitions), default=0)
        found[topic["topic"]] = Found(len(partitions), replication, configs.get(topic["topic"], {}))
    return found


async def ensure_topics(kafka: KafkaConnection, names: Sequence[str], partitions: int) -> PlanReport:
    """Topics outside the plan (benchmarks, tests), created with `partitions` and no configs."""
    return await ensure_plan(kafka, [TopicSpec(name, partitions, 1, Role.TRANSIENT) for name in names])
