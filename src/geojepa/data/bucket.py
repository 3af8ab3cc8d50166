"""Step 2 of `prepare`, per batch of elements: decode and filter tags, close area ways, clean
coordinates, reproject to Web-Mercator, repair, and append each element to the bucket of every
shard its bounds touch (an Arrow IPC file, or memory for small inputs). An element far larger
than the data (`MAX_SHARD_CELLS`) is written once and joins only the shards other data fills.

Takes a `RawBatch` (`data/osm.py`, `data/features.py`); gives counts for the manifest.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import shapely

from geojepa.data import schema
from geojepa.data.arrow import buffer_array, bytes_array, tags_array
from geojepa.data.config import PrepareConfig
from geojepa.data.osm import RawBatch
from geojepa.data.tags import TagFilter, decode_tags, is_area
from geojepa.data.tiling import (
    MAX_LAT,
    lonlat_to_merc,
    lonlat_to_tile_index,
    merc_to_tile_index,
    tile_origin,
    tile_size,
)
from geojepa.errors import InputError

#: An element whose bounds span more shard cells than this (tiles at ``zoom - shard_levels``;
#: 64 x 64 cells, ~150 km a side at z17) is not cut into every cell it spans: it joins only the
#: shards that other data fills. Cutting a polygon of the whole world into every z17 tile took
#: 4.4 GB within 80 s and would never end; a country's boundary spans ~140,000 cells at z17.
MAX_SHARD_CELLS = 4096

_BUCKET_SCHEMA = pa.schema(
    [
        pa.field("feature_id", pa.string()),
        pa.field("tags", schema.TAGS_TYPE),
        pa.field("geometry", pa.binary()),  # WKB, Web-Mercator metres
    ]
)


_FILTERS: dict[tuple, TagFilter] = {}


def _tag_filter(config: PrepareConfig) -> TagFilter:
    """One TagFilter per process and config, so its per-key cache is reused across batches."""
    key = (config.tag_filter, config.drop_keys, config.key_only)
    if key not in _FILTERS:
        _FILTERS[key] = TagFilter(config.tag_filter, config.drop_keys, config.key_only)
    return _FILTERS[key]


def _region_lonlat(config: PrepareConfig) -> shapely.Geometry | None:
    """The bbox/polygon filter in EPSG:4326 (intersection of both when both are given)."""
    region = None
    if config.bbox is not None:
        region = shapely.box(*config.bbox)
    if config.polygon_wkt is not None:
        poly = shapely.from_wkt(config.polygon_wkt)
        region = poly if region is None else shapely.intersection(region, poly)
    return region


def region_merc(config: PrepareConfig) -> shapely.Geometry | None:
    """The bbox/polygon filter in Web-Mercator."""
    region = _region_lonlat(config)
    if region is None:
        return None

    def fn(c: np.ndarray) -> np.ndarray:
        return np.column_stack(lonlat_to_merc(c[:, 0], c[:, 1]))

    return shapely.transform(region, fn)


def region_tile_range(config: PrepareConfig) -> tuple[int, int, int, int] | None:
    region = _region_lonlat(config)
    if region is None:
        return None
    if region.is_empty:
        raise InputError("the bbox and polygon filters do not overlap")
    west, south, east, north = region.bounds
    x0, y0 = lonlat_to_tile_index(config.zoom, np.array([west]), np.array([north]))
    x1, y1 = lonlat_to_tile_index(config.zoom, np.array([east]), np.array([south]))
    return int(x0[0]), int(x1[0]), int(y0[0]), int(y1[0])


def keep_dimension(geoms: np.ndarray, dims: np.ndarray) -> np.ndarray:
    """Per geometry, keep only parts of dimension ``dims`` (make_valid/clip may mix types)."""
    out = geoms.copy()
    for i, (g, d) in enumerate(zip(geoms, dims, strict=True)):
        if g is None or g.is_empty:
            continue
        parts = shapely.get_parts(g)
        keep = parts[shapely.get_dimensions(parts) == d]
        if len(keep) == len(parts) and g.geom_type != "GeometryCollection":
            continue
        if len(keep) == 0:
            out[i] = shapely.Point()  # empty: dropped by the caller
        elif len(keep) == 1:
            out[i] = keep[0]
        elif d == 0:
            out[i] = shapely.multipoints(keep)
        elif d == 1:
            out[i] = shapely.multilinestrings(keep)
        else:
            out[i] = shapely.union_all(keep)  # polygons may touch after make_valid
    return out


#: OSM's own limit on the length of a key or a value (characters); longer ones are cut to it.
MAX_TAG_CHARS = 255


def _clean_pairs(pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], int]:
    """Tags a vocabulary can hold, and how many needed fixing.

    Tables written by other tools may hold what OSM itself never does: empty keys (dropped),
    keys or values longer than 255 characters (cut), and lone UTF-16 surrogates that no Parquet
    file can store (replaced with U+FFFD).
    """
    out, fixed = [], 0
    for k, v in pairs:
        if not k:
            fixed += 1
            continue
        ok = len(k) <= MAX_TAG_CHARS and len(v) <= MAX_TAG_CHARS
        try:
            (k + v).encode("utf-8")
        except UnicodeEncodeError:
            ok = False
            k, v = (t.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for t in (k, v))
        if not ok:
            fixed += 1
            k, v = k[:MAX_TAG_CHARS], v[:MAX_TAG_CHARS]
        out.append((k, v))
    return out, fixed


#: Decoded OPL tag texts kept per process. The repeated ones (``building=yes``) are hit within a
#: few batches; beyond this the cache only grew with the input (benchmarks/prepare_memory.py).
TEXT_CACHE_MAX = 50_000


def _decode_batch_tags(
    batch: RawBatch, tf: TagFilter, idx: np.ndarray, stats: dict[str, Any]
) -> tuple[list, np.ndarray]:
    """Filtered tags of elements ``idx``, and whether their raw tags make a closed way an area.

    OPL tag texts repeat a lot (``building=yes``), so decoded results are cached per process.
    Tags of other sources are cleaned first (``stats["fixed_tags"]`` counts the fixes).
    """
    filtered: list[list[tuple[str, str | None]]] = [[] for _ in range(len(batch.tags))]
    area = np.zeros(len(batch.tags), bool)
    cache = tf.text_cache
    if len(cache) > TEXT_CACHE_MAX:
        cache.clear()
    opl = batch.tags_format == "opl"
    for i in idx.tolist():
        raw = batch.tags[i]
        if opl and isinstance(raw, str):
            hit = cache.get(raw)
            if hit is None:
                tags = tf.filter_opl(raw)
                hit = cache[raw] = (tags, is_area(tags))
            filtered[i], area[i] = hit
            continue
        try:
            pairs = decode_tags(raw)
        except (ValueError, TypeError) as exc:
            raise InputError(f"{batch.ids[i]}: tags are not a JSON object or map ({exc})") from None
        pairs, fixed = _clean_pairs(pairs)
        stats["fixed_tags"] += fixed
        filtered[i] = tf(pairs)
        area[i] = is_area(pairs)
    return filtered, area


def _to_merc(geoms: np.ndarray, crs: str | None) -> np.ndarray:
    if crs is None:

        def fn(c: np.ndarray) -> np.ndarray:
            return np.column_stack(lonlat_to_merc(c[:, 0], c[:, 1]))

        return shapely.transform(geoms, fn)
    import pyproj

    transformer = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)

    def fn2(c: np.ndarray) -> np.ndarray:
        lon, lat = transformer.transform(c[:, 0], c[:, 1])
        return np.column_stack(lonlat_to_merc(lon, lat))

    return shapely.transform(geoms, fn2)


@functools.lru_cache(maxsize=8)
def _in_degrees(crs: str) -> bool:
    """A geographic CRS in degrees: its coordinates are checked as EPSG:4326's are."""
    import pyproj

    parsed = pyproj.CRS.from_user_input(crs)
    units = {axis.unit_name for axis in parsed.axis_info}
    return parsed.is_geographic and units <= {"degree"}


def _sane_coordinates(geoms: np.ndarray, crs: str | None, stats: dict[str, Any]) -> np.ndarray:
    """Mask of geometries whose coordinates can be tiled; the others are counted, not fatal.

    Non-finite or out-of-range coordinates count as ``bad_coordinates``; latitudes beyond the
    Web-Mercator limit (±85.05°), which no XYZ tile covers, as ``beyond_mercator`` (they used to
    be clamped into the edge tiles). A projected CRS whose numbers all look like degrees is
    refused: it would put every feature into the one tile at (0, 0).
    """
    b = shapely.bounds(geoms)
    finite = np.isfinite(b).all(axis=1)
    if crs is None or _in_degrees(crs):  # EPSG:4326, or another geographic CRS (e.g. NAD83)
        in_range = (b[:, 0] >= -180) & (b[:, 2] <= 180) & (b[:, 1] >= -90) & (b[:, 3] <= 90)
        bad = ~(finite & in_range)
        beyond = ~bad & ((b[:, 1] < -MAX_LAT) | (b[:, 3] > MAX_LAT))
    else:
        bad = ~finite
        beyond = np.zeros(len(geoms), bool)
        fb = b[finite]
        degrees = (np.abs(fb[:, [0, 2]]) <= 180).all() and (np.abs(fb[:, [1, 3]]) <= 90).all()
        if len(fb) >= 10 and degrees and np.ptp(fb[:, [0, 2]]) > 1e-3:
            raise InputError(
                "the features' coordinates all lie within ±180/±90, which look like degrees, "
                "but the table declares a projected CRS; write it with EPSG:4326 (or fix the "
                "coordinates)"
            )
    stats["bad_coordinates"] += int(bad.sum())
    stats["beyond_mercator"] += int(beyond.sum())
    return ~(bad | beyond)


def bucket_batch(
    batch: RawBatch,
    bucket_dir: Path,
    config: PrepareConfig,
    memory: dict[str, tuple[pa.Table, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Step 2 for one batch: returns counts and the Mercator bounds of what it kept.

    ``memory``: in-process runs keep the bucket there (keyed by its would-be file name), as
    (table without geometry, shapely geometries), instead of an Arrow IPC file; only used for
    small inputs, where the whole input fits in memory.
    """
    stats = {"read": len(batch), "kept": 0, "untagged": 0, "repaired": 0, "skipped": 0}
    stats.update({"bad_wkb": 0, "outside": 0, "bad_coordinates": 0, "beyond_mercator": 0,
                  "fixed_tags": 0, "bounds": None, "parents": {},
                  "spread_limited": []})  # fmt: skip
    if not len(batch):
        return stats
    tf = _tag_filter(config)
    geoms, ok = _parse_geometries(batch, stats)
    rng = region_tile_range(config)
    if rng is not None and batch.crs is None:
        _drop_outside_lonlat(geoms, ok, config.zoom, rng, stats)
    tags, area_tags = _decode_batch_tags(batch, tf, np.flatnonzero(ok), stats)
    has_tags = np.fromiter((len(t) > 0 for t in tags), bool, len(tags))
    stats["untagged"] = int((ok & ~has_tags).sum())
    ok &= has_tags
    if batch.from_osm:  # closed ways with area tags become polygons
        _close_area_ways(geoms, ok, area_tags)

    keep, g = _clean_in_mercator(geoms, np.flatnonzero(ok), batch.crs, stats)
    keep, g, b, (tx0, tx1, ty0, ty1) = _tile_spans(keep, g, config, rng, stats)
    stats["kept"] = len(keep)
    if not len(keep):
        return stats
    stats["bounds"] = [float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()),
                       float(b[:, 3].max())]  # fmt: skip

    z = config.zoom
    px, py, rep, spread = _shard_rows(g, tx0, tx1, ty0, ty1, z, config.shard_levels)
    rows = np.concatenate([rep, spread])  # a huge element once, after the rows of the shards
    path = _write_bucket(batch, keep, tags, g, rows, bucket_dir, memory)
    cuts = np.flatnonzero((np.diff(px) != 0) | (np.diff(py) != 0)) + 1
    stats["parents"] = {
        (int(px[lo]), int(py[lo])): (str(path), int(lo), int(hi))
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(rep)], strict=True)
        if hi > lo
    }
    stats["spread_limited"] = [
        (str(path), len(rep) + k, *map(int, (tx0[i], tx1[i], ty0[i], ty1[i])))
        for k, i in enumerate(spread)
    ]
    return stats


def _parse_geometries(batch: RawBatch, stats: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The batch's geometries parsed from WKB, and which are readable and not empty."""
    raw = batch.geoms
    if raw and isinstance(raw[0], str):  # pyosmium's hex WKB: GEOS parses hex ~5x slower
        raw = [bytes.fromhex(h) for h in raw]
    geoms = shapely.from_wkb(np.asarray(raw, dtype=object), on_invalid="ignore")
    ok = ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)
    stats["bad_wkb"] = int((~ok).sum())
    return geoms, ok


def _drop_outside_lonlat(
    geoms: np.ndarray,
    ok: np.ndarray,
    zoom: int,
    rng: tuple[int, int, int, int],
    stats: dict[str, Any],
) -> None:
    """Clear ``ok`` (in place) where lon/lat bounds miss the filter's tile range ``rng``.

    A cheap pre-filter, so that the tags of elements outside the area are never decoded.
    """
    b = shapely.bounds(geoms[ok])
    x0, y0 = lonlat_to_tile_index(zoom, b[:, 0], b[:, 3])
    x1, y1 = lonlat_to_tile_index(zoom, b[:, 2], b[:, 1])
    near = (x1 >= rng[0]) & (x0 <= rng[1]) & (y1 >= rng[2]) & (y0 <= rng[3])
    stats["outside"] += int((~near).sum())
    ok[np.flatnonzero(ok)[~near]] = False


def _close_area_ways(geoms: np.ndarray, ok: np.ndarray, area_tags: np.ndarray) -> None:
    """Turn closed OSM ways whose tags make them areas into polygons, in place."""
    lines = ok & (shapely.get_type_id(geoms) == 1)
    cand = np.flatnonzero(lines & shapely.is_closed(geoms))
    cand = cand[shapely.get_num_coordinates(geoms[cand]) >= 4]
    cand = cand[area_tags[cand]]
    if len(cand):
        coords, idx = shapely.get_coordinates(geoms[cand], return_index=True)
        geoms[cand] = shapely.polygons(shapely.linearrings(coords, indices=idx))


def _clean_in_mercator(
    geoms: np.ndarray, keep: np.ndarray, crs: str | None, stats: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Elements ``keep`` with sane coordinates, in Web-Mercator, repaired where invalid.

    Returns the surviving element indices and their geometries; the rest are counted.
    """
    sane = _sane_coordinates(geoms[keep], crs, stats)
    keep = keep[sane]
    g = _to_merc(geoms[keep], crs)
    dims = shapely.get_dimensions(g)
    invalid = np.flatnonzero(~shapely.is_valid(g))
    if len(invalid):
        # a NaN inside a line makes it invalid (bounds skip NaNs): GEOS cannot repair it
        coords, owner = shapely.get_coordinates(g[invalid], return_index=True)
        nan = np.zeros(len(invalid), bool)
        np.logical_or.at(nan, owner, ~np.isfinite(coords).all(axis=1))
        if nan.any():
            stats["bad_coordinates"] += int(nan.sum())
            g[invalid[nan]] = shapely.from_wkt("GEOMETRYCOLLECTION EMPTY")
            invalid = invalid[~nan]
    if len(invalid):
        fixed = keep_dimension(shapely.make_valid(g[invalid]), dims[invalid])
        g[invalid] = fixed
        good = ~shapely.is_empty(fixed)
        stats["repaired"] = int(good.sum())
        stats["skipped"] = int((~good).sum())
    alive = ~shapely.is_empty(g)
    unmappable = alive & ~np.isfinite(shapely.bounds(g)).all(axis=1)  # outside the CRS's area
    stats["bad_coordinates"] += int(unmappable.sum())
    alive &= ~unmappable
    return keep[alive], g[alive]


def _tile_spans(
    keep: np.ndarray,
    g: np.ndarray,
    config: PrepareConfig,
    rng: tuple[int, int, int, int] | None,
    stats: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """Each element's bounds and tile range (tx0, tx1, ty0, ty1), cut to the filter area.

    Elements that miss the bbox/polygon are dropped (and counted); returns (keep, g, bounds,
    tile range) of the others.
    """
    z = config.zoom
    b = shapely.bounds(g)
    tx0, ty0 = merc_to_tile_index(z, b[:, 0], b[:, 3])
    tx1, ty1 = merc_to_tile_index(z, b[:, 2], b[:, 1])
    if rng is not None:
        rx0, rx1, ry0, ry1 = rng
        tx0, tx1 = np.maximum(tx0, rx0), np.minimum(tx1, rx1)
        ty0, ty1 = np.maximum(ty0, ry0), np.minimum(ty1, ry1)
        inside = (tx0 <= tx1) & (ty0 <= ty1)
        region = region_merc(config)
        inside &= shapely.intersects(g, region)
        stats["outside"] += int((~inside).sum())
        keep, g, b = keep[inside], g[inside], b[inside]
        tx0, tx1, ty0, ty1 = tx0[inside], tx1[inside], ty0[inside], ty1[inside]
    return keep, g, b, (tx0, tx1, ty0, ty1)


def _write_bucket(
    batch: RawBatch,
    keep: np.ndarray,
    tags: list,
    g: np.ndarray,
    rows: np.ndarray,
    bucket_dir: Path,
    memory: dict[str, tuple[pa.Table, np.ndarray]] | None,
) -> Path:
    """Write elements ``keep`` (geometries ``g``) in the order of ``rows``; returns the
    bucket's path (its key in ``memory`` when the bucket stays in memory)."""
    columns = {
        "feature_id": bytes_array([batch.ids[i] for i in keep], pa.string()),
        "tags": tags_array([tags[i] for i in keep]),
    }
    path = bucket_dir / f"batch-{batch.index:06d}.arrow"
    take = buffer_array(rows, pa.int64())
    if memory is not None:  # geometries stay shapely objects: no WKB round trip
        memory[str(path)] = (pa.table(columns).take(take), g[rows])
    else:
        columns["geometry"] = bytes_array(shapely.to_wkb(g).tolist())
        table = pa.table(columns, schema=_BUCKET_SCHEMA).take(take)
        tmp = path.with_name(f".{path.name}.tmp")
        with pa.ipc.new_file(tmp, table.schema) as sink:
            sink.write_table(table)
        tmp.replace(path)
    return path


def _shard_rows(
    g: np.ndarray,
    tx0: np.ndarray,
    tx1: np.ndarray,
    ty0: np.ndarray,
    ty1: np.ndarray,
    z: int,
    lv: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(shard x, shard y, element) for each shard cell an element meets, sorted by cell, and
    the elements spanning more than `MAX_SHARD_CELLS` cells (placed by `spread_huge`)."""
    px0, px1, py0, py1 = tx0 >> lv, tx1 >> lv, ty0 >> lv, ty1 >> lv
    nx, ny = px1 - px0 + 1, py1 - py0 + 1
    huge = nx * ny > MAX_SHARD_CELLS
    nx, ny = np.where(huge, 0, nx), np.where(huge, 0, ny)
    rep = np.repeat(np.arange(len(g)), nx * ny)
    local = np.arange(len(rep)) - np.repeat(np.cumsum(nx * ny) - nx * ny, nx * ny)
    px = px0[rep] + local % nx[rep]
    py = py0[rep] + local // nx[rep]
    multi = np.flatnonzero((nx * ny)[rep] > 1)
    if len(multi):  # an element whose bounds span shards goes only to those it really meets
        left, top = tile_origin(z - lv, px[multi], py[multi])
        size = tile_size(z - lv)
        squares = shapely.box(left, top - size, left + size, top)
        meets = shapely.intersects(g[rep[multi]], squares)
        drop = multi[~meets]
        px, py, rep = np.delete(px, drop), np.delete(py, drop), np.delete(rep, drop)
    order = np.lexsort((rep, py, px))
    return px[order], py[order], rep[order], np.flatnonzero(huge)


def spread_huge(
    pieces: dict[tuple[int, int], list[tuple[str, int, int]]],
    huge: list[tuple[str, int, int, int, int, int]],
    shard_levels: int,
) -> None:
    """Add each huge element (bucket file, row, its tile range) to the shards that other data
    fills and its range meets, in place; the shard step clips it to their tiles only."""
    for path, row, tx0, tx1, ty0, ty1 in huge:
        x0, x1, y0, y1 = (v >> shard_levels for v in (tx0, tx1, ty0, ty1))
        for px, py in pieces:
            if x0 <= px <= x1 and y0 <= py <= y1:
                pieces[(px, py)].append((path, row, row + 1))
