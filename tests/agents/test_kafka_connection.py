"""Kafka security settings (SPEC §7): validated at once, one set for every client, no password shown."""

from __future__ import annotations

import ast
import ssl
import subprocess
from pathlib import Path

import faust
import pytest

from agents.kafka import KafkaConnection, KafkaSecurity, KafkaUnreachable, explain
from agents.settings import Settings, SettingsError

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-pa55"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a client certificate signed by it, made with the machine's openssl."""
    folder = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=returnsync test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
            "-subj", "/CN=returnsync")
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "client.pem", "-days", "2")
    return {"ca": folder / "ca.pem", "cert": folder / "client.pem", "key": folder / "client.key"}


def errors_of(env: dict[str, str]) -> list[str]:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    return [line.strip() for line in str(info.value).splitlines()[1:]]


def test_plaintext_by_default_with_nothing_but_the_servers() -> None:
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092"})
    assert settings.kafka_security == KafkaSecurity()
    assert settings.kafka().client_options() == {"bootstrap_servers": "k1:9092,k2:9092",
                                                 "security_protocol": "PLAINTEXT"}
    assert settings.kafka().faust_options() == {"broker": ["kafka://k1:9092", "kafka://k2:9092"],
                                                "broker_credentials": None}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_reaches_aiokafka_and_faust_alike(mechanism: str, tls_files: dict[str, Path]) -> None:
    settings = Settings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": "broker:9096", "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "KAFKA_SASL_MECHANISM": mechanism, "KAFKA_SASL_USERNAME": "returnsync",
        "KAFKA_SASL_PASSWORD": PASSWORD, "KAFKA_SSL_CAFILE": str(tls_files["ca"]),
    })
    options = settings.kafka().client_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert (options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == (
        mechanism, "returnsync", PASSWORD)
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].check_hostname and options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    credentials = settings.kafka().faust_options()["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL" and credentials.mechanism.value == mechanism
    assert (credentials.username, credentials.password) == ("returnsync", PASSWORD)
    assert PASSWORD not in repr(settings) and PASSWORD not in repr(credentials)


def test_sasl_plaintext_has_no_tls_and_defaults_to_plain() -> None:
    settings = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u",
                                  "KAFKA_SASL_PASSWORD": PASSWORD})
    options = KafkaConnection("b:9092", settings.kafka_security).client_options()
    assert options["sasl_mechanism"] == "PLAIN" and "ssl_context" not in options
    credentials = KafkaConnection("b:9092", settings.kafka_security).faust_options()["broker_credentials"]
    assert credentials.protocol.value == "SASL_PLAINTEXT"


def test_mutual_tls_loads_the_client_certificate(tls_files: dict[str, Path]) -> None:
    settings = Settings.from_env({
        "KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(tls_files["ca"]),
        "KAFKA_SSL_CERTFILE": str(tls_files["cert"]), "KAFKA_SSL_KEYFILE": str(tls_files["key"]),
    })
    security = settings.kafka_security
    assert (security.ssl_certfile, security.ssl_keyfile) == (tls_files["cert"], tls_files["key"])
    credentials = KafkaConnection("b:9093", security).faust_options()["broker_credentials"]
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.protocol.value == "SSL"


def test_every_bad_security_value_is_reported_at_once_without_the_password(tmp_path: Path) -> None:
    not_a_cert = tmp_path / "ca.pem"
    not_a_cert.write_text("not a certificate")
    lines = errors_of({
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "GSSAPI",
        "KAFKA_SASL_PASSWORD": PASSWORD, "KAFKA_SSL_CAFILE": "/no/such/ca.pem",
        "KAFKA_SSL_CERTFILE": str(not_a_cert), "RETURNSYNC_PARTITIONS": "0",
    })
    text = "\n".join(lines)
    assert any(line.startswith("KAFKA_SASL_MECHANISM='GSSAPI'") for line in lines)
    assert any(line.startswith("KAFKA_SASL_USERNAME: required") for line in lines)
    assert any(line.startswith("KAFKA_SSL_CAFILE='/no/such/ca.pem': no readable file") for line in lines)
    assert any("mutual TLS needs both" in line for line in lines)
    assert any(line.startswith("RETURNSYNC_PARTITIONS=") for line in lines)
    assert PASSWORD not in text


def test_security_settings_a_protocol_would_ignore_are_refused(tls_files: dict[str, Path]) -> None:
    lines = errors_of({"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": PASSWORD,
                       "KAFKA_SSL_CAFILE": str(tls_files["ca"])})
    assert len(lines) == 2
    assert "only used with KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT or SASL_SSL (it is PLAINTEXT)" in lines[0]
    assert "only used with KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL (it is PLAINTEXT)" in lines[1]
    assert errors_of({"KAFKA_SECURITY_PROTOCOL": "TLS"})[0].startswith("KAFKA_SECURITY_PROTOCOL='TLS'")


def test_files_that_do_not_make_a_tls_context_are_reported_at_start(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    lines = errors_of({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(garbage)})
    assert len(lines) == 1 and lines[0].startswith("KAFKA_SSL_*: the files do not make a TLS context")


def test_a_refusal_becomes_one_line_naming_what_to_check_and_never_the_password() -> None:
    security = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "u", PASSWORD)
    kafka = KafkaConnection("broker:9096", security)

    class SaslAuthenticationFailed(Exception):
        pass

    refused = explain(SaslAuthenticationFailed(f"bad credentials for u/{PASSWORD}"), kafka)
    assert isinstance(refused, KafkaUnreachable)
    assert "\n" not in str(refused) and PASSWORD not in str(refused)
    assert "KAFKA_SASL_PASSWORD" in str(refused) and "broker:9096 (SASL_SSL)" in str(refused)
    untrusted = explain(ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED]"), kafka)
    assert "KAFKA_SSL_CAFILE" in str(untrusted)
    assert "KAFKA_BOOTSTRAP_SERVERS" in str(explain(TimeoutError(), kafka))


KAFKA_CLIENTS = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient"}


def test_every_kafka_client_in_the_product_is_built_from_the_one_connection() -> None:
    """Structural: a client built any other way would miss the security settings on managed Kafka."""
    built = []
    for path in sorted((REPO / "agents").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            expected = {"App": "faust_options"}.get(name, "client_options") if (
                name in KAFKA_CLIENTS or (name == "App" and "faust" in ast.unparse(node.func))) else None
            if expected is None:
                continue
            spreads = [ast.unparse(kw.value) for kw in node.keywords if kw.arg is None]
            where = f"{path.relative_to(REPO)}:{node.lineno} {name}"
            assert any(spread.endswith(f".{expected}()") for spread in spreads), f"{where}: no **{expected}()"
            assert not any(kw.arg in ("bootstrap_servers", "broker") for kw in node.keywords), where
            built.append(where)
    # The sync consumer, versions, lag/ends probe, replay, reconcile, publish, admin and Faust.
    assert len(built) >= 9, built
