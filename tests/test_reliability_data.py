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
    assert main(["info", str(dataset)]) == 2
    err = capsys.readouterr().err
    assert f"{kind}-00001.parquet is damaged" in err and "Traceback" not in err


def test_info_checks_row_counts_against_the_manifest(dataset, capsys):
    manifest = dataset / "manifest.json"
    data = json.loads(manifest.read_text())
    data["n_tiles"] += 5
    manifest.write_text(json.dumps(data))
    assert main(["info", str(dataset)]) == 2
    err = capsys.readouterr().err
    assert "manifest.json" in err and "tiles" in err and "Traceback" not in err


def test_info_names_a_shard_whose_entities_do_not_match_its_tiles(dataset, capsys):
    shards = dataset / "shards"  # a complete file, of the wrong shard
    wrong = (shards / "entities-00001.parquet").read_bytes()
    (shards / "entities-00000.parquet").write_bytes(wrong)
    assert main(["info", str(dataset)]) == 2
    assert "entities-00000.parquet" in capsys.readouterr().err


def test_a_corrupt_manifest_is_unreadable_not_missing(dataset, capsys):
    (dataset / "manifest.json").write_text('{"format_version": 3, "shards": [0,')
    assert main(["info", str(dataset)]) == 2
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
    assert main(["prepare", str(finland_test_pbf), "-o", str(out), "-q"]) == 2
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
    assert main(["prepare", str(osm), "-o", str(tmp_path / "d"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "illegal id" in err and "big.osm" in err and "Traceback" not in err
