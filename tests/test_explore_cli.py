"""`geojepa knn`, `geojepa map` and `geojepa plot` through `geojepa.cli.main` (exit codes)."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest

from geojepa.cli import main
from test_explore_knn import write_entities, write_tiles
from test_explore_plots import write_run


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Read-only inputs shared by this module's tests (written once)."""
    tmp_path = tmp_path_factory.mktemp("explore_cli")
    tiles, _ = write_tiles(tmp_path / "tiles.parquet")
    entities, _ = write_entities(tmp_path / "entities.parquet")
    gdf = gpd.read_parquet(tiles)
    out = {"tiles": tiles, "entities": entities}
    out["plain"] = tmp_path / "plain.parquet"  # embeddings but no geometry
    pd.DataFrame(gdf.drop(columns="geometry")).to_parquet(out["plain"])
    out["noemb"] = tmp_path / "noemb.parquet"
    gdf[["n_entities", "geometry"]].to_parquet(out["noemb"])
    out["empty"] = tmp_path / "empty.parquet"
    gdf.iloc[:0].to_parquet(out["empty"])
    out["nocrs"] = tmp_path / "nocrs.parquet"
    gdf.set_crs(None, allow_override=True).to_parquet(out["nocrs"])
    out["mercator"] = tmp_path / "mercator.parquet"
    gdf.to_crs(3857).to_parquet(out["mercator"])
    out["text"] = tmp_path / "notes.parquet"
    out["text"].write_text("not parquet\n")
    return out


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def test_knn_json(files, capsys):
    rc = main(["knn", str(files["tiles"]), "--region", "16/37308/18963", "-k", "4", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "tiles" and len(data["neighbours"]) == 4
    assert data["neighbours"][0]["similarity"] >= data["neighbours"][-1]["similarity"]
    assert set(data["neighbours"][0]) == {"rank", "id", "similarity", "tags", "distance_km"}


def test_knn_table_for_entities(files, capsys):
    assert main(["knn", str(files["entities"]), "--feature", "way/2", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "nearest entities to way/2" in out
    assert out.count("way/") >= 3
    assert "<b>" in out  # tag text printed literally, not as rich markup


def test_knn_plain_parquet_without_geometry(files, capsys):
    rc = main(["knn", str(files["plain"]), "--region", "16/37308/18963", "-k", "2", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["neighbours"][0]["distance_km"] is None


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (
            ["--region", "16/1/1"],
            "region_id '16/1/1' is not in the tiles embedding file; close ids",
            1,  # the file lacks it: a failure at run time
        ),
        (["--region", "16/37308/18963", "--feature", "way/1"], "exactly one of --region", 2),
        ([], "exactly one of --region", 2),
        (["--region", "16/37308/18963", "--metric", "l1"], "metric must be", 2),
    ],
)
def test_knn_bad_queries(files, capsys, args, message, code):
    assert main(["knn", str(files["tiles"]), *args]) == code
    assert message in _error(capsys)


def test_knn_unknown_feature_suggests(files, capsys):
    assert main(["knn", str(files["entities"]), "--feature", "way/13"]) == 1
    assert "close ids: way/12" in _error(capsys)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("noemb", "not an embedding file: it has no emb_<int> columns"),
        ("empty", "is empty"),
        ("text", "not a readable Parquet file"),
        ("missing", "does not exist"),
    ],
)
def test_bad_files_for_every_command(files, tmp_path, capsys, name, message):
    path = str(files.get(name, tmp_path / "missing.parquet"))
    assert main(["knn", path, "--region", "16/37308/18963"]) == 1
    assert message in _error(capsys)
    assert main(["map", path, "-o", str(tmp_path / "m.html")]) == 1
    assert message in _error(capsys)
    assert main(["plot", path, "-o", str(tmp_path / "p.png")]) == 1
    assert message in _error(capsys)


def test_map_command(files, tmp_path, capsys):
    out = tmp_path / "m.html"
    assert (
        main(["map", str(files["tiles"]), "-o", str(out), "--entities", str(files["entities"])])
        == 0
    )
    assert out.exists() and "geojepa-attribution" in out.read_text()
    assert f"map: {out}" in capsys.readouterr().out


def test_map_bad_inputs(files, tmp_path, capsys):
    out = str(tmp_path / "m.html")
    assert main(["map", str(files["plain"]), "-o", out]) == 1
    assert "has no geometry column" in _error(capsys)
    assert main(["map", str(files["nocrs"]), "-o", out]) == 1
    assert "has no CRS" in _error(capsys)
    assert main(["map", str(files["entities"]), "-o", out]) == 1
    assert "holds entities embeddings, expected tiles" in _error(capsys)
    assert main(["map", str(files["tiles"]), "-o", out, "--method", "tsne"]) == 2
    assert "projection method must be" in _error(capsys)
    with pytest.warns(UserWarning, match="reprojecting to EPSG:4326"):
        assert main(["map", str(files["mercator"]), "-o", out]) == 0


def test_map_output_not_writable(files, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["map", str(files["tiles"]), "-o", str(blocker / "m.html")]) == 1
    err = _error(capsys)
    assert "cannot write" in err and "m.html" in err


def test_plot_commands(files, tmp_path, capsys):
    png = tmp_path / "emb.png"
    assert main(["plot", str(files["tiles"]), "-o", str(png), "--color-by", "amenity"]) == 0
    assert png.stat().st_size > 10_000
    curves = tmp_path / "curves.png"
    assert main(["plot", "--curves", str(write_run(tmp_path / "run")), "-o", str(curves)]) == 0
    assert curves.stat().st_size > 10_000
    capsys.readouterr()


def test_plot_bad_inputs(files, tmp_path, capsys):
    out = str(tmp_path / "p.png")
    assert main(["plot", "--curves", str(tmp_path), "-o", out]) == 1
    assert "no Lightning CSV log" in _error(capsys)
    assert main(["plot", "-o", out]) == 2
    assert "either an embedding file" in _error(capsys)
    assert main(["plot", str(files["tiles"]), "--curves", str(tmp_path), "-o", out]) == 2
    assert "either an embedding file" in _error(capsys)
    assert main(["plot", str(files["tiles"]), "-o", out, "--color-by", "railway"]) == 1
    assert "'railway' is in no tile's top_tags" in _error(capsys)
