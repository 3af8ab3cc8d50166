"""Features-table input: a GeoParquet file or a GeoDataFrame of OSM features.

The layouts quackosm and SRAI write: ``feature_id`` (index or column, like ``way/123``), a WKB
geometry column (GeoParquet ``geo`` metadata names it and its CRS; EPSG:4326 when no CRS is
declared), and the tags either as one ``tags`` column (JSON object text, or a map/dict) or as
one string column per tag key, null where the feature lacks the key (the "exploded" layout;
non-string columns and GeoParquet covering columns are not tags). The file is read in record
batches, so memory stays bounded by a batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
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
    try:  # any CRS pyproj can take to EPSG:4326 is accepted (e.g. NAD83, EPSG:4269)
        pyproj.Transformer.from_crs(parsed, "EPSG:4326", always_xy=True)
    except pyproj.exceptions.ProjError as exc:
        raise InputError(
            f"features table CRS {parsed.name!r} cannot be transformed to EPSG:4326: {exc}"
        ) from None
    return parsed.to_wkt()


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


def _columns(schema: pa.Schema, geo: dict | None, source: str) -> tuple[str, list[str], str]:
    """(id column, tag columns, geometry column): ``["tags"]`` or the tag-key columns."""
    names = set(schema.names)
    geom_col = (geo or {}).get("primary_column", "geometry")
    covering = ((geo or {}).get("columns") or {}).get(geom_col, {}).get("covering") or {}
    skip = {"feature_id", geom_col, *(v[0] for cov in covering.values() for v in cov.values())}
    keys = ["tags"] if "tags" in names else [
        f.name for f in schema
        if f.name not in skip and not f.name.startswith("__") and _is_text(f.type)
    ]  # fmt: skip
    needed = (("feature_id", "feature_id" in names), ("tags", bool(keys)),
              (geom_col, geom_col in names))  # fmt: skip
    missing = [name for name, present in needed if not present]
    if missing == ["tags"]:
        raise InputError(
            f"{source} has geometries but no tags: neither a 'tags' column nor one string "
            "column per tag key (GeoJEPA learns from tags; see docs/dataset.md)"
        )
    if missing:
        raise InputError(
            f"{source} lacks required column(s) {', '.join(missing)} "
            "(need feature_id, tags or tag-key columns, and a WKB geometry; see docs/dataset.md)"
        )
    if not pa.types.is_binary(schema.field(geom_col).type) and not pa.types.is_large_binary(
        schema.field(geom_col).type
    ):
        raise InputError(f"{source}: geometry column '{geom_col}' is not WKB-encoded")
    return "feature_id", keys, geom_col


def tags_from_key_columns(keys: list[str], columns: list[list[Any]]) -> list[str]:
    """JSON tags per row from one column per tag key (None/NaN = the row lacks that key)."""
    rows: list[dict[str, str]] = [{} for _ in range(len(columns[0]) if columns else 0)]
    for key, values in zip(keys, columns, strict=True):
        for i, v in enumerate(values):
            if v is not None and v == v:  # v == v drops NaN
                rows[i][str(key)] = str(v)
    return [json.dumps(r, ensure_ascii=False) for r in rows]


def _to_batch(
    table: pa.Table | pa.RecordBatch, index: int, tag_cols: list[str], geom_col: str,
    crs: str | None,
):  # fmt: skip
    ids = table.column("feature_id").to_pylist()
    if any(i is None for i in ids):
        raise InputError("features table has a null feature_id")
    if tag_cols != ["tags"]:  # one column per tag key
        columns = [table.column(k).to_pylist() for k in tag_cols]
        tags, fmt = tags_from_key_columns(tag_cols, columns), "json"
    else:
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
    _, tag_cols, geom_col = _columns(pf.schema_arrow, geo, str(path))
    col_meta = ((geo or {}).get("columns") or {}).get(geom_col, {})
    if col_meta.get("encoding", "WKB").upper() != "WKB":
        raise InputError(f"{path}: geometry encoding {col_meta['encoding']!r} is not WKB")
    crs = _crs_string(col_meta.get("crs"))
    try:
        for i, rb in enumerate(
            pf.iter_batches(batch_size=batch_size, columns=["feature_id", *tag_cols, geom_col])
        ):
            yield _to_batch(rb, i, tag_cols, geom_col, crs)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read features file {path}: {exc}") from None


def iter_geodataframe_batches(gdf: Any, batch_size: int = 50000) -> Iterator[RawBatch]:
    """Batches of a GeoDataFrame (``feature_id`` index or column, geometry, and a ``tags``
    column or one column per tag key)."""
    df = gdf
    if "feature_id" not in df.columns:
        if df.index.name != "feature_id":
            raise InputError("GeoDataFrame lacks a feature_id index or column (like 'way/123')")
        df = df.reset_index()
    if "tags" not in df.columns:
        import geopandas as gpd

        geom = df.geometry.name
        text = pd.api.types.is_string_dtype
        keys = [c for c in df.columns if c not in ("feature_id", geom) and text(df[c])]
        if not keys:
            raise InputError(
                "GeoDataFrame has geometries but no tags: neither a 'tags' column (JSON text or "
                "dict per feature) nor one string column per tag key"
            )
        tags = tags_from_key_columns(keys, [df[k].tolist() for k in keys])
        df = gpd.GeoDataFrame({"feature_id": df["feature_id"].to_numpy(), "tags": tags},
                              geometry=df.geometry.to_numpy(), crs=df.crs)  # fmt: skip
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
