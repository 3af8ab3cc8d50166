"""Data that is damaged never looks healthy, and bad input is one line, never a traceback
(issue 19; docs/reliability.md, "Files you were handed" and "Broken data")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from geojepa.cli import main
from geojepa.data.config import PrepareConfig
from geojepa.data.prepare import prepare_tiles
from geojepa.data.reader import open_dataset


@pytest.fixture(scope="module")
def built(finland_test_pbf, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "ds"
    prepare_tiles(finland_test_pbf, out, PrepareConfig(), progress=False)
    return out


@pytest.fixture
def dataset(built, tmp_path) -> Path:
    """A copy of a real two-shard dataset, to damage."""
    return Path(shutil.copytree(built, tmp_path / "ds"))


@pytest.mark.parametrize("kind", ["tiles", "entities"])
def test_info_names_a_truncated_shard(dataset, kind, capsys):
    shard = dataset / "shards" / f"{kind}-00001.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    assert main(["info", str(dataset)]) == 1
    err = capsys.readouterr().err
    assert f"{kind}-00001.parquet is damaged" in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["tiles", "entities"])
def test_evaluate_names_a_truncated_shard_before_any_work(dataset, kind, tmp_path, capsys):
    """A truncated shard given to evaluate: one line naming it, exit 1, no report folder."""
    shard = dataset / "shards" / f"{kind}-00001.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    report = tmp_path / "report"
    code = main(["evaluate", "-d", str(dataset), "-o", str(report), "--tasks", "traffic_signals",
                 "--baselines", "dummy", "--seeds", "1", "-q"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1 and f"{kind}-00001.parquet is damaged" in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not report.exists()


def test_an_interrupted_evaluate_says_nothing_was_written(dataset, tmp_path, monkeypatch, capsys):
    import geojepa.eval.evaluate as ev

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "evaluate", interrupted)
    report = tmp_path / "report"
    assert main(["evaluate", "-d", str(dataset), "-o", str(report), "-q"]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no report was written to" in err, err
    assert str(report) in err and "split.parquet" in err and "run the command again" in err


def test_info_checks_row_counts_against_the_manifest(dataset, capsys):
    manifest = dataset / "manifest.json"
    data = json.loads(manifest.read_text())
    data["n_tiles"] += 5
    manifest.write_text(json.dumps(data))
    assert main(["info", str(dataset)]) == 1
    err = capsys.readouterr().err
    assert "manifest.json" in err and "tiles" in err and "Traceback" not in err


def test_info_names_a_shard_whose_entities_do_not_match_its_tiles(dataset, capsys):
    shards = dataset / "shards"  # a complete file, of the wrong shard
    wrong = (shards / "entities-00001.parquet").read_bytes()
    (shards / "entities-00000.parquet").write_bytes(wrong)
    assert main(["info", str(dataset)]) == 1
    assert "entities-00000.parquet" in capsys.readouterr().err


def test_a_corrupt_manifest_is_unreadable_not_missing(dataset, capsys):
    (dataset / "manifest.json").write_text('{"format_version": 3, "shards": [0,')
    assert main(["info", str(dataset)]) == 1
    err = capsys.readouterr().err
    assert "unreadable" in err and "no manifest.json" not in err


# --------------------------------------------------------------------------- one line


def test_prepare_on_a_full_disk_is_one_line(finland_test_pbf, tmp_path, monkeypatch, capsys):
    import errno

    from geojepa.data import shard

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shard.pq, "write_table", full)
    out = tmp_path / "d"
    assert main(["prepare", str(finland_test_pbf), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "no space left on the device" in err and "Traceback" not in err
    assert not list(out.glob("shards/.*.tmp"))


def _osm_xml(path: Path, nodes: list[tuple[int, float, float, str]]) -> Path:
    rows = "".join(
        f'  <node id="{i}" lat="{lat}" lon="{lon}"><tag k="amenity" v="{v}"/></node>\n'
        for i, lat, lon, v in nodes
    )
    path.write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n<osm version="0.6">\n{rows}</osm>\n')
    return path


def test_an_osm_id_beyond_the_legal_range_is_one_line(tmp_path, capsys):
    osm = _osm_xml(tmp_path / "big.osm", [(9223372036854775807, 60.1, 24.9, "cafe"),
                                          (2, 60.1001, 24.9001, "bench")])  # fmt: skip
    assert main(["prepare", str(osm), "-o", str(tmp_path / "d"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "illegal id" in err and "big.osm" in err and "Traceback" not in err


# --------------------------------------------------------------------------- duplicate ids


def _feature_ids(out: Path) -> list[str]:
    ds = open_dataset(out)
    return ds.read_entities(columns=["feature_id"]).column(0).to_pylist()


def test_duplicate_feature_ids_keep_the_first_and_are_counted(tmp_path):
    import geopandas as gpd
    import shapely

    n = 8  # eight features share one id, at different places; two more are distinct
    frame = gpd.GeoDataFrame(
        {"feature_id": ["node/1"] * n + ["node/2", "node/3"],
         "tags": [json.dumps({"amenity": f"cafe{i}"}) for i in range(n)]
         + [json.dumps({"building": "yes"})] * 2},
        geometry=[shapely.Point(19.0 + i * 1e-3, 47.5) for i in range(n + 2)], crs="EPSG:4326",
    )  # fmt: skip
    src = tmp_path / "f.parquet"
    frame.to_parquet(src)
    out = tmp_path / "d"
    prepare_tiles(src, out, PrepareConfig(), progress=False)
    ids = _feature_ids(out)
    assert sorted(ids) == ["node/1", "node/2", "node/3"]
    assert open_dataset(out).manifest["input"]["duplicate_ids"] == n - 1
    tags = open_dataset(out).read_entities(columns=["tags"]).column(0).to_pylist()
    assert ("amenity", "cafe0") in [pair for row in tags for pair in row]  # the first one kept


def test_an_osm_node_id_twice_at_different_places_keeps_the_first(tmp_path):
    osm = _osm_xml(tmp_path / "dup.osm", [(1, 60.1, 24.9, "cafe"), (1, 60.2, 25.0, "pub"),
                                          (2, 60.1001, 24.9001, "bench")])  # fmt: skip
    out = tmp_path / "d"
    prepare_tiles(osm, out, PrepareConfig(), progress=False)
    assert sorted(_feature_ids(out)) == ["node/1", "node/2"]
    manifest = open_dataset(out).manifest
    assert manifest["input"]["duplicate_ids"] == 1
    tags = open_dataset(out).read_entities(columns=["tags"]).column(0).to_pylist()
    assert ("amenity", "pub") not in [pair for row in tags for pair in row]
