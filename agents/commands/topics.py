"""`returnsync topics [--check] [--create] [--json]`: the topic plan for operators.

Without flags it only prints the plan (name, partitions, replication, configs), so an operator
who pre-creates topics (Terraform, Strimzi, a managed console) can copy it. `--check` compares the
cluster with it and exits 1 on anything missing or mismatched, including a source topic that
forgets sooner than planned; `--create` creates what is missing first, as the worker does.
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from agents.settings import Settings
from agents.topic_admin import PlanReport, apply_plan
from agents.topic_plan import TopicSpec, topic_plan


def run_topics(settings: Settings, *, check: bool, create: bool, as_json: bool) -> int:
    plan = topic_plan(settings)
    report = asyncio.run(apply_plan(settings.kafka(), plan, create=create)) if check or create else None
    if as_json:
        print(orjson.dumps(_as_json(plan, report), option=orjson.OPT_INDENT_2).decode())
    else:
        print(_as_table(plan))
        if report is not None:
            print()
            print(_summary(report))
    if report is not None and not report.ok:
        if as_json:
            print(report.message(), file=sys.stderr)
        return 1
    return 0


def _as_json(plan: list[TopicSpec], report: PlanReport | None) -> dict[str, object]:
    topics = [{"name": spec.name, "partitions": spec.partitions,
               "replication_factor": spec.replication_factor, "role": spec.role.value,
               "configs": dict(spec.configs)} for spec in plan]
    result: dict[str, object] = {"topics": topics}
    if report is not None:
        result["check"] = {
            "ok": report.ok, "created": report.created, "missing": report.missing,
            "matching": report.matching,
            "mismatched": [{"name": name, "problem": what, "fix": fix}
                           for name, what, fix in report.problems],
        }
    return result


def _as_table(plan: list[TopicSpec]) -> str:
    rows = [("topic", "partitions", "replication", "role", "configs")]
    rows += [(spec.name, str(spec.partitions), str(spec.replication_factor), spec.role.value,
              ",".join(f"{key}={value}" for key, value in spec.configs.items()) or "-") for spec in plan]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
                     + "  " + row[4] for row in rows)


def _summary(report: PlanReport) -> str:
    if report.ok:
        created = f", created {len(report.created)}" if report.created else ""
        return f"cluster matches the plan ({len(report.matching)} checked{created})"
    return report.message()
