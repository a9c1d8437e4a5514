"""The user-facing commands under [project.scripts]: each one resolves and says what it reads and writes."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

SCRIPTS = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]


def test_the_user_facing_commands_are_declared():
    assert set(SCRIPTS) == {"fedcxr-check", "fedcxr-predict", "fedcxr-serve", "fedcxr-diagnose", "fedcxr-audit"}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_command_has_help_saying_what_it_reads(name, capsys):
    module, function = SCRIPTS[name].split(":")
    main = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as exit:
        main(["--help"])
    assert exit.value.code == 0
    text = " ".join(capsys.readouterr().out.split()).lower()
    assert "usage:" in text and "reads" in text
