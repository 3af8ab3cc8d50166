"""Imagery reader: rasters in any CRS and XYZ folders → one RGB image per XYZ tile.

Every test writes its own tiny rasters / tiles in ``tmp_path``. Geometry is checked
quantitatively: a bright square painted at a known lon/lat must land on the tile pixels that
the Web-Mercator tile maths predicts, within about a pixel.
"""

from __future__ import annotations

import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from PIL import Image
from pyproj import Transformer
from rasterio.enums import ColorInterp

from geojepa.data.imagery import (
    STRETCH_PERCENTILES,
    Imagery,
    RasterImagery,
    TileImage,
    XYZImagery,
    open_imagery,
)
from geojepa.data.tiling import (
    lonlat_to_merc,
    lonlat_to_tile_index,
    merc_to_lonlat,
    tile_bounds_lonlat,
    tile_origin,
    tile_size,
)
from geojepa.errors import InputError

Z = 16
SIZE = 224
_tx, _ty = lonlat_to_tile_index(Z, 24.94, 60.17)  # central Helsinki
TX, TY = int(_tx), int(_ty)
UTM = "EPSG:32635"
to_utm = Transformer.from_crs("EPSG:4326", UTM, always_xy=True)


# -- helpers ------------------------------------------------------------------------------------


def write_raster(
    path: Path,
    data: np.ndarray,
    crs: str | None,
    transform: object,
    nodata: float | None = None,
    colorinterp: list[ColorInterp] | None = None,
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
    overviews: list[int] | None = None,
) -> Path:
    """Write ``data`` [bands, h, w] as a GeoTIFF."""
    count, height, width = data.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype.name)
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    if colorinterp is not None and len(colorinterp) >= 3:
        profile["photometric"] = "RGB"
        if ColorInterp.alpha in colorinterp:
            profile["alpha"] = "YES"  # ExtraSamples = unassociated alpha
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        if colorinterp is not None:
            ds.colorinterp = colorinterp
        if colormap is not None:
            ds.write_colormap(1, colormap)
        if overviews:
            ds.build_overviews(overviews)
    return path


def from_origin(west: float, north: float, xres: float, yres: float) -> Affine:
    return Affine(xres, 0.0, west, 0.0, -yres, north)


def from_bounds(
    west: float, south: float, east: float, north: float, width: int, height: int
) -> Affine:
    return from_origin(west, north, (east - west) / width, (north - south) / height)


def merc_of_local(z: int, x: int, y: int, u: float, v: float) -> tuple[float, float]:
    """Web-Mercator metres of tile-local (u, v) (u east, v south, tile = [0, 1]²)."""
    left, top = tile_origin(z, x, y)
    side = tile_size(z)
    return float(left + u * side), float(top - v * side)


def utm_of_local(z: int, x: int, y: int, u: float, v: float) -> tuple[float, float]:
    lon, lat = merc_to_lonlat(*merc_of_local(z, x, y, u, v))
    e, n = to_utm.transform(float(lon), float(lat))
    return float(e), float(n)


def utm_raster_with_squares(
    path: Path, res: float, squares: list[tuple[float, float, tuple[int, int, int]]], half: float
) -> Path:
    """A 3-band UTM raster ~700 m wide around the test tile, dark grey, with coloured squares
    of side ``2 * half`` metres centred at the given tile-local positions."""
    ce, cn = utm_of_local(Z, TX, TY, 0.5, 0.5)
    n_px = round(700 / res)
    transform = from_origin(ce - 350, cn + 350, res, res)
    data = np.full((3, n_px, n_px), 40, np.uint8)
    east = ce - 350 + (np.arange(n_px) + 0.5) * res
    north = cn + 350 - (np.arange(n_px) + 0.5) * res
    for u, v, colour in squares:
        se, sn = utm_of_local(Z, TX, TY, u, v)
        inside = (np.abs(north - sn)[:, None] <= half) & (np.abs(east - se)[None, :] <= half)
        data[:, inside] = np.array(colour, np.uint8)[:, None]
    return write_raster(path, data, UTM, transform)


def footprint_fraction(path: Path, z: int, x: int, y: int) -> float:
    """Fraction of tile z/x/y covered by the raster's footprint (shapely, independent maths)."""
    with rasterio.open(path) as ds:
        t, w, h = ds.transform, ds.width, ds.height
        corners = [
            (t.c + t.a * c + t.b * r, t.f + t.d * c + t.e * r)
            for c, r in [(0, 0), (w, 0), (w, h), (0, h)]
        ]
        to_lonlat = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
    left, top = tile_origin(z, x, y)
    side = tile_size(z)
    local = []
    for cx, cy in corners:
        lon, lat = to_lonlat.transform(cx, cy)
        (mx,), (my,) = lonlat_to_merc(np.array([lon]), np.array([lat]))
        local.append(((mx - left) / side, (top - my) / side))
    return float(shapely.Polygon(local).intersection(shapely.box(0, 0, 1, 1)).area)


def centroid(mask: np.ndarray) -> tuple[float, float]:
    """(col, row) centroid in tile pixel units, pixel centres at i + 0.5."""
    rows, cols = np.nonzero(mask)
    assert rows.size, "pattern not found in the tile image"
    return float(cols.mean() + 0.5), float(rows.mean() + 0.5)


def mercator_raster(
    path: Path, data: np.ndarray, local_box: tuple[float, float, float, float], **kw: object
) -> Path:
    """An EPSG:3857 raster whose extent is the tile-local box (u0, v0, u1, v1) of the test tile."""
    u0, v0, u1, v1 = local_box
    left, top = merc_of_local(Z, TX, TY, u0, v0)
    right, bottom = merc_of_local(Z, TX, TY, u1, v1)
    _, height, width = data.shape
    transform = from_bounds(left, bottom, right, top, width, height)
    return write_raster(path, data, "EPSG:3857", transform, **kw)


def write_tile(root: Path, z: int, x: int, y: int, image: np.ndarray, suffix: str = ".png") -> None:
    path = root / str(z) / str(x) / f"{y}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def solid(colour: tuple[int, ...], side: int = 256) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (side, side, len(colour))).copy()


RED, GREEN, BLUE, WHITE = (230, 20, 20), (20, 230, 20), (20, 20, 230), (250, 250, 250)


# -- rasters: geometry --------------------------------------------------------------------------


@pytest.mark.parametrize("res", [1.0, 0.4])  # 0.4 m: the read is decimated (3 m → ~1 tile px)
def test_utm_raster_pattern_lands_on_expected_tile_pixels(tmp_path: Path, res: float) -> None:
    squares = [(0.25, 0.7, RED), (0.8, 0.15, BLUE), (0.5, 0.5, WHITE)]
    path = utm_raster_with_squares(tmp_path / "utm.tif", res, squares, half=6.0)
    imagery = open_imagery([path])
    tile = imagery.read_tile(Z, TX, TY, SIZE)
    assert isinstance(tile, TileImage)
    assert tile.rgb.shape == (SIZE, SIZE, 3) and tile.rgb.dtype == np.uint8
    assert tile.coverage == 1.0
    rgb = tile.rgb.astype(int)
    for u, v, colour in squares:
        c = np.array(colour)
        near = np.abs(rgb - c).max(axis=-1) < 60
        col, row = centroid(near)
        assert abs(col - u * SIZE) < 1.0 and abs(row - v * SIZE) < 1.0, (colour, col, row)
    # background keeps its value (no darkening or brightening by the warp)
    assert np.median(rgb[..., 1]) == 40


def test_rotated_geotransform(tmp_path: Path) -> None:
    """A raster whose pixel grid is rotated by 30° (ModelTransformation) is sampled correctly."""
    cx, cy = merc_of_local(Z, TX, TY, 0.5, 0.5)
    n, res = 400, 1.6
    transform = (
        Affine.translation(cx, cy)
        @ Affine.rotation(30)
        @ Affine.scale(res, -res)
        @ Affine.translation(-n / 2, -n / 2)
    )
    cols, rows = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5)
    wx = transform.a * cols + transform.b * rows + transform.c
    wy = transform.d * cols + transform.e * rows + transform.f
    data = np.full((3, n, n), 40, np.uint8)
    u, v = 0.3, 0.65
    sx, sy = merc_of_local(Z, TX, TY, u, v)
    data[:, (np.abs(wx - sx) <= 10) & (np.abs(wy - sy) <= 10)] = 250
    path = write_raster(tmp_path / "rot.tif", data, "EPSG:3857", transform)
    tile = open_imagery([path]).read_tile(Z, TX, TY, SIZE)
    assert tile is not None
    col, row = centroid(tile.rgb[..., 0] > 145)
    assert abs(col - u * SIZE) < 1.0 and abs(row - v * SIZE) < 1.0
    assert abs(tile.coverage - footprint_fraction(path, Z, TX, TY)) < 0.01


def test_zoomed_out_tile_reads_a_small_decimated_window(tmp_path: Path) -> None:
    """At z14 the raster is ~10x finer than the tile: the read must be decimated (via overviews),
    never the full-resolution window, and the pattern must still be where it belongs."""
    squares = [(0.25, 0.7, RED), (0.8, 0.15, BLUE)]
    path = utm_raster_with_squares(tmp_path / "utm.tif", 0.5, squares, half=20.0)
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4, 8])
    imagery = open_imagery([path])
    assert isinstance(imagery, RasterImagery)

    shapes: list[tuple[int, ...]] = []

    class Spy:
        def __init__(self, ds: object) -> None:
            self._inner = ds

        def read(self, *args: object, **kwargs: object) -> np.ndarray:
            shapes.append(tuple(kwargs["out_shape"]))  # type: ignore[arg-type]
            return self._inner.read(*args, **kwargs)  # type: ignore[attr-defined]

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

    imagery._dataset()
    imagery._ds = Spy(imagery._ds)
    z, x, y = Z - 2, TX >> 2, TY >> 2
    tile = imagery.read_tile(z, x, y, SIZE)
    assert tile is not None
    # full resolution would be up to 1400 px a side; the tile needs ~2448 / 224 ≈ 11x less
    assert shapes and max(max(s[-2:]) for s in shapes) <= 1400 // 8
    # the square at local (u, v) of tile TX, TY sits at ((TX % 4 + u) / 4, (TY % 4 + v) / 4)
    rgb = tile.rgb.astype(int)
    for u, v, colour in squares:
        col, row = centroid(np.abs(rgb - np.array(colour)).max(axis=-1) < 80)
        assert abs(col - (TX % 4 + u) / 4 * SIZE) < 1.0
        assert abs(row - (TY % 4 + v) / 4 * SIZE) < 1.0
    assert abs(tile.coverage - footprint_fraction(path, z, x, y)) < 0.01


def test_far_away_raster_gives_none_and_bounds_are_right(tmp_path: Path) -> None:
    path = utm_raster_with_squares(tmp_path / "utm.tif", 2.0, [], half=1.0)
    imagery = open_imagery([path])
    west, south, east, north = imagery.bounds_lonlat
    assert west < 24.94 < east and south < 60.17 < north
    assert 0.01 < east - west < 0.02 and 0.005 < north - south < 0.008  # ~700 m at 60°N
    sydney = lonlat_to_tile_index(Z, 151.2, -33.9)
    assert imagery.read_tile(Z, int(sydney[0]), int(sydney[1]), SIZE) is None
    assert imagery.read_tile(Z, TX + 3, TY, SIZE) is None  # next-but-two tile east: no overlap


# -- rasters: validity, bands, values -----------------------------------------------------------


def test_nodata_pixels_are_black_and_excluded_from_coverage(tmp_path: Path) -> None:
    data = np.full((3, 448, 448), 200, np.uint8)
    data[:, :, :224] = 0  # west half is nodata
    path = mercator_raster(tmp_path / "nodata.tif", data, (0, 0, 1, 1), nodata=0)
    tile = open_imagery([path]).read_tile(Z, TX, TY, SIZE)
    assert tile is not None
    assert abs(tile.coverage - 0.5) <= 1 / SIZE
    assert (tile.rgb[:, : SIZE // 2 - 1] == 0).all()
    assert (tile.rgb[:, SIZE // 2 + 1 :] == 200).all()


def test_jpeg_cog_with_internal_mask_and_overviews(tmp_path: Path) -> None:
    """The usual orthophoto COG: YCbCr JPEG tiles, an internal mask, overviews."""
    n = 512
    data = np.full((3, n, n), 120, np.uint8)
    data[0] = np.linspace(0, 255, n).astype(np.uint8)  # red ramps west → east
    left, top = merc_of_local(Z, TX, TY, 0, 0)
    right, bottom = merc_of_local(Z, TX, TY, 1, 1)
    path = tmp_path / "cog.tif"
    profile = dict(
        driver="GTiff", width=n, height=n, count=3, dtype="uint8", crs="EPSG:3857",
        transform=from_bounds(left, bottom, right, top, n, n), compress="JPEG",
        photometric="YCBCR", tiled=True, blockxsize=256, blockysize=256,
    )  # fmt: skip
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        mask = np.full((n, n), 255, np.uint8)
        mask[: n // 4] = 0  # north quarter masked
        ds.write_mask(mask)
        ds.build_overviews([2, 4])
    imagery = open_imagery([path])
    tile = imagery.read_tile(Z, TX, TY, SIZE)
    assert tile is not None and tile.coverage == 0.75
    assert (tile.rgb[: SIZE // 4] == 0).all()
    red = tile.rgb[SIZE // 2, :, 0].astype(int)
    expected = (np.arange(SIZE) + 0.5) / SIZE * 255
    assert np.abs(red - expected).max() <= 8  # JPEG
    parent = imagery.read_tile(Z - 2, TX >> 2, TY >> 2, SIZE)
    assert parent is not None and abs(parent.coverage - 0.75 / 16) < 1e-3


def test_partly_overlapping_raster_has_partial_coverage(tmp_path: Path) -> None:
    """A lon/lat raster over local x in [0.6, 1.3] (past the east edge), y in [-0.2, 1.2]."""
    west, north = merc_to_lonlat(*merc_of_local(Z, TX, TY, 0.6, -0.2))
    east, south = merc_to_lonlat(*merc_of_local(Z, TX, TY, 1.3, 1.2))
    data = np.full((3, 300, 200), 120, np.uint8)
    transform = from_bounds(float(west), float(south), float(east), float(north), 200, 300)
    path = write_raster(tmp_path / "part.tif", data, "EPSG:4326", transform)
    tile = open_imagery([path]).read_tile(Z, TX, TY, SIZE)
    assert tile is not None
    assert abs(tile.coverage - 0.4) < 0.01
    valid_cols = np.nonzero((tile.rgb > 0).any(axis=(0, 2)))[0]
    assert abs(valid_cols.min() - 0.6 * SIZE) <= 1 and valid_cols.max() == SIZE - 1
    assert (tile.rgb[:, valid_cols.min() + 1 :] == 120).all()


def test_uint16_raster_is_stretched_by_percentiles(tmp_path: Path) -> None:
    ramp = np.linspace(1000, 3000, 448)  # along columns: uniform over [1000, 3000]
    data = np.broadcast_to(ramp, (3, 448, 448)).astype(np.uint16)
    path = mercator_raster(tmp_path / "u16.tif", data, (0, 0, 1, 1))
    imagery = open_imagery([path])
    assert isinstance(imagery, RasterImagery) and imagery.stretch is not None
    low, high = imagery.stretch
    expect_low, expect_high = np.percentile(data[0], STRETCH_PERCENTILES)
    np.testing.assert_allclose(low, expect_low, rtol=1e-3)
    np.testing.assert_allclose(high, expect_high, rtol=1e-3)
    tile = imagery.read_tile(Z, TX, TY, SIZE)
    assert tile is not None
    row = tile.rgb[SIZE // 2, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and abs(row[SIZE // 2] - 128) <= 3
    assert (np.diff(row) >= 0).all()
    # the stretch is decided once and travels with the object (same rule in every worker)
    clone = pickle.loads(pickle.dumps(imagery))
    np.testing.assert_array_equal(clone.read_tile(Z, TX, TY, SIZE).rgb, tile.rgb)

    fixed = open_imagery([path], value_range=(0, 4000)).read_tile(Z, TX, TY, SIZE)
    assert fixed is not None
    expected = np.interp(2000, [0, 4000], [0, 255])
    assert abs(int(fixed.rgb[SIZE // 2, SIZE // 2, 0]) - expected) <= 2


def test_float_raster_nan_is_invalid(tmp_path: Path) -> None:
    data = np.full((3, 224, 224), 0.3, np.float32)
    data[:, 112:, :] = np.nan  # south half
    data[:, :56, :] = 0.1
    path = mercator_raster(tmp_path / "f32.tif", data, (0, 0, 1, 1))
    tile = open_imagery([path]).read_tile(Z, TX, TY, SIZE)
    assert tile is not None
    assert abs(tile.coverage - 0.5) <= 1 / SIZE
    assert (tile.rgb[SIZE // 2 + 1 :] == 0).all()
    assert tile.rgb[10, 10, 0] < tile.rgb[80, 10, 0]  # darker value stays darker


def test_one_band_raster_is_grey(tmp_path: Path) -> None:
    data = np.full((1, 224, 224), 90, np.uint8)
    data[0, :, 112:] = 170
    tile = open_imagery([mercator_raster(tmp_path / "g.tif", data, (0, 0, 1, 1))]).read_tile(
        Z, TX, TY, SIZE
    )
    assert tile is not None and tile.coverage == 1.0
    assert (tile.rgb[..., 0] == tile.rgb[..., 1]).all() and (
        tile.rgb[..., 1] == tile.rgb[..., 2]
    ).all()
    assert tile.rgb[5, 5, 0] == 90 and tile.rgb[5, -5, 0] == 170


def test_rgba_alpha_is_a_mask_and_bands_option(tmp_path: Path) -> None:
    data = np.zeros((4, 224, 224), np.uint8)
    data[0], data[1], data[2], data[3] = 10, 100, 200, 255
    data[3, :112] = 0  # north half transparent
    interp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    path = mercator_raster(tmp_path / "rgba.tif", data, (0, 0, 1, 1), colorinterp=interp)
    tile = open_imagery([path]).read_tile(Z, TX, TY, SIZE)
    assert tile is not None
    assert abs(tile.coverage - 0.5) <= 1 / SIZE
    assert (tile.rgb[: SIZE // 2 - 1] == 0).all()
    assert tuple(tile.rgb[-1, 0]) == (10, 100, 200)
    swapped = open_imagery([path], bands=[3, 2, 1]).read_tile(Z, TX, TY, SIZE)
    assert swapped is not None and tuple(swapped.rgb[-1, 0]) == (200, 100, 10)


def test_palette_raster_uses_its_colours(tmp_path: Path) -> None:
    data = np.ones((1, 224, 224), np.uint8)
    data[0, :, 112:] = 2
    colormap = {0: (0, 0, 0, 0), 1: (255, 0, 0, 255), 2: (0, 0, 255, 255)}
    path = mercator_raster(
        tmp_path / "pal.tif",
        data,
        (0, 0, 1, 1),
        colorinterp=[ColorInterp.palette],
        colormap=colormap,
    )
    tile = open_imagery([path]).read_tile(Z, TX, TY, SIZE)
    assert tile is not None and tile.coverage == 1.0
    assert tuple(tile.rgb[5, 5]) == (255, 0, 0) and tuple(tile.rgb[5, -5]) == (0, 0, 255)


def test_several_rasters_mosaic_first_valid_pixel_wins(tmp_path: Path) -> None:
    west = mercator_raster(tmp_path / "w.tif", solid(RED, 64).transpose(2, 0, 1), (0, 0, 0.5, 1))
    full = mercator_raster(tmp_path / "all.tif", solid(BLUE, 64).transpose(2, 0, 1), (0, 0, 1, 1))
    tile = open_imagery([west, full]).read_tile(Z, TX, TY, SIZE)
    assert tile is not None and tile.coverage == 1.0
    assert tuple(tile.rgb[100, 10]) == RED and tuple(tile.rgb[100, -10]) == BLUE
    reverse = open_imagery([full, west]).read_tile(Z, TX, TY, SIZE)
    assert reverse is not None and (reverse.rgb == np.array(BLUE, np.uint8)).all()
    assert open_imagery([west, full]).bounds_lonlat == open_imagery([full]).bounds_lonlat


# -- errors -------------------------------------------------------------------------------------


def test_input_errors(tmp_path: Path) -> None:
    data = np.zeros((3, 16, 16), np.uint8)
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning):
        no_crs = write_raster(tmp_path / "nocrs.tif", data, None, None)
    with pytest.raises(InputError, match="no CRS"):
        open_imagery([no_crs])
    with pytest.raises(InputError, match="not found"):
        open_imagery([tmp_path / "missing.tif"])
    text = tmp_path / "notes.tif"
    text.write_text("not a raster\n")
    with pytest.raises(InputError, match="not a readable raster"):
        open_imagery([text])
    empty = tmp_path / "empty"
    (empty / "16" / "junk").mkdir(parents=True)
    with pytest.raises(InputError, match="no XYZ tiles"):
        open_imagery([empty])
    good = mercator_raster(tmp_path / "ok.tif", data, (0, 0, 1, 1))
    with pytest.raises(InputError, match="bands"):
        open_imagery([good], bands=[1, 2, 4])
    with pytest.raises(InputError, match="value_range"):
        open_imagery([good], value_range=(5, 5))
    with pytest.raises(InputError, match="no imagery source"):
        open_imagery([])
    message = ""
    try:
        open_imagery([no_crs])
    except InputError as exc:
        message = str(exc)
    assert "\n" not in message


def test_truncated_raster_is_a_one_line_input_error(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 255, (3, 448, 448), dtype=np.uint8)
    path = mercator_raster(tmp_path / "cut.tif", data, (0, 0, 1, 1))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match="cannot read raster") as info:
        open_imagery([path]).read_tile(Z, TX, TY, SIZE)
    assert "\n" not in str(info.value) and "previous exception" not in str(info.value)


def test_corrupt_xyz_tile_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "xyz" / str(Z) / str(TX) / f"{TY}.png"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x89PNG truncated")
    imagery = open_imagery([tmp_path / "xyz"])
    with pytest.raises(InputError, match="unreadable image tile"):
        imagery.read_tile(Z, TX, TY, SIZE)


# -- XYZ folders --------------------------------------------------------------------------------


def test_xyz_exact_zoom_any_format(tmp_path: Path) -> None:
    root = tmp_path / "xyz"
    write_tile(root, Z, TX, TY, solid(RED), ".png")
    write_tile(root, Z, TX + 1, TY, solid(GREEN), ".jpg")
    write_tile(root, Z, TX, TY + 1, solid(BLUE), ".webp")
    imagery = open_imagery([root])
    assert isinstance(imagery, XYZImagery)
    for x, y, colour in [(TX, TY, RED), (TX + 1, TY, GREEN), (TX, TY + 1, BLUE)]:
        tile = imagery.read_tile(Z, x, y, SIZE)
        assert tile is not None and tile.coverage == 1.0
        assert np.abs(tile.rgb.astype(int) - np.array(colour)).max() <= 6  # lossy formats
    assert imagery.read_tile(Z, TX + 1, TY + 1, SIZE) is None
    west, _, _, north = (float(v) for v in tile_bounds_lonlat(Z, np.array(TX), np.array(TY)))
    _, south, east, _ = (
        float(v) for v in tile_bounds_lonlat(Z, np.array(TX + 1), np.array(TY + 1))
    )
    np.testing.assert_allclose(imagery.bounds_lonlat, (west, south, east, north))


def test_xyz_children_are_mosaicked_and_missing_ones_reduce_coverage(tmp_path: Path) -> None:
    root = tmp_path / "xyz"
    colours = {(0, 0): RED, (1, 0): GREEN, (0, 1): BLUE}  # child (1, 1) is missing
    for (i, j), colour in colours.items():
        write_tile(root, Z + 1, 2 * TX + i, 2 * TY + j, solid(colour))
    tile = open_imagery([root]).read_tile(Z, TX, TY, SIZE)
    assert tile is not None
    assert abs(tile.coverage - 0.75) <= 2 / SIZE
    q = SIZE // 4
    assert tuple(tile.rgb[q, q]) == RED and tuple(tile.rgb[q, 3 * q]) == GREEN
    assert tuple(tile.rgb[3 * q, q]) == BLUE and tuple(tile.rgb[3 * q, 3 * q]) == (0, 0, 0)


def test_xyz_parent_is_cropped_and_upsampled_at_the_right_place(tmp_path: Path) -> None:
    root = tmp_path / "xyz"
    parent = solid((40, 40, 40))
    parent[32:48, 64:80] = WHITE  # rows 32..48, cols 64..80 of the z-1 tile: its (0, 0) child
    px, py = TX >> 1, TY >> 1
    write_tile(root, Z - 1, px, py, parent)
    imagery = open_imagery([root])
    tile = imagery.read_tile(Z, 2 * px, 2 * py, SIZE)
    assert tile is not None and tile.coverage == 1.0
    col, row = centroid(tile.rgb[..., 0] > 145)
    assert abs(col - 72 / 128 * SIZE) < 1.0 and abs(row - 40 / 128 * SIZE) < 1.0
    other = imagery.read_tile(Z, 2 * px + 1, 2 * py + 1, SIZE)
    assert other is not None and (other.rgb == 40).all()
    assert imagery.read_tile(Z, 2 * px + 2, 2 * py, SIZE) is None


def test_xyz_transparent_pixels_are_invalid_and_filled_from_next_source(tmp_path: Path) -> None:
    root = tmp_path / "xyz"
    tile = solid((*RED, 255))
    tile[:, :128, 3] = 0  # west half transparent
    write_tile(root, Z, TX, TY, tile)
    alone = open_imagery([root]).read_tile(Z, TX, TY, SIZE)
    assert alone is not None and abs(alone.coverage - 0.5) <= 1 / SIZE
    assert (alone.rgb[:, : SIZE // 2 - 1] == 0).all()
    backdrop = mercator_raster(tmp_path / "b.tif", solid(BLUE, 32).transpose(2, 0, 1), (0, 0, 1, 1))
    both = open_imagery([root, backdrop]).read_tile(Z, TX, TY, SIZE)
    assert both is not None and both.coverage == 1.0
    assert tuple(both.rgb[50, 5]) == BLUE and tuple(both.rgb[50, -5]) == RED


def test_xyz_and_raster_agree_on_geometry(tmp_path: Path) -> None:
    """The same pattern as a UTM raster and as XYZ children lands on the same tile pixels."""
    squares = [(0.3, 0.6, RED)]
    raster = utm_raster_with_squares(tmp_path / "utm.tif", 0.5, squares, half=10.0)
    source = open_imagery([raster])
    root = tmp_path / "xyz"
    for i in range(2):
        for j in range(2):
            child = source.read_tile(Z + 1, 2 * TX + i, 2 * TY + j, 256)
            assert child is not None
            write_tile(root, Z + 1, 2 * TX + i, 2 * TY + j, child.rgb)
    from_raster = source.read_tile(Z, TX, TY, SIZE)
    from_tiles = open_imagery([root]).read_tile(Z, TX, TY, SIZE)
    assert from_raster is not None and from_tiles is not None
    red = np.array(RED)
    a = centroid(np.abs(from_raster.rgb.astype(int) - red).max(axis=-1) < 80)
    b = centroid(np.abs(from_tiles.rgb.astype(int) - red).max(axis=-1) < 80)
    assert abs(a[0] - b[0]) < 1.0 and abs(a[1] - b[1]) < 1.0


# -- processes ----------------------------------------------------------------------------------


def _read_in_worker(imagery: Imagery) -> tuple[int, np.ndarray]:
    tile = imagery.read_tile(Z, TX, TY, SIZE)
    assert tile is not None
    return os.getpid(), tile.rgb


def test_picklable_and_reopens_in_forked_workers(tmp_path: Path) -> None:
    path = utm_raster_with_squares(tmp_path / "utm.tif", 1.0, [(0.5, 0.5, RED)], half=8.0)
    root = tmp_path / "xyz"
    write_tile(root, Z, TX + 1, TY, solid(GREEN))
    imagery = open_imagery([path, root])
    expected = imagery.read_tile(Z, TX, TY, SIZE)  # opens the raster in this process
    assert expected is not None
    clone = pickle.loads(pickle.dumps(imagery))
    np.testing.assert_array_equal(clone.read_tile(Z, TX, TY, SIZE).rgb, expected.rgb)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("fork")) as pool:
        pid, rgb = pool.submit(_read_in_worker, imagery).result()  # pickled
        assert pid != os.getpid()
        np.testing.assert_array_equal(rgb, expected.rgb)
        # inherited through fork with the dataset already open: reopened, same result
        pid, rgb = pool.submit(_read_in_worker, imagery).result()
        np.testing.assert_array_equal(rgb, expected.rgb)
    imagery.close()
    np.testing.assert_array_equal(imagery.read_tile(Z, TX, TY, SIZE).rgb, expected.rgb)


@pytest.mark.slow
def test_read_tile_speed(tmp_path: Path) -> None:
    """Median time of one 224² tile; prints the figures (run with -m slow -s)."""
    import time

    utm = utm_raster_with_squares(tmp_path / "utm.tif", 0.5, [(0.5, 0.5, RED)], half=5.0)
    root = tmp_path / "xyz"
    write_tile(root, Z, TX, TY, solid(RED))
    for i in range(2):
        for j in range(2):
            write_tile(root, Z + 1, 2 * (TX + 1) + i, 2 * TY + j, solid(BLUE))
    cases = {
        "UTM GeoTIFF 0.5 m, z16": (open_imagery([utm]), TX),
        "XYZ png, same zoom": (open_imagery([root]), TX),
        "XYZ png, 4 children": (open_imagery([root]), TX + 1),
    }
    for label, (imagery, x) in cases.items():
        imagery.read_tile(Z, x, TY, SIZE)
        wall, cpu = [], []
        for _ in range(200):
            t0, c0 = time.perf_counter(), time.thread_time()
            imagery.read_tile(Z, x, TY, SIZE)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        print(
            f"{label}: wall median {np.median(wall) * 1e3:.2f} ms (min {min(wall) * 1e3:.2f}), "
            f"cpu median {np.median(cpu) * 1e3:.2f} ms"
        )
        assert np.median(cpu) < 0.05
