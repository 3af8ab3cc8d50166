"""Small synthetic tile datasets in the on-disk layout of `geojepa.data.schema`.

For tests of everything downstream of `prepare` (loader, tokenizer, model)
without building a dataset from OSM. Geometries, tags and images are random but seeded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from geojepa.constants import REGIONS_INDEX
from geojepa.data import schema
from geojepa.data.config import PrepareConfig
from geojepa.data.tiling import tile_bounds_lonlat
from geojepa.tokenize.geometry import box_corners

#: (key, value or None) pools per geometry kind; values None = key-only tag.
_POINT_TAGS = [("amenity", "bench"), ("highway", "traffic_signals"), ("natural", "tree")]
_LINE_TAGS = [("highway", "residential"), ("highway", "footway"), ("maxspeed", "50")]
_AREA_TAGS = [("building", "yes"), ("building:levels", None), ("landuse", "grass")]
#: Tags that appear in entities but not in the written vocabulary (exercise the fallback).
_RARE_TAGS = [("building", "cathedral"), ("roof:shape:detail", "odd"), ("zzz_unseen", "1")]


def _random_entity(rng: np.random.Generator) -> tuple[shapely.Geometry, list]:
    kind = rng.choice(["point", "line", "polygon", "multipolygon"], p=[0.35, 0.3, 0.3, 0.05])
    cx, cy = rng.uniform(0.1, 0.9, size=2)
    if kind == "point":
        geom, pool = shapely.Point(cx, cy), _POINT_TAGS
    elif kind == "line":
        n = int(rng.integers(2, 6))
        pts = np.cumsum(rng.normal(scale=0.05, size=(n, 2)), axis=0) + np.array([cx, cy])
        geom, pool = shapely.LineString(np.clip(pts, 0, 1)), _LINE_TAGS
    else:
        w, h = rng.uniform(0.01, 0.08, size=2)
        geom = shapely.affinity.rotate(
            shapely.box(cx - w, cy - h, cx + w, cy + h), float(rng.uniform(0, 90))
        )
        if kind == "multipolygon":
            geom = shapely.MultiPolygon([geom, shapely.affinity.translate(geom, 0.05, 0.02)])
        geom, pool = shapely.clip_by_rect(geom, 0, 0, 1, 1), _AREA_TAGS
    n_tags = int(rng.integers(1, 4))
    tags = [pool[i] for i in rng.choice(len(pool), size=min(n_tags, len(pool)), replace=False)]
    if rng.random() < 0.15:
        tags.append(_RARE_TAGS[int(rng.integers(len(_RARE_TAGS)))])
    return geom, tags


def write_synthetic_dataset(
    path: str | Path,
    n_shards: int = 3,
    tiles_per_shard: tuple[int, int] = (3, 9),
    entities_per_tile: tuple[int, int] = (0, 12),
    image_size: int | None = None,
    image_fraction: float = 0.7,
    zoom: int = 16,
    seed: int = 0,
) -> Path:
    """Write a complete dataset (config, vocab, shards, manifest) to ``path``; return it."""
    path = Path(path)
    (path / schema.SHARD_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    config = PrepareConfig(zoom=zoom, image_size=image_size or 32)
    config.save(path / schema.CONFIG_FILE)
    counts: dict[tuple[str, str | None], int] = {}
    n_tiles_total = n_ent_total = 0
    base_x, base_y = 35200, 21500
    for shard in range(n_shards):
        n_tiles = int(rng.integers(*tiles_per_shard))
        xs = base_x + shard * 8 + np.arange(n_tiles) % 8
        ys = np.full(n_tiles, base_y) + np.arange(n_tiles) // 8
        west, south, east, north = tile_bounds_lonlat(zoom, xs, ys)
        region_ids = [f"{zoom}/{x}/{y}" for x, y in zip(xs, ys, strict=True)]
        n_ents = rng.integers(*entities_per_tile, size=n_tiles)
        images: list[bytes | None] = []
        coverage: list[float | None] = []
        for _ in range(n_tiles):
            if image_size and rng.random() < image_fraction:
                pixels = rng.integers(0, 256, size=(image_size, image_size, 3), dtype=np.uint8)
                images.append(pixels.tobytes())
                coverage.append(1.0)
            else:
                images.append(None)
                coverage.append(None)
        tiles = pa.table(
            {
                REGIONS_INDEX: region_ids,
                "z": np.full(n_tiles, zoom, dtype=np.int8),
                "x": xs.astype(np.int32),
                "y": ys.astype(np.int32),
                "west": west,
                "south": south,
                "east": east,
                "north": north,
                "n_entities": n_ents.astype(np.int32),
                "image": images,
                "image_coverage": coverage,
            },
            schema=schema.TILE_SCHEMA,
        )
        rows: dict[str, list] = {k: [] for k in (REGIONS_INDEX, "feature_id", "tags", "geom")}
        for t, rid in enumerate(region_ids):
            for _ in range(int(n_ents[t])):
                geom, tags = _random_entity(rng)
                kind = "node" if geom.geom_type == "Point" else "way"
                rows[REGIONS_INDEX].append(rid)
                rows["feature_id"].append(f"{kind}/{int(rng.integers(1, 10**9))}")
                rows["tags"].append(tags)
                rows["geom"].append(geom)
                for tag in tags:
                    if tag not in _RARE_TAGS:
                        counts[tag] = counts.get(tag, 0) + 1
        geoms = np.array(rows["geom"], dtype=object)
        entities = pa.table(
            {
                REGIONS_INDEX: rows[REGIONS_INDEX],
                "feature_id": rows["feature_id"],
                "tags": rows["tags"],
                "geom_type": [g.geom_type for g in geoms],
                "geometry": list(shapely.to_wkb(geoms)) if len(geoms) else [],
                "box": list(box_corners(geoms)),
            },
            schema=schema.ENTITY_SCHEMA,
        )
        pq.write_table(entities, path / schema.entities_file(shard))
        pq.write_table(tiles, path / schema.tiles_file(shard))
        n_tiles_total += n_tiles
        n_ent_total += entities.num_rows
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][1] or ""))
    vocab = pa.table(
        {
            "key": [k for (k, _), _ in ordered],
            "value": [v for (_, v), _ in ordered],
            "count": pa.array([c for _, c in ordered], type=pa.int64()),
        }
    )
    pq.write_table(vocab, path / schema.VOCAB_FILE)
    manifest = {
        "format_version": schema.FORMAT_VERSION,
        "n_tiles": n_tiles_total,
        "n_entities": n_ent_total,
        "vocab_size": vocab.num_rows,
        "shards": list(range(n_shards)),
        "synthetic": True,
    }
    (path / schema.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return path
