"""Features-table input: a GeoParquet file or a GeoDataFrame of OSM features.

The layout many OSM tools write (quackosm, SRAI): ``feature_id`` (index or column, like
``way/123``), ``tags`` (JSON object text, or a map/dict), a WKB geometry column (GeoParquet
``geo`` metadata names it and its CRS; EPSG:4326 when no CRS is declared). The file is read in
record batches, so memory stays bounded by a batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from geojepa.data.osm import RawBatch
from geojepa.errors import InputError

FEATURE_SUFFIXES = (".parquet", ".geoparquet", ".pq")
WGS84_CODES = {"EPSG:4326", "OGC:CRS84", "CRS84"}


def is_features_file(path: Path) -> bool:
    return path.name.lower().endswith(FEATURE_SUFFIXES)


def _crs_string(crs: Any) -> str | None:
    """A pyproj-readable CRS, or None for EPSG:4326 / OGC:CRS84 (the no-reprojection case)."""
    if crs is None:
        return None
    import pyproj

    try:
        parsed = pyproj.CRS.from_user_input(crs)
    except pyproj.exceptions.CRSError as exc:
        raise InputError(f"features table declares an unreadable CRS: {exc}") from None
    code = parsed.to_authority()
    if code is not None and f"{code[0]}:{code[1]}" in WGS84_CODES:
        return None
    if not parsed.is_geographic and not parsed.is_projected:
        raise InputError(f"features table CRS {parsed.name!r} is neither geographic nor projected")
    return parsed.to_wkt()


def _columns(schema: pa.Schema, geo: dict | None, source: str) -> tuple[str, str, str]:
    names = set(schema.names)
    geom_col = (geo or {}).get("primary_column", "geometry")
    missing = [c for c in ("feature_id", "tags", geom_col) if c not in names]
    if missing:
        raise InputError(
            f"{source} lacks required column(s) {', '.join(missing)} "
            "(need feature_id, tags and a WKB geometry; see docs/dataset.md)"
        )
    if not pa.types.is_binary(schema.field(geom_col).type) and not pa.types.is_large_binary(
        schema.field(geom_col).type
    ):
        raise InputError(f"{source}: geometry column '{geom_col}' is not WKB-encoded")
    return "feature_id", "tags", geom_col


def _to_batch(table: pa.Table | pa.RecordBatch, index: int, geom_col: str, crs: str | None):
    ids = table.column("feature_id").to_pylist()
    if any(i is None for i in ids):
        raise InputError("features table has a null feature_id")
    tags_col = table.column("tags")
    tags_type = tags_col.type
    if pa.types.is_string(tags_type) or pa.types.is_large_string(tags_type):
        tags, fmt = tags_col.to_pylist(), "json"
    elif pa.types.is_map(tags_type) or pa.types.is_struct(tags_type):
        tags, fmt = tags_col.to_pylist(), "json"  # lists of pairs / dicts: decoded as such
    else:
        raise InputError(f"features table 'tags' column has unsupported type {tags_type}")
    geoms = table.column(geom_col).to_pylist()
    keep = [i for i, g in enumerate(geoms) if g is not None]
    if len(keep) != len(geoms):
        ids = [ids[i] for i in keep]
        tags = [tags[i] for i in keep]
        geoms = [geoms[i] for i in keep]
    return RawBatch(
        index=index,
        ids=[str(i) for i in ids],
        geoms=geoms,
        tags=tags,
        tags_format=fmt,
        from_osm=False,
        crs=crs,
    )


def iter_feature_file_batches(path: Path, batch_size: int = 50000) -> Iterator[RawBatch]:
    """Batches of a GeoParquet features file; InputError if it is unreadable or malformed."""
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read features file {path}: {exc}") from None
    meta = pf.schema_arrow.metadata or {}
    geo = None
    if b"geo" in meta:
        try:
            geo = json.loads(meta[b"geo"])
        except json.JSONDecodeError:
            raise InputError(f"{path}: invalid GeoParquet 'geo' metadata") from None
    _, _, geom_col = _columns(pf.schema_arrow, geo, str(path))
    col_meta = ((geo or {}).get("columns") or {}).get(geom_col, {})
    if col_meta.get("encoding", "WKB").upper() != "WKB":
        raise InputError(f"{path}: geometry encoding {col_meta['encoding']!r} is not WKB")
    crs = _crs_string(col_meta.get("crs"))
    try:
        for i, rb in enumerate(
            pf.iter_batches(batch_size=batch_size, columns=["feature_id", "tags", geom_col])
        ):
            yield _to_batch(rb, i, geom_col, crs)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read features file {path}: {exc}") from None


def iter_geodataframe_batches(gdf: Any, batch_size: int = 50000) -> Iterator[RawBatch]:
    """Batches of a GeoDataFrame (``feature_id`` index or column, ``tags``, geometry)."""
    df = gdf
    if "feature_id" not in df.columns:
        if df.index.name != "feature_id":
            raise InputError("GeoDataFrame lacks a feature_id index or column (like 'way/123')")
        df = df.reset_index()
    if "tags" not in df.columns:
        raise InputError("GeoDataFrame lacks a 'tags' column (JSON text or dict per feature)")
    crs = _crs_string(df.crs.to_wkt()) if df.crs is not None else None
    wkb = df.geometry.to_wkb()
    for i, start in enumerate(range(0, len(df), batch_size)):
        part = slice(start, start + batch_size)
        ids = df["feature_id"].iloc[part].tolist()
        if any(v is None for v in ids):
            raise InputError("GeoDataFrame has a null feature_id")
        tags = df["tags"].iloc[part].tolist()
        geoms = wkb.iloc[part].tolist()
        keep = [j for j, g in enumerate(geoms) if g is not None]
        yield RawBatch(
            index=i,
            ids=[str(ids[j]) for j in keep],
            geoms=[geoms[j] for j in keep],
            tags=[tags[j] for j in keep],
            tags_format="json",
            from_osm=False,
            crs=crs,
        )
