"""`.env.example` and the README's settings table name every variable the code reads."""

from __future__ import annotations

import re
from pathlib import Path

from agents.settings import SOURCES_WITH_SECRETS, Settings

REPO = Path(__file__).resolve().parents[2]
READ_BY = ("agents/settings.py", "agents/kafka.py")


def variables_read() -> set[str]:
    pattern = re.compile(r'"((?:KAFKA|KLAVIYO|RETURNSYNC|SWAP)_[A-Z0-9_]*[A-Z0-9])"')
    names = set()
    for path in READ_BY:
        names |= set(pattern.findall((REPO / path).read_text()))
    names |= {f"{source.upper()}_WEBHOOK_SECRET" for source in SOURCES_WITH_SECRETS}
    return names


def env_example() -> dict[str, str]:
    lines = (REPO / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_env_example_names_every_variable_and_settings_accept_it_as_it_stands() -> None:
    example = env_example()
    assert variables_read() - set(example) == set()
    assert set(example) - variables_read() == set()
    Settings.from_env(example)  # raises on any value the settings would refuse


def test_the_readme_settings_table_names_every_variable() -> None:
    readme = (REPO / "README.md").read_text()
    table = "\n".join(line for line in readme.splitlines() if line.startswith("| `"))
    missing = sorted(name for name in variables_read() if f"`{name}`" not in table and name not in table)
    assert missing == []
