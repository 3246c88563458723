"""Webhook authentication per platform (SPEC §6, reference §0), always over the raw body bytes.

Re-serialised JSON never matches (Loop escapes `/` and strips newlines before signing), so the
HTTP layer must pass the bytes exactly as read from the socket. Every comparison is constant-time
on bytes: `hmac.compare_digest` on str raises for non-ASCII, which a forged header could send.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping

from streams.errors import Reason, RejectedInput

_Scheme = Callable[[Mapping[str, str], bytes, bytes, str], bool]
"""(lower-cased headers, raw body, secret, swap header name) -> authentic?"""

DEFAULT_SWAP_HEADER = "x-swap-signature"
"""Swap's header name is not published (reference §3.2); the deployment configures the real one."""


def verify(
    source: str,
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    *,
    swap_header: str = DEFAULT_SWAP_HEADER,
) -> bool:
    """True when the request proves knowledge of `secret`. An empty secret proves nothing.

    `headers` are the request's own (any name case), before `RawWebhook` strips them.
    Raises `RejectedInput(UNKNOWN_SOURCE)` for a source with no scheme.
    """
    scheme = _SCHEMES.get(source)
    if scheme is None:
        raise RejectedInput(Reason.UNKNOWN_SOURCE, f"no signature scheme for source {source!r}")
    if not secret:
        return False
    lowered = {name.lower(): value for name, value in headers.items()}
    return scheme(lowered, body, secret.encode("utf-8"), swap_header.lower())


def proof(
    source: str, headers: Mapping[str, str], *, swap_header: str = DEFAULT_SWAP_HEADER
) -> dict[str, str]:
    """What a refused delivery presented, kept so it can be verified once the right secret is
    configured: the HMAC headers as sent (a MAC of the stored body; they reveal no secret), and
    of Redo's bearer token (which *is* the secret) only a SHA-256 digest."""
    lowered = {name.lower(): value for name, value in headers.items()}
    if source == "redo":
        scheme, _, token = lowered.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return {}
        return {"authorization": _DIGEST + _digest(token.encode("utf-8", "surrogatepass"))}
    names = _PROOF_HEADERS.get(source, ()) + ((swap_header.lower(),) if source == "swap" else ())
    return {name: lowered[name] for name in names if name in lowered}


def verify_proof(
    source: str, kept: Mapping[str, str], body: bytes, secret: str, *, swap_header: str = DEFAULT_SWAP_HEADER
) -> bool:
    """`verify` for a delivery kept with `proof`: True when `secret` signs it."""
    if source != "redo":
        return verify(source, kept, body, secret, swap_header=swap_header)
    presented = kept.get("authorization", "")
    expected = _DIGEST + _digest(secret.encode("utf-8"))
    return bool(secret) and hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), expected.encode())


def _digest(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


_DIGEST = "sha256:"
_PROOF_HEADERS: dict[str, tuple[str, ...]] = {
    "loop": ("x-loop-signature",),
    "shopify": ("x-shopify-hmac-sha256",),
    "aftership": ("as-signature-hmac-sha256", "am-webhook-signature"),
    "swap": (),
}


def sign(source: str, body: bytes, secret: str, *, swap_header: str = DEFAULT_SWAP_HEADER) -> dict[str, str]:
    """Headers a platform would send with `body`: for tests, the demo and benchmarks."""
    key = secret.encode("utf-8")
    if source == "loop":
        return {"X-Loop-Signature": _b64_hmac(key, body).decode()}
    if source == "shopify":
        return {"X-Shopify-Hmac-Sha256": _b64_hmac(key, body).decode()}
    if source == "aftership":
        return {"as-signature-hmac-sha256": _b64_hmac(key, body).decode()}
    if source == "redo":
        return {"Authorization": f"Bearer {secret}"}
    if source == "swap":
        return {swap_header: _hmac(key, body).hex()}
    raise RejectedInput(Reason.UNKNOWN_SOURCE, f"no signature scheme for source {source!r}")


def _hmac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


def _b64_hmac(key: bytes, body: bytes) -> bytes:
    return base64.b64encode(_hmac(key, body))


def _equal(presented: str, expected: bytes) -> bool:
    # surrogatepass: every str encodes, so a hostile header is a mismatch, never an exception.
    return hmac.compare_digest(presented.strip().encode("utf-8", "surrogatepass"), expected)


def _base64_header(name: str) -> _Scheme:
    def check(headers: Mapping[str, str], body: bytes, key: bytes, swap_header: str) -> bool:
        presented = headers.get(name)
        return presented is not None and _equal(presented, _b64_hmac(key, body))

    return check


def _aftership(headers: Mapping[str, str], body: bytes, key: bytes, swap_header: str) -> bool:
    current = headers.get("as-signature-hmac-sha256")
    if current is not None:
        return _equal(current, _b64_hmac(key, body))
    # Organisations created before 2022-10-25 still get the legacy `hmac-sha256=<b64>` form.
    legacy = headers.get("am-webhook-signature")
    return legacy is not None and _equal(legacy, b"hmac-sha256=" + _b64_hmac(key, body))


def _redo(headers: Mapping[str, str], body: bytes, key: bytes, swap_header: str) -> bool:
    # A shared bearer secret, not a signature: the body is not covered (reference §2.2).
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    return scheme.lower() == "bearer" and _equal(token, key)


def _swap(headers: Mapping[str, str], body: bytes, key: bytes, swap_header: str) -> bool:
    presented = headers.get(swap_header)
    if presented is None:
        return False
    # The encoding is unpublished: accept hex (either case) or base64, optionally `sha256=`-prefixed.
    value = presented.strip().removeprefix("sha256=")
    digest = _hmac(key, body)
    hex_ok = _equal(value.lower(), digest.hex().encode())
    b64_ok = _equal(value, base64.b64encode(digest))
    return hex_ok | b64_ok  # both always computed: no timing hint about which form was sent


_SCHEMES: dict[str, _Scheme] = {
    "loop": _base64_header("x-loop-signature"),
    "shopify": _base64_header("x-shopify-hmac-sha256"),
    "aftership": _aftership,
    "redo": _redo,
    "swap": _swap,
}
