"""The on-disk tile dataset: the one contract between `prepare` and everything that reads it.

Layout of a dataset directory::

    DATASET/
      config.json              PrepareConfig used to build it (written first; resume checks it)
      manifest.json            written last, atomically: counts, vocabulary size, source checksum,
                               creation time, shard list. A dataset without it is incomplete.
      vocab.parquet            tag vocabulary: key (str), value (str|null), count (int64),
                               sorted by count desc then key, value. value null = key-only entry
                               (free-text value dropped by the tag filter).
      shards/
        tiles-00000.parquet    one row per tile   (TILE_SCHEMA)
        entities-00000.parquet one row per (tile, entity) clip (ENTITY_SCHEMA), sorted by
                               region_id in the same order as the tiles file.

A shard is complete iff its ``tiles-*.parquet`` exists: the entities file is renamed into place
first, the tiles file last, each from a temporary name, so an interrupted run never leaves a
shard that reads as complete.

Coordinates. Entity geometries are stored in **tile-local coordinates**: the tile's Web-Mercator
square mapped to [0, 1]², x growing east, y growing **south** (like image rows), so that
``local = ((mx - left) / size, (top - my) / size)`` for Mercator metres ``(mx, my)``. This is an
affine map of Web-Mercator, so clipping in local space is exact and ``to_lonlat`` inverts it.

Boxes. Every entity carries the 8 numbers of its minimum rotated bounding rectangle in local
coordinates: corners ``(x0, y0, x1, y1, x2, y2, x3, y3)``. Corner order (used everywhere):
corner 0 is the corner with the smallest ``x + y`` (ties: smaller y), and the others follow
**clockwise as seen on screen** (y down), i.e. for an axis-aligned box: top-left, top-right,
bottom-right, bottom-left. Each side is at least ``MIN_BOX_SIDE`` (points become a small square
centred on the point; thin lines a thin rectangle), so no box is degenerate.
"""

from __future__ import annotations

import pyarrow as pa

from geojepa.constants import REGIONS_INDEX

FORMAT_VERSION = 1

#: Smallest side of an entity box, in tile units (1/256 of a tile ≈ 2.4 m at z16, 45°N).
MIN_BOX_SIDE = 1.0 / 256.0

CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
VOCAB_FILE = "vocab.parquet"
SHARD_DIR = "shards"


def tiles_file(shard: int) -> str:
    return f"{SHARD_DIR}/tiles-{shard:05d}.parquet"


def entities_file(shard: int) -> str:
    return f"{SHARD_DIR}/entities-{shard:05d}.parquet"


TAGS_TYPE = pa.map_(pa.string(), pa.string())  # value may be null: key kept, value dropped

TILE_SCHEMA = pa.schema(
    [
        pa.field(REGIONS_INDEX, pa.string(), nullable=False),  # "z/x/y"
        pa.field("z", pa.int8(), nullable=False),
        pa.field("x", pa.int32(), nullable=False),
        pa.field("y", pa.int32(), nullable=False),
        pa.field("west", pa.float64(), nullable=False),  # EPSG:4326 bounds
        pa.field("south", pa.float64(), nullable=False),
        pa.field("east", pa.float64(), nullable=False),
        pa.field("north", pa.float64(), nullable=False),
        pa.field("n_entities", pa.int32(), nullable=False),
        # uint8 RGB, row-major (H, W, 3), H = W = PrepareConfig.image_size; null = no imagery
        pa.field("image", pa.binary(), nullable=True),
        # fraction of image pixels that came from valid (non-nodata) raster data
        pa.field("image_coverage", pa.float32(), nullable=True),
    ]
)

ENTITY_SCHEMA = pa.schema(
    [
        pa.field(REGIONS_INDEX, pa.string(), nullable=False),
        pa.field("feature_id", pa.string(), nullable=False),  # node/1, way/2, relation/3
        pa.field("tags", TAGS_TYPE, nullable=False),
        pa.field("geom_type", pa.string(), nullable=False),  # shapely geom_type of the clip
        pa.field("geometry", pa.binary(), nullable=False),  # WKB, tile-local coordinates
        pa.field("box", pa.list_(pa.float32(), 8), nullable=False),  # see corner order above
    ]
)
