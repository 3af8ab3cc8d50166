"""The dataset reader: schemas, shard iteration, completeness checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from geojepa.data import schema
from geojepa.data.config import PrepareConfig
from geojepa.data.prepare import prepare_tiles
from geojepa.data.reader import TileDataset, open_dataset
from geojepa.errors import InputError


@pytest.fixture(scope="module")
def small_ds(finland_test_pbf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reader") / "ds"
    prepare_tiles(
        finland_test_pbf,
        out,
        PrepareConfig(shard_levels=2, min_shard_elements=1, workers=1),
        progress=False,
    )
    return out


def test_tables_follow_the_schema_and_shards_partition_tiles(small_ds: Path) -> None:
    ds = open_dataset(small_ds)
    assert isinstance(ds, TileDataset) and ds.config.zoom == 16 and len(ds.shards) > 1
    tiles, ents = ds.read_tiles(), ds.read_entities()
    assert tiles.schema.remove_metadata() == schema.TILE_SCHEMA
    assert ents.schema.remove_metadata() == schema.ENTITY_SCHEMA
    seen_tiles, seen_ents = [], 0
    for shard, t, e in ds.iter_shards():
        assert shard in ds.shards and t.num_rows > 0
        assert set(e.column("region_id").to_pylist()) == set(t.column("region_id").to_pylist())
        assert sum(t.column("n_entities").to_pylist()) == e.num_rows
        seen_tiles += t.column("region_id").to_pylist()
        seen_ents += e.num_rows
    assert sorted(seen_tiles) == sorted(tiles.column("region_id").to_pylist())
    assert len(set(seen_tiles)) == len(seen_tiles), "a tile lives in exactly one shard"
    assert seen_ents == ents.num_rows == ds.manifest["n_entities"]
    cols = ds.read_entities(ds.shards[0], columns=["feature_id", "box"])
    assert cols.column_names == ["feature_id", "box"]
    vocab = ds.vocab()
    assert vocab.column_names == ["key", "value", "count"]
    assert vocab.schema.field("count").type == pa.int64()
    with pytest.raises(InputError, match="no shard"):
        ds.read_tiles(10_000)


def test_open_dataset_rejects_missing_incomplete_and_foreign(small_ds: Path, tmp_path: Path):
    with pytest.raises(InputError, match="not found"):
        open_dataset(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="not a geojepa tile dataset"):
        open_dataset(tmp_path / "plain")
    copy = tmp_path / "copy"
    shutil.copytree(small_ds, copy)
    (copy / schema.MANIFEST_FILE).rename(copy / "m.json")
    with pytest.raises(InputError, match="incomplete"):
        open_dataset(copy)
    manifest = json.loads((copy / "m.json").read_text())
    manifest["format_version"] = 999
    (copy / schema.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="format version"):
        open_dataset(copy)
    manifest["format_version"] = schema.FORMAT_VERSION
    (copy / schema.MANIFEST_FILE).write_text(json.dumps(manifest))
    (copy / schema.tiles_file(manifest["shards"][0])).unlink()
    with pytest.raises(InputError, match="missing"):
        open_dataset(copy)
