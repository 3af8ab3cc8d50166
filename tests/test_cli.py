"""The command line behaves like its peers: --version/-V, -h, completion, `python -m geojepa`,
option names without doubled negatives, a readable `evaluate` summary."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import typer

import geojepa
from geojepa.cli import app, main
from geojepa.eval.evaluate import EvaluateResult, format_summary

ROOT = Path(__file__).resolve().parents[1]


def test_version(capsys) -> None:
    for flag in ("--version", "-V"):
        assert main([flag]) == 0
        assert capsys.readouterr().out.strip() == f"geojepa {geojepa.__version__}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{geojepa.__version__}"' in pyproject  # one version, not two


def test_short_help_equals_long_help(capsys) -> None:
    for args in ([], ["prepare"], ["evaluate"]):
        assert main([*args, "--help"]) == 0
        long = capsys.readouterr().out
        assert main([*args, "-h"]) == 0
        assert capsys.readouterr().out == long and "Usage" in long


def test_python_dash_m_and_shell_completion() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    run = subprocess.run([sys.executable, "-m", "geojepa", "-V"], capture_output=True, text=True,
                         env=env)  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == f"geojepa {geojepa.__version__}"
    # what the bash completion script asks: complete `geojepa prepare --ta`
    script = "import sys; sys.argv[0] = 'geojepa'; from geojepa.cli import main; sys.exit(main())"
    env.update(_GEOJEPA_COMPLETE="complete_bash", COMP_WORDS="geojepa prepare --ta", COMP_CWORD="2")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert run.returncode == 0 and run.stdout.split() == ["--tag-filter"], run.stderr


def test_no_doubled_negatives() -> None:
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            for opt in (*param.opts, *param.secondary_opts):
                assert not re.match(r"--no-no-", opt), f"geojepa {name} {opt}"
            if param.secondary_opts:  # a --x/--no-x pair: the positive one comes first
                assert not param.opts[0].startswith("--no-"), f"geojepa {name} {param.opts}"


def test_tag_filter_switch(tmp_path: Path, monkeypatch) -> None:
    seen = {}

    def fake_prepare(source, output, config, **kwargs):
        seen["tag_filter"] = config.tag_filter
        raise geojepa.errors.InputError("stop here")

    monkeypatch.setattr("geojepa.data.prepare.prepare_tiles", fake_prepare)
    for args, expected in (([], True), (["--no-tag-filter"], False), (["--tag-filter"], True)):
        assert main(["prepare", "x.osm.pbf", "-o", str(tmp_path / "o"), *args]) == 2
        assert seen["tag_filter"] is expected


@pytest.fixture
def summary() -> EvaluateResult:
    rows = [
        ("geojepa", "mlp", "bridge", "auroc", 0.9, 0.01, 2),
        ("geojepa", "mlp", "road_speed", "mae", 5.0, 0.2, 2),
        ("geojepa", "mlp", "road_speed", "rmse", 7.0, 0.3, 2),
        ("dummy", "dummy", "bridge", "auroc", 0.5, 0.0, 2),
        ("srai_counts", "linear", "bridge", "auroc", 0.8, float("nan"), 1),
    ]
    frame = pd.DataFrame(rows, columns=["model", "probe", "task", "metric", "mean", "std",
                                        "n_seeds"])  # fmt: skip
    return EvaluateResult(summary=frame, rows=[], paths={"markdown": Path("r.md")},
                          skipped={}, wall_seconds=1.0)  # fmt: skip


def test_evaluate_summary_is_readable(summary: EvaluateResult) -> None:
    text = format_summary(summary)
    assert "nan" not in text.lower()
    assert "bridge auroc ↑" in text and "road_speed mae ↓" in text
    assert "0.900 ± 0.010" in text and "rmse" not in text
    lines = text.splitlines()
    body = [line for line in lines if line.startswith(("geojepa", "dummy", "srai_counts"))]
    assert len(body) == 3  # one row per (model, probe) that ran, none invented
    assert "–" in text  # srai_counts / dummy lack road_speed
