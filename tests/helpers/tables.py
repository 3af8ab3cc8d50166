"""Builders of small hand-made tile/entity tables in the dataset schema (tests, examples).

Real datasets come from ``geojepa prepare``; these builders let a test state a handful of
entities literally (tags and a shape) and get tables every eval function accepts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import mercantile
import pyarrow as pa
import shapely

from geojepa.data.schema import ENTITY_SCHEMA, MIN_BOX_SIDE, TILE_SCHEMA

_SHAPES = {
    "Point": shapely.Point(0.5, 0.5),
    "LineString": shapely.LineString([(0.1, 0.5), (0.9, 0.5)]),
    "Polygon": shapely.box(0.2, 0.2, 0.4, 0.4),
}


def make_tiles(region_ids: Iterable[str]) -> pa.Table:
    """A TILE_SCHEMA table for the given ``z/x/y`` ids (no imagery)."""
    rows = []
    for region_id in region_ids:
        z, x, y = (int(part) for part in region_id.split("/"))
        west, south, east, north = mercantile.bounds(x, y, z)
        rows.append(
            dict(
                region_id=region_id,
                z=z,
                x=x,
                y=y,
                west=west,
                south=south,
                east=east,
                north=north,
                n_entities=0,
                image=None,
                image_coverage=None,
            )
        )
    return pa.Table.from_pylist(rows, schema=TILE_SCHEMA)


def make_entities(
    rows: Sequence[tuple[str, str, dict[str, str | None], str]],
) -> pa.Table:
    """An ENTITY_SCHEMA table from ``(region_id, feature_id, tags, geom_type)`` tuples.

    ``geom_type`` is one of Point, LineString, Polygon; the geometry is a fixed shape of that
    type and the box a fixed valid square (the eval code only reads tags, ids and geom_type).
    """
    half = MIN_BOX_SIDE
    box = [0.5 - half, 0.5 - half, 0.5 + half, 0.5 - half, 0.5 + half, 0.5 + half, 0.5 - half]
    box.append(0.5 + half)
    records = [
        dict(
            region_id=region_id,
            feature_id=feature_id,
            tags=list(tags.items()),
            geom_type=geom_type,
            geometry=shapely.to_wkb(_SHAPES[geom_type]),
            box=box,
        )
        for region_id, feature_id, tags, geom_type in rows
    ]
    return pa.Table.from_pylist(records, schema=ENTITY_SCHEMA)


def tags_of(entities: pa.Table) -> list[dict[str, str | None]]:
    """The tags column as a list of plain dicts (for assertions)."""
    return [dict(pairs) for pairs in entities.column("tags").to_pylist()]
