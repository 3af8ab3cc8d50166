"""Per-feature entity embeddings: one row per OSM feature, pooled from its per-tile clips.

The model embeds an entity in the context of one tile, so a feature crossing tiles has one
embedding per (tile, feature) clip, and ``feature_id`` alone is not a key of the clip table
(its key is ``(feature_id, region_id)``). The per-feature table has a unique ``feature_id``:

* ``emb_*``: the **mean of the feature's clip embeddings, each clip weighted equally**;
* ``n_clips`` and ``region_ids`` (the tiles of its clips, ``;``-separated, sorted);
* ``tags`` (the feature's tags: the same on every clip);
* the geometry: the union of its clips (lines merged), i.e. the feature's whole geometry as
  far as the dataset holds it (clipped to the prepared area).

Memory stays bounded by a shard plus the features that cross shards: a first, cheap pass over
the dataset's ``feature_id`` columns finds the last shard of each such feature, and a feature is
written as soon as its last shard is done.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from geojepa.constants import REGIONS_INDEX
from geojepa.data.reader import TileDataset

POOLING = "mean of the feature's clip embeddings, each clip weighted equally"
#: The two layouts of the entity output (``geojepa embed --entity-rows``).
ENTITY_ROWS = ("feature", "clip")


class Sink(Protocol):
    def write(self, frame: pd.DataFrame, geometry: np.ndarray) -> None: ...


def last_shards(ds: TileDataset) -> dict[str, int]:
    """``{feature_id: last shard}`` for the features whose clips lie in more than one shard."""
    parts = []
    for shard in ds.shards:
        ids = ds.read_entities(shard, columns=["feature_id"]).column("feature_id")
        ids = pc.unique(ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids)
        parts.append(pa.table({"f": ids, "s": pa.array(np.full(len(ids), shard, np.int64))}))
    if not parts:
        return {}
    grouped = pa.concat_tables(parts).group_by("f").aggregate([("s", "count"), ("s", "max")])
    multi = grouped.filter(pc.greater(grouped.column("s_count"), 1))
    return dict(zip(multi.column("f").to_pylist(), multi.column("s_max").to_pylist(), strict=True))


#: Clip ends computed in neighbouring tiles differ by float noise; snapping to this grid
#: (degrees, ~0.1 mm) lets their union close up again.
SNAP_DEGREES = 1e-9


def _whole(parts: np.ndarray) -> Any:
    """One geometry from a feature's clips: their union, lines merged back into one."""
    if len(parts) == 1:
        return parts[0]
    merged = shapely.union_all(parts, grid_size=SNAP_DEGREES)
    if merged.geom_type == "MultiLineString":
        merged = shapely.line_merge(merged)
    return merged


def pool_features(clips: pd.DataFrame, geometry: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Per-feature rows (see the module docstring) from complete sets of clips."""
    emb = [c for c in clips.columns if str(c).startswith("emb_")]
    groups = clips.groupby(level="feature_id", sort=False)
    frame = groups[emb].mean()
    frame.insert(0, "n_clips", groups.size().astype(np.int32).to_numpy())
    frame.insert(1, "region_ids", groups[REGIONS_INDEX].agg(lambda r: ";".join(sorted(r))).values)
    frame.insert(2, "tags", groups["tags"].first().to_numpy())
    positions = groups.indices
    whole = np.empty(len(frame), dtype=object)
    for i, fid in enumerate(frame.index):
        whole[i] = _whole(np.asarray(geometry)[positions[fid]])
    frame[emb] = frame[emb].astype(np.float32)
    return frame, whole


class FeatureWriter:
    """Pools clips into features shard by shard and passes complete ones to ``sink``.

    ``last``: :func:`last_shards` of the dataset; call :meth:`add` once per shard, in order
    (with ``None`` when the shard had no entity rows), then :meth:`finish`.
    """

    def __init__(self, sink: Sink, last: dict[str, int]) -> None:
        self.sink = sink
        self.last = last
        self._held: list[tuple[pd.DataFrame, np.ndarray]] = []

    def add(self, shard: int, clips: pd.DataFrame | None, geometry: np.ndarray | None) -> None:
        parts = list(self._held)
        if clips is not None and len(clips):
            parts.append((clips, np.asarray(geometry, dtype=object)))
        self._held = []
        if not parts:
            return
        frame = pd.concat([f for f, _ in parts])
        geoms = np.concatenate([g for _, g in parts])
        later = np.array([self.last.get(f, shard) > shard for f in frame.index], dtype=bool)
        if later.any():  # clips of features that continue in a later shard: keep them
            self._held = [(frame[later], geoms[later])]
        if (~later).any():
            self.sink.write(*pool_features(frame[~later], geoms[~later]))

    def finish(self) -> None:
        """Write what is still held (features whose last clips were not embedded)."""
        if self._held:
            frame, geoms = self._held[0]
            self._held = []
            self.sink.write(*pool_features(frame, geoms))
