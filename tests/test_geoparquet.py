"""The streaming GeoParquet writer: readable by geopandas, EPSG:4326, atomic."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from geojepa.errors import OutputError
from geojepa.io.geoparquet import GeoParquetWriter


def _batch(start: int, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    ids = [f"16/{i}/7" for i in range(start, start + n)]
    frame = pd.DataFrame(
        np.arange(n * 2, dtype=np.float32).reshape(n, 2) + start, columns=["e0", "e1"], index=ids
    )
    x = np.arange(start, start + n, dtype=float)
    return frame, shapely.box(x * 0.01, 50.0, x * 0.01 + 0.01, 50.01)


def test_streamed_batches_read_back_as_one_geodataframe(tmp_path):
    path = tmp_path / "tiles.parquet"
    with GeoParquetWriter(path, "region_id", ["Polygon"]) as writer:
        for start in (0, 3, 6):
            writer.write(*_batch(start, 3))
    gdf = gpd.read_parquet(path)
    assert gdf.index.name == "region_id"
    assert list(gdf.index) == [f"16/{i}/7" for i in range(9)]
    assert gdf.crs.to_epsg() == 4326
    assert gdf.geometry.geom_type.eq("Polygon").all()
    assert gdf.loc["16/4/7", "e1"] == pytest.approx(1 * 2 + 1 + 3)
    assert not (tmp_path / "tiles.parquet.partial").exists()


def test_failure_inside_the_writer_leaves_no_file(tmp_path):
    path = tmp_path / "tiles.parquet"
    with pytest.raises(RuntimeError), GeoParquetWriter(path, "region_id", []) as writer:
        writer.write(*_batch(0, 2))
        raise RuntimeError("interrupted")
    assert not path.exists()
    assert not (tmp_path / "tiles.parquet.partial").exists()


def test_writing_nothing_is_an_error(tmp_path):
    with pytest.raises(OutputError), GeoParquetWriter(tmp_path / "x.parquet", "region_id", []):
        pass


# --------------------------------------------------------------------------- GeoParquet 1.1


def _mixed(start: int, n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Points, lines and polygons scattered over a ~0.2° square, ids unique across batches."""
    rng = np.random.default_rng(seed)
    x, y = 24.9 + 0.2 * rng.random(n), 60.1 + 0.2 * rng.random(n)
    kinds = rng.integers(0, 3, n)
    geoms = np.where(
        kinds == 0,
        shapely.points(x, y),
        np.where(kinds == 1, shapely.linestrings(np.stack([np.stack([x, y], 1),
                                                            np.stack([x + 0.01, y], 1)], 1)),
                 shapely.box(x, y, x + 0.005, y + 0.005)),
    )  # fmt: skip
    ids = [f"way/{i}" for i in range(start, start + n)]
    return pd.DataFrame({"e0": np.arange(n, dtype=np.float32)}, index=ids), geoms


@pytest.fixture
def mixed_file(tmp_path):
    path = tmp_path / "ents.parquet"
    with GeoParquetWriter(path, "feature_id", row_group_rows=64) as writer:
        for i, start in enumerate(range(0, 1000, 250)):  # four "shards"
            writer.write(*_mixed(start, 250, seed=i))
    return path


def test_bbox_read_returns_exactly_the_rows_of_a_full_read_and_filter(mixed_file):
    full = gpd.read_parquet(mixed_file)
    bounds = full.geometry.bounds
    for query in [(24.95, 60.15, 25.0, 60.2), (24.9, 60.1, 24.91, 60.11), (0.0, 0.0, 1.0, 1.0),
                  (24.0, 59.0, 26.0, 61.0)]:  # fmt: skip
        part = gpd.read_parquet(mixed_file, bbox=query)
        w, s, e, n = query
        hit = (bounds.minx <= e) & (bounds.maxx >= w) & (bounds.miny <= n) & (bounds.maxy >= s)
        assert sorted(part.index) == sorted(full.index[hit]), query
        assert "bbox" not in part.columns  # the covering column is not user data


def test_geoparquet_1_1_metadata_row_groups_and_order(mixed_file):
    import json

    import pyarrow.parquet as pq

    from geojepa.io.geoparquet import zorder_key

    meta = pq.ParquetFile(mixed_file)
    geo = json.loads(meta.schema_arrow.metadata[b"geo"])
    col = geo["columns"]["geometry"]
    assert geo["version"] == "1.1.0"
    assert col["geometry_types"] == ["Point", "LineString", "Polygon"]  # filled, not "any"
    assert col["covering"] == {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}
    assert meta.metadata.num_row_groups == -(-1000 // 64)
    table = pq.read_table(mixed_file)
    bbox = table.column("bbox").combine_chunks()
    full = gpd.read_parquet(mixed_file)
    np.testing.assert_array_equal(
        np.stack([bbox.field(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax")], 1),
        shapely.bounds(full.geometry.values),
    )
    assert col["bbox"] == pytest.approx(list(full.total_bounds))
    # within each write (250 rows), rows follow the Z-order of their bbox centres
    b = full.geometry.bounds
    keys = zorder_key(((b.minx + b.maxx) / 2).to_numpy(), ((b.miny + b.maxy) / 2).to_numpy())
    for start in range(0, 1000, 250):
        assert (np.diff(keys[start : start + 250].astype(np.int64)) >= 0).all()

    # row-group statistics of the covering let a reader skip most groups of a small query
    def group_box(i: int) -> tuple[float, ...]:
        group = meta.metadata.row_group(i)
        cols = {group.column(j).path_in_schema: group.column(j).statistics
                for j in range(group.num_columns)}  # fmt: skip
        return (cols["bbox.xmin"].min, cols["bbox.ymin"].min, cols["bbox.xmax"].max,
                cols["bbox.ymax"].max)  # fmt: skip

    w, s, e, n = 24.9, 60.1, 24.95, 60.15  # a sixteenth of the area
    boxes = [group_box(i) for i in range(meta.metadata.num_row_groups)]
    hit = [b for b in boxes if b[0] <= e and b[2] >= w and b[1] <= n and b[3] >= s]
    assert len(hit) <= len(boxes) // 2


def test_zorder_is_quadkey_order_for_tiles():
    import mercantile

    rng = np.random.default_rng(0)
    tiles = [mercantile.Tile(int(x), int(y), 16) for x, y in rng.integers(30000, 40000, (300, 2))]
    from geojepa.io.geoparquet import zorder_key

    centres = np.array([[(b.west + b.east) / 2, (b.south + b.north) / 2]
                        for b in map(mercantile.bounds, tiles)])  # fmt: skip
    by_key = np.argsort(zorder_key(centres[:, 0], centres[:, 1]), kind="stable")
    by_quadkey = sorted(range(len(tiles)), key=lambda i: mercantile.quadkey(tiles[i]))
    assert by_key.tolist() == by_quadkey


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # the empty point's key
def test_rows_and_metadata_are_those_of_pandas_conversion(tmp_path):
    """The direct Arrow conversion writes what ``pa.Table.from_pandas`` of the sorted frame
    would: types, values (NaN → null), index, pandas metadata, bbox of an empty geometry."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from geojepa.io.geoparquet import spatial_order

    n = 6
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        rng.random((n, 3)).astype(np.float32), columns=["emb_0", "emb_1", "emb_2"],
        index=[f"way/{i}" for i in range(n)],
    )  # fmt: skip
    frame.iloc[2, 1] = np.nan
    frame.insert(0, "n", np.arange(n, dtype=np.int32))
    frame.insert(1, "tags", ["a=b", None, "", "c", "d=e", "f"])
    frame["score"] = np.linspace(0, 1, n)  # a float64 block after the float32 one
    x = rng.random(n)
    geoms = shapely.points(x, x)
    geoms[4] = shapely.Point()  # empty: NaN bounds
    path = tmp_path / "x.parquet"
    with GeoParquetWriter(path, "feature_id", []) as writer:
        writer.write(frame, geoms)

    order = spatial_order(geoms)
    expected = frame.iloc[order].copy()
    expected.index.name = "feature_id"
    bounds = shapely.bounds(geoms[order])
    keys = ("xmin", "ymin", "xmax", "ymax")
    expected["bbox"] = [dict(zip(keys, b, strict=True)) for b in bounds.tolist()]
    expected["geometry"] = shapely.to_wkb(geoms[order])
    reference = pa.Table.from_pandas(expected, preserve_index=True)
    pq.write_table(reference.replace_schema_metadata(None), tmp_path / "ref.parquet",
                   store_schema=False)  # fmt: skip
    written = pq.read_table(path)
    assert written.equals(pq.read_table(tmp_path / "ref.parquet").replace_schema_metadata(None))
    assert written.column("emb_1").null_count == 1
    assert written.column("bbox").combine_chunks().field("xmin").null_count == 1
    meta = written.schema.metadata
    assert json.loads(meta[b"pandas"]) == json.loads(reference.schema.metadata[b"pandas"])
    # embedding-like float columns are stored plainly (a dictionary of distinct values only
    # costs), the others keep their dictionary
    group = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings
                 for i in range(group.num_columns)}  # fmt: skip
    assert "RLE_DICTIONARY" not in encodings["emb_0"] + encodings["score"]
    assert "RLE_DICTIONARY" in encodings["tags"] and "RLE_DICTIONARY" in encodings["bbox.xmin"]
