"""Web-Mercator tile arithmetic, vectorised with numpy.

All geometry work in `prepare` happens in Web-Mercator metres (EPSG:3857): XYZ tiles are exact
squares there, so clipping to a tile is a rectangle clip and the tile-local frame of
`geojepa.data.schema` is an affine map of it.

Why not mercantile (a dependency, used where a few tiles are enough): it works one point at a
time in Python, and `prepare` converts every vertex of an extract. On 100,000 random points
(2-core CPU, loaded): lon/lat → Mercator 1.0 ms here vs 893 ms with ``mercantile.xy``; z16 tile
index 1.6 ms vs 2.5 s with ``mercantile.tile``; bounds of 20,000 tiles 0.3 ms vs 524 ms with
``mercantile.bounds``. The results agree (≤ 4e-9 m, the same tiles): `tests/test_tiling.py`
checks them against mercantile.
"""

from __future__ import annotations

import numpy as np
import shapely

EARTH_RADIUS = 6378137.0
HALF_WORLD = np.pi * EARTH_RADIUS  # Mercator x/y range is [-HALF_WORLD, HALF_WORLD]
MAX_LAT = 85.0511287798066


def tile_size(z: int) -> float:
    """Side of a tile at zoom ``z`` in Mercator metres."""
    return 2.0 * HALF_WORLD / (1 << z)


def lonlat_to_merc(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.clip(np.asarray(lat, dtype=np.float64), -MAX_LAT, MAX_LAT)
    mx = np.radians(lon) * EARTH_RADIUS
    my = np.log(np.tan(np.pi / 4.0 + np.radians(lat) / 2.0)) * EARTH_RADIUS
    return mx, my


def merc_to_lonlat(mx: np.ndarray, my: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lon = np.degrees(np.asarray(mx, dtype=np.float64) / EARTH_RADIUS)
    lat = np.degrees(2.0 * np.arctan(np.exp(np.asarray(my, dtype=np.float64) / EARTH_RADIUS)))
    return lon, lat - 90.0


def tile_origin(z: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mercator (left, top) of tiles ``(z, x, y)``."""
    size = tile_size(z)
    left = -HALF_WORLD + np.asarray(x, dtype=np.float64) * size
    top = HALF_WORLD - np.asarray(y, dtype=np.float64) * size
    return left, top


def tile_bounds_lonlat(z: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """(west, south, east, north) arrays in EPSG:4326 for tiles ``(z, x, y)``."""
    left, top = tile_origin(z, x, y)
    size = tile_size(z)
    west, north = merc_to_lonlat(left, top)
    east, south = merc_to_lonlat(left + size, top - size)
    return west, south, east, north


def merc_to_tile_index(z: int, mx: np.ndarray, my: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tile column/row holding Mercator points (edges belong to the east/south tile)."""
    n = 1 << z
    size = tile_size(z)
    tx = np.floor((np.asarray(mx) + HALF_WORLD) / size).astype(np.int64)
    ty = np.floor((HALF_WORLD - np.asarray(my)) / size).astype(np.int64)
    return np.clip(tx, 0, n - 1), np.clip(ty, 0, n - 1)


def lonlat_to_tile_index(z: int, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, ...]:
    return merc_to_tile_index(z, *lonlat_to_merc(lon, lat))


def merc_to_local(geoms: np.ndarray, z: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mercator geometries → tile-local frame of their tile (x east, y south, tile = [0,1]²).

    ``x``/``y`` are per-geometry tile indices (arrays of the same length as ``geoms``).
    """
    left, top = tile_origin(z, x, y)
    size = tile_size(z)
    return _per_geom_affine(geoms, left, top, size, forward=True)


def local_to_merc(geoms: np.ndarray, z: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    left, top = tile_origin(z, x, y)
    size = tile_size(z)
    return _per_geom_affine(geoms, left, top, size, forward=False)


def _per_geom_affine(
    geoms: np.ndarray, left: np.ndarray, top: np.ndarray, size: float, forward: bool
) -> np.ndarray:
    """Apply each geometry's own tile affine in one vectorised pass over all coordinates."""
    geoms = np.asarray(geoms, dtype=object)
    left = np.broadcast_to(np.asarray(left, dtype=np.float64), geoms.shape)
    top = np.broadcast_to(np.asarray(top, dtype=np.float64), geoms.shape)
    coords, index = shapely.get_coordinates(geoms, return_index=True)
    if forward:
        out = np.column_stack(
            [(coords[:, 0] - left[index]) / size, (top[index] - coords[:, 1]) / size]
        )
    else:
        out = np.column_stack([left[index] + coords[:, 0] * size, top[index] - coords[:, 1] * size])
    # set_coordinates fills the given object array in place: work on a copy of the array
    return shapely.set_coordinates(geoms.copy(), out)
