"""RETURNSYNC_ADVERTISED_HOST: the host the other workers use to reach this one (Faust's
canonical URL, through which /customers/{email} is routed to the owner of the key)."""

from __future__ import annotations

import socket

import pytest

from agents.settings import Settings, SettingsError


def test_binding_every_address_advertises_the_machine_hostname() -> None:
    settings = Settings.from_env({})
    assert settings.advertised_host is None
    assert settings.web_host == "0.0.0.0"
    assert settings.web_advertised_host == socket.gethostname()
    assert settings.canonical_url == f"http://{socket.gethostname()}:6066"


@pytest.mark.parametrize("bind", ["0.0.0.0", "::"])
def test_wildcard_binds_are_never_advertised(bind: str) -> None:
    settings = Settings.from_env({"RETURNSYNC_WEB_HOST": bind})
    assert settings.web_advertised_host == socket.gethostname()


def test_a_specific_bind_address_is_advertised_as_is() -> None:
    settings = Settings.from_env({"RETURNSYNC_WEB_HOST": "127.0.0.1", "RETURNSYNC_WEB_PORT": "7001"})
    assert settings.canonical_url == "http://127.0.0.1:7001"


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("worker-1", "http://worker-1:6066"),
        ("returnsync-0.returnsync.prod.svc.cluster.local", "http://returnsync-0.returnsync.prod.svc.cluster.local:6066"),
        ("10.1.2.3", "http://10.1.2.3:6066"),
        ("fd00::7", "http://[fd00::7]:6066"),
        ("[fd00::7]", "http://[fd00::7]:6066"),
        ("  worker-2  ", "http://worker-2:6066"),
    ],
)
def test_the_advertised_host_wins_over_the_bind_address(value: str, url: str) -> None:
    settings = Settings.from_env({"RETURNSYNC_ADVERTISED_HOST": value})
    assert settings.web_host == "0.0.0.0", "the bind address does not change"
    assert settings.canonical_url == url


@pytest.mark.parametrize("value", ["http://worker-1", "worker-1:6066", "worker 1", "-worker", "a..b", "a/b"])
def test_a_url_or_port_instead_of_a_host_is_refused(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"RETURNSYNC_ADVERTISED_HOST": value})
    assert "RETURNSYNC_ADVERTISED_HOST" in str(info.value) and "host name or IP address" in str(info.value)


def test_an_empty_value_means_the_default() -> None:
    assert Settings.from_env({"RETURNSYNC_ADVERTISED_HOST": "  "}) == Settings()
