"""The sampler: which tiles go into which batch, on which (rank, worker) slot, in what order.

Works on entity counts alone, apart from the tokenised data (`geojepa.tokenize.shards`) and from
collation (`geojepa.tokenize.collate`), so every rank can plan every other rank's pass without
reading its tiles:

1. `plan_shards`: the shard list is shuffled with ``(seed, epoch)`` (kept in manifest order when
   ``shuffle=False``) and split over every (rank, worker) slot. Single process: round robin.
   Under DDP shards are dealt greedily to the least-loaded slot, and with ``even_ranks`` each
   worker slot then stops after the same number of tiles on every rank (the smallest load of
   that slot over the ranks), so every rank yields the same number of batches and DDP never
   waits on a rank that ran out. That drops at most about one shard per slot per epoch; which
   tiles are dropped changes with the epoch.
2. `ShardSampler.index_batches`: a slot reads its shards one at a time into a buffer of at least
   ``shuffle_buffer`` tiles, which `TileBatcher` cuts into batches (order shuffled with
   ``(seed, epoch, rank, worker)``). Tiles left over from a buffer move on to the next one, so
   every batch is full except the last.

With ``tokens_per_batch`` (token-budget batching), every rank runs all ranks' plans on the
tiles files' entity counts to stop each worker slot after the same number of *batches* on
every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from geojepa.errors import ConfigError


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

    @classmethod
    def averaging(
        cls, batch_size: int, ent_counts: list[np.ndarray], extra_tokens: int = 0
    ) -> TileBatcher:
        """Token-budget batches of ``batch_size`` tiles on average: the budget is
        ``batch_size`` x the mean tokens per tile of ``ent_counts`` (every tile of the data).

        The same tile visits per step as fixed batches of ``batch_size``, at the cost of the
        real tokens (measured on val: as good, ~1.3x cheaper; reports/benchmark/scaling)."""
        lens = cls(batch_size, None, extra_tokens).lengths(
            np.concatenate(ent_counts) if ent_counts else np.zeros(0, np.int64)
        )
        mean = float(lens.mean()) if len(lens) else 1.0
        return cls(batch_size, max(1, round(batch_size * mean)), extra_tokens)

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
class Lengths:
    """Entity counts only: stands in for `TileArrays` to plan batches without reading them."""

    ent_count: np.ndarray

    def __len__(self) -> int:
        return len(self.ent_count)

    def take(self, tiles: np.ndarray) -> Lengths:
        return Lengths(self.ent_count[np.asarray(tiles, dtype=np.int64)])

    @staticmethod
    def concat(parts: list[Lengths]) -> Lengths:
        return Lengths(np.concatenate([p.ent_count for p in parts]))


class Buffer(Protocol):
    """What the sampler needs of a buffer of tiles: `TileArrays`, or `Lengths` to plan."""

    ent_count: np.ndarray

    def __len__(self) -> int: ...

    def take(self, tiles: np.ndarray) -> Buffer: ...


B = TypeVar("B", bound=Buffer)

#: A pass over the shards: ``plan[rank][worker]`` = that slot's shards.
ShardPlan = list[list[list[int]]]


class ShardSampler:
    """The pass of one (rank, worker) slot as index batches, for any buffer type (tokenised
    `TileArrays` to run, `Lengths` to plan), seeded with ``(seed, epoch, rank, worker)``."""

    def __init__(
        self,
        batcher: TileBatcher,
        shuffle: bool,
        seed: int,
        shuffle_buffer: int,
        drop_last: bool = False,
        even_ranks: bool = True,
    ) -> None:
        self.batcher = batcher
        self.shuffle = shuffle
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.drop_last = drop_last
        self.even_ranks = even_ranks

    def rng(self, epoch: int, rank: int, wid: int) -> np.random.Generator:
        """The generator of one slot's pass in ``epoch``."""
        return np.random.default_rng([self.seed, epoch, rank, wid])

    def plan(
        self, shards: list[int], sizes: list[int] | None, world: int, workers: int, epoch: int
    ) -> tuple[ShardPlan, list[int] | None]:
        """`plan_shards` with this sampler's shuffle, seed and ``even_ranks``."""
        return plan_shards(
            shards, sizes, world, workers, self.shuffle, self.seed, epoch, self.even_ranks
        )

    def index_batches(
        self,
        shards: list[int],
        load: Callable[[int], B],
        rng: np.random.Generator,
        tile_quota: int | None,
        batch_quota: int | None,
    ) -> Iterator[tuple[B, np.ndarray]]:
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

    def quotas(
        self,
        plan: ShardPlan,
        quotas: list[int] | None,
        wid: int,
        epoch: int,
        counts: Callable[[int], np.ndarray],
    ) -> tuple[int | None, int | None]:
        """(tiles, batches) worker ``wid`` may yield so that every rank stops together: a tile
        quota without a token budget, a batch quota with one; (None, None) on a single rank.
        ``counts``: shard → its tiles' (capped) entity counts."""
        if quotas is None:
            return None, None
        if self.batcher.tokens_per_batch is None:
            return quotas[wid], None
        return None, self.batch_quota(plan, wid, epoch, counts)

    def batch_quota(
        self, plan: ShardPlan, wid: int, epoch: int, counts: Callable[[int], np.ndarray]
    ) -> int:
        """Batches worker ``wid`` yields on every rank under a token budget: the fewest over the
        ranks, found by running every rank's plan on the entity counts alone (no tokenising)."""

        def load(s: int) -> Lengths:
            return Lengths(counts(s))

        return min(
            sum(
                1
                for _ in self.index_batches(
                    plan[r][wid], load, self.rng(epoch, r, wid), tile_quota=None, batch_quota=None
                )
            )
            for r in range(len(plan))
        )

    def planned_batches(
        self,
        shards: list[int],
        sizes: list[int] | None,
        counts: Callable[[int], np.ndarray],
        epoch: int,
        world: int = 1,
        workers: int = 1,
    ) -> int:
        """Batches rank 0 yields in ``epoch`` (from entity counts only; for step schedules)."""
        plan, quotas = self.plan(shards, sizes, world, workers, epoch)

        def load(s: int) -> Lengths:
            return Lengths(counts(s))

        total = 0
        for wid in range(workers):
            tile_quota, batch_quota = self.quotas(plan, quotas, wid, epoch, counts)
            plan_0 = self.index_batches(
                plan[0][wid], load, self.rng(epoch, 0, wid), tile_quota, batch_quota
            )
            total += sum(1 for _ in plan_0)
        return total
