"""RETURNSYNC_LOG_FORMAT=json on real processes: every line a worker writes is one JSON object
(Faust's own loggers included), a command's log lines are too (its progress bar aside), and no
customer's email is in any of them."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from streams.demo import demo_events
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import SandboxThread, expected_klaviyo, wait_until
from tests.integration.test_replay import cli_env, returnsync


def json_lines(text: str) -> list[dict[str, object]]:
    entries = []
    for line in text.splitlines():
        if line.strip():
            try:
                entries.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                raise AssertionError(f"not a JSON line: {line!r}") from None
    return entries


def test_a_worker_and_a_command_log_json_lines_without_emails(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread,
    bootstrap_servers: str, prefix: str,
) -> None:
    events = demo_events(20, seed=41)
    expected = expected_klaviyo(events)
    worker = start_worker(env={"RETURNSYNC_LOG_FORMAT": "json"})
    publish(events)
    wait_until(lambda: sandbox.event_keys() >= expected.events, within=90, what="the events delivered")
    worker.stop()
    emails = {event.customer.email for event in events}

    entries = json_lines(worker.log_file.read_text())
    assert {"agents.worker.run", "faust.worker"} <= {entry["logger"] for entry in entries}, \
        "the worker's and Faust's loggers both write JSON"
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    written = worker.log_file.read_text()
    assert not [email for email in emails if email in written]

    command = returnsync(["replay", "--from-beginning", "--dry-run"],
                         {**cli_env(bootstrap_servers, sandbox, prefix), "RETURNSYNC_LOG_FORMAT": "json"})
    assert command.returncode == 0, command.stdout + command.stderr[-2000:]
    logged = [line for line in command.stderr.splitlines() if line.startswith("{")]
    assert logged and all(orjson.loads(line)["level"] for line in logged)
    assert not [email for email in emails if email in command.stdout + command.stderr]
