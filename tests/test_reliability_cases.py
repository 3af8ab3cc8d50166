"""The last cases of issue 19 (docs/reliability.md): an unwritable output, a geographic CRS other
than EPSG:4326, a `demo -o` folder that is not ours, and an `evaluate` that fails on input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from geojepa.cli import main
from geojepa.data.reader import open_dataset


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch) -> Path:
    """An existing directory nobody may write into. Root ignores the mode, so for root the
    refusal the kernel would give is simulated at `Path.mkdir`."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if folder in Path(self).parents:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    yield folder
    folder.chmod(0o755)


def test_prepare_into_a_read_only_directory_is_one_line(finland_test_pbf, read_only_dir, capsys):
    assert main(["prepare", str(finland_test_pbf), "-o", str(read_only_dir)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(read_only_dir) in err and "Permission denied" in err
    assert list(read_only_dir.iterdir()) == []


def _features(path: Path, crs: str, n: int = 12) -> Path:
    import geopandas as gpd
    import shapely

    frame = gpd.GeoDataFrame(
        {"feature_id": [f"node/{i}" for i in range(n)],
         "tags": [json.dumps({"amenity": "cafe"})] * n},
        geometry=[shapely.Point(-77.0 + i * 1e-3, 38.9) for i in range(n)], crs=crs,
    )  # fmt: skip
    frame.to_parquet(path)
    return path


def test_features_in_another_geographic_crs_are_transformed(tmp_path, capsys):
    """NAD83 (EPSG:4269) is geographic: it used to be refused as "a projected CRS"."""
    src = _features(tmp_path / "nad83.parquet", "EPSG:4269")
    ref = _features(tmp_path / "wgs84.parquet", "EPSG:4326")
    assert main(["prepare", str(src), "-o", str(tmp_path / "d"), "-q"]) == 0, capsys.readouterr()
    assert main(["prepare", str(ref), "-o", str(tmp_path / "r"), "-q"]) == 0
    got, want = open_dataset(tmp_path / "d"), open_dataset(tmp_path / "r")
    assert got.manifest["input"]["elements_kept"] == 12
    assert got.manifest["n_tiles"] == want.manifest["n_tiles"]


def test_a_geodataframe_in_nad83_is_transformed(tmp_path):
    import geopandas as gpd

    from geojepa.data.prepare import prepare_tiles

    frame = gpd.read_parquet(_features(tmp_path / "nad83.parquet", "EPSG:4269"))
    ds = prepare_tiles(frame, tmp_path / "d", progress=False)
    assert ds.manifest["input"]["elements_kept"] == 12


def test_a_crs_that_cannot_be_transformed_is_one_line(tmp_path, capsys):
    src = _features(tmp_path / "mars.parquet", "IAU_2015:49900")  # geographic, not on Earth
    assert main(["prepare", str(src), "-o", str(tmp_path / "d"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "EPSG:4326" in err and "Mars" in err


class _Reached(Exception):
    """Raised by the first demo stage: the demo went on to write into its folder."""


@pytest.fixture
def demo_stops_at_its_first_stage(monkeypatch):
    from geojepa import demo

    def run(self, *args, **kwargs):
        raise _Reached

    monkeypatch.setattr(demo._Stages, "run", run)


def test_demo_refuses_a_folder_that_is_not_a_demo_output(
    tmp_path, demo_stops_at_its_first_stage, capsys
):
    folder = tmp_path / "project"
    (folder / "src").mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    assert main(["demo", "-o", str(folder), "-q"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "not a geojepa demo output" in err
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "src"]


def test_demo_reuses_its_own_folder_even_when_cut_short(tmp_path, demo_stops_at_its_first_stage):
    from geojepa.demo import run_demo

    folder = tmp_path / "demo"
    with pytest.raises(_Reached):  # a first run, cut short in its first stage
        run_demo(folder, progress=False)
    (folder / "data").mkdir(exist_ok=True)  # what that stage had begun to write
    with pytest.raises(_Reached):  # the re-run goes on: the folder is the demo's own
        run_demo(folder, progress=False)


def test_evaluate_failing_on_a_foreign_split_leaves_no_report_directory(
    finland_test_pbf, tmp_path, capsys
):
    from geojepa.eval.split import SplitConfig, make_split, save_split

    dataset = tmp_path / "ds"
    assert main(["prepare", str(finland_test_pbf), "-o", str(dataset), "-q"]) == 0
    foreign = make_split([f"17/{x}/1000" for x in range(40)], SplitConfig(block_zoom=15))
    split = save_split(foreign, tmp_path / "foreign.parquet")  # the split of another area
    report = tmp_path / "reports" / "r"
    argv = ["evaluate", "-d", str(dataset), "-o", str(report), "--split", str(split),
            "--baselines", "dummy", "--seeds", "1", "-q"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not report.exists()
