"""Tile arithmetic against mercantile (an independent implementation)."""

from __future__ import annotations

import mercantile
import numpy as np
import shapely

from geojepa.data.reader import local_to_lonlat
from geojepa.data.tiling import (
    lonlat_to_merc,
    lonlat_to_tile_index,
    merc_to_local,
    merc_to_lonlat,
    tile_bounds_lonlat,
)


def test_tile_index_and_bounds_match_mercantile() -> None:
    rng = np.random.default_rng(1)
    lon = rng.uniform(-179.9, 179.9, 500)
    lat = rng.uniform(-84, 84, 500)
    for z in (1, 12, 16, 19):
        tx, ty = lonlat_to_tile_index(z, lon, lat)
        expected = [mercantile.tile(a, b, z) for a, b in zip(lon, lat, strict=True)]
        assert (tx == [t.x for t in expected]).all()
        assert (ty == [t.y for t in expected]).all()
        w, s, e, n = tile_bounds_lonlat(z, tx, ty)
        mb = np.array([tuple(mercantile.bounds(t)) for t in expected])
        np.testing.assert_allclose(np.stack([w, s, e, n], axis=1), mb, atol=1e-9)


def test_mercator_round_trip() -> None:
    lon, lat = np.array([-120.5, 0.0, 24.94]), np.array([-60.0, 0.0, 60.17])
    mx, my = lonlat_to_merc(lon, lat)
    np.testing.assert_allclose(
        np.stack([mx, my], 1),
        [mercantile.xy(a, b) for a, b in zip(lon, lat, strict=True)],
        rtol=1e-12,
    )
    back = merc_to_lonlat(mx, my)
    np.testing.assert_allclose(back[0], lon, atol=1e-10)
    np.testing.assert_allclose(back[1], lat, atol=1e-10)


def test_local_frame_corners_and_round_trip() -> None:
    t = mercantile.tile(24.94, 60.17, 16)
    b = mercantile.bounds(t)
    corners = local_to_lonlat(np.array([shapely.Point(0, 0), shapely.Point(1, 1)]), 16, t.x, t.y)
    np.testing.assert_allclose(
        shapely.get_coordinates(corners), [[b.west, b.north], [b.east, b.south]], atol=1e-9
    )
    line = shapely.LineString([(0.1, 0.2), (0.7, 0.9)])
    ll = local_to_lonlat(np.array([line]), 16, t.x, t.y)
    c = shapely.get_coordinates(ll)
    mx, my = lonlat_to_merc(c[:, 0], c[:, 1])
    back = merc_to_local(
        np.array([shapely.LineString(np.stack([mx, my], 1))]), 16, np.array([t.x]), np.array([t.y])
    )
    np.testing.assert_allclose(
        shapely.get_coordinates(back), shapely.get_coordinates(line), atol=1e-9
    )
