"""The tokenised-tiles dataset: a tile dataset read shard by shard as numpy `TileArrays`, with
an on-disk token cache.

Tokenising a shard (tag ids, outline features, boxes) is what a pass spends its time on, so it
happens once per shard: `TokenizedShards.load` reads the cache entry of (dataset build,
vocabulary, tokenizer config, seed) when there is one and writes it otherwise. Tiles with more
than ``max_entities`` entities keep a seeded random subset, chosen by ``(seed, region_id)``
only: the same tile keeps the same entities in every epoch, on every rank and worker, in their
on-disk order. Entities keep at most ``max_tags`` tags (the first ones in the stored map
order). An entity transform (the evaluation's masking, a test's edit) runs before tokenising,
and its output is never cached.

Which tiles go into which batch is the sampler's business (`geojepa.tokenize.sampler`), and
how a batch is padded is collate's (`geojepa.tokenize.collate`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely

from geojepa.constants import REGIONS_INDEX
from geojepa.data import schema
from geojepa.data.reader import TileDataset
from geojepa.errors import InputError
from geojepa.tokenize.geometry import geometry_features
from geojepa.tokenize.tags import TagVocabulary
from geojepa.tokenize.tokenizer import TokenizerConfig

log = logging.getLogger(__name__)

EntityTransform = Callable[[pa.Table], pa.Table]


def ragged(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for every (s, c), without a Python loop."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    return np.repeat(np.asarray(starts, dtype=np.int64) - run_starts(counts), counts) + np.arange(
        total
    )


def run_starts(counts: np.ndarray) -> np.ndarray:
    """Start of each run given run lengths (exclusive cumulative sum)."""
    out = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=out[1:])
    return out


@dataclass
class TileArrays:
    """Tokenised tiles of one shard (or a buffer of shards): flat, ragged numpy arrays."""

    region_ids: np.ndarray  # object [n_tiles]
    ent_count: np.ndarray  # int64 [n_tiles]; entities of tile i follow those of tile i-1
    images: np.ndarray  # object [n_tiles]: bytes or None
    feature_ids: np.ndarray  # object [n_ent]
    tag_count: np.ndarray  # int64 [n_ent]
    tag_ids: np.ndarray  # int64 [n_tags]
    geometry: np.ndarray  # float32 [n_ent, P, 2]
    scalars: np.ndarray  # float32 [n_ent, S]
    boxes: np.ndarray  # float32 [n_ent, 8]

    def __len__(self) -> int:
        return len(self.region_ids)

    def take(self, tiles: np.ndarray) -> TileArrays:
        """The given tiles (in that order)."""
        tiles = np.asarray(tiles, dtype=np.int64)
        ent = ragged(run_starts(self.ent_count)[tiles], self.ent_count[tiles])
        tags = ragged(run_starts(self.tag_count)[ent], self.tag_count[ent])
        return TileArrays(
            region_ids=self.region_ids[tiles],
            ent_count=self.ent_count[tiles],
            images=self.images[tiles],
            feature_ids=self.feature_ids[ent],
            tag_count=self.tag_count[ent],
            tag_ids=self.tag_ids[tags],
            geometry=self.geometry[ent],
            scalars=self.scalars[ent],
            boxes=self.boxes[ent],
        )

    @staticmethod
    def concat(parts: list[TileArrays]) -> TileArrays:
        if len(parts) == 1:
            return parts[0]
        names = [f.name for f in fields(parts[0])]
        return TileArrays(**{n: np.concatenate([getattr(p, n) for p in parts]) for n in names})


_CACHE_FORMAT = 2  # bump when tokenize_shard or geometry_features change their output
_NUMERIC = ("ent_count", "tag_count", "tag_ids", "geometry", "scalars", "boxes")


def token_cache_dir(
    ds: TileDataset, vocab: TagVocabulary, config: TokenizerConfig, seed: int
) -> Path:
    """Where tokenised shards of this (dataset build, vocabulary, config, seed) are cached."""
    key = json.dumps(
        {
            "format": _CACHE_FORMAT,
            "manifest": ds.manifest,
            "vocab": vocab.digest,
            "points": config.geometry_points,
            "max_entities": config.max_entities,
            "max_tags": config.max_tags,
            "seed": seed,
        },
        sort_keys=True,
        default=str,
    )
    return ds.path / "cache" / f"tokens-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _write_cache(arrays: TileArrays, path: Path) -> None:
    """Everything but the images (read from the tiles file each time), without pickles."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        region_ids=np.asarray(arrays.region_ids, dtype=str),
        feature_ids=np.asarray(arrays.feature_ids, dtype=str),
        **{k: getattr(arrays, k) for k in _NUMERIC},
    )
    tmp.replace(path)


def _read_cache(path: Path) -> TileArrays:
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in _NUMERIC}
        region_ids = z["region_ids"].astype(object)
        feature_ids = z["feature_ids"].astype(object)
    if len(feature_ids) == 0:
        feature_ids = np.zeros(0, dtype=object)
    images = np.full(len(region_ids), None, dtype=object)
    return TileArrays(region_ids=region_ids, images=images, feature_ids=feature_ids, **data)


def tokenize_shard(
    tiles: pa.Table,
    entities: pa.Table,
    vocab: TagVocabulary,
    config: TokenizerConfig,
    seed: int,
) -> TileArrays:
    """One shard's tiles and entities → `TileArrays` (numpy; run once per shard per pass)."""
    region_ids = np.asarray(tiles.column(REGIONS_INDEX).to_pylist(), dtype=object)
    n_tiles = len(region_ids)
    if "image" in tiles.column_names:
        images = np.empty(n_tiles, dtype=object)
        images[:] = tiles.column("image").to_pylist()
    else:
        images = np.full(n_tiles, None, dtype=object)

    # Entities → their tile, grouped by tile in the tiles' order (stable: on-disk order kept).
    tile_of = pd.Index(region_ids).get_indexer(entities.column(REGIONS_INDEX).to_numpy())
    keep = np.flatnonzero(tile_of >= 0)
    keep = keep[np.argsort(tile_of[keep], kind="stable")]
    counts = np.bincount(tile_of[keep], minlength=n_tiles).astype(np.int64)

    # Cap entities per tile with a choice seeded by (seed, region_id) only.
    over = np.flatnonzero(counts > config.max_entities)
    if len(over):
        starts = run_starts(counts)
        mask = np.ones(len(keep), dtype=bool)
        for t in over:
            rng = np.random.default_rng([seed, zlib.crc32(str(region_ids[t]).encode())])
            chosen = rng.choice(counts[t], size=config.max_entities, replace=False)
            drop = np.ones(counts[t], dtype=bool)
            drop[chosen] = False
            mask[starts[t] + np.flatnonzero(drop)] = False
        keep = keep[mask]
        counts = np.minimum(counts, config.max_entities)
    ents = entities.take(pa.array(keep, type=pa.int64()))
    n_ent = ents.num_rows

    # Tags: first max_tags of each entity → table rows (fallback chain in the vocabulary).
    tags = ents.column("tags").combine_chunks()
    off = tags.offsets.to_numpy().astype(np.int64)  # respects a sliced map array
    n_tags = np.diff(off)
    span = (int(off[0]), int(off[-1] - off[0])) if len(off) else (0, 0)
    pos = np.arange(span[1]) - np.repeat(run_starts(n_tags), n_tags)
    sel = pos < config.max_tags
    sel = pa.array(sel)
    keys = tags.keys.slice(*span).filter(sel)
    values = tags.items.slice(*span).filter(sel)
    tag_ids = vocab.encode(keys, values)
    tag_count = np.minimum(n_tags, config.max_tags).astype(np.int64)

    if n_ent:
        boxes = pc.list_flatten(ents.column("box").combine_chunks()).to_numpy()
        boxes = np.asarray(boxes, dtype=np.float32).reshape(n_ent, 8)
    else:
        boxes = np.zeros((0, 8), dtype=np.float32)
    geoms = shapely.from_wkb(ents.column("geometry").to_numpy(zero_copy_only=False))
    outline, scalars = geometry_features(geoms, config.geometry_points, boxes=boxes)
    return TileArrays(
        region_ids=region_ids,
        ent_count=counts,
        images=images,
        feature_ids=np.asarray(ents.column("feature_id").to_pylist(), dtype=object),
        tag_count=tag_count,
        tag_ids=tag_ids.astype(np.int64),
        geometry=outline,
        scalars=scalars,
        boxes=boxes,
    )


class TokenizedShards:
    """The tiles of a dataset as `TileArrays`, one shard at a time (see the module docstring).

    ``entity_transform`` edits each shard's entities before tokenising (never cached); ``cache``
    keeps tokenised shards (all but images) under ``DATASET/cache/tokens-<key>/``, silently off
    when the dataset directory is not writable.
    """

    def __init__(
        self,
        dataset: TileDataset,
        vocab: TagVocabulary,
        config: TokenizerConfig,
        seed: int,
        entity_transform: EntityTransform | None = None,
        cache: bool = True,
    ) -> None:
        self.dataset = dataset
        self.vocab = vocab
        self.config = config
        self.seed = seed
        self.entity_transform = entity_transform
        # An entity_transform may do anything, so its output is never cached.
        self.cache_dir = (
            token_cache_dir(dataset, vocab, config, seed)
            if cache and entity_transform is None
            else None
        )
        self._counts: dict[int, np.ndarray] | None = None

    @property
    def shards(self) -> list[int]:
        """The dataset's shard numbers, in manifest order."""
        return self.dataset.shards

    def load(self, shard: int) -> TileArrays:
        """One shard's tokenised tiles (from the token cache when it holds them)."""
        ds = self.dataset
        use_image = self.config.use_image
        path = None if self.cache_dir is None else self.cache_dir / f"shard-{shard:05d}.npz"
        if path is not None and path.is_file():
            try:
                arrays = _read_cache(path)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                log.warning("ignoring unreadable token cache %s: %s", path, exc)
            else:
                if use_image:
                    images = ds.read_tiles(shard, columns=["image"]).column("image").to_pylist()
                    if len(images) != len(arrays):
                        raise InputError(f"{path}: stale token cache (delete {path.parent})")
                    arrays.images[:] = images
                return arrays
        columns = [REGIONS_INDEX] + (["image"] if use_image else [])
        tiles = ds.read_tiles(shard, columns=columns)
        entities = ds.read_entities(shard)
        if self.entity_transform is not None:
            entities = self.entity_transform(entities)
        arrays = tokenize_shard(tiles, entities, self.vocab, self.config, self.seed)
        if path is not None:
            try:
                _write_cache(arrays, path)
            except OSError as exc:
                log.warning("cannot write the token cache in %s (%s); not caching", path, exc)
                self.cache_dir = None
        return arrays

    def load_all(self) -> TileArrays:
        """Every shard's tiles, in the dataset's order."""
        return TileArrays.concat([self.load(s) for s in self.shards])

    def load_checked(self, shard: int) -> TileArrays:
        """`load`, refusing a shard whose entity counts differ from its tiles file's: every
        rank plans batch counts from the tiles files, so a difference could hang DDP."""
        arrays = self.load(shard)
        if not np.array_equal(arrays.ent_count, self.entity_counts()[shard]):
            raise InputError(
                f"{self.dataset.path}: shard {shard}'s entities disagree with the tiles file's "
                "n_entities (an entity_transform, or a damaged dataset): token-budget batches "
                "under DDP need them equal"
            )
        return arrays

    def shard_sizes(self) -> list[int]:
        """Tiles per shard, from the tiles files' metadata."""
        ds = self.dataset
        return [pq.ParquetFile(ds.path / schema.tiles_file(s)).metadata.num_rows for s in ds.shards]

    def entity_counts(self) -> dict[int, np.ndarray]:
        """Per shard, the entities each tile keeps (capped), from the tiles files only."""
        if self._counts is None:
            cap = self.config.max_entities
            self._counts = {
                s: np.minimum(
                    self.dataset.read_tiles(s, columns=["n_entities"])
                    .column("n_entities")
                    .to_numpy()
                    .astype(np.int64),
                    cap,
                )
                for s in self.dataset.shards
            }
        return self._counts
