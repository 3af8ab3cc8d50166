"""Per-feature entity embeddings: unique feature_id, the documented pooling (mean of clips),
the whole geometry, the same table from a file and in memory; clip rows stay available."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

from geojepa.api import embed_entities, embed_tiles, prepare_tiles
from geojepa.cli import main
from geojepa.data.config import PrepareConfig
from geojepa.entity_features import last_shards
from geojepa.errors import ConfigError
from test_srai import ZOOM, synthetic_features, write_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("features")
    # one parent tile per shard: the long roads cross shards, the small buildings mostly not
    cfg = PrepareConfig(zoom=ZOOM, workers=1, shard_levels=1, min_shard_elements=1)
    ds = prepare_tiles(synthetic_features(), tmp / "tiles", cfg, progress=False)
    model = write_model(ds, tmp / "model")
    feats, clips = tmp / "features.parquet", tmp / "clips.parquet"
    embed_tiles(model, ds, tmp / "t.parquet", entities_output=feats, progress=False)
    embed_tiles(model, ds, tmp / "t2.parquet", entities_output=clips, entity_rows="clip",
                progress=False)  # fmt: skip
    return ds, model, gpd.read_parquet(feats), gpd.read_parquet(clips)


def _emb(frame) -> np.ndarray:
    return frame[[c for c in frame.columns if str(c).startswith("emb_")]].to_numpy(np.float64)


def test_one_row_per_feature_pooled_as_documented(setup) -> None:
    ds, _, feats, clips = setup
    assert len(ds.shards) > 2 and last_shards(ds)  # some features do cross shards
    assert feats.index.is_unique and set(feats.index) == set(clips.index)
    assert not clips.index.is_unique  # the clip table's key is (feature_id, region_id)
    assert not clips.reset_index().duplicated(["feature_id", "region_id"]).any()
    crossing = 0
    for fid, row in feats.iterrows():
        mine = clips.loc[[fid]]
        np.testing.assert_allclose(_emb(feats.loc[[fid]])[0], _emb(mine).mean(0), atol=1e-5)
        assert row["n_clips"] == len(mine)
        assert row["region_ids"] == ";".join(sorted(mine["region_id"]))
        whole = shapely.union_all(mine.geometry.values)
        assert shapely.hausdorff_distance(row.geometry, whole) < 1e-7, fid
        crossing += len(mine) > 1
    assert crossing >= 8  # the eight roads at least
    roads = feats.loc[[f"way/{2000 + i}" for i in range(8)]]
    assert (roads.geom_type == "LineString").all()  # clips merged back into one line


def test_in_memory_table_equals_the_file(setup) -> None:
    ds, model, feats, clips = setup
    frame = embed_entities(model, ds, progress=False)
    assert list(frame.index) == list(feats.index)
    np.testing.assert_allclose(_emb(frame), _emb(feats), atol=1e-6)
    assert (frame["n_clips"].to_numpy() == feats["n_clips"].to_numpy()).all()
    per_clip = embed_entities(model, ds, rows="clip", progress=False)
    assert len(per_clip) == len(clips) and "region_id" in per_clip


def test_bad_entity_rows(setup, tmp_path: Path) -> None:
    ds, model, _, _ = setup
    with pytest.raises(ConfigError, match="feature or clip"):
        embed_entities(model, ds, rows="tile", progress=False)
    args = ["embed", str(model), str(ds.path), "-o", str(tmp_path / "t.parquet"), "--entities",
            str(tmp_path / "e.parquet"), "--entity-rows", "tiles"]  # fmt: skip
    assert main(args) == 2
