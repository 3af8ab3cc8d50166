"""One GDAL raster in any CRS, read by windows around each tile and warped onto its
Web-Mercator pixel grid (see `geojepa.data.imagery` for bands, values and masks)."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pyproj import CRS, Transformer

from geojepa.errors import ConfigError, InputError
from geojepa.optional import missing_message

try:  # an optional extra: only `prepare --imagery` needs GDAL
    import rasterio
    from rasterio.enums import ColorInterp, Resampling
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window
except ImportError:
    raise ConfigError(missing_message("aerial imagery", "rasterio", "imagery")) from None

from geojepa.data.imagery.base import (
    CONTROL_POINTS,
    STRETCH_PERCENTILES,
    STRETCH_SAMPLE_SIDE,
    WEB_MERCATOR,
    Imagery,
    Layer,
    first_line,
)
from geojepa.data.imagery.resample import bilinear, clamp, upsample_grid
from geojepa.data.tiling import MAX_LAT, tile_origin, tile_size


class RasterImagery(Imagery):
    """One GDAL raster in any CRS, read by windows."""

    def __init__(
        self,
        path: str | Path,
        bands: Sequence[int] | None = None,
        value_range: tuple[float, float] | None = None,
    ) -> None:
        self.path = Path(path)
        with _open_raster(self.path) as ds:
            try:
                self._inspect(ds, bands, value_range)
            except RasterioError as exc:
                raise InputError(f"{self.path}: cannot read raster ({first_line(exc)})") from None
        self._ds: Any = None
        self._pid: int | None = None
        self._to_src: Transformer | None = None

    def _inspect(
        self, ds: Any, bands: Sequence[int] | None, value_range: tuple[float, float] | None
    ) -> None:
        """Check georeferencing, choose bands, decide the value rule, compute the bounds."""
        if ds.crs is None:
            raise InputError(
                f"{self.path}: raster has no CRS (georeference it first, e.g. with "
                "gdal_translate -a_srs/-a_ullr or gdalwarp)"
            )
        if ds.transform.is_identity:
            raise InputError(f"{self.path}: raster has a CRS but no geotransform")
        self.crs_wkt: str = ds.crs.to_wkt()
        self.bands = _choose_bands(ds, bands, self.path)
        self.palette = _palette(ds, self.bands)
        self.dtype = np.dtype(ds.dtypes[self.bands[0] - 1])
        self.stretch = self._stretch(ds, value_range)
        self._set_bounds(*_footprint_lonlat(ds))

    def __repr__(self) -> str:
        return f"RasterImagery({str(self.path)!r}, bands={self.bands})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_ds=None, _pid=None, _to_src=None)
        return state

    def close(self) -> None:
        if self._ds is not None and self._pid == os.getpid():
            self._ds.close()
        self._ds = self._pid = self._to_src = None

    def _stretch(
        self, ds: Any, value_range: tuple[float, float] | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(low, high) per band mapped to 0 and 255; None = use uint8 values as they are."""
        n = len(self.bands)
        if value_range is not None:
            return np.full(n, value_range[0], np.float32), np.full(n, value_range[1], np.float32)
        if self.palette is not None or self.dtype == np.uint8:
            return None
        scale = max(1.0, max(ds.width, ds.height) / STRETCH_SAMPLE_SIDE)
        shape = (max(1, round(ds.height / scale)), max(1, round(ds.width / scale)))
        data = ds.read(self.bands, out_shape=(n, *shape), out_dtype="float64")
        valid = (ds.dataset_mask(out_shape=shape) > 0) & np.isfinite(data).all(axis=0)
        low, high = np.zeros(n, np.float32), np.ones(n, np.float32)
        if valid.any():
            low, high = np.percentile(data[:, valid], STRETCH_PERCENTILES, axis=1)
        high = np.maximum(high, low + np.finfo(np.float32).eps * np.maximum(1.0, np.abs(low)))
        return low.astype(np.float32), high.astype(np.float32)

    def _dataset(self) -> Any:
        """This process's open dataset (a handle inherited through fork is not reused)."""
        if self._ds is None or self._pid != os.getpid():
            self._ds = _open_raster(self.path)
            self._pid = os.getpid()
            self._to_src = Transformer.from_crs(
                WEB_MERCATOR, CRS.from_wkt(self.crs_wkt), always_xy=True
            )
        return self._ds

    def _control_grid(self, ds: Any, z: int, x: int, y: int, size: int) -> np.ndarray:
        """Raster (col, row) of an evenly spaced n×n subset of the tile's pixel centres.

        Only these control points are projected exactly; the other pixels are interpolated
        bilinearly between them (far below a pixel of error over one tile, and ~50x cheaper).
        """
        left, top = tile_origin(z, x, y)
        res = tile_size(z) / size
        n = min(CONTROL_POINTS, size)
        centres = np.linspace(0.5, size - 0.5, n)
        assert self._to_src is not None
        sx, sy = self._to_src.transform(*np.meshgrid(left + centres * res, top - centres * res))
        inv = ~ds.transform
        return np.stack([inv.a * sx + inv.b * sy + inv.c, inv.d * sx + inv.e * sy + inv.f])

    def _read_layer(self, z: int, x: int, y: int, size: int) -> Layer | None:
        try:
            return self._warp(z, x, y, size)
        except RasterioError as exc:
            raise InputError(f"{self.path}: cannot read raster ({first_line(exc)})") from None

    def _warp(self, z: int, x: int, y: int, size: int) -> Layer | None:
        ds = self._dataset()
        grid = self._control_grid(ds, z, x, y, size)
        if not np.isfinite(grid).all():
            return None
        # linear interpolation stays inside the control points' range: this bounds every pixel
        (c0, r0), (c1, r1) = grid.min(axis=(1, 2)), grid.max(axis=(1, 2))
        # Raster pixels per tile pixel; decimating the read by its integer part keeps the data
        # between 1x and 2x the tile's resolution, so bilinear sampling does not alias.
        step = max(1, int(min(c1 - c0, r1 - r0) / max(size - 1, 1)))
        pad = 2 * step
        col_off, row_off = max(0, math.floor(c0) - pad), max(0, math.floor(r0) - pad)
        col_end = min(ds.width, math.ceil(c1) + pad)
        row_end = min(ds.height, math.ceil(r1) + pad)
        if col_end <= col_off or row_end <= row_off:
            return None
        window = Window(col_off, row_off, col_end - col_off, row_end - row_off)
        shape = (max(1, math.ceil(window.height / step)), max(1, math.ceil(window.width / step)))
        mask = ds.dataset_mask(window=window, out_shape=shape) > 0
        if self.palette is not None:
            index = ds.read(self.bands[0], window=window, out_shape=shape)
            index = np.clip(index, 0, len(self.palette) - 1)
            data = np.moveaxis(self.palette[index, :3], -1, 0)
            mask &= self.palette[index, 3] > 0
        else:
            data = ds.read(
                self.bands,
                window=window,
                out_shape=(len(self.bands), *shape),
                resampling=Resampling.average if step > 1 else Resampling.nearest,
            )
            if data.dtype.kind == "f":
                mask &= np.isfinite(data).all(axis=0)
        if not mask.any():
            return None
        # tile pixel centres in the coordinates of the array just read
        grid[0] = (grid[0] - col_off) * (shape[1] / window.width)
        grid[1] = (grid[1] - row_off) * (shape[0] / window.height)
        cols, rows = upsample_grid(grid.astype(np.float32), size)
        out, valid = bilinear(data, mask, cols, rows)
        if self.stretch is not None:
            low, high = self.stretch
            out -= low[:, None, None]
            out *= (255.0 / (high - low))[:, None, None]
        out += np.float32(0.5)  # round to nearest by the truncating cast below
        rgb = clamp(out, 255.0).astype(np.uint8)
        rgb = np.ascontiguousarray(np.moveaxis(rgb, 0, -1))
        if rgb.shape[-1] == 1:
            rgb = np.repeat(rgb, 3, axis=-1)
        return rgb, valid


def _open_raster(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioError as exc:
        raise InputError(f"{path}: not a readable raster ({first_line(exc)})") from None


def _choose_bands(ds: Any, bands: Sequence[int] | None, path: Path) -> tuple[int, ...]:
    if bands is not None:
        chosen = tuple(int(b) for b in bands)
        if len(chosen) not in (1, 3) or not all(1 <= b <= ds.count for b in chosen):
            raise InputError(
                f"{path}: bands must be 1 or 3 band numbers in 1..{ds.count}, got {list(bands)}"
            )
        return chosen
    colour = [i for i, ci in enumerate(ds.colorinterp, start=1) if ci != ColorInterp.alpha]
    if len(colour) >= 3:
        return tuple(colour[:3])
    return (colour[0] if colour else 1,)


def _palette(ds: Any, bands: tuple[int, ...]) -> np.ndarray | None:
    """RGBA lookup table (uint8, [entries, 4]) when the single chosen band is a palette."""
    if len(bands) != 1 or ds.colorinterp[bands[0] - 1] != ColorInterp.palette:
        return None
    try:
        colormap = ds.colormap(bands[0])
    except ValueError:
        return None
    table = np.zeros((max(colormap) + 1, 4), np.uint8)
    for index, rgba in colormap.items():
        table[index] = rgba
    return table


def _footprint_lonlat(ds: Any) -> tuple[float, float, float, float]:
    """EPSG:4326 bounds of the raster (also right for rotated geotransforms)."""
    t = ds.transform
    cols, rows = np.array([0, ds.width, ds.width, 0]), np.array([0, 0, ds.height, ds.height])
    xs, ys = t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f
    xmin, xmax, ymin, ymax = xs.min(), xs.max(), ys.min(), ys.max()
    west, south, east, north = transform_bounds(
        ds.crs, "EPSG:4326", xmin, ymin, xmax, ymax, densify_pts=21
    )
    return west, max(south, -MAX_LAT), east, min(north, MAX_LAT)
