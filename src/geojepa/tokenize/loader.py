"""Streaming tile batches from a dataset on disk: shard by shard, split across DDP ranks and
DataLoader workers, seeded, with vectorised collation into `TileBatch`.

How a pass (epoch) runs:

1. The shard list is shuffled with ``(seed, epoch)`` (kept in manifest order when
   ``shuffle=False``) and split over every (rank, worker) slot. Single process: round robin.
   Under DDP shards are dealt greedily to the least-loaded slot, and with ``even_ranks`` each
   worker slot then stops after the same number of tiles on every rank (the smallest load of
   that slot over the ranks), so every rank yields the same number of batches and DDP never
   waits on a rank that ran out. That drops at most about one shard per slot per epoch; which
   tiles are dropped changes with the epoch.
2. A worker reads its shards one at a time, tokenises each shard's tiles once (tag ids,
   geometry features, boxes; numpy) and keeps them in a buffer of at least ``shuffle_buffer``
   tiles, whose order is shuffled with ``(seed, epoch, rank, worker)``. Tiles left over from a
   buffer move on to the next one, so every batch is full except the last.
3. Tiles with more than ``max_entities`` entities keep a seeded random subset, chosen by
   ``(seed, region_id)`` only: the same tile keeps the same entities in every epoch, on every
   rank and worker, in their on-disk order. Entities keep at most ``max_tags`` tags (the first
   ones in the stored map order).

With ``tokens_per_batch`` (token-budget batching, `TileBatcher`), step 2 cuts each buffer,
sorted by tile length, into batches of at most that many real tokens (sum of tile lengths),
and under DDP every rank runs all ranks' plans on the tiles files' entity counts alone to stop
each worker slot after the same number of *batches* on every rank.

``shuffle=False`` with ``num_workers=0`` and one process yields every tile exactly once, in the
dataset's order (the way to embed a whole dataset). With workers, every tile still comes
exactly once but batches of different workers interleave.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from geojepa import interrupt
from geojepa.data import schema
from geojepa.data.reader import TileDataset, open_dataset
from geojepa.errors import ConfigError, InputError
from geojepa.tokenize.batch import TileBatch
from geojepa.tokenize.geometry import N_SCALARS, geometry_features
from geojepa.tokenize.tags import TagVocabulary
from geojepa.tokenize.tokenizer import TokenizerConfig

log = logging.getLogger(__name__)

EntityTransform = Callable[[pa.Table], pa.Table]


def _ragged(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for every (s, c), without a Python loop."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    return np.repeat(np.asarray(starts, dtype=np.int64) - _offsets(counts), counts) + np.arange(
        total
    )


def _offsets(counts: np.ndarray) -> np.ndarray:
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
        ent = _ragged(_offsets(self.ent_count)[tiles], self.ent_count[tiles])
        tags = _ragged(_offsets(self.tag_count)[ent], self.tag_count[ent])
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
    region_ids = np.asarray(tiles.column("region_id").to_pylist(), dtype=object)
    n_tiles = len(region_ids)
    if "image" in tiles.column_names:
        images = np.empty(n_tiles, dtype=object)
        images[:] = tiles.column("image").to_pylist()
    else:
        images = np.full(n_tiles, None, dtype=object)

    # Entities → their tile, grouped by tile in the tiles' order (stable: on-disk order kept).
    tile_of = pd.Index(region_ids).get_indexer(entities.column("region_id").to_numpy())
    keep = np.flatnonzero(tile_of >= 0)
    keep = keep[np.argsort(tile_of[keep], kind="stable")]
    counts = np.bincount(tile_of[keep], minlength=n_tiles).astype(np.int64)

    # Cap entities per tile with a choice seeded by (seed, region_id) only.
    over = np.flatnonzero(counts > config.max_entities)
    if len(over):
        starts = _offsets(counts)
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
    pos = np.arange(span[1]) - np.repeat(_offsets(n_tags), n_tags)
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


def collate(arrays: TileArrays, image_size: int | None) -> TileBatch:
    """All tiles of ``arrays`` → one padded `TileBatch` (entities padded to the batch max)."""
    b = len(arrays)
    counts = arrays.ent_count
    e = max(1, int(counts.max(initial=0)))
    n_ent = int(counts.sum())
    row = np.repeat(np.arange(b), counts)
    col = np.arange(n_ent) - np.repeat(_offsets(counts), counts)
    p = arrays.geometry.shape[1]

    valid = np.zeros((b, e), dtype=bool)
    valid[row, col] = True
    geometry = np.zeros((b, e, p, 2), dtype=np.float32)
    geometry[row, col] = arrays.geometry
    scalars = np.zeros((b, e, N_SCALARS), dtype=np.float32)
    scalars[row, col] = arrays.scalars
    boxes = np.zeros((b, e, 8), dtype=np.float32)
    boxes[row, col] = arrays.boxes

    tc = arrays.tag_count
    t = max(1, int(tc.max(initial=0)))
    trow = np.repeat(np.arange(n_ent), tc)
    tcol = np.arange(len(arrays.tag_ids)) - np.repeat(_offsets(tc), tc)
    ent_tags = np.zeros((n_ent, t), dtype=np.int64)
    ent_tags[trow, tcol] = arrays.tag_ids
    tag_ids = np.zeros((b, e, t), dtype=np.int64)
    tag_ids[row, col] = ent_tags

    has_image = np.array([img is not None for img in arrays.images], dtype=bool)
    image = None
    if image_size is not None and has_image.any():
        npx = image_size * image_size * 3
        have = np.flatnonzero(has_image)
        raws = [arrays.images[i] for i in have]
        bad = [i for i, raw in zip(have, raws, strict=True) if len(raw) != npx]
        if bad:
            i = bad[0]
            raise InputError(
                f"tile {arrays.region_ids[i]}: image has {len(arrays.images[i])} bytes, "
                f"expected {npx} ({image_size}×{image_size}×3)"
            )
        pixels = np.zeros((b, image_size, image_size, 3), dtype=np.uint8)
        shape = (len(have), image_size, image_size, 3)
        pixels[have] = np.frombuffer(b"".join(raws), dtype=np.uint8).reshape(shape)
        image = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()

    split = np.cumsum(counts)[:-1]
    return TileBatch(
        region_ids=[str(r) for r in arrays.region_ids],
        feature_ids=[f.tolist() for f in np.split(arrays.feature_ids, split)],
        entity_valid=torch.from_numpy(valid),
        tag_ids=torch.from_numpy(tag_ids),
        geometry=torch.from_numpy(geometry),
        geometry_scalars=torch.from_numpy(scalars),
        entity_box=torch.from_numpy(boxes),
        image=image,
        image_valid=torch.from_numpy(has_image & (image is not None)),
    )


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def plan_shards(
    shards: list[int],
    sizes: list[int] | None,
    world: int,
    workers: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    even_ranks: bool = True,
) -> tuple[list[list[list[int]]], list[int] | None]:
    """Shards of every (rank, worker) slot, ``plan[rank][worker]``, and per-worker tile quotas
    (the same on every rank) or None (no cap). ``sizes``: tiles per shard, needed if world > 1.
    """
    order = list(shards)
    if shuffle:
        perm = np.random.default_rng([seed, epoch]).permutation(len(order))
        order = [order[i] for i in perm]
    slots = world * workers
    plan: list[list[int]] = [[] for _ in range(slots)]
    if world == 1 or sizes is None:
        for i, s in enumerate(order):
            plan[i % slots].append(s)
        quotas = None
    else:
        size_of = dict(zip(shards, sizes, strict=True))
        load = np.zeros(slots, dtype=np.int64)
        for s in order:
            k = int(np.argmin(load))
            plan[k].append(s)
            load[k] += size_of[s]
        quotas = load.reshape(world, workers).min(axis=0).tolist() if even_ranks else None
    nested = [[plan[r * workers + w] for w in range(workers)] for r in range(world)]
    return nested, quotas


class TileBatcher:
    """The batch sampler: splits a buffer of tiles into batches, apart from the data and collate.

    Fixed size (``tokens_per_batch=None``): runs of ``batch_size`` tiles of the (shuffled)
    buffer, the rest carried over. Token budget: the buffer is sorted by token count (a stable
    sort of the shuffled order, so equal lengths stay in random order), cut greedily into
    batches of at most ``tokens_per_batch`` *real* tokens (the sum of the tiles' `lengths`: the
    model runs packed, so real tokens are what a step computes; sorting keeps the tiles of a
    batch of similar length, so the padded attention layout on CPU stays small too), and the
    batches are shuffled; the last, unfilled batch is carried over. A tile bigger than the
    budget forms a batch on its own.
    ``batch_size`` is not used in budget mode: the budget decides how many tiles a batch holds.
    """

    def __init__(
        self, batch_size: int, tokens_per_batch: int | None = None, extra_tokens: int = 0
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1 (got {batch_size})")
        if tokens_per_batch is not None and tokens_per_batch < 1:
            raise ConfigError(f"tokens_per_batch must be at least 1 (got {tokens_per_batch})")
        self.batch_size = batch_size
        self.tokens_per_batch = tokens_per_batch
        self.extra_tokens = extra_tokens  # e.g. image tokens, the same for every tile

    def lengths(self, ent_count: np.ndarray) -> np.ndarray:
        """Tokens each tile costs (at least 1: an empty tile still takes a row)."""
        return np.maximum(np.asarray(ent_count, dtype=np.int64) + self.extra_tokens, 1)

    def split(
        self, ent_count: np.ndarray, rng: np.random.Generator, shuffle: bool
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """(full batches, leftover tiles) as index arrays into the buffer."""
        n = len(ent_count)
        order = rng.permutation(n) if shuffle else np.arange(n)
        budget = self.tokens_per_batch
        if budget is None:
            bs = self.batch_size
            n_full = (n // bs) * bs
            return [order[j : j + bs] for j in range(0, n_full, bs)], order[n_full:]
        lens = self.lengths(ent_count)
        order = order[np.argsort(lens[order], kind="stable")]
        batches: list[np.ndarray] = []
        start, tokens = 0, 0
        for i, length in enumerate(lens[order].tolist()):  # ascending lengths
            if i > start and tokens + length > budget:
                batches.append(order[start:i])
                start, tokens = i, 0
            tokens += length  # real tokens of the batch so far
        rest = order[start:]
        if tokens >= budget:  # the last batch is full (or one tile over the budget)
            batches.append(rest)
            rest = order[n:]
        if shuffle and batches:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches, rest


@dataclass
class _Lengths:
    """Entity counts only: stands in for `TileArrays` to plan batches without reading them."""

    ent_count: np.ndarray

    def __len__(self) -> int:
        return len(self.ent_count)

    def take(self, tiles: np.ndarray) -> _Lengths:
        return _Lengths(self.ent_count[np.asarray(tiles, dtype=np.int64)])

    @staticmethod
    def concat(parts: list[_Lengths]) -> _Lengths:
        return _Lengths(np.concatenate([p.ent_count for p in parts]))


class TileStream(IterableDataset):
    """Iterable of `TileBatch` over a tile dataset (see the module docstring).

    Three parts, each replaceable: `_load` (the dataset of tokenised tiles, shard by shard, with
    the token cache), ``batcher`` (a `TileBatcher`: which tiles go together) and `collate`.
    """

    def __init__(
        self,
        dataset: TileDataset,
        vocab: TagVocabulary,
        config: TokenizerConfig,
        batch_size: int,
        shuffle: bool,
        seed: int,
        entity_transform: EntityTransform | None = None,
        drop_last: bool = False,
        shuffle_buffer: int = 1024,
        even_ranks: bool = True,
        cache: bool = True,
        tokens_per_batch: int | None = None,
    ) -> None:
        super().__init__()
        extra = config.n_image_tokens if config.use_image else 0
        self.batcher = TileBatcher(batch_size, tokens_per_batch, extra)
        self.dataset = dataset
        self.vocab = vocab
        self.config = config
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.entity_transform = entity_transform
        self.drop_last = drop_last
        self.shuffle_buffer = max(shuffle_buffer, batch_size) if shuffle else batch_size
        if tokens_per_batch is not None:
            self.shuffle_buffer = max(shuffle_buffer, 1)  # sorting needs a pool, shuffled or not
        self.even_ranks = even_ranks
        # An entity_transform may do anything, so its output is never cached.
        self.cache_dir = (
            token_cache_dir(dataset, vocab, config, seed)
            if cache and entity_transform is None
            else None
        )
        # A tensor, not an int: `TileLoader` moves it to shared memory for persistent workers,
        # whose copies of this stream then see each new epoch.
        self._epoch = torch.zeros((), dtype=torch.long)
        self._counts: dict[int, np.ndarray] | None = None

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (the shuffling depends on ``(seed, epoch)`` only)."""
        self._epoch.fill_(epoch)

    def _shard_sizes(self) -> list[int]:
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

    def _load(self, shard: int) -> TileArrays:
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
        columns = ["region_id"] + (["image"] if use_image else [])
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

    def _index_batches(
        self,
        shards: list[int],
        load: Callable[[int], TileArrays | _Lengths],
        rng: np.random.Generator,
        tile_quota: int | None,
        batch_quota: int | None,
    ) -> Iterator[tuple[TileArrays | _Lengths, np.ndarray]]:
        """(buffer, tiles of one batch) for one (rank, worker) slot: the plan without collation."""
        emitted, n_batches = 0, 0
        buffer = None
        for i, shard in enumerate(shards):
            if tile_quota is not None and emitted >= tile_quota:
                return
            part = load(shard)
            buffer = part if buffer is None else type(part).concat([buffer, part])
            if len(buffer) < self.shuffle_buffer and i < len(shards) - 1:
                continue
            full, rest = self.batcher.split(buffer.ent_count, rng, self.shuffle)
            for take in full:
                if batch_quota is not None and n_batches >= batch_quota:
                    return
                if tile_quota is not None and len(take) > tile_quota - emitted:
                    take = take[: tile_quota - emitted]  # this slot's quota ends in this batch
                    if len(take) and not self.drop_last:
                        yield buffer, take
                    return
                yield buffer, take
                emitted += len(take)
                n_batches += 1
            buffer = buffer.take(rest)  # leftovers join the next buffer
        if buffer is None or self.drop_last:
            return
        if batch_quota is not None and n_batches >= batch_quota:
            return
        n = len(buffer) if tile_quota is None else min(len(buffer), tile_quota - emitted)
        if n > 0:
            yield buffer, np.arange(n)

    def _quotas(
        self, plan: list[list[list[int]]], quotas: list[int] | None, wid: int
    ) -> tuple[int | None, int | None]:
        """(tiles, batches) worker ``wid`` may yield so that every rank stops together: a tile
        quota without a token budget, a batch quota with one; (None, None) on a single rank."""
        if quotas is None:
            return None, None
        if self.batcher.tokens_per_batch is None:
            return quotas[wid], None
        return None, self._batch_quota(plan, wid)

    def _length_loader(self) -> Callable[[int], _Lengths]:
        """Shard → its tiles' lengths from the entity counts alone (no tokenising)."""
        counts = self.entity_counts()

        def load(s: int) -> _Lengths:
            return _Lengths(counts[s])

        return load

    def _batch_quota(self, plan: list[list[list[int]]], wid: int) -> int:
        """Batches worker ``wid`` yields on every rank under a token budget: the fewest over the
        ranks, found by running every rank's plan on the entity counts alone (no tokenising)."""
        load = self._length_loader()
        return min(
            sum(
                1
                for _ in self._index_batches(
                    plan[r][wid], load, self._rng(r, wid), tile_quota=None, batch_quota=None
                )
            )
            for r in range(len(plan))
        )

    def _load_checked(self, shard: int) -> TileArrays:
        """`_load`, refusing a shard whose entity counts differ from its tiles file's: every
        rank plans batch counts from the tiles files, so a difference could hang DDP."""
        arrays = self._load(shard)
        if not np.array_equal(arrays.ent_count, self.entity_counts()[shard]):
            raise InputError(
                f"{self.dataset.path}: shard {shard}'s entities disagree with the tiles file's "
                "n_entities (an entity_transform, or a damaged dataset): token-budget batches "
                "under DDP need them equal"
            )
        return arrays

    def _rng(self, rank: int, wid: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, rank, wid])

    def __iter__(self) -> Iterator[TileBatch]:
        rank, world = _dist_info()
        info = get_worker_info()
        wid, workers = (0, 1) if info is None else (info.id, info.num_workers)
        sizes = self._shard_sizes() if world > 1 else None
        plan, quotas = plan_shards(
            self.dataset.shards,
            sizes,
            world,
            workers,
            self.shuffle,
            self.seed,
            self.epoch,
            self.even_ranks,
        )
        tile_quota, batch_quota = self._quotas(plan, quotas, wid)
        image_size = self.dataset.config.image_size if self.config.use_image else None
        load = self._load
        if batch_quota is not None:
            load = self._load_checked  # the plan must see the lengths the run sees
        for buffer, take in self._index_batches(
            plan[rank][wid], load, self._rng(rank, wid), tile_quota, batch_quota
        ):
            assert isinstance(buffer, TileArrays)
            yield collate(buffer.take(take), image_size)

    def planned_batches(self, world: int = 1, workers: int = 1) -> int:
        """Batches rank 0 yields in this epoch (from entity counts only; for step schedules)."""
        sizes = self._shard_sizes() if world > 1 else None
        plan, quotas = plan_shards(
            self.dataset.shards, sizes, world, workers, self.shuffle, self.seed, self.epoch,
            self.even_ranks,
        )  # fmt: skip
        load = self._length_loader()
        total = 0
        for wid in range(workers):
            tile_quota, batch_quota = self._quotas(plan, quotas, wid)
            plan_0 = self._index_batches(
                plan[0][wid], load, self._rng(0, wid), tile_quota, batch_quota
            )
            total += sum(1 for _ in plan_0)
        return total


def _identity(batch: TileBatch) -> TileBatch:
    return batch


def _ignore_sigint(worker_id: int) -> None:
    """Workers leave Ctrl-C and SIGTERM to the main process, which stops at a step boundary and
    shuts them down; a worker that took the group's signal itself would exit and fail the next
    batch."""
    for signum in interrupt.SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class TileLoader(DataLoader):
    """A DataLoader of `TileBatch`; each new iteration reshuffles as the next epoch.

    Workers (``num_workers > 0``) are persistent: started once, they keep their copy of the
    stream between epochs, so the stream's epoch lives in shared memory and the epoch set in
    `__iter__` (before the workers are told to start the next pass) reaches them.
    """

    def __init__(self, stream: TileStream, num_workers: int = 0, **kwargs) -> None:
        if num_workers > 0:
            stream._epoch.share_memory_()
            kwargs.setdefault("persistent_workers", True)
            kwargs.setdefault("worker_init_fn", _ignore_sigint)
        super().__init__(
            stream, batch_size=None, collate_fn=_identity, num_workers=num_workers, **kwargs
        )
        self._next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (e.g. after resuming from a checkpoint)."""
        self._next_epoch = epoch

    def close(self) -> None:
        """Stop the persistent workers now (else they idle until the loader is collected)."""
        it, self._iterator = self._iterator, None  # DataLoader's live (persistent) iterator
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    def __iter__(self):
        self.dataset.set_epoch(self._next_epoch)
        self._next_epoch += 1
        return super().__iter__()


def make_dataloader(
    dataset: str | Path | TileDataset,
    vocab: TagVocabulary,
    config: TokenizerConfig,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    entity_transform: EntityTransform | None = None,
    drop_last: bool = False,
    *,
    shuffle_buffer: int = 1024,
    even_ranks: bool = True,
    pin_memory: bool = False,
    cache: bool = True,
    tokens_per_batch: int | None = None,
) -> TileLoader:
    """A streaming DataLoader of `TileBatch` (see the module docstring for the guarantees).

    ``entity_transform`` must be a picklable module-level callable when ``num_workers > 0``.
    ``even_ranks=False`` keeps every tile under DDP (ranks may then yield different counts).
    ``cache``: keep tokenised shards (all but images) under ``DATASET/cache/tokens-<key>/``
    so later epochs skip parsing geometry and tags; off with an ``entity_transform``, and
    silently off when the dataset directory is not writable.
    ``tokens_per_batch``: form batches by a budget of real tokens with length bucketing
    instead of ``batch_size`` tiles (see `TileBatcher`). Workers are persistent (started
    once per loader, not once per epoch); each epoch still reshuffles (see `TileLoader`).
    """
    ds = dataset if isinstance(dataset, TileDataset) else open_dataset(dataset)
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0 (got {num_workers})")
    stream = TileStream(
        ds,
        vocab,
        config,
        batch_size,
        shuffle,
        seed,
        entity_transform=entity_transform,
        drop_last=drop_last,
        shuffle_buffer=shuffle_buffer,
        even_ranks=even_ranks,
        cache=cache,
        tokens_per_batch=tokens_per_batch,
    )
    return TileLoader(stream, num_workers=num_workers, pin_memory=pin_memory)
