"""The shape every imagery source shares: `Imagery` (tile → RGB image + coverage), the
`MosaicImagery` of several sources (first valid pixel wins), and the settings of all sources.

See `geojepa.data.imagery` for what the sources read and how.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geojepa.data.tiling import lonlat_to_merc, tile_origin, tile_size

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
CONTROL_POINTS = 17

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
        check_tile(z, x, y, size)
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
                fill_layer(rgb, valid, *layer)
            if valid.all():
                break
        return None if rgb is None or valid is None else (rgb, valid)

    def close(self) -> None:
        for source in self.sources:
            source.close()


def check_tile(z: int, x: int, y: int, size: int) -> None:
    if not (0 <= z <= 30 and 0 <= x < 1 << z and 0 <= y < 1 << z):
        raise ValueError(f"not an XYZ tile: {z}/{x}/{y}")
    if size < 1:
        raise ValueError(f"tile image size must be positive, got {size}")


def fill_layer(
    rgb: np.ndarray, valid: np.ndarray, new_rgb: np.ndarray, new_valid: np.ndarray
) -> None:
    """Copy the new layer's valid pixels into the still-invalid pixels, in place."""
    take = new_valid & ~valid
    np.copyto(rgb, new_rgb, where=take[..., None])  # ~10x faster than boolean indexing
    valid |= take


def first_line(exc: BaseException) -> str:
    """First line of the most specific message (GDAL's own reason is often the cause)."""
    while exc.__cause__ is not None and str(exc.__cause__).strip():
        exc = exc.__cause__
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
