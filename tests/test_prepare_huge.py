"""A geometry far larger than the data (a polygon of the whole world, a huge boundary) costs
`prepare` the shards that other data fills, not every tile of the world (issue 19)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pytest
import shapely

import geojepa
from geojepa.data.bucket import MAX_SHARD_CELLS

#: a limit of address space far above what a small prepare needs (~1 GiB) and far below what
#: the world polygon took before the bound (4.4 GB after 80 s, still growing)
MEMORY_LIMIT = 3 * 1024**3


def _features(path: Path, world: bool = True) -> Path:
    """Ten small tagged features in central Helsinki, and (``world``) one polygon of the globe."""
    points = [shapely.Point(24.94 + 0.001 * i, 60.17 + 0.0005 * i) for i in range(10)]
    rows = [{"feature_id": f"node/{i + 1}", "tags": json.dumps({"amenity": "cafe"}),
             "geometry": p} for i, p in enumerate(points)]  # fmt: skip
    if world:
        rows.append({"feature_id": "way/1", "tags": json.dumps({"natural": "water"}),
                     "geometry": shapely.box(-179.9, -84.0, 179.9, 84.0)})  # fmt: skip
    frame = gpd.GeoDataFrame(rows, crs="EPSG:4326").set_index("feature_id")
    frame.to_parquet(path)
    return path


def _prepare(source: Path, out: Path) -> subprocess.CompletedProcess:
    """`geojepa prepare SOURCE -o OUT --zoom 17` in a process that may not use 3 GiB."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    src = str(Path(geojepa.__file__).parents[1])
    command = [sys.executable, "-c", "import sys; from geojepa.cli import main; "
               "sys.exit(main(sys.argv[1:]))", "prepare", str(source), "-o", str(out),
               "--zoom", "17", "-q"]  # fmt: skip
    env = {"PYTHONPATH": src, "PATH": "/usr/bin:/bin"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit, env=env)  # fmt: skip


def test_a_world_polygon_is_cut_only_into_the_shards_other_data_fills(tmp_path: Path) -> None:
    done = _prepare(_features(tmp_path / "world.parquet"), tmp_path / "ds")
    assert done.returncode == 0, done.stderr[-2000:]
    from geojepa.data.reader import open_dataset

    ds = open_dataset(tmp_path / "ds")
    plain = _prepare(_features(tmp_path / "cafes.parquet", world=False), tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr[-2000:]
    # the water reaches the tiles of the cafés' shards (8 x 8 tiles at z17), nothing else
    assert ds.manifest["n_tiles"] <= open_dataset(tmp_path / "plain").manifest["n_tiles"] * 64
    ids = ds.read_entities(columns=["feature_id"]).column("feature_id").to_pylist()
    assert "way/1" in ids and sum(i.startswith("node/") for i in ids) == 10
    assert ds.manifest["input"]["spread_limited"] == 1  # counted, and said by `geojepa info`


def test_only_huge_geometries_is_a_clear_error(tmp_path: Path) -> None:
    frame = gpd.GeoDataFrame(
        [{"feature_id": "way/1", "tags": json.dumps({"natural": "water"}),
          "geometry": shapely.box(-179.9, -84.0, 179.9, 84.0)}], crs="EPSG:4326",
    ).set_index("feature_id")  # fmt: skip
    frame.to_parquet(tmp_path / "world.parquet")
    done = _prepare(tmp_path / "world.parquet", tmp_path / "ds")
    assert done.returncode == 1, done.stderr[-2000:]  # an input that cannot be used: run time
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"more than {MAX_SHARD_CELLS:,} shard cells" in err


@pytest.mark.parametrize("zoom", [14, 17])
def test_the_bound_leaves_ordinary_data_alone(zoom: int) -> None:
    """A country's boundary at z17 (~900 km) spans ~140,000 shard cells and is bounded; a city
    (30 km) spans under 200 and is cut everywhere it reaches, as before."""
    from geojepa.data.tiling import lonlat_to_tile_index

    lv = 3
    x0, y0 = lonlat_to_tile_index(zoom - lv, 24.8, 60.3)
    x1, y1 = lonlat_to_tile_index(zoom - lv, 25.3, 60.1)
    assert (int(x1) - int(x0) + 1) * (int(y1) - int(y0) + 1) < MAX_SHARD_CELLS
