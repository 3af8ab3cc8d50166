"""Aerial imagery for `prepare`: one RGB image per XYZ tile, from rasters or XYZ tile folders.

Two kinds of source, mixed freely (the first valid pixel wins, in the order given):

* **Rasters** (GeoTIFF, COG, VRT, anything GDAL reads) in any CRS. Only the window that covers
  the requested tile is read (never the whole raster), decimated on read when the raster is much
  finer than the tile — GDAL then takes a matching overview if the file has one — and warped
  bilinearly onto the tile's Web-Mercator pixel grid.
* **XYZ tile folders** ``ROOT/{z}/{x}/{y}.{png,jpg,jpeg,webp}`` (y counted from the north). The
  requested zoom is used when its tile exists; missing pixels are then filled from children
  (mosaicked and downsampled, up to :data:`MAX_CHILD_LEVELS` deeper) and then from a parent
  (cropped and upsampled, up to :data:`MAX_PARENT_LEVELS` shallower).

Bands: 1 band → grey copied to R, G and B; a palette band → its colours; otherwise the first three
bands that are not alpha (``bands=`` picks others, e.g. ``(4, 1, 2)`` for false colour). An alpha
band, a nodata value, an internal mask or a NaN marks pixels invalid: they are black in the image
and do not count in ``coverage``.

Values: uint8 bands are used as they are. Any other type is stretched linearly per band so that
its 2nd percentile maps to 0 and its 98th to 255 (clipped). The percentiles are estimated once,
when the source is opened, from a read decimated to at most :data:`STRETCH_SAMPLE_SIDE` pixels a
side (GDAL uses an overview if there is one) over valid pixels only, and travel with the object
to worker processes, so every tile of a raster gets the same rule. ``value_range=(lo, hi)``
replaces the stretch by a fixed linear map of ``[lo, hi]`` onto ``[0, 255]`` for all bands.

Objects are picklable: datasets are opened lazily in each process, and reopened after a fork.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pyproj import CRS, Transformer

from geojepa.errors import ConfigError, InputError

try:  # an optional extra: only `prepare --imagery` needs GDAL
    import rasterio
    from rasterio.enums import ColorInterp, Resampling
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window
except ImportError:
    raise ConfigError(
        "aerial imagery needs the optional package rasterio: pip install 'geojepa[imagery]'"
    ) from None

from geojepa.data.tiling import (
    MAX_LAT,
    lonlat_to_merc,
    tile_bounds_lonlat,
    tile_origin,
    tile_size,
)

WEB_MERCATOR = "EPSG:3857"
DEFAULT_SIZE = 224
#: Percentiles of the per-band linear stretch applied to non-uint8 rasters.
STRETCH_PERCENTILES = (2.0, 98.0)
#: Longest side of the decimated read used to estimate the stretch.
STRETCH_SAMPLE_SIDE = 1024
TILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: How many zoom levels deeper an XYZ folder is searched for children (3 → up to 64 tiles).
MAX_CHILD_LEVELS = 3
#: How many zoom levels shallower an XYZ folder is searched for a parent to crop.
MAX_PARENT_LEVELS = 8
#: Control points per tile side projected exactly into a raster's CRS.
_CONTROL_POINTS = 17

Layer = tuple[np.ndarray, np.ndarray]  # rgb uint8 (S, S, 3), valid bool (S, S)


@dataclass(frozen=True)
class TileImage:
    """The image of one XYZ tile."""

    rgb: np.ndarray  # uint8 (size, size, 3), row 0 = north edge, col 0 = west edge
    coverage: float  # fraction of pixels that came from valid (non-nodata) data, 0..1


class Imagery:
    """Imagery readable per XYZ tile. Picklable; files are opened lazily in each process."""

    bounds_lonlat: tuple[float, float, float, float]  # union of sources, EPSG:4326

    def read_tile(self, z: int, x: int, y: int, size: int = DEFAULT_SIZE) -> TileImage | None:
        """The tile's ``size``×``size`` RGB image, or None when no valid pixel falls in it."""
        _check_tile(z, x, y, size)
        if not self._overlaps(z, x, y):
            return None
        layer = self._read_layer(z, x, y, size)
        if layer is None:
            return None
        rgb, valid = layer
        n_valid = int(np.count_nonzero(valid))
        if n_valid == 0:
            return None
        if n_valid < valid.size:
            rgb *= valid[..., None]  # invalid pixels are black
        return TileImage(rgb=rgb, coverage=n_valid / valid.size)

    def close(self) -> None:
        """Release open files (they are reopened on the next read)."""

    def __enter__(self) -> Imagery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- for subclasses -------------------------------------------------------------------------
    _merc_bounds: tuple[float, float, float, float]  # left, bottom, right, top

    def _set_bounds(self, west: float, south: float, east: float, north: float) -> None:
        self.bounds_lonlat = (float(west), float(south), float(east), float(north))
        (left, right), (bottom, top) = lonlat_to_merc(np.array([west, east]), [south, north])
        self._merc_bounds = (float(left), float(bottom), float(right), float(top))

    def _overlaps(self, z: int, x: int, y: int) -> bool:
        left, top = tile_origin(z, x, y)
        side = tile_size(z)
        b_left, b_bottom, b_right, b_top = self._merc_bounds
        inside_x = left < b_right and left + side > b_left
        return bool(inside_x and top > b_bottom and top - side < b_top)

    def _read_layer(self, z: int, x: int, y: int, size: int) -> Layer | None:
        raise NotImplementedError


def open_imagery(
    sources: Sequence[str | Path] | str | Path,
    *,
    bands: Sequence[int] | None = None,
    value_range: tuple[float, float] | None = None,
) -> Imagery:
    """Open raster files and/or XYZ tile folders as one mosaic (first valid pixel wins).

    ``bands`` (1-based, one or three) and ``value_range`` apply to every raster source.
    Raises InputError for a missing or unreadable source, a raster without CRS, a folder with no
    XYZ tiles, or bands the raster does not have.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    if not sources:
        raise InputError("no imagery source given")
    if value_range is not None and not float(value_range[1]) > float(value_range[0]):
        raise InputError(f"imagery value_range must be (low, high) with low < high: {value_range}")
    opened: list[Imagery] = []
    for source in sources:
        path = Path(source).expanduser()
        if not path.exists():
            raise InputError(f"imagery source not found: {path}")
        if path.is_dir():
            opened.append(XYZImagery(path))
        else:
            opened.append(RasterImagery(path, bands=bands, value_range=value_range))
    return opened[0] if len(opened) == 1 else MosaicImagery(opened)


class MosaicImagery(Imagery):
    """Several sources; each pixel comes from the first source that has valid data there."""

    def __init__(self, sources: Sequence[Imagery]) -> None:
        self.sources = list(sources)
        bounds = np.array([s.bounds_lonlat for s in self.sources])
        self._set_bounds(*bounds[:, :2].min(axis=0), *bounds[:, 2:].max(axis=0))

    def _read_layer(self, z: int, x: int, y: int, size: int) -> Layer | None:
        rgb = valid = None
        for source in self.sources:
            if not source._overlaps(z, x, y):
                continue
            layer = source._read_layer(z, x, y, size)
            if layer is None:
                continue
            if rgb is None or valid is None:
                rgb, valid = layer
            else:
                _fill(rgb, valid, *layer)
            if valid.all():
                break
        return None if rgb is None or valid is None else (rgb, valid)

    def close(self) -> None:
        for source in self.sources:
            source.close()


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
                raise InputError(f"{self.path}: cannot read raster ({_one_line(exc)})") from None
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
        n = min(_CONTROL_POINTS, size)
        centres = np.linspace(0.5, size - 0.5, n)
        assert self._to_src is not None
        sx, sy = self._to_src.transform(*np.meshgrid(left + centres * res, top - centres * res))
        inv = ~ds.transform
        return np.stack([inv.a * sx + inv.b * sy + inv.c, inv.d * sx + inv.e * sy + inv.f])

    def _read_layer(self, z: int, x: int, y: int, size: int) -> Layer | None:
        try:
            return self._warp(z, x, y, size)
        except RasterioError as exc:
            raise InputError(f"{self.path}: cannot read raster ({_one_line(exc)})") from None

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
        cols, rows = _upsample_grid(grid.astype(np.float32), size)
        out, valid = _bilinear(data, mask, cols, rows)
        if self.stretch is not None:
            low, high = self.stretch
            out -= low[:, None, None]
            out *= (255.0 / (high - low))[:, None, None]
        out += np.float32(0.5)  # round to nearest by the truncating cast below
        rgb = _clamp(out, 255.0).astype(np.uint8)
        rgb = np.ascontiguousarray(np.moveaxis(rgb, 0, -1))
        if rgb.shape[-1] == 1:
            rgb = np.repeat(rgb, 3, axis=-1)
        return rgb, valid


class XYZImagery(Imagery):
    """A folder of XYZ tiles ``ROOT/{z}/{x}/{y}.{png,jpg,jpeg,webp}`` (Web-Mercator, y from north).

    Opening scans the folder once for its zoom levels and the tile range of each (nothing is
    kept per tile, so huge pyramids cost no memory); reads then look files up by name.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.levels: dict[int, tuple[int, int, int, int]] = {}  # z -> x0, x1, y0, y1 inclusive
        suffix_counts: dict[str, int] = {}
        name = re.compile(r"^(\d+)(\.(?:png|jpe?g|webp))$", re.IGNORECASE)
        for z_dir in _numeric_dirs(self.root):
            z = int(z_dir.name)
            if z > 30:
                continue
            xs, ys = [], []
            for x_dir in _numeric_dirs(z_dir):
                x = int(x_dir.name)
                if x >= 1 << z:
                    continue
                for entry in os.scandir(x_dir):
                    match = name.match(entry.name)
                    if match and int(match[1]) < 1 << z and entry.is_file():
                        xs.append(x)
                        ys.append(int(match[1]))
                        suffix_counts[match[2]] = suffix_counts.get(match[2], 0) + 1
            if xs:
                self.levels[z] = (min(xs), max(xs), min(ys), max(ys))
        if not self.levels:
            raise InputError(
                f"{self.root}: no XYZ tiles found (expected {self.root}/Z/X/Y.png|jpg|jpeg|webp)"
            )
        self.suffixes = tuple(sorted(suffix_counts, key=suffix_counts.__getitem__, reverse=True))
        west, south, east, north = 180.0, 90.0, -180.0, -90.0
        for z, (x0, x1, y0, y1) in self.levels.items():
            w, _, _, n = _tile_lonlat(z, x0, y0)
            _, s, e, _ = _tile_lonlat(z, x1, y1)
            west, south, east, north = min(west, w), min(south, s), max(east, e), max(north, n)
        self._set_bounds(west, south, east, north)

    def __repr__(self) -> str:
        return f"XYZImagery({str(self.root)!r}, zooms={sorted(self.levels)})"

    def _find(self, z: int, x: int, y: int) -> Path | None:
        level = self.levels.get(z)
        if level is None or not (level[0] <= x <= level[1] and level[2] <= y <= level[3]):
            return None
        for suffix in self.suffixes:
            path = self.root / str(z) / str(x) / f"{y}{suffix}"
            if path.is_file():
                return path
        return None

    def _read_layer(self, z: int, x: int, y: int, size: int) -> Layer | None:
        rgb = np.zeros((size, size, 3), np.uint8)
        valid = np.zeros((size, size), bool)
        # this zoom, then finer levels (more detail), then coarser ones; > 0 = children
        depths = [0]
        depths += [d for d in range(1, MAX_CHILD_LEVELS + 1) if z + d in self.levels]
        depths += [-d for d in range(1, MAX_PARENT_LEVELS + 1) if z - d in self.levels]
        for depth in depths:
            if depth >= 0:
                layer = self._from_children(z, x, y, depth, size)
            else:
                layer = self._from_parent(z, x, y, -depth, size)
            if layer is not None:
                _fill(rgb, valid, *layer)
                if valid.all():
                    break
        return (rgb, valid) if valid.any() else None

    def _from_children(self, z: int, x: int, y: int, depth: int, size: int) -> Layer | None:
        """Mosaic the 4**depth descendants at ``z + depth`` (depth 0: the tile itself)."""
        n = 1 << depth
        found = [
            (i, j, path)
            for j in range(n)
            for i in range(n)
            if (path := self._find(z + depth, x * n + i, y * n + j)) is not None
        ]
        if not found:
            return None
        if depth == 0:
            return _to_layer(_resize(_load(found[0][2]), size))
        first = _load(found[0][2])
        cell = first.size[0]
        canvas = Image.new("RGBA", (n * cell, n * cell))
        for k, (i, j, path) in enumerate(found):
            image = first if k == 0 else _load(path)
            if image.size != (cell, cell):
                image = image.resize((cell, cell), Image.Resampling.BILINEAR)
            canvas.paste(image, (i * cell, j * cell))
        return _to_layer(_resize(canvas, size))

    def _from_parent(self, z: int, x: int, y: int, depth: int, size: int) -> Layer | None:
        """Crop the ancestor at ``z - depth`` to this tile and upsample it."""
        path = self._find(z - depth, x >> depth, y >> depth)
        if path is None:
            return None
        image = _load(path)
        n = 1 << depth
        cw, ch = image.size[0] / n, image.size[1] / n
        i, j = x - ((x >> depth) << depth), y - ((y >> depth) << depth)
        box = (i * cw, j * ch, (i + 1) * cw, (j + 1) * ch)
        return _to_layer(image.resize((size, size), Image.Resampling.BILINEAR, box=box))


# -- helpers ----------------------------------------------------------------------------------


def _check_tile(z: int, x: int, y: int, size: int) -> None:
    if not (0 <= z <= 30 and 0 <= x < 1 << z and 0 <= y < 1 << z):
        raise ValueError(f"not an XYZ tile: {z}/{x}/{y}")
    if size < 1:
        raise ValueError(f"tile image size must be positive, got {size}")


def _fill(rgb: np.ndarray, valid: np.ndarray, new_rgb: np.ndarray, new_valid: np.ndarray) -> None:
    """Copy the new layer's valid pixels into the still-invalid pixels, in place."""
    take = new_valid & ~valid
    np.copyto(rgb, new_rgb, where=take[..., None])  # ~10x faster than boolean indexing
    valid |= take


def _upsample_grid(grid: np.ndarray, size: int) -> np.ndarray:
    """Linearly interpolate [C, n, n] evenly spaced samples onto [C, size, size] points.

    Elementwise on purpose: a BLAS matmul here spawns threads that fight the worker processes.
    """
    n = grid.shape[-1]
    if n == 1:
        return np.broadcast_to(grid, (*grid.shape[:-2], size, size)).copy()
    t = np.arange(size) * ((n - 1) / max(size - 1, 1))
    k = np.minimum(t.astype(np.intp), n - 2)
    f = (t - k).astype(grid.dtype)
    g = 1 - f
    cols = np.take(grid, k, axis=-1) * g + np.take(grid, k + 1, axis=-1) * f
    return np.take(cols, k, axis=-2) * g[:, None] + np.take(cols, k + 1, axis=-2) * f[:, None]


def _bilinear(
    data: np.ndarray, mask: np.ndarray, cols: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``data`` [B, h, w] at float32 array coordinates (pixel centres at i + 0.5).

    Invalid or outside neighbours get no weight and the rest are renormalised; an output pixel
    is valid when the source pixel under it is, which puts a nodata or raster edge exactly
    where it is in the source. Returns float32 [B, H, W] and bool [H, W].
    """
    bands, h, w = data.shape
    # Common case first: every neighbour exists and is valid, so no weights need checking.
    plain = bool(
        mask.all()
        and min(cols.min(), rows.min()) >= 0.5
        and cols.max() < w - 0.5
        and rows.max() < h - 0.5
    )
    if plain:
        stride, shift, flat_weights = w, np.float32(-0.5), None
        flat = data.reshape(bands, -1)
    else:
        # One invalid pixel of padding on every side keeps every neighbour index in range.
        stride, shift = w + 2, np.float32(0.5)
        padded = np.zeros((bands, h + 2, stride), data.dtype)
        padded[:, 1:-1, 1:-1] = data
        if data.dtype.kind == "f":
            padded[:, 1:-1, 1:-1][:, ~mask] = 0  # NaN times a zero weight would still be NaN
        weights = np.zeros((h + 2, stride), np.float32)
        weights[1:-1, 1:-1] = mask
        flat, flat_weights = padded.reshape(bands, -1), weights.ravel()
    # (all in float32: a float64 promotion here doubles the cost of the whole function)
    fx, fy = cols.ravel() + shift, rows.ravel() + shift
    if not plain:
        fx, fy = _clamp(fx, w + 0.999), _clamp(fy, h + 0.999)
    x0, y0 = np.floor(fx), np.floor(fy)
    wx, wy = fx - x0, fy - y0
    corner = y0.astype(np.intp) * stride + x0.astype(np.intp)
    acc = np.zeros((bands, fx.size), np.float32)
    total = np.zeros(fx.size, np.float32)
    for offset, wk in (
        (0, (1 - wx) * (1 - wy)),
        (1, wx * (1 - wy)),
        (stride, (1 - wx) * wy),
        (stride + 1, wx * wy),
    ):
        index = corner + offset
        if flat_weights is not None:
            wk *= np.take(flat_weights, index)
            total += wk
        for b in range(bands):  # 1-D take is several times faster than 2-D fancy indexing
            acc[b] += np.take(flat[b], index) * wk
    if flat_weights is None:
        return acc.reshape(bands, *cols.shape), np.ones(cols.shape, bool)
    # valid iff the source pixel under the sample point is: edges stay where they are
    nearest = corner + (wx >= 0.5) + stride * (wy >= 0.5)
    valid = np.take(flat_weights, nearest) > 0
    acc /= np.maximum(total, np.float32(1e-6))
    return acc.reshape(bands, *cols.shape), valid.reshape(cols.shape)


def _clamp(values: np.ndarray, high: float) -> np.ndarray:
    """Clamp to [0, high] in place (np.clip is several times slower on small float32 arrays)."""
    np.maximum(values, np.float32(0.0), out=values)
    return np.minimum(values, np.float32(high), out=values)


def _one_line(exc: BaseException) -> str:
    """First line of the most specific message (GDAL's own reason is often the cause)."""
    while exc.__cause__ is not None and str(exc.__cause__).strip():
        exc = exc.__cause__
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _open_raster(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioError as exc:
        raise InputError(f"{path}: not a readable raster ({_one_line(exc)})") from None


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


def _tile_lonlat(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    west, south, east, north = tile_bounds_lonlat(z, np.array(x), np.array(y))
    return float(west), float(south), float(east), float(north)


def _numeric_dirs(folder: Path) -> list[Path]:
    return [Path(e.path) for e in os.scandir(folder) if e.name.isdigit() and e.is_dir()]


def _load(path: Path) -> Image.Image:
    """The tile as RGB, or RGBA when it can be transparent (opaque tiles skip alpha work)."""
    try:
        with Image.open(path) as image:
            transparent = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            return image.convert("RGBA" if transparent else "RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"{path}: unreadable image tile ({_one_line(exc)})") from None


def _resize(image: Image.Image, size: int) -> Image.Image:
    # Pillow resizes RGBA premultiplied, so transparent pixels do not darken their neighbours.
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.BILINEAR)


def _to_layer(image: Image.Image) -> Layer:
    array = np.asarray(image)
    if image.mode == "RGB":
        return np.array(array), np.ones(array.shape[:2], bool)
    return np.array(array[..., :3]), array[..., 3] >= 128
