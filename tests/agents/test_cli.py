"""The command line's own surface (the commands themselves are tested where they act)."""

from __future__ import annotations

import importlib.metadata

import pytest

from agents.commands.cli import main


def test_version_prints_the_installed_release(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"returnsync {importlib.metadata.version('returnsync')}"


@pytest.mark.parametrize(("argv", "named"), [
    (["deadletters", "list", "--since", "2026-12-05T10:00:00"], "needs a UTC offset"),  # not guessed
    (["deadletters", "redrive", "--since", "yesterday"], "not an RFC 3339 time"),
    (["replay", "--since", "2026-12-05"], "needs a UTC offset"),
    (["deadletters", "list", "--stage", "nowhere"], "--stage"),
])
def test_times_need_an_offset_and_stages_are_named(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert named in capsys.readouterr().err


def test_a_time_with_an_offset_is_read_in_utc() -> None:
    from datetime import UTC, datetime

    from agents.commands.scan import utc_time

    assert utc_time("2026-12-05T12:00:00+02:00") == datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
