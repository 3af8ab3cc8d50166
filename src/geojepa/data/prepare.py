"""`prepare_tiles`: OSM data (+ imagery) → a sharded tile dataset (layout: `data/schema.py`).

Stream, then shard:

1. *Read* (main process, in order): pyosmium streams tagged elements as WKB + raw tags
   (`data/osm.py`), or a features table is read in record batches (`data/features.py`).
2. *Bucket* (per batch): decode and filter tags, close area ways into polygons,
   reproject to Web-Mercator, repair invalid geometries, find the tiles each element's bounds
   touch, and append the element to a bucket per shard (the parent tile at
   ``zoom - shard_levels``). An element spanning several shards goes to each.
3. *Shard* (per shard): map each (element, tile) candidate into the tile's local
   frame, clip to the unit square (vectorised ``clip_by_rect``: a way through a tile without a
   vertex in it is kept, multi-part clips stay multi-part), drop candidates whose clip is
   empty, compute boxes, read imagery, and write the shard atomically.

Steps 2 and 3 run in a process pool with buckets in Arrow files on disk, so memory is bounded
by a batch in step 2 and by a shard in step 3, never by the input; with ``workers=0`` an input
estimated under ``INLINE_MAX_ELEMENTS`` is instead built in the calling process with its
buckets kept in memory (a pool's start-up and the file round trip cost more than they save
there; ``workers=1`` on a big input runs in-process with its buckets on disk). Finished shards
are skipped on a re-run with the same config and source; ``manifest.json`` and
``vocab.parquet`` are written last, from the shard files, so they are right after a resume.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely

from geojepa.data import schema
from geojepa.data.boxes import min_rotated_boxes
from geojepa.data.config import PrepareConfig
from geojepa.data.features import (
    is_features_file,
    iter_feature_file_batches,
    iter_geodataframe_batches,
)
from geojepa.data.osm import RawBatch, ReadStats, is_osm_file, iter_osm_batches
from geojepa.data.reader import TileDataset, dataset_kind, open_dataset
from geojepa.data.tags import TagFilter, decode_tags, is_area
from geojepa.data.tiling import (
    HALF_WORLD,
    MAX_LAT,
    lonlat_to_merc,
    lonlat_to_tile_index,
    merc_to_lonlat,
    merc_to_tile_index,
    tile_bounds_lonlat,
    tile_origin,
    tile_size,
)
from geojepa.errors import InputError, OutputError
from geojepa.io.atomic import OutputLock, write_json_atomic

_GC_THRESHOLD = 100_000  # allocations between young-generation collections during a build
WORK_DIR = ".work"  # scratch space inside the dataset, removed when the build completes
SOURCE_FILE = ".source.json"  # source fingerprint of an unfinished build (resume checks it)
STATS_KEY = b"geojepa_shard_stats"
_TYPE_NAMES = np.array(
    [
        "Point",
        "LineString",
        "LinearRing",
        "Polygon",
        "MultiPoint",
        "MultiLineString",
        "MultiPolygon",
        "GeometryCollection",
    ]
)
_BUCKET_SCHEMA = pa.schema(
    [
        pa.field("feature_id", pa.string()),
        pa.field("tags", schema.TAGS_TYPE),
        pa.field("geometry", pa.binary()),  # WKB, Web-Mercator metres
    ]
)


# ----------------------------------------------------------------- Arrow without pandas
# ``pa.array`` and ``to_numpy`` import pandas on first use (pyarrow's pandas shim: ~0.3-0.4 s
# of CPU per process, a fifth of a small build). These build the same arrays from buffers.


_NUMPY_TYPES = {
    pa.int8(): np.int8,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.float32(): np.float32,
    pa.float64(): np.float64,
}


def _buffer_array(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """A fixed-width Arrow array (no nulls) viewing a numpy array of the matching dtype."""
    values = np.ascontiguousarray(values, dtype=_NUMPY_TYPES[type_])
    return pa.Array.from_buffers(type_, len(values), [None, pa.py_buffer(values)])


def _validity(valid: np.ndarray) -> pa.Buffer | None:
    if valid.all():
        return None
    return pa.py_buffer(np.packbits(valid, bitorder="little"))


def _bytes_array(items: list, type_: pa.DataType = pa.binary()) -> pa.Array:
    """A string (items: str or None) or binary (bytes or None) Arrow array."""
    if None in items:
        valid = np.array([v is not None for v in items], bool)
        chunks = [v for v in items if v is not None]
    else:
        valid, chunks = np.ones(len(items), bool), items
    if type_ == pa.string():
        text = "".join(chunks)
        if text.isascii():  # (almost always) one encode call; characters = bytes
            data = text.encode("ascii")
        else:
            chunks = [v.encode() for v in chunks]
            data = b"".join(chunks)
    else:
        data = b"".join(chunks)
    lengths = np.zeros(len(items), np.int64)
    lengths[valid] = np.fromiter(map(len, chunks), np.int64, len(chunks))
    offsets = np.zeros(len(items) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError("more than 2 GiB of data in one Arrow array")
    buffers = [_validity(valid), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)]
    return pa.Array.from_buffers(type_, len(items), buffers)


def _tags_array(tags: list[list[tuple[str, str | None]]]) -> pa.Array:
    """``schema.TAGS_TYPE`` array of filtered tags (value None = key kept, value dropped)."""
    counts = np.fromiter(map(len, tags), np.int64, len(tags))
    offsets = np.zeros(len(tags) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    pairs = [kv for t in tags for kv in t]
    keys = _bytes_array([k for k, _ in pairs], pa.string())
    items = _bytes_array([v for _, v in pairs], pa.string())
    return pa.MapArray.from_arrays(
        _buffer_array(offsets.astype(np.int32), pa.int32()), keys, items, type=schema.TAGS_TYPE
    )


def _numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-width numeric column as numpy (nulls as NaN, floats only), like ``to_numpy``."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dtype = np.dtype(_NUMPY_TYPES[arr.type])
    validity, data = arr.buffers()[:2]
    n, off = len(arr), arr.offset
    if data is None:
        out = np.zeros(n, dtype)
    else:
        out = np.frombuffer(data, dtype, count=n + off)[off:].copy()
    if arr.null_count:
        bits = np.unpackbits(np.frombuffer(validity, np.uint8), bitorder="little")
        out[~bits[off : off + n].astype(bool)] = np.nan
    return out


# --------------------------------------------------------------------------- step 2: bucket


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


def _region_merc(config: PrepareConfig) -> shapely.Geometry | None:
    """The bbox/polygon filter in Web-Mercator."""
    region = _region_lonlat(config)
    if region is None:
        return None

    def fn(c: np.ndarray) -> np.ndarray:
        return np.column_stack(lonlat_to_merc(c[:, 0], c[:, 1]))

    return shapely.transform(region, fn)


def _region_tile_range(config: PrepareConfig) -> tuple[int, int, int, int] | None:
    region = _region_lonlat(config)
    if region is None:
        return None
    if region.is_empty:
        raise InputError("the bbox and polygon filters do not overlap")
    west, south, east, north = region.bounds
    x0, y0 = lonlat_to_tile_index(config.zoom, np.array([west]), np.array([north]))
    x1, y1 = lonlat_to_tile_index(config.zoom, np.array([east]), np.array([south]))
    return int(x0[0]), int(x1[0]), int(y0[0]), int(y1[0])


def _keep_dimension(geoms: np.ndarray, dims: np.ndarray) -> np.ndarray:
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
    if len(cache) > 200_000:
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


def _sane_coordinates(geoms: np.ndarray, crs: str | None, stats: dict[str, Any]) -> np.ndarray:
    """Mask of geometries whose coordinates can be tiled; the others are counted, not fatal.

    Non-finite or out-of-range coordinates count as ``bad_coordinates``; latitudes beyond the
    Web-Mercator limit (±85.05°), which no XYZ tile covers, as ``beyond_mercator`` (they used to
    be clamped into the edge tiles). A projected CRS whose numbers all look like degrees is
    refused: it would put every feature into the one tile at (0, 0).
    """
    b = shapely.bounds(geoms)
    finite = np.isfinite(b).all(axis=1)
    if crs is None:
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
                  "fixed_tags": 0, "bounds": None, "parents": {}})  # fmt: skip
    if not len(batch):
        return stats
    tf = _tag_filter(config)
    raw = batch.geoms
    if raw and isinstance(raw[0], str):  # pyosmium's hex WKB: GEOS parses hex ~5x slower
        raw = [bytes.fromhex(h) for h in raw]
    geoms = shapely.from_wkb(np.asarray(raw, dtype=object), on_invalid="ignore")
    ok = ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)
    stats["bad_wkb"] = int((~ok).sum())
    rng = _region_tile_range(config)
    if rng is not None and batch.crs is None:
        # cheap pre-filter on lon/lat bounds, so tags outside the area are never decoded
        b = shapely.bounds(geoms[ok])
        x0, y0 = lonlat_to_tile_index(config.zoom, b[:, 0], b[:, 3])
        x1, y1 = lonlat_to_tile_index(config.zoom, b[:, 2], b[:, 1])
        near = (x1 >= rng[0]) & (x0 <= rng[1]) & (y1 >= rng[2]) & (y0 <= rng[3])
        stats["outside"] += int((~near).sum())
        ok[np.flatnonzero(ok)[~near]] = False
    tags, area_tags = _decode_batch_tags(batch, tf, np.flatnonzero(ok), stats)
    has_tags = np.fromiter((len(t) > 0 for t in tags), bool, len(tags))
    stats["untagged"] = int((ok & ~has_tags).sum())
    ok &= has_tags

    if batch.from_osm:  # closed ways with area tags become polygons
        lines = ok & (shapely.get_type_id(geoms) == 1)
        cand = np.flatnonzero(lines & shapely.is_closed(geoms))
        cand = cand[shapely.get_num_coordinates(geoms[cand]) >= 4]
        cand = cand[area_tags[cand]]
        if len(cand):
            coords, idx = shapely.get_coordinates(geoms[cand], return_index=True)
            geoms[cand] = shapely.polygons(shapely.linearrings(coords, indices=idx))

    keep = np.flatnonzero(ok)
    sane = _sane_coordinates(geoms[keep], batch.crs, stats)
    keep = keep[sane]
    g = _to_merc(geoms[keep], batch.crs)
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
        fixed = _keep_dimension(shapely.make_valid(g[invalid]), dims[invalid])
        g[invalid] = fixed
        good = ~shapely.is_empty(fixed)
        stats["repaired"] = int(good.sum())
        stats["skipped"] = int((~good).sum())
    alive = ~shapely.is_empty(g)
    unmappable = alive & ~np.isfinite(shapely.bounds(g)).all(axis=1)  # outside the CRS's area
    stats["bad_coordinates"] += int(unmappable.sum())
    alive &= ~unmappable
    keep, g = keep[alive], g[alive]

    z = config.zoom
    b = shapely.bounds(g)
    tx0, ty0 = merc_to_tile_index(z, b[:, 0], b[:, 3])
    tx1, ty1 = merc_to_tile_index(z, b[:, 2], b[:, 1])
    if rng is not None:
        rx0, rx1, ry0, ry1 = rng
        tx0, tx1 = np.maximum(tx0, rx0), np.minimum(tx1, rx1)
        ty0, ty1 = np.maximum(ty0, ry0), np.minimum(ty1, ry1)
        inside = (tx0 <= tx1) & (ty0 <= ty1)
        region = _region_merc(config)
        inside &= shapely.intersects(g, region)
        stats["outside"] += int((~inside).sum())
        keep, g, b = keep[inside], g[inside], b[inside]
        tx0, tx1, ty0, ty1 = tx0[inside], tx1[inside], ty0[inside], ty1[inside]
    stats["kept"] = len(keep)
    if not len(keep):
        return stats
    stats["bounds"] = [float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()),
                       float(b[:, 3].max())]  # fmt: skip

    lv = config.shard_levels
    px0, px1, py0, py1 = tx0 >> lv, tx1 >> lv, ty0 >> lv, ty1 >> lv
    nx, ny = px1 - px0 + 1, py1 - py0 + 1
    rep = np.repeat(np.arange(len(keep)), nx * ny)
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
    px, py, rep = px[order], py[order], rep[order]
    columns = {
        "feature_id": _bytes_array([batch.ids[i] for i in keep], pa.string()),
        "tags": _tags_array([tags[i] for i in keep]),
    }
    path = bucket_dir / f"batch-{batch.index:06d}.arrow"
    take = _buffer_array(rep, pa.int64())
    if memory is not None:  # geometries stay shapely objects: no WKB round trip
        memory[str(path)] = (pa.table(columns).take(take), g[rep])
    else:
        columns["geometry"] = _bytes_array(shapely.to_wkb(g).tolist())
        table = pa.table(columns, schema=_BUCKET_SCHEMA).take(take)
        tmp = path.with_name(f".{path.name}.tmp")
        with pa.ipc.new_file(tmp, table.schema) as sink:
            sink.write_table(table)
        tmp.replace(path)
    cuts = np.flatnonzero((np.diff(px) != 0) | (np.diff(py) != 0)) + 1
    stats["parents"] = {
        (int(px[lo]), int(py[lo])): (str(path), int(lo), int(hi))
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(rep)], strict=True)
    }
    return stats


# --------------------------------------------------------------------------- step 3: shard


@dataclass(frozen=True)
class ShardJob:
    """One shard: one or more neighbouring parent tiles and where their elements lie."""

    shard: int
    #: per parent tile (px, py): its bucket pieces (bucket file, first row, end row)
    parents: tuple[tuple[int, int, tuple[tuple[str, int, int], ...]], ...]
    output: Path


def _group_parents(
    pieces: dict[tuple[int, int], list[tuple[str, int, int]]], min_elements: int
) -> list[tuple[tuple[int, int], ...]]:
    """Pack parent tiles, in sorted order, into shards of at least ``min_elements`` rows.

    Big polygons reach many parent tiles that hold little else; one shard each would make
    many tiny files whose fixed costs dominate. Deterministic, so a resumed run agrees.
    """
    groups: list[tuple[tuple[int, int], ...]] = []
    current: list[tuple[int, int]] = []
    rows = 0
    for parent in sorted(pieces):
        current.append(parent)
        rows += sum(hi - lo for _, lo, hi in pieces[parent])
        if rows >= min_elements:
            groups.append(tuple(current))
            current, rows = [], 0
    if current:
        groups.append(tuple(current))
    return groups


def _cell_rect(zc: int, cx: int, cy: int) -> tuple[float, float, float, float]:
    """Mercator (xmin, ymin, xmax, ymax) of tile ``zc/cx/cy`` (plain floats: called often)."""
    size = 2.0 * HALF_WORLD / (1 << zc)
    left = -HALF_WORLD + cx * size
    top = HALF_WORLD - cy * size
    return left, top - size, left + size, top


#: the quadtree stops this many levels above the tiles; the rest is one vectorised local clip
_DIRECT_LEVELS = 2


def _clip_to_tiles(
    src: np.ndarray, px: int, py: int, config: PrepareConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clip every element to every tile of parent ``px, py`` it intersects.

    Returns (element index, tx, ty, clip in the tile's local frame). Elements whose bounds lie
    in one tile (all points, most buildings) need no clipping. The others descend a quadtree
    from the parent tile, one ``clip_by_rect`` call per cell, until cells are
    ``2**_DIRECT_LEVELS`` tiles wide: a big polygon is cut into ever smaller pieces instead of
    being clipped whole against each of thousands of tiles. Each piece is then mapped into the
    frame of every tile its bounds touch and all are clipped to the unit square in one call.
    Clips that only touch a tile's edge are empty or of lower dimension and are dropped.
    """
    z, lv = config.zoom, config.shard_levels
    dims = shapely.get_dimensions(src)
    b = shapely.bounds(src)
    tx0, ty0 = merc_to_tile_index(z, b[:, 0], b[:, 3])
    tx1, ty1 = merc_to_tile_index(z, b[:, 2], b[:, 1])
    x_lo, y_lo, span = px << lv, py << lv, 1 << lv
    single = (tx0 == tx1) & (ty0 == ty1)
    in_shard = (tx0 >= x_lo) & (tx0 < x_lo + span) & (ty0 >= y_lo) & (ty0 < y_lo + span)
    one = np.flatnonzero(single & in_shard)
    others = np.flatnonzero(~single)
    out_e, out_x, out_y = [one], [tx0[one]], [ty0[one]]
    out_g = [_to_local(src[one], z, tx0[one], ty0[one], clamp=True)]

    def clip(idx: np.ndarray, geoms: np.ndarray, rect: tuple) -> tuple[np.ndarray, np.ndarray]:
        g = shapely.clip_by_rect(geoms, *rect)
        ok = ~shapely.is_empty(g) & (shapely.get_dimensions(g) == dims[idx])
        return idx[ok], g[ok]

    stop = max(lv - _DIRECT_LEVELS, 0)
    cells = [(px, py, *clip(others, src[others], _cell_rect(z - lv, px, py)))]
    for level in range(1, stop + 1):
        zc = z - lv + level
        children = []
        for cx, cy, idx, geoms in cells:
            cb = shapely.bounds(geoms)
            for dx in (0, 1):
                for dy in (0, 1):
                    nx, ny = 2 * cx + dx, 2 * cy + dy
                    rect = _cell_rect(zc, nx, ny)
                    m = (cb[:, 0] <= rect[2]) & (cb[:, 2] >= rect[0])
                    m &= (cb[:, 1] <= rect[3]) & (cb[:, 3] >= rect[1])
                    if m.any():
                        ci, cg = clip(idx[m], geoms[m], rect)
                        if len(ci):
                            children.append((nx, ny, ci, cg))
        cells = children

    # last levels: every (piece, tile its bounds touch) in the tile's frame, one clip call
    width = 1 << (lv - stop)
    if cells:
        idx = np.concatenate([c[2] for c in cells])
        pieces = np.concatenate([c[3] for c in cells])
        cx = np.concatenate([np.full(len(c[2]), c[0]) for c in cells])
        cy = np.concatenate([np.full(len(c[2]), c[1]) for c in cells])
        pb = shapely.bounds(pieces)
        a0, b0 = merc_to_tile_index(z, pb[:, 0], pb[:, 3])
        a1, b1 = merc_to_tile_index(z, pb[:, 2], pb[:, 1])
        a0, a1 = np.maximum(a0, cx * width), np.minimum(a1, cx * width + width - 1)
        b0, b1 = np.maximum(b0, cy * width), np.minimum(b1, cy * width + width - 1)
        nx, ny = a1 - a0 + 1, b1 - b0 + 1
        n = nx * ny
        rep = np.repeat(np.arange(len(n)), n)
        k = np.arange(len(rep)) - np.repeat(np.cumsum(n) - n, n)
        tx, ty = a0[rep] + k % nx[rep], b0[rep] + k // nx[rep]
        local = shapely.clip_by_rect(_to_local(pieces[rep], z, tx, ty), 0.0, 0.0, 1.0, 1.0)
        ok = ~shapely.is_empty(local) & (shapely.get_dimensions(local) == dims[idx[rep]])
        out_e.append(idx[rep][ok])
        out_x.append(tx[ok])
        out_y.append(ty[ok])
        out_g.append(local[ok])
    return (
        np.concatenate(out_e).astype(np.int64),
        np.concatenate(out_x).astype(np.int64),
        np.concatenate(out_y).astype(np.int64),
        np.concatenate(out_g),
    )


def _to_local(
    geoms: np.ndarray, z: int, tx: np.ndarray, ty: np.ndarray, clamp: bool = False
) -> np.ndarray:
    """Each Mercator geometry in its own tile's frame (one vectorised pass).

    ``clamp`` snaps coordinates into [0, 1]: only for geometries already inside their tile,
    where float noise is all that lies outside.
    """
    left, top = tile_origin(z, tx, ty)
    size = tile_size(z)
    coords, index = shapely.get_coordinates(geoms, return_index=True)
    out = np.empty_like(coords)
    out[:, 0] = (coords[:, 0] - left[index]) / size
    out[:, 1] = (top[index] - coords[:, 1]) / size
    if clamp:
        np.clip(out, 0.0, 1.0, out=out)
    return shapely.set_coordinates(geoms.copy(), out)


def build_shard(
    job: ShardJob,
    config: PrepareConfig,
    imagery: Any = None,
    memory: dict[str, tuple[pa.Table, np.ndarray]] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Step 3: turn one shard's buckets into its tiles/entities files, written atomically.

    ``memory``: bucket tables kept in memory by an in-process run (see `bucket_batch`).
    """
    files: dict[str, tuple[pa.Table, np.ndarray | None]] = {}
    parts, found, offset = [], [], 0
    for px, py, pieces in job.parents:
        for f, _, _ in pieces:
            if f not in files:
                if memory is not None and f in memory:
                    files[f] = memory[f]
                else:
                    files[f] = (pa.ipc.open_file(pa.memory_map(f)).read_all(), None)
        t = pa.concat_tables([files[f][0].slice(lo, hi - lo) for f, lo, hi in pieces])
        if all(files[f][1] is not None for f, _, _ in pieces):
            src = np.concatenate([files[f][1][lo:hi] for f, lo, hi in pieces])
        else:
            wkb = np.empty(t.num_rows, dtype=object)  # (to_numpy would import pandas)
            wkb[:] = t.column("geometry").to_pylist()
            src = shapely.from_wkb(wkb)
        elem, tx, ty, local = _clip_to_tiles(src, px, py, config)
        parts.append(t)
        found.append((elem + offset, tx, ty, local))
        offset += t.num_rows
    t = pa.concat_tables(parts)
    elem, tx, ty, clip = (np.concatenate(a) for a in zip(*found, strict=True))
    z = config.zoom

    rng = _region_tile_range(config)
    if rng is not None:  # the filter keeps whole tiles: those whose square meets the area
        keep = (tx >= rng[0]) & (tx <= rng[1]) & (ty >= rng[2]) & (ty <= rng[3])
        if config.polygon_wkt is not None:
            left, top = tile_origin(z, tx, ty)
            size = tile_size(z)
            squares = shapely.box(left, top - size, left + size, top)
            keep &= shapely.intersects(squares, _region_merc(config))
        elem, tx, ty, clip = elem[keep], tx[keep], ty[keep], clip[keep]

    dims = shapely.get_dimensions(clip)
    mixed = np.flatnonzero(shapely.get_type_id(clip) == 7)
    if len(mixed):
        clip[mixed] = _keep_dimension(clip[mixed], dims[mixed])
    repaired = 0
    poly = np.flatnonzero(dims == 2)
    bad = poly[~shapely.is_valid(clip[poly])]
    if len(bad):  # clip_by_rect is fast but may return invalid polygons
        clip[bad] = _keep_dimension(shapely.make_valid(clip[bad]), dims[bad])
        repaired = len(bad)
    alive = ~shapely.is_empty(clip)
    elem, tx, ty, clip = elem[alive], tx[alive], ty[alive], clip[alive]
    # a one-part Multi* (pyosmium builds every area as a MultiPolygon) is stored as its part,
    # so the type says whether the clip really has several parts
    single = np.flatnonzero(
        np.isin(shapely.get_type_id(clip), (4, 5, 6)) & (shapely.get_num_geometries(clip) == 1)
    )
    clip[single] = shapely.get_geometry(clip[single], 0)

    order = np.lexsort((elem, tx, ty))  # tiles row by row, elements in input order
    elem, tx, ty, clip = elem[order], tx[order], ty[order], clip[order]
    tkey = ty.astype(np.int64) * (1 << 31) + tx
    first = np.r_[0, np.flatnonzero(np.diff(tkey) != 0) + 1] if len(tkey) else np.array([], int)
    counts = np.diff(np.r_[first, len(tkey)])
    ux, uy = tx[first], ty[first]
    region_ids = np.array([f"{z}/{x}/{y}" for x, y in zip(ux, uy, strict=True)], dtype=object)

    boxes = min_rotated_boxes(clip).astype(np.float32)
    take = _buffer_array(elem, pa.int64())
    tile_ids = _bytes_array(region_ids.tolist(), pa.string())
    tile_of = _buffer_array(np.repeat(np.arange(len(ux)), counts), pa.int64())
    type_ids = _buffer_array(shapely.get_type_id(clip), pa.int64())
    entities = pa.table(
        {
            "region_id": tile_ids.take(tile_of),
            "feature_id": t.column("feature_id").take(take),
            "tags": t.column("tags").take(take),
            "geom_type": _bytes_array(_TYPE_NAMES.tolist(), pa.string()).take(type_ids),
            "geometry": _bytes_array(shapely.to_wkb(clip).tolist()),
            "box": pa.FixedSizeListArray.from_arrays(
                _buffer_array(boxes.reshape(-1), pa.float32()), 8
            ),
        }
    ).cast(schema.ENTITY_SCHEMA)

    west, south, east, north = tile_bounds_lonlat(z, ux, uy)
    images: list[bytes | None] = [None] * len(ux)
    coverage: list[float | None] = [None] * len(ux)
    if imagery is not None:
        for i, (x, y) in enumerate(zip(ux, uy, strict=True)):
            img = imagery.read_tile(z, int(x), int(y), config.image_size)
            if img is not None:
                images[i] = np.ascontiguousarray(img.rgb, dtype=np.uint8).tobytes()
                coverage[i] = float(img.coverage)
    no_image = all(c is None for c in coverage)
    tiles = pa.table(
        {
            "region_id": tile_ids,
            "z": _buffer_array(np.full(len(ux), z), pa.int8()),
            "x": _buffer_array(ux, pa.int32()),
            "y": _buffer_array(uy, pa.int32()),
            "west": _buffer_array(west, pa.float64()),
            "south": _buffer_array(south, pa.float64()),
            "east": _buffer_array(east, pa.float64()),
            "north": _buffer_array(north, pa.float64()),
            "n_entities": _buffer_array(counts, pa.int32()),
            "image": pa.nulls(len(ux), pa.binary()) if no_image else _bytes_array(images),
            "image_coverage": pa.nulls(len(ux), pa.float32())
            if no_image
            else pa.array(coverage, pa.float32()),
        }
    ).cast(schema.TILE_SCHEMA)
    stats = {"tiles": len(ux), "entities": len(elem), "clip_repaired": repaired}
    tiles = tiles.replace_schema_metadata({STATS_KEY: json.dumps(stats)})
    _write_shard(job, tiles, entities)
    return job.shard, shard_summary(tiles, entities, repaired)


def _write_shard(job: ShardJob, tiles: pa.Table, entities: pa.Table) -> None:
    """Entities first, tiles last, each via a temporary name: tiles present = shard complete."""
    for table, name, dictionary in (
        (entities, schema.entities_file, _ENTITY_DICTIONARY),
        (tiles, schema.tiles_file, _TILE_DICTIONARY),
    ):
        final = job.output / name(job.shard)
        tmp = final.with_name(f".{final.name}.tmp")
        pq.write_table(table, tmp, compression="zstd", use_dictionary=dictionary)
        tmp.replace(final)


#: Parquet dictionary encoding only where values repeat: on the (nearly) unique geometry, box,
#: image and coordinate columns it costs time and grows the file (-40% write time, -14% size)
_ENTITY_DICTIONARY = ["region_id", "feature_id", "tags.key_value.key", "tags.key_value.value",
                      "geom_type"]  # fmt: skip
_TILE_DICTIONARY = ["z"]


# --------------------------------------------------------------------------- orchestration


class _Inline(Executor):
    """Runs tasks in the calling process (workers=1): simpler to debug, no pickling."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            fut.set_exception(exc)
        return fut


#: inputs estimated below this many elements are built in-process when ``workers`` is 0: a
#: pool's start-up, per-worker imports (pyarrow loads pandas on first use: ~0.4 s of CPU per
#: process) and the Arrow IPC hand-over cost more than two cores save on such inputs
INLINE_MAX_ELEMENTS = 250_000
#: rough bytes per tagged element, to estimate an OSM file's work from its size
_OSM_BYTES_PER_ELEMENT = {"pbf": 30, "o5m": 30, "bz2": 30, "gz": 30, "other": 200}


def _estimated_elements(kind: str, path: Path | None, source: Any) -> int:
    """A cheap estimate of the number of input elements (decides in-process vs pool)."""
    try:
        if kind == "osm" and path is not None:
            suffix = path.name.lower().rsplit(".", 1)[-1]
            per = _OSM_BYTES_PER_ELEMENT.get(suffix, _OSM_BYTES_PER_ELEMENT["other"])
            return path.stat().st_size // per
        if kind == "features" and path is not None:
            return pq.read_metadata(path).num_rows
        if kind == "geodataframe":
            return len(source)
    except (OSError, pa.ArrowException, TypeError):
        pass
    return INLINE_MAX_ELEMENTS  # unknown: assume big


def _n_workers(config: PrepareConfig, estimated_elements: int | None = None) -> int:
    """``config.workers`` if set; else 1 (in-process) for small inputs, else all cores."""
    if config.workers:
        return config.workers
    if estimated_elements is not None and estimated_elements < INLINE_MAX_ELEMENTS:
        return 1
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _make_executor(n: int) -> Executor:
    if n <= 1:
        return _Inline()
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else None)
    pool = ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_die_with_parent,
                               initargs=(os.getpid(),))  # fmt: skip
    # the first submit forks the workers (all at once with "fork"): do it now, before
    # pyosmium's reader threads exist; not waiting lets their warm-up overlap the reading
    pool.submit(os.getpid)
    return pool


def _die_with_parent(parent: int) -> None:
    """Pool initializer: a SIGKILLed `prepare` must not leave its workers running.

    On Linux the kernel sends the worker SIGKILL when its parent dies (``PR_SET_PDEATHSIG``);
    elsewhere a daemon thread polls the parent pid. Either way the parent's death ends the worker.
    Workers ignore SIGINT: Ctrl-C reaches the whole process group, and the parent alone decides
    what is kept (it shuts the pool down).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)
            return
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class _Hasher(threading.Thread):
    """SHA-256 of the source in a thread (hashlib releases the GIL), overlapping the read."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.result, self.error = path, None, None

    def run(self) -> None:
        try:
            self.result = _sha256(self.path)
        except OSError as exc:
            self.error = exc

    def value(self) -> str:
        self.join()
        if self.error is not None:
            raise InputError(f"cannot read {self.path}: {self.error}")
        assert self.result is not None
        return self.result


def _check_source(source: Any) -> tuple[str, Path | None]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise InputError(f"source not found: {path}")
        if not path.is_file():
            raise InputError(f"source is not a file: {path}")
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        if not head:
            raise InputError(f"source is empty: {path}")
        if is_features_file(path):
            return "features", path
        if is_osm_file(path):
            return "osm", path
        raise InputError(
            f"unsupported source {path.name}: expected an OSM file (.osm.pbf, .osm, .osm.bz2) "
            "or a features GeoParquet (.parquet)"
        )
    if hasattr(source, "geometry") and hasattr(source, "crs"):
        return "geodataframe", None
    raise InputError(f"unsupported source of type {type(source).__name__}")


#: Everything `prepare` writes into a dataset directory; --overwrite removes these and nothing else.
DATASET_ENTRIES = (schema.CONFIG_FILE, schema.MANIFEST_FILE, schema.VOCAB_FILE, SOURCE_FILE,
                   WORK_DIR, schema.SHARD_DIR, "cache")  # fmt: skip


def _prepare_output(output: Path, config: PrepareConfig, overwrite: bool) -> tuple[bool, bool]:
    """Make ``output`` usable. Returns (created, resuming).

    Only a directory that is provably a geojepa dataset (see `reader.dataset_kind`) is ever
    replaced, and then only the entries `prepare` writes: a user's other files survive.
    """
    if output.exists() and not output.is_dir():
        raise OutputError(f"output {output} exists and is not a directory")
    if not output.exists():
        try:
            output.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(f"cannot create {output}: {exc.strerror or exc}") from None
        return True, False
    entries = [p for p in output.iterdir() if p.name != WORK_DIR]
    if not entries:
        return False, False
    kind = dataset_kind(output)
    if kind == "model":
        raise OutputError(
            f"output {output} is a geojepa model directory; choose another directory for the "
            "dataset (refusing to replace it, even with --overwrite)"
        )
    if kind is None:
        raise OutputError(
            f"output {output} is not empty and is not a geojepa dataset; choose another "
            "directory (refusing to replace it, even with --overwrite)"
        )
    if overwrite:
        _remove_dataset_entries(output)
        return False, False
    try:
        old = json.loads((output / schema.CONFIG_FILE).read_text())
        old = {k: v for k, v in old.items() if k not in ("workers", "location_index")}
    except (OSError, json.JSONDecodeError, AttributeError):
        old = None
    if old != config.content_dict():
        raise OutputError(
            f"output {output} holds a dataset built with a different config; "
            "use --overwrite to replace it or choose another directory"
        )
    return False, True


def _remove_dataset_entries(output: Path) -> None:
    for name in DATASET_ENTRIES:
        entry = output / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


def _discard(output: Path, created: bool) -> None:
    """Remove what a failed fresh build wrote (the directory too if this run created it)."""
    _remove_dataset_entries(output)
    if created:
        with contextlib.suppress(OSError):
            output.rmdir()  # only if nothing else is in it


def _check_same_source(output: Path, source_id: dict) -> None:
    recorded = output / SOURCE_FILE
    manifest = output / schema.MANIFEST_FILE
    old = None
    if manifest.is_file():
        old = json.loads(manifest.read_text()).get("source")
    elif recorded.is_file():
        old = json.loads(recorded.read_text())
    if old is not None and old.get("sha256") != source_id.get("sha256"):
        raise OutputError(
            f"output {output} was built from a different source; "
            "use --overwrite to replace it or choose another directory"
        )


def _bounded_map(
    executor: Executor, fn: Callable, items: Iterable, limit: int, *args: Any
) -> Iterator[Any]:
    """Submit ``fn(item, *args)`` keeping at most ``limit`` in flight; yield results in order."""
    pending: list[Future] = []
    for item in items:
        pending.append(executor.submit(fn, item, *args))
        while len(pending) >= limit:
            yield pending.pop(0).result()
    while pending:
        yield pending.pop(0).result()


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    qs = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0])
    names = ["min", "q25", "median", "q75", "q90", "q99", "max"]
    out = {n: float(q) for n, q in zip(names, qs, strict=True)}
    out["mean"] = float(values.mean())
    return out


def shard_summary(tiles: pa.Table, entities: pa.Table, clip_repaired: int) -> dict[str, Any]:
    """What the manifest needs from one shard (small; returned by the worker)."""
    tags = entities.column("tags").combine_chunks()
    # counted in Python: Arrow's group_by (and to_numpy) would import pandas
    pairs = Counter(zip(tags.keys.to_pylist(), tags.items.to_pylist(), strict=True))
    return {
        "n_entities": _numpy(tiles.column("n_entities")),
        "coverage": _numpy(tiles.column("image_coverage")),
        "types": {
            r["values"]: r["counts"]
            for r in entities.column("geom_type").value_counts().to_pylist()
        },
        # plain lists: unpickling pyarrow objects in the main process would import pandas
        "vocab": {
            "key": [k for k, _ in pairs],
            "value": [v for _, v in pairs],
            "count_all": list(pairs.values()),
        },
        "clip_repaired": clip_repaired,
    }


def _summary_from_files(output: Path, shard: int) -> dict[str, Any]:
    """The summary of a shard finished by an earlier (interrupted) run."""
    path = output / schema.tiles_file(shard)
    # ParquetFile.read, not pq.read_table: the latter imports pandas
    tiles = pq.ParquetFile(path).read(columns=["n_entities", "image_coverage"])
    meta = pq.read_schema(path).metadata or {}
    repaired = json.loads(meta.get(STATS_KEY, b"{}")).get("clip_repaired", 0)
    ents = pq.ParquetFile(output / schema.entities_file(shard)).read(columns=["geom_type", "tags"])
    return shard_summary(tiles, ents, repaired)


def _merge_summaries(summaries: dict[int, dict[str, Any]]) -> tuple[dict[str, Any], pa.Table]:
    """Manifest statistics and the vocabulary (counted over entity rows, i.e. clips)."""
    shards = sorted(s for s, v in summaries.items() if len(v["n_entities"]))
    parts = [summaries[s] for s in shards]
    types: dict[str, int] = {}
    for p in parts:
        for k, v in p["types"].items():
            types[k] = types.get(k, 0) + v
    vocab_schema = pa.schema([("key", pa.string()), ("value", pa.string()), ("count", pa.int64())])
    if parts:  # summed in Python: Arrow's group_by would import pandas
        counts: Counter[tuple[str, str | None]] = Counter()
        for p in parts:
            v = p["vocab"]
            for key, value, n in zip(v["key"], v["value"], v["count_all"], strict=True):
                counts[(key, value)] += n
        vocab = pa.table(
            {
                "key": _bytes_array([k for k, _ in counts], pa.string()),
                "value": _bytes_array([v for _, v in counts], pa.string()),
                "count": _buffer_array(np.fromiter(counts.values(), np.int64), pa.int64()),
            }
        ).cast(vocab_schema)
    else:
        vocab = vocab_schema.empty_table()
    vocab = vocab.sort_by([("count", "descending"), ("key", "ascending"), ("value", "ascending")])
    per_tile = np.concatenate([p["n_entities"] for p in parts]) if parts else np.zeros(0)
    coverage = (
        np.concatenate([p["coverage"] for p in parts]).astype(np.float64) if parts else np.zeros(0)
    )
    with_image = ~np.isnan(coverage)
    stats = {
        "n_tiles": len(per_tile),
        "n_entities": int(per_tile.sum()),
        "entities_per_tile": _quantiles(per_tile),
        "geometry_types": dict(sorted(types.items(), key=lambda kv: -kv[1])),
        "vocab_size": vocab.num_rows,
        "n_keys": len(pc.unique(vocab.column("key"))),
        "imagery": {
            "tiles_with_image": int(with_image.sum()),
            "mean_coverage": float(coverage[with_image].mean()) if with_image.any() else None,
        },
        "clip_repaired": sum(p["clip_repaired"] for p in parts),
        "shards": shards,
    }
    return stats, vocab


def _finalize(
    output: Path, summaries: dict[int, dict[str, Any]], missing: list[int], vocab_tmp: Path
) -> dict[str, Any]:
    """Merge shard summaries (reading those of shards finished by an earlier run) and write
    the vocabulary to ``vocab_tmp``. Runs in a worker when there is a pool (reading the shards
    of an earlier run imports pandas: kept off the main process)."""
    summaries = {**summaries, **{s: _summary_from_files(output, s) for s in missing}}
    stats, vocab = _merge_summaries(summaries)
    pq.write_table(vocab, vocab_tmp)
    return stats


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool, **kwargs: Any) -> Any:
    """A tqdm bar, imported only when shown (tqdm.auto costs ~35 ms of start-up)."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(leave=False, **kwargs)


def manifest_header(
    config: PrepareConfig, source: Any, shards: list[int], stats: dict[str, Any]
) -> dict[str, Any]:
    """The manifest fields of every complete dataset, whether built by prepare or combined."""
    return {
        "format_version": schema.FORMAT_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "geojepa_version": _version(),
        "source": source,
        "zoom": config.zoom,
        "shard_zoom": config.shard_zoom,
        "shards": shards,
        "n_shards": len(shards),
        **{k: v for k, v in stats.items() if k != "clip_repaired"},
    }


def prepare_tiles(
    source: str | Path | Any,
    output: str | Path,
    config: PrepareConfig | None = None,
    imagery: Any = None,
    overwrite: bool = False,
    progress: bool = True,
) -> TileDataset:
    """Build (or resume) a tile dataset; see the module docstring and docs/dataset.md.

    ``source``: an OSM PBF/XML file, a features GeoParquet, or a GeoDataFrame.
    ``imagery``: None, one or more raster/XYZ-folder paths, or an opened ``Imagery``.
    """
    # The build allocates millions of short-lived objects (tag lists, geometries) and holds many
    # long-lived ones: CPython's default GC thresholds (700 allocations) made full collections
    # scan them again and again, ~10-15% of a small build's CPU. A higher first threshold keeps
    # cycle collection, just less often; the old thresholds are restored afterwards (pool
    # workers forked meanwhile keep the higher one for their whole, build-only, life).
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], _GC_THRESHOLD), *thresholds[1:])
    try:
        with OutputLock(output):  # two builds into one folder would corrupt each other
            return _prepare_tiles(source, output, config, imagery, overwrite, progress)
    finally:
        gc.set_threshold(*thresholds)


def _prepare_tiles(
    source: str | Path | Any,
    output: str | Path,
    config: PrepareConfig | None = None,
    imagery: Any = None,
    overwrite: bool = False,
    progress: bool = True,
) -> TileDataset:
    started = time.perf_counter()
    config = config or PrepareConfig()
    output = Path(output)
    kind, path = _check_source(source)

    imagery_obj = None
    if imagery is not None:
        if isinstance(imagery, (str, os.PathLike, list, tuple)):
            from geojepa.data.imagery import open_imagery

            sources = [imagery] if isinstance(imagery, (str, os.PathLike)) else list(imagery)
            if sources:
                imagery_obj = open_imagery(sources)
                config = config.replace(imagery=tuple(str(Path(s).resolve()) for s in sources))
        else:  # an opened Imagery: recorded by type (its sources are its own business)
            imagery_obj = imagery
            config = config.replace(imagery=(f"<{type(imagery).__name__} object>",))
    _region_tile_range(config)  # fails early if bbox and polygon do not overlap

    hasher = _Hasher(path) if path is not None else None
    created, resuming = _prepare_output(output, config, overwrite)
    if resuming and (output / schema.MANIFEST_FILE).is_file():
        # already complete: nothing to do unless the source changed
        if path is not None:
            _check_same_source(output, {"sha256": _sha256(path)})
        return open_dataset(output)
    work = output / WORK_DIR
    bucket_dir = work / "buckets"
    executor: Executor | None = None
    shards_written = 0
    try:
        if work.exists():
            shutil.rmtree(work)
        bucket_dir.mkdir(parents=True)
        (output / schema.SHARD_DIR).mkdir(exist_ok=True)
        config.save(output / schema.CONFIG_FILE)

        estimate = _estimated_elements(kind, path, source)
        n_workers = _n_workers(config, estimate)
        executor = _make_executor(n_workers)
        # small input built in-process: its buckets stay in memory (no Arrow IPC round trip);
        # otherwise on disk, so memory stays bounded by a batch and a shard
        small = isinstance(executor, _Inline) and estimate < INLINE_MAX_ELEMENTS
        memory: dict[str, tuple[pa.Table, np.ndarray]] | None = {} if small else None
        if hasher is not None:  # started after the fork: no thread is running at fork time
            hasher.start()
        t_setup = time.perf_counter()
        read_stats = ReadStats()
        if kind == "osm":
            batches: Iterable[RawBatch] = iter_osm_batches(
                path, work, read_stats, location_index=config.location_index
            )
        elif kind == "features":
            batches = iter_feature_file_batches(path)
        else:
            batches = iter_geodataframe_batches(source)
        totals = {"read": 0, "kept": 0, "untagged": 0, "repaired": 0, "skipped": 0,
                  "bad_wkb": 0, "outside": 0, "bad_coordinates": 0,
                  "beyond_mercator": 0, "fixed_tags": 0}  # fmt: skip
        bounds = [np.inf, np.inf, -np.inf, -np.inf]
        pieces: dict[tuple[int, int], list[tuple[str, int, int]]] = {}
        bar = _progress_bar(progress, desc="reading", unit=" elements")
        for st in _bounded_map(
            executor, bucket_batch, batches, n_workers + 1, bucket_dir, config, memory
        ):
            for k in totals:
                totals[k] += st[k]
            if st["bounds"] is not None:
                b = st["bounds"]
                bounds = [min(bounds[0], b[0]), min(bounds[1], b[1]),
                          max(bounds[2], b[2]), max(bounds[3], b[3])]  # fmt: skip
            for parent, piece in st["parents"].items():
                pieces.setdefault(parent, []).append(piece)
            bar.update(st["read"])
        bar.close()
        t_read = time.perf_counter()

        source_id: dict[str, Any] = {"kind": kind}
        if path is not None:
            source_id.update(
                {"path": str(path.resolve()), "size": path.stat().st_size, "sha256": hasher.value()}
            )
        _check_same_source(output, source_id)
        write_json_atomic(output / SOURCE_FILE, source_id)

        if not pieces:
            what = "the bbox/polygon filter area" if totals["outside"] else str(source)
            raise InputError(f"no tagged entities in {what}: nothing to prepare")
        if imagery_obj is not None:
            west, south = merc_to_lonlat(bounds[0], bounds[1])
            east, north = merc_to_lonlat(bounds[2], bounds[3])
            iw, is_, ie, in_ = imagery_obj.bounds_lonlat
            if iw >= east or ie <= west or is_ >= north or in_ <= south:
                raise InputError(
                    f"imagery ({iw:.4f},{is_:.4f},{ie:.4f},{in_:.4f}) does not overlap the data "
                    f"({west:.4f},{south:.4f},{east:.4f},{north:.4f})"
                )

        groups = _group_parents(pieces, config.min_shard_elements)
        jobs = [
            ShardJob(i, tuple((px, py, tuple(pieces[(px, py)])) for px, py in g), output)
            for i, g in enumerate(groups)
        ]
        todo = [j for j in jobs if not (output / schema.tiles_file(j.shard)).is_file()]
        for stale in (output / schema.SHARD_DIR).glob(".*.tmp"):
            stale.unlink()
        bar = _progress_bar(progress, total=len(jobs), initial=len(jobs) - len(todo),
                            desc="shards", unit=" shards")  # fmt: skip
        summaries: dict[int, dict[str, Any]] = {}
        missing = [j.shard for j in jobs if j not in todo]
        for shard, summary in _bounded_map(
            executor, build_shard, todo, 2 * n_workers, config, imagery_obj, memory
        ):
            summaries[shard] = summary
            shards_written += 1
            bar.update(1)
        bar.close()
        t_shards = time.perf_counter()
        stats = executor.submit(
            _finalize, output, summaries, missing, work / "vocab.parquet"
        ).result()
    except BaseException:
        if executor is not None and not isinstance(executor, _Inline):
            executor.shutdown(wait=True, cancel_futures=True)
            executor = None
        if shards_written == 0 and not resuming:
            _discard(output, created)
        else:
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if executor is not None and not isinstance(executor, _Inline):
            executor.shutdown(wait=True)

    nonempty = stats.pop("shards")
    if stats["n_tiles"] == 0:
        _discard(output, created)
        raise InputError(f"no entities fall inside any tile of {source}: nothing to prepare")
    manifest = {
        **manifest_header(config, source_id, nonempty, stats),
        "input": {
            "elements_read": totals["read"],
            "elements_kept": totals["kept"],
            "empty_after_tag_filter": totals["untagged"],
            "outside_filter_area": totals["outside"],
            "unreadable_geometry": totals["bad_wkb"],
            "bad_coordinates": totals["bad_coordinates"],
            "beyond_mercator_latitude": totals["beyond_mercator"],
            "tags_fixed": totals["fixed_tags"],
            "skipped_ways": read_stats.skipped_ways,
            "skipped_nodes": read_stats.skipped_nodes,
            "skipped_relations": read_stats.skipped_relations,
            "other_relations_skipped": read_stats.other_relations,
        },
        "geometry_repair": {
            "repaired": totals["repaired"],
            "skipped": totals["skipped"],
            "clip_repaired": stats["clip_repaired"],
        },
        "build_seconds": round(time.perf_counter() - started, 3),
        "phase_seconds": {
            "setup": round(t_setup - started, 3),
            "read_and_bucket": round(t_read - t_setup, 3),
            "shards": round(t_shards - t_read, 3),
        },
    }
    (work / "vocab.parquet").replace(output / schema.VOCAB_FILE)
    write_json_atomic(output / schema.MANIFEST_FILE, manifest)
    (output / SOURCE_FILE).unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    return open_dataset(output)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("geojepa")
    except Exception:
        return "unknown"
