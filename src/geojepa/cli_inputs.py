"""What the command line reads before calling the API: `prepare`'s config (a bbox, a polygon
file), the train tiles of a split file, and the split that `geojepa split`'s options ask for.

Kept apart from `geojepa.cli`, whose command signatures are the help text, so that each reads
as a list of commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from geojepa.constants import REGIONS_INDEX
from geojepa.errors import ConfigError, InputError

if TYPE_CHECKING:
    import pandas as pd

    from geojepa.data.config import PrepareConfig


def prepare_config(
    bbox: str | None, polygon: Path | None, **options: int | str | bool
) -> PrepareConfig:
    """The `PrepareConfig` of `geojepa prepare`'s options (``--bbox W,S,E,N``, ``--polygon``
    file; the other options by their config names)."""
    from geojepa.data.config import PrepareConfig

    area = {
        "bbox": parse_bbox(bbox) if bbox else None,
        "polygon_wkt": read_polygon(polygon) if polygon else None,
    }
    return PrepareConfig.from_dict({**options, **area})


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    try:
        parts = tuple(float(v) for v in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4:
        raise ConfigError(f"--bbox must be W,S,E,N (four numbers), got {text!r}")
    return parts  # type: ignore[return-value]


def read_polygon(path: Path) -> str:
    """WKT (EPSG:4326) of the area in a .wkt file or any vector file geopandas reads (GeoJSON,
    GeoPackage, Shapefile, ...): the union of its geometries, reprojected; no CRS = EPSG:4326."""
    import shapely

    if not path.exists():
        raise InputError(f"polygon file not found: {path}")
    try:
        geom = shapely.from_wkt(path.read_text().strip())
    except (OSError, UnicodeDecodeError, shapely.errors.ShapelyError):
        import geopandas as gpd

        try:
            frame = gpd.read_file(path)
        except Exception as exc:  # pyogrio/GDAL raise many types; all mean "cannot read"
            raise InputError(f"cannot read {path} as WKT or a vector file ({exc})") from None
        if frame.crs is not None:
            frame = frame.to_crs(4326)
        geom = frame.geometry.union_all() if len(frame) else None
    if geom is None or geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon"):
        kind = "nothing" if geom is None or geom.is_empty else geom.geom_type
        raise InputError(f"{path} holds {kind}, not a polygon area")
    return geom.wkt


def train_tiles(dataset: Path, split: Path) -> list[str]:
    """The train-block tiles of ``dataset`` in the split file (every tile must be in it)."""
    from geojepa.data.reader import open_dataset
    from geojepa.eval.split import load_split, tiles_in

    ids = open_dataset(dataset).read_tiles(columns=[REGIONS_INDEX]).column(REGIONS_INDEX)
    return tiles_in(load_split(split), ids.to_pylist(), "train")


def split_frame(
    dataset: list[Path] | None,
    fractions: str,
    block_zoom: int,
    seed: int,
    search_from: Path | None,
    from_split: Path | None,
    label_fraction: float,
) -> pd.DataFrame:
    """The split `geojepa split` writes: made from datasets' tiles, derived for a recipe search
    (``--search-from``) or read (``--from``), then labelled on a share of its train tiles."""
    from geojepa.data.reader import open_dataset
    from geojepa.eval.split import SplitConfig, label_subset, load_split, make_split, search_split

    if search_from is not None and from_split is not None:
        raise ConfigError("give --from or --search-from, not both")
    if (search_from or from_split) is not None and dataset:
        raise ConfigError("--from/--search-from derive from a split file: drop --dataset")
    if search_from is not None:
        frame = search_split(load_split(search_from), seed=seed)
    elif from_split is not None:
        frame = load_split(from_split)
    else:
        if not dataset:
            raise ConfigError("give --dataset (repeatable), --from SPLIT or --search-from SPLIT")
        try:
            shares = tuple(float(v) for v in fractions.split(","))
        except ValueError:
            shares = ()
        if len(shares) != 3:
            raise ConfigError(
                f"--fractions must be three numbers train,val,test, got {fractions!r}"
            )
        config = SplitConfig.from_dict(
            {"block_zoom": block_zoom, "fractions": shares, "seed": seed}
        )
        ids = [
            rid
            for path in dataset
            for rid in open_dataset(path)
            .read_tiles(columns=[REGIONS_INDEX])
            .column(REGIONS_INDEX)
            .to_pylist()
        ]
        frame = make_split(ids, config)
    if label_fraction != 1.0:
        frame = label_subset(frame, label_fraction, seed=seed)
    return frame
