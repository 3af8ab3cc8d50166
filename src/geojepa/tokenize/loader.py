"""Streaming tile batches from a dataset on disk: shard by shard, split across DDP ranks and
DataLoader workers, seeded, collated into `TileBatch`.

`TileStream` wires three parts, each its own module and each replaceable, torchgeo-style:

* the dataset, `TokenizedShards` (`geojepa.tokenize.shards`): a shard's tiles tokenised once
  (tag ids, geometry features, boxes; numpy) or read from the token cache, with the seeded cap
  of ``max_entities`` per tile and ``max_tags`` per entity;
* the sampler, `ShardSampler` + `TileBatcher` (`geojepa.tokenize.sampler`): the shards of each
  (rank, worker) slot, the seeded shuffle buffer, fixed-size or token-budget batches, and the
  quotas that make every rank yield the same number of batches under DDP;
* `collate` (`geojepa.tokenize.collate`): the tiles of one batch → a padded `TileBatch`.

This module adds what a pass needs around them: the rank and worker of the running process, the
epoch (shared with persistent workers) and the DataLoader.

``shuffle=False`` with ``num_workers=0`` and one process yields every tile exactly once, in the
dataset's order (the way to embed a whole dataset). With workers, every tile still comes
exactly once but batches of different workers interleave.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from geojepa import interrupt
from geojepa.data.reader import TileDataset, open_dataset
from geojepa.errors import ConfigError
from geojepa.tokenize.batch import TileBatch
from geojepa.tokenize.collate import collate
from geojepa.tokenize.sampler import ShardSampler, TileBatcher, plan_shards
from geojepa.tokenize.shards import (
    EntityTransform,
    TileArrays,
    TokenizedShards,
    token_cache_dir,
    tokenize_shard,
)
from geojepa.tokenize.tags import TagVocabulary
from geojepa.tokenize.tokenizer import TokenizerConfig


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class TileStream(IterableDataset):
    """Iterable of `TileBatch` over a tile dataset (see the module docstring).

    ``shards`` (a `TokenizedShards`: the tokenised tiles with their cache), ``sampler`` (a
    `ShardSampler` around ``batcher``, a `TileBatcher`: which tiles go together) and `collate`.
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
        tokens_per_batch: int | Literal["auto"] | None = None,
    ) -> None:
        super().__init__()
        extra = config.n_image_tokens if config.use_image else 0
        self.shards = TokenizedShards(dataset, vocab, config, seed, entity_transform, cache)
        if tokens_per_batch == "auto":
            counts = list(self.shards.entity_counts().values())
            self.batcher = TileBatcher.averaging(batch_size, counts, extra)
        else:
            self.batcher = TileBatcher(batch_size, tokens_per_batch, extra)
        self.dataset = dataset
        self.config = config
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        buffer = max(shuffle_buffer, batch_size) if shuffle else batch_size
        if tokens_per_batch is not None:
            buffer = max(shuffle_buffer, 1)  # sorting needs a pool, shuffled or not
        self.sampler = ShardSampler(self.batcher, shuffle, seed, buffer, drop_last, even_ranks)
        # A tensor, not an int: `TileLoader` moves it to shared memory for persistent workers,
        # whose copies of this stream then see each new epoch.
        self._epoch = torch.zeros((), dtype=torch.long)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (the shuffling depends on ``(seed, epoch)`` only)."""
        self._epoch.fill_(epoch)

    def _counts(self, shard: int) -> np.ndarray:
        return self.shards.entity_counts()[shard]

    def __iter__(self) -> Iterator[TileBatch]:
        rank, world = _dist_info()
        info = get_worker_info()
        wid, workers = (0, 1) if info is None else (info.id, info.num_workers)
        sizes = self.shards.shard_sizes() if world > 1 else None
        epoch = self.epoch
        plan, quotas = self.sampler.plan(self.dataset.shards, sizes, world, workers, epoch)
        tile_quota, batch_quota = self.sampler.quotas(plan, quotas, wid, epoch, self._counts)
        image_size = self.dataset.config.image_size if self.config.use_image else None
        load = self.shards.load
        if batch_quota is not None:
            load = self.shards.load_checked  # the plan must see the lengths the run sees
        for buffer, take in self.sampler.index_batches(
            plan[rank][wid], load, self.sampler.rng(epoch, rank, wid), tile_quota, batch_quota
        ):
            yield collate(buffer.take(take), image_size)

    def planned_batches(self, world: int = 1, workers: int = 1) -> int:
        """Batches rank 0 yields in this epoch (from entity counts only; for step schedules)."""
        sizes = self.shards.shard_sizes() if world > 1 else None
        return self.sampler.planned_batches(
            self.dataset.shards, sizes, self._counts, self.epoch, world, workers
        )


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
    tokens_per_batch: int | Literal["auto"] | None = None,
) -> TileLoader:
    """A streaming DataLoader of `TileBatch` (see the module docstring for the guarantees).

    ``entity_transform`` must be a picklable module-level callable when ``num_workers > 0``.
    ``even_ranks=False`` keeps every tile under DDP (ranks may then yield different counts).
    ``cache``: keep tokenised shards (all but images) under ``DATASET/cache/tokens-<key>/``
    so later epochs skip parsing geometry and tags; off with an ``entity_transform``, and
    silently off when the dataset directory is not writable.
    ``tokens_per_batch``: form batches by a budget of real tokens with length bucketing
    instead of ``batch_size`` tiles (see `TileBatcher`); ``"auto"``: the budget that gives
    ``batch_size`` tiles a batch on average (`TileBatcher.averaging`). Workers are persistent
    (started once per loader, not once per epoch); each epoch still reshuffles (see
    `TileLoader`).
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


__all__ = [
    "EntityTransform",
    "TileArrays",
    "TileBatcher",
    "TileLoader",
    "TileStream",
    "TokenizedShards",
    "collate",
    "make_dataloader",
    "plan_shards",
    "token_cache_dir",
    "tokenize_shard",
]
