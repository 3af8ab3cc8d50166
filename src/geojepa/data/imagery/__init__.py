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

from collections.abc import Sequence
from pathlib import Path

from geojepa.errors import ConfigError, InputError
from geojepa.optional import missing_message

try:  # an optional extra: only `prepare --imagery` needs GDAL
    import rasterio  # noqa: F401
except ImportError:
    raise ConfigError(missing_message("aerial imagery", "rasterio", "imagery")) from None

from geojepa.data.imagery.base import (
    DEFAULT_SIZE,
    MAX_CHILD_LEVELS,
    MAX_PARENT_LEVELS,
    STRETCH_PERCENTILES,
    STRETCH_SAMPLE_SIDE,
    TILE_SUFFIXES,
    WEB_MERCATOR,
    Imagery,
    MosaicImagery,
    TileImage,
)
from geojepa.data.imagery.raster import RasterImagery
from geojepa.data.imagery.xyz import XYZImagery

__all__ = [
    "DEFAULT_SIZE",
    "MAX_CHILD_LEVELS",
    "MAX_PARENT_LEVELS",
    "STRETCH_PERCENTILES",
    "STRETCH_SAMPLE_SIDE",
    "TILE_SUFFIXES",
    "WEB_MERCATOR",
    "Imagery",
    "MosaicImagery",
    "RasterImagery",
    "TileImage",
    "XYZImagery",
    "open_imagery",
]


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
