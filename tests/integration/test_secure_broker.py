"""The secured endpoints of tests/integration/secure_broker.py, live, with plain aiokafka clients:
each mode carries a record from a producer to a consumer group and commits it, and each kind of
wrong setting (password, user, CA, client certificate, host name, protocol) is refused, fast, with
the exception a client really gets.

aiokafka's clients wrap every bootstrap failure in KafkaConnectionError("Unable to bootstrap
from ...") and log the cause; a single connection (aiokafka.conn.create_conn) raises the cause
itself, so both are asserted."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import AIOKafkaConnection, create_conn
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

from tests.integration.secure_broker import MODES, SecureBroker, secure_broker

pytestmark = pytest.mark.integration

ROUND_TRIP_SECONDS = 60.0
REFUSAL_SECONDS = 10.0
"""A refusal must surface well within this: a wrong setting may never look like a slow cluster."""

SASL_MODES = [mode for mode, spec in MODES.items() if spec.sasl]
TLS_MODES = [mode for mode, spec in MODES.items() if spec.tls]


@pytest.fixture
def endpoint(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SecureBroker]:
    """`mode` or `(mode, secure_broker keyword arguments)`, given by indirect parametrization."""
    mode, options = request.param if isinstance(request.param, tuple) else (request.param, {})
    with secure_broker(tmp_path, mode=mode, **options) as broker:
        yield broker


ROUND_TRIPS = [
    *MODES,
    pytest.param(("sasl_plaintext_scram", {"scram_mechanism": "SCRAM-SHA-256"}),
                 id="sasl_plaintext_scram-SCRAM-SHA-256"),
    pytest.param(("sasl_ssl_scram", {"scram_mechanism": "SCRAM-SHA-256"}), id="sasl_ssl_scram-SCRAM-SHA-256"),
]


@pytest.mark.parametrize("endpoint", ROUND_TRIPS, indirect=True)
async def test_a_record_goes_through_a_consumer_group(endpoint: SecureBroker) -> None:
    await asyncio.wait_for(_round_trip(endpoint), ROUND_TRIP_SECONDS)


async def _round_trip(endpoint: SecureBroker) -> None:
    options = endpoint.aiokafka_options()
    topic, group = f"secure-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(**options)
    await producer.start()
    try:
        # Every broker the cluster advertises is the secured address: no connection after
        # bootstrap (leaders, coordinator) can go around the security.
        advertised = {f"{broker.host}:{broker.port}" for broker in producer.client.cluster.brokers()}
        assert advertised == {endpoint.bootstrap_servers}
        sent = await producer.send_and_wait(topic, b"returned", key=b"customer-1")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(topic, group_id=group, auto_offset_reset="earliest",
                                enable_auto_commit=False, **options)
    await consumer.start()
    try:
        record = await consumer.getone()
        assert (record.key, record.value, record.partition, record.offset) == (
            b"customer-1", b"returned", sent.partition, sent.offset)
        await consumer.commit()
        assert await consumer.committed(TopicPartition(topic, sent.partition)) == sent.offset + 1
    finally:
        await consumer.stop()


async def _connect(options: dict[str, Any]) -> AIOKafkaConnection:
    """One connection, as a client's bootstrap makes it: TLS, ApiVersions, SASL."""
    host, port = options["bootstrap_servers"].rsplit(":", 1)
    rest = {name: value for name, value in options.items() if name != "bootstrap_servers"}
    connection: AIOKafkaConnection = await asyncio.wait_for(
        create_conn(host, int(port), request_timeout_ms=5000, **rest), REFUSAL_SECONDS)
    return connection


async def _client_refused(options: dict[str, Any], caplog: pytest.LogCaptureFixture, cause: str) -> float:
    """An admin client fails to start with KafkaConnectionError, having logged `cause`; the
    seconds it took."""
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=5000)
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="aiokafka"), pytest.raises(KafkaConnectionError):
            await asyncio.wait_for(admin.start(), REFUSAL_SECONDS)
    finally:
        await admin.close()
    took = time.monotonic() - started
    assert cause in caplog.text
    assert took < REFUSAL_SECONDS
    return took


async def _log_says(endpoint: SecureBroker, part: str, text: str) -> None:
    deadline = time.monotonic() + REFUSAL_SECONDS
    while text not in endpoint.log_text(part):
        said = endpoint.log_text(part)[-2000:]
        assert time.monotonic() < deadline, f"{part}.log never said {text!r}:\n{said}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("endpoint", SASL_MODES, indirect=True)
@pytest.mark.parametrize("wrong", [{"KAFKA_SASL_PASSWORD": "not-the-password"},
                                   {"KAFKA_SASL_USERNAME": "mallory"}], ids=["password", "user"])
async def test_wrong_credentials_are_refused(
    endpoint: SecureBroker, wrong: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    options = endpoint.aiokafka_options(**wrong)
    with pytest.raises(SaslAuthenticationFailed, match="Authentication failed"):
        await _connect(options)
    await _client_refused(options, caplog, "SaslAuthenticationFailed")
    await _log_says(endpoint, "sasl-front", "refused: Authentication failed")


@pytest.mark.parametrize("endpoint", ["sasl_plaintext_scram"], indirect=True)
async def test_a_client_that_skips_sasl_is_closed(
    endpoint: SecureBroker, caplog: pytest.LogCaptureFixture
) -> None:
    await _client_refused(endpoint.aiokafka_options(KAFKA_SECURITY_PROTOCOL="PLAINTEXT"), caplog,
                          "Connection at")
    await _log_says(endpoint, "sasl-front", "before authentication: closing")


@pytest.mark.parametrize("endpoint", TLS_MODES, indirect=True)
async def test_a_broker_signed_by_another_ca_is_refused(
    endpoint: SecureBroker, caplog: pytest.LogCaptureFixture
) -> None:
    assert endpoint.certificates is not None
    options = endpoint.aiokafka_options(KAFKA_SSL_CAFILE=str(endpoint.certificates.other_cafile))
    with pytest.raises(ssl.SSLCertVerificationError):
        await _connect(options)
    await _client_refused(options, caplog, "CERTIFICATE_VERIFY_FAILED")


OTHER_HOST = pytest.param(("ssl", {"server_names": ["kafka.invalid"]}), id="ssl-for-kafka.invalid")


@pytest.mark.parametrize("endpoint", [OTHER_HOST], indirect=True)
async def test_a_certificate_for_another_host_is_refused(
    endpoint: SecureBroker, caplog: pytest.LogCaptureFixture
) -> None:
    options = endpoint.aiokafka_options()
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        await _connect(options)
    await _client_refused(options, caplog, "CERTIFICATE_VERIFY_FAILED")


@pytest.mark.parametrize("endpoint", ["mtls"], indirect=True)
@pytest.mark.parametrize("client", ["none", "stranger"])
async def test_mutual_tls_refuses_a_missing_or_foreign_client_certificate(
    endpoint: SecureBroker, client: str, caplog: pytest.LogCaptureFixture
) -> None:
    certificates = endpoint.certificates
    assert certificates is not None
    if client == "none":
        options = endpoint.aiokafka_options(KAFKA_SSL_CERTFILE="", KAFKA_SSL_KEYFILE="")
        reason = "peer did not return a certificate"
    else:
        options = endpoint.aiokafka_options(KAFKA_SSL_CERTFILE=str(certificates.stranger_certfile),
                                            KAFKA_SSL_KEYFILE=str(certificates.stranger_keyfile))
        reason = "Rejected by CERT"
    # TLS 1.3: the client's handshake completes before the server checks its certificate, so
    # the refusal reaches the client as the connection closing under its first request.
    with pytest.raises((KafkaConnectionError, ssl.SSLError)):
        await _connect(options)
    await _client_refused(options, caplog, "Unable connect to")
    await _log_says(endpoint, "stunnel", reason)


@pytest.mark.parametrize("endpoint", ["ssl"], indirect=True)
async def test_a_plaintext_client_on_the_tls_listener_fails_fast(
    endpoint: SecureBroker, caplog: pytest.LogCaptureFixture
) -> None:
    await _client_refused(endpoint.aiokafka_options(KAFKA_SECURITY_PROTOCOL="PLAINTEXT"), caplog,
                          "Connection at")
