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
        assert main(["prepare", "x.osm.pbf", "-o", str(tmp_path / "o"), *args]) == 1
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


@pytest.mark.parametrize("suffix", [".gpkg", ".shp", ".geojson", ".wkt", ".txt"])
def test_polygon_from_any_vector_file(suffix: str, tmp_path: Path, monkeypatch) -> None:
    """--polygon takes what geopandas reads (any CRS, reprojected to EPSG:4326) or WKT text."""
    import geopandas as gpd
    import shapely

    area = shapely.box(24.93, 60.16, 24.95, 60.17)
    other = shapely.box(24.96, 60.16, 24.97, 60.17)
    path = tmp_path / f"area{suffix}"
    if suffix in (".wkt", ".txt"):
        path.write_text(shapely.union_all([area, other]).wkt)
    else:  # two features in Web Mercator: the union, back in lon/lat
        frame = gpd.GeoDataFrame({"name": ["a", "b"]}, geometry=[area, other], crs=4326)
        frame.to_crs(3857).to_file(path)
    seen = {}

    def fake_prepare(source, output, config, **kwargs):
        seen["wkt"] = config.polygon_wkt
        return None

    monkeypatch.setattr("geojepa.data.prepare.prepare_tiles", fake_prepare)
    assert main(["prepare", "x.osm.pbf", "-o", str(tmp_path / "o"), "--polygon", str(path),
                 "-q"]) == 0  # fmt: skip
    got = shapely.from_wkt(seen["wkt"])
    assert got.symmetric_difference(shapely.union_all([area, other])).area < 1e-12


def test_bad_polygon_files_are_one_line(tmp_path: Path, capsys) -> None:
    import geopandas as gpd
    import shapely

    lines = tmp_path / "line.geojson"
    gpd.GeoDataFrame(geometry=[shapely.LineString([(0, 0), (1, 1)])], crs=4326).to_file(lines)
    junk = tmp_path / "junk.gpkg"
    junk.write_bytes(b"\x00\x01 not a geopackage")
    for path, message in ((lines, "LineString, not a polygon"), (junk, "cannot read"),
                          (tmp_path / "none.gpkg", "not found")):  # fmt: skip
        args = ["prepare", "x.osm.pbf", "-o", str(tmp_path / "o"), "--polygon", str(path)]
        assert main(args) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_exit_status_is_2_for_usage_and_1_at_run_time(tmp_path: Path, capsys) -> None:
    """The convention docs/cli.md promises: 2 for a usage mistake (click's, or an invalid config
    value), 1 for a failure at run time (a missing input, an unusable output)."""
    from geojepa.errors import ConfigError, InputError, OutputError

    assert (ConfigError.exit_code, InputError.exit_code, OutputError.exit_code) == (2, 1, 1)
    assert main(["prepare"]) == 2  # a missing argument
    assert main(["info", str(tmp_path), "--no-such-option"]) == 2
    assert main(["prepare", "x.osm.pbf", "-o", str(tmp_path / "o"), "--bbox", "1,2"]) == 2
    assert main(["info", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "error: dataset not found" in err or "not found" in err.splitlines()[-1]
