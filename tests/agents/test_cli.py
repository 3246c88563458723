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
