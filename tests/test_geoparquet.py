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
