"""`prepare` takes both features layouts quackosm and SRAI write: a `tags` column, or one
string column per tag key (nulls where absent); geometry-only tables are a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from geojepa.cli import main
from geojepa.data.config import PrepareConfig
from geojepa.data.prepare import prepare_tiles
from geojepa.errors import InputError

TAGS = [
    {"building": "yes", "building:levels": "3"},
    {"highway": "residential", "name": "Mannerheimintie"},
    {"amenity": "cafe"},
    {"building": "house"},
    {"highway": "service", "surface": "asphalt"},
    {"leisure": "park"},
]


def _features() -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """The same features in both layouts (EPSG:4326, central Helsinki)."""
    rng = np.random.default_rng(0)
    geoms, ids, tags = [], [], []
    for i in range(60):
        x, y = 24.93 + 0.02 * rng.random(), 60.16 + 0.01 * rng.random()
        kind = i % 3
        geom = (shapely.Point(x, y) if kind == 0 else
                shapely.LineString([(x, y), (x + 0.002, y + 0.001)]) if kind == 1 else
                shapely.box(x, y, x + 0.0005, y + 0.0003))  # fmt: skip
        geoms.append(geom)
        ids.append(f"{['node', 'way', 'way'][kind]}/{i}")
        tags.append(TAGS[i % len(TAGS)])
    index = pd.Index(ids, name="feature_id")
    with_tags = gpd.GeoDataFrame({"tags": [json.dumps(t) for t in tags]}, geometry=geoms,
                                 index=index, crs=4326)  # fmt: skip
    keys = sorted({k for t in tags for k in t})
    exploded = gpd.GeoDataFrame({k: [t.get(k) for t in tags] for k in keys}, geometry=geoms,
                                index=index, crs=4326)  # fmt: skip
    exploded["area_m2"] = 1.0  # a number column: not a tag
    return with_tags, exploded


def _entities(ds) -> pd.DataFrame:
    t = ds.read_entities().to_pandas()
    t["tags"] = t["tags"].map(lambda pairs: sorted(map(tuple, pairs)))
    return t.drop(columns=[c for c in t.columns if "geom" in c])


def test_exploded_layout_equals_tags_column(tmp_path: Path) -> None:
    with_tags, exploded = _features()
    cfg = PrepareConfig(zoom=16, workers=1)
    ref = _entities(prepare_tiles(with_tags, tmp_path / "a", cfg, progress=False))
    got = _entities(prepare_tiles(exploded, tmp_path / "b", cfg, progress=False))
    assert len(ref) >= 60 and ref["tags"].map(len).gt(0).all()
    pd.testing.assert_frame_equal(ref, got)
    assert "area_m2" not in {k for tags in got["tags"] for k, _ in tags}
    # the same from a GeoParquet file with a bbox covering column, through the CLI
    path = tmp_path / "exploded.parquet"
    exploded.to_parquet(path, write_covering_bbox=True)
    assert main(["prepare", str(path), "-o", str(tmp_path / "c"), "--zoom", "16", "-q"]) == 0
    from geojepa.data.reader import open_dataset

    pd.testing.assert_frame_equal(ref, _entities(open_dataset(tmp_path / "c")))


def test_geometry_only_tables_are_a_clear_error(tmp_path: Path, capsys) -> None:
    with_tags, _ = _features()
    bare = with_tags.drop(columns="tags")
    with pytest.raises(InputError, match="no tags"):
        prepare_tiles(bare, tmp_path / "a", PrepareConfig(zoom=16), progress=False)
    path = tmp_path / "bare.parquet"
    bare.to_parquet(path)
    assert main(["prepare", str(path), "-o", str(tmp_path / "b"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "no tags" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()
