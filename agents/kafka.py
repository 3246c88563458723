"""How every Kafka client in the process reaches the cluster: bootstrap servers plus security.

One `KafkaConnection` is built from the settings and handed to every client (the Faust app, the
sync consumer, the versions topic, lag, replay, reconcile, publish, topic admin, the embedded
broker's recovery workaround), so no client can be configured differently from the others.
Managed Kafka (Confluent Cloud, MSK, Aiven, Redpanda Cloud) needs SASL over TLS; mutual TLS takes
a client certificate and key.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError
from aiokafka.helpers import create_ssl_context

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
CONNECT_TIMEOUT_SECONDS = 30.0
"""How long a command waits for the cluster before it says why it could not connect."""


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """Verifies the broker (hostname included) against the CA file, or the system's CAs."""
        if not self.uses_tls:
            return None
        return _ssl_context(self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile)

    @classmethod
    def from_env(cls, env: Mapping[str, str], errors: list[str]) -> KafkaSecurity:
        """Every bad value is appended to `errors`; the password never appears in one."""

        def text(name: str) -> str | None:
            value = (env.get(name) or "").strip()
            return value or None

        protocol = (text("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").upper()
        if protocol not in PROTOCOLS:
            errors.append(f"KAFKA_SECURITY_PROTOCOL={protocol!r}: must be one of {', '.join(PROTOCOLS)}")
            protocol = "PLAINTEXT"
        mechanism = text("KAFKA_SASL_MECHANISM")
        username = text("KAFKA_SASL_USERNAME")
        password = env.get("KAFKA_SASL_PASSWORD") or None
        files = {name: text(name) for name in ("KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE")}
        sasl = protocol in ("SASL_PLAINTEXT", "SASL_SSL")
        tls = protocol in ("SSL", "SASL_SSL")
        if sasl:
            mechanism = (mechanism or "PLAIN").upper()
            if mechanism not in MECHANISMS:
                errors.append(f"KAFKA_SASL_MECHANISM={mechanism!r}: must be one of {', '.join(MECHANISMS)}")
            if not username:
                errors.append(f"KAFKA_SASL_USERNAME: required with KAFKA_SECURITY_PROTOCOL={protocol}")
            if not password:
                errors.append(f"KAFKA_SASL_PASSWORD: required with KAFKA_SECURITY_PROTOCOL={protocol}")
        else:
            # Credentials given to a protocol that ignores them are a mistake worth stopping for.
            given = [name for name in ("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD")
                     if env.get(name)]
            if given:
                errors.append(f"{', '.join(given)}: only used with KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT "
                              f"or SASL_SSL (it is {protocol})")
            mechanism, username, password = None, None, None
        if not tls and any(files.values()):
            given = [name for name, value in files.items() if value]
            errors.append(f"{', '.join(given)}: only used with KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL "
                          f"(it is {protocol})")
        for name, value in files.items():
            if value and not os.access(value, os.R_OK):
                errors.append(f"{name}={value!r}: no readable file there")
        if bool(files["KAFKA_SSL_CERTFILE"]) != bool(files["KAFKA_SSL_KEYFILE"]):
            errors.append("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE: mutual TLS needs both")
        security = cls(
            protocol=protocol, sasl_mechanism=mechanism, sasl_username=username, sasl_password=password,
            ssl_cafile=Path(files["KAFKA_SSL_CAFILE"]) if files["KAFKA_SSL_CAFILE"] else None,
            ssl_certfile=Path(files["KAFKA_SSL_CERTFILE"]) if files["KAFKA_SSL_CERTFILE"] else None,
            ssl_keyfile=Path(files["KAFKA_SSL_KEYFILE"]) if files["KAFKA_SSL_KEYFILE"] else None,
        )
        if tls and not errors:
            try:  # a CA bundle or key that does not parse is reported now, not at the first connect
                security.ssl_context()
            except (ssl.SSLError, OSError, ValueError) as exc:
                errors.append(f"KAFKA_SSL_*: the files do not make a TLS context: {exc}")
        return security


@functools.cache
def _ssl_context(cafile: Path | None, certfile: Path | None, keyfile: Path | None) -> ssl.SSLContext:
    """One context per process for the same files: every client shares it (and its loaded CAs)."""
    context: ssl.SSLContext = create_ssl_context(cafile=cafile, certfile=certfile, keyfile=keyfile)
    return context


@dataclass(frozen=True)
class KafkaConnection:
    bootstrap_servers: str
    security: KafkaSecurity = field(default_factory=KafkaSecurity)

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for every aiokafka producer, consumer and admin client."""
        options: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers,
                                   "security_protocol": self.security.protocol}
        context = self.security.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        if self.security.uses_sasl:
            options["sasl_mechanism"] = self.security.sasl_mechanism
            options["sasl_plain_username"] = self.security.sasl_username
            options["sasl_plain_password"] = self.security.sasl_password
        return options

    def faust_options(self) -> dict[str, Any]:
        """`broker` and `broker_credentials` for faust.App: Faust hands the credentials to its
        consumer, producer and topic creation alike."""
        import faust

        brokers = [f"kafka://{server.strip()}" for server in self.bootstrap_servers.split(",")]
        security = self.security
        credentials: Any = None
        if security.uses_sasl:
            credentials = faust.SASLCredentials(
                username=security.sasl_username, password=security.sasl_password,
                ssl_context=security.ssl_context(), mechanism=security.sasl_mechanism,
            )
        elif security.uses_tls:
            credentials = faust.SSLCredentials(security.ssl_context())
        return {"broker": brokers, "broker_credentials": credentials}


class KafkaUnreachable(RuntimeError):
    """The cluster could not be reached or refused us: one line that says why and what to check."""


def explain(exc: BaseException, kafka: KafkaConnection) -> KafkaUnreachable:
    """Turn a client's exception into one actionable line (never the password)."""
    where = f"Kafka at {kafka.bootstrap_servers} ({kafka.security.protocol})"
    text = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        hint = "the broker's certificate is not trusted or not for this host: check KAFKA_SSL_CAFILE"
    elif isinstance(exc, ssl.SSLError):
        hint = "TLS handshake failed: check KAFKA_SECURITY_PROTOCOL and the KAFKA_SSL_* files"
    elif "Authentication" in type(exc).__name__ or "SaslAuthentication" in text or "authentication" in text:
        hint = ("SASL authentication failed: check KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, "
                "KAFKA_SASL_PASSWORD")
    elif isinstance(exc, asyncio.TimeoutError | TimeoutError):
        hint = (f"no answer within {CONNECT_TIMEOUT_SECONDS:.0f}s: check KAFKA_BOOTSTRAP_SERVERS, the "
                "network, and that KAFKA_SECURITY_PROTOCOL matches the listener")
    else:
        hint = "check KAFKA_BOOTSTRAP_SERVERS and that KAFKA_SECURITY_PROTOCOL matches the listener"
    password = kafka.security.sasl_password
    if password:
        text = text.replace(password, "***")
    return KafkaUnreachable(f"cannot use {where}: {hint} ({text[:300]})")


@contextlib.asynccontextmanager
async def admin_client(kafka: KafkaConnection) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client. Not reaching the cluster, or being refused by it, raises
    KafkaUnreachable within CONNECT_TIMEOUT_SECONDS: a wrong host, CA or password never hangs."""
    admin = AIOKafkaAdminClient(**kafka.client_options(), request_timeout_ms=15_000)
    # Used before anything else connects (start-up checks, CLI commands): aiokafka's own error
    # lines would only repeat, less clearly, the one line KafkaUnreachable gives.
    aiokafka_log = logging.getLogger("aiokafka")
    level = aiokafka_log.level
    aiokafka_log.setLevel(logging.CRITICAL)
    try:
        # list_topics: some refusals (SASL) only show on the first request after the handshake.
        await asyncio.wait_for(_start(admin), CONNECT_TIMEOUT_SECONDS)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await admin.close()
        raise explain(await _cause(exc, kafka), kafka) from None
    finally:
        aiokafka_log.setLevel(level)
    try:
        yield admin
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def _cause(exc: Exception, kafka: KafkaConnection) -> BaseException:
    """aiokafka's clients report any failed bootstrap as "Unable to bootstrap" and only log why;
    one direct connection to the first server raises the cause itself (a refused password, an
    untrusted certificate), which is what the operator must be told."""
    reported: BaseException = exc
    if not isinstance(exc, KafkaConnectionError):
        return reported
    host, _, port = kafka.bootstrap_servers.split(",")[0].strip().rpartition(":")
    options = kafka.client_options()
    del options["bootstrap_servers"]
    try:
        conn = await asyncio.wait_for(create_conn(host.strip("[]"), int(port), **options), 10.0)
    except Exception as cause:
        return cause
    conn.close()
    return reported


async def _start(admin: AIOKafkaAdminClient) -> None:
    await admin.start()
    await admin.list_topics()


async def check_reachable(kafka: KafkaConnection) -> None:
    """Raise KafkaUnreachable with one line unless the cluster answers with these settings."""
    async with admin_client(kafka):
        pass
