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


def test_progress_is_plain_lines_off_a_terminal() -> None:
    """Off a terminal a loop reports plain lines, never ``\\r`` redraws; on one, a tqdm bar."""
    import io

    from geojepa.progress import NoProgress, PlainProgress, progress_bar

    log = io.StringIO()
    bar = progress_bar(True, desc="embed", total=3, unit="tiles", stream=log)
    assert isinstance(bar, PlainProgress)
    bar.every = 0.0  # a line on every update
    with bar:
        for _ in range(3):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 4
    assert lines[0].startswith("embed · 1/3 tiles (33%)")
    assert lines[-1].startswith("embed done · 3/3 tiles")
    assert isinstance(progress_bar(False, desc="x", stream=log), NoProgress)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty_bar = progress_bar(True, desc="embed", total=3, stream=Terminal())
    assert type(tty_bar).__module__.startswith("tqdm")
    tty_bar.close()


def test_text_model_loads_without_a_bar(monkeypatch) -> None:
    """transformers' "Loading weights" bar is off while the text model loads (also -q)."""
    import sentence_transformers
    from transformers.utils import logging as hf_logging

    from geojepa.tokenize.tags import sentence_transformer_embed

    seen: list[bool] = []

    class FakeModel:
        def __init__(self, name: str, device: str) -> None:
            seen.append(hf_logging.is_progress_bar_enabled())

        def eval(self) -> FakeModel:
            return self

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", FakeModel)
    hf_logging.enable_progress_bar()
    sentence_transformer_embed("all-MiniLM-L6-v2")
    assert seen == [False]
    assert hf_logging.is_progress_bar_enabled()  # restored afterwards


def test_prepare_log_has_no_carriage_returns(finland_test_pbf, tmp_path, capfd) -> None:
    """``prepare 2>&1 | cat``: plain lines."""
    assert main(["prepare", str(finland_test_pbf), "-o", str(tmp_path), "--zoom", "17"]) == 0
    err = capfd.readouterr().err
    assert "\r" not in err and "reading done" in err and "shards done" in err


@pytest.mark.slow  # ~70 s on 2 busy cores: a pretraining run and two text-model loads
def test_embed_logs_have_no_carriage_returns(
    finland_test_pbf, helsinki_pbf, tmp_path, capfd
) -> None:
    """``embed 2>&1 | cat``: plain lines; ``embed -q``: silent, though the text model loads
    for the tags the model never saw."""
    from geojepa.train.config import PretrainConfig, preset_config
    from geojepa.train.pretrain import pretrain

    town, hel = tmp_path / "town", tmp_path / "hel"
    assert main(["prepare", str(finland_test_pbf), "-o", str(town), "--zoom", "17", "-q"]) == 0
    assert main(["prepare", str(helsinki_pbf), "-o", str(hel), "--zoom", "17", "-q"]) == 0
    data = preset_config("cpu-small").model_dump()
    data["model"].update(depth=1, predictor_depth=1)
    data["data"]["batch_size"] = 4
    run = pretrain(town, tmp_path / "run", config=PretrainConfig.from_dict(data), max_steps=1,
                   progress=False)  # fmt: skip
    capfd.readouterr()
    assert main(["embed", str(run), str(hel), "-o", str(tmp_path / "q.parquet"), "-q"]) == 0
    out, err = capfd.readouterr()
    assert out == "" and err == "", err  # no "Loading weights" bar, no progress
    assert main(["embed", str(run), str(town), "-o", str(tmp_path / "t.parquet")]) == 0
    err = capfd.readouterr().err
    assert "\r" not in err and "embed done" in err
