"""Klaviyo accounts per tenant: from a file or the environment, validated, keys never shown."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from agents.settings import Settings, SettingsError


def errors(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    return str(info.value)


def test_tenants_map_to_accounts_from_file_and_environment(tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.json"
    accounts.write_bytes(orjson.dumps({
        "acme": {"api_key": "pk_acme_secret"},
        "globex.eu": {"api_key": "pk_globex_secret", "base_url": "http://127.0.0.1:9/"},
    }))
    settings = Settings.from_env({
        "KLAVIYO_API_KEY": "pk_default_secret",
        "KLAVIYO_BASE_URL": "http://sandbox.local",
        "KLAVIYO_ACCOUNTS_FILE": str(accounts),
        "KLAVIYO_API_KEY_INITECH_US": "pk_initech_secret",
    })
    acme, globex = settings.klaviyo_account("acme"), settings.klaviyo_account("globex.eu")
    assert (acme.name, acme.api_key, acme.base_url) == ("acme", "pk_acme_secret", "http://sandbox.local")
    assert (globex.api_key, globex.base_url) == ("pk_globex_secret", "http://127.0.0.1:9")
    initech = settings.klaviyo_account("initech-us")
    assert (initech.name, initech.api_key) == ("initech_us", "pk_initech_secret")
    other = settings.klaviyo_account("someone-else")
    assert (other.name, other.api_key, other.base_url) == ("default", "pk_default_secret", "http://sandbox.local")
    shown = repr(settings) + repr(acme) + repr(settings.klaviyo_accounts)
    assert "secret" not in shown


def test_defaults_have_no_extra_accounts_and_real_limits() -> None:
    settings = Settings.from_env({})
    assert settings.klaviyo_accounts == {}
    assert settings.klaviyo_rate_limit_scale == 1.0
    assert settings.klaviyo_auth_pause_seconds == 30.0
    assert settings.klaviyo_account("any").name == "default"


def test_rate_share_and_auth_pause_are_validated() -> None:
    message = errors({"KLAVIYO_RATE_LIMIT_SCALE": "0", "RETURNSYNC_KLAVIYO_AUTH_PAUSE_SECONDS": "-1"})
    assert "KLAVIYO_RATE_LIMIT_SCALE='0': must be between 0.001 and 1" in message
    assert "RETURNSYNC_KLAVIYO_AUTH_PAUSE_SECONDS='-1'" in message
    assert Settings.from_env({"KLAVIYO_RATE_LIMIT_SCALE": "0.2"}).klaviyo_rate_limit_scale == 0.2


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "must be a JSON object"),
        (orjson.dumps({"acme": {"api_key": ""}}), "tenant 'acme': api_key must be a non-empty string"),
        (orjson.dumps({"acme": "pk_x"}), "tenant 'acme': must be an object"),
        (orjson.dumps({"acme": {"api_key": "pk_x", "base_url": "ftp://x"}}), "base_url must start with http"),
        (orjson.dumps({"acme": {"api_key": "pk_x", "key": "y"}}), "unknown fields key"),
        (orjson.dumps({"no spaces": {"api_key": "pk_x"}}), "tenant names are 1-64"),
    ],
)
def test_bad_accounts_files_are_explained_without_showing_keys(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "accounts.json"
    path.write_bytes(content)
    message = errors({"KLAVIYO_ACCOUNTS_FILE": str(path)})
    assert "KLAVIYO_ACCOUNTS_FILE=" in message and expected in message
    assert "pk_x" not in message


def test_missing_file_and_duplicate_tenant_are_errors(tmp_path: Path) -> None:
    assert "cannot read it" in errors({"KLAVIYO_ACCOUNTS_FILE": str(tmp_path / "nope.json")})
    path = tmp_path / "accounts.json"
    path.write_bytes(orjson.dumps({"acme": {"api_key": "pk_a"}}))
    message = errors({"KLAVIYO_ACCOUNTS_FILE": str(path), "KLAVIYO_API_KEY_ACME": "pk_b"})
    assert "KLAVIYO_API_KEY_ACME: tenant also configured in KLAVIYO_ACCOUNTS_FILE" in message
    assert "pk_a" not in message and "pk_b" not in message
