"""What the CLI writes: help that names every option whole at any width, progress without
carriage returns when the output is not a terminal, and nothing more with ``-q``."""

from __future__ import annotations

import re

import pytest
import typer

from geojepa.cli import app, main


def _option_names(command: typer.core.TyperCommand) -> list[str]:
    return [
        name
        for param in command.params
        for name in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]
        if name.startswith("-")
    ]


@pytest.mark.parametrize("columns", [80, 100, 160])
def test_help_names_every_option_whole(columns: int, monkeypatch, capsys) -> None:
    """Rich's panels cut long names at 80 columns (``--tokens-per-ba…``): never again."""
    monkeypatch.setenv("COLUMNS", str(columns))
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert main([name, "--help"]) == 0
        out = capsys.readouterr().out
        assert max(map(len, out.splitlines())) <= columns, name
        cut = [o for o in _option_names(command) if not re.search(rf"{o}(?![\w-])", out)]
        assert not cut, f"`{name} --help` at {columns} columns cuts {cut}"


def test_top_level_help_fits_80_columns(monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 80
    for name in typer.main.get_command(app).commands:
        assert re.search(rf"^\s+{name}\b", out, re.M), name
