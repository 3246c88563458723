"""Which Klaviyo account a tenant's data goes to: the configuration half, no I/O beyond one file.

A tenant maps to an account through `KLAVIYO_ACCOUNTS_FILE` (JSON `{"tenant": {"api_key": "...",
"base_url": "..."}}`) or `KLAVIYO_API_KEY_<TENANT>`; every other tenant uses `KLAVIYO_API_KEY`.
Tenants sharing a key share one account, hence one client and one rate-limit budget: Klaviyo
counts limits per account, not per key holder. Keys never appear in a repr or an error message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

DEFAULT_ACCOUNT = "default"
ENV_PREFIX = "KLAVIYO_API_KEY_"
_TENANT = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_FILE_KEYS = frozenset({"api_key", "base_url"})


@dataclass(frozen=True)
class KlaviyoAccount:
    """`name` labels logs and metrics: the tenant it was configured for, or `default`."""

    name: str
    api_key: str = field(repr=False)
    base_url: str


def env_tenant(tenant: str) -> str:
    """The `KLAVIYO_API_KEY_<TENANT>` suffix for a tenant: upper case, other characters as `_`."""
    return re.sub(r"[^A-Za-z0-9]", "_", tenant).upper()


def account_for(
    tenant: str, accounts: Mapping[str, KlaviyoAccount], default: KlaviyoAccount
) -> KlaviyoAccount:
    return accounts.get(tenant) or accounts.get(env_tenant(tenant)) or default


def parse_accounts(
    env: Mapping[str, str], file: Path | None, default_base_url: str, errors: list[str]
) -> dict[str, KlaviyoAccount]:
    """Tenant (or its env spelling) -> account. Problems are appended to `errors`, one line each."""
    accounts = _from_file(file, default_base_url, errors) if file is not None else {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or not value.strip():
            continue
        suffix = name[len(ENV_PREFIX):]
        if not re.fullmatch(r"[A-Z0-9_]{1,64}", suffix):
            errors.append(f"{name}: the tenant part must be 1-64 of A-Z, 0-9, '_'")
            continue
        if suffix in accounts or any(env_tenant(tenant) == suffix for tenant in accounts):
            errors.append(f"{name}: tenant also configured in KLAVIYO_ACCOUNTS_FILE; configure it once")
            continue
        accounts[suffix] = KlaviyoAccount(suffix.lower(), value.strip(), default_base_url)
    return accounts


def _from_file(path: Path, default_base_url: str, errors: list[str]) -> dict[str, KlaviyoAccount]:
    where = f"KLAVIYO_ACCOUNTS_FILE={str(path)!r}"
    try:
        raw = orjson.loads(path.read_bytes())
    except OSError as exc:
        errors.append(f"{where}: cannot read it ({exc.strerror or exc})")
        return {}
    except orjson.JSONDecodeError:
        errors.append(f"{where}: not JSON")
        return {}
    if not isinstance(raw, dict):
        errors.append(f'{where}: must be a JSON object {{"tenant": {{"api_key": "...", "base_url": "..."}}}}')
        return {}
    accounts: dict[str, KlaviyoAccount] = {}
    for tenant, entry in raw.items():
        problem = _entry_problem(tenant, entry)
        if problem:
            errors.append(f"{where}: tenant {tenant!r}: {problem}")
            continue
        base_url = str(entry.get("base_url") or default_base_url).rstrip("/")
        accounts[tenant] = KlaviyoAccount(tenant, entry["api_key"].strip(), base_url)
    return accounts


def _entry_problem(tenant: str, entry: object) -> str | None:
    if not _TENANT.fullmatch(tenant):
        return "tenant names are 1-64 of letters, digits, '_', '.', '-'"
    if not isinstance(entry, dict):
        return "must be an object with api_key and optional base_url"
    unknown = set(entry) - _FILE_KEYS
    if unknown:
        return f"unknown fields {', '.join(sorted(unknown))} (allowed: api_key, base_url)"
    key = entry.get("api_key")
    if not isinstance(key, str) or not key.strip():
        return "api_key must be a non-empty string"
    base_url = entry.get("base_url")
    if base_url is not None and (
        not isinstance(base_url, str) or not base_url.startswith(("http://", "https://"))
    ):
        return "base_url must start with http:// or https://"
    return None
