"""Streaming loader: collation, padding, shard split across ranks/workers, seeded shuffling."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import shapely
import torch

from geojepa.data.reader import open_dataset
from geojepa.errors import ConfigError, InputError
from geojepa.tokenize import loader as loader_mod
from geojepa.tokenize import shards as shards_mod
from geojepa.tokenize.batch import TileBatch
from geojepa.tokenize.collate import collate
from geojepa.tokenize.geometry import geometry_features
from geojepa.tokenize.loader import make_dataloader
from geojepa.tokenize.sampler import TileBatcher, plan_shards
from geojepa.tokenize.tags import PAD, TagVocabulary
from geojepa.tokenize.tokenizer import TokenizerConfig
from helpers.synthetic import write_synthetic_dataset

CFG = TokenizerConfig(width=16, geometry_points=8)


@pytest.fixture(scope="module")
def ds_path(tmp_path_factory):
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("ds") / "tiles", n_shards=7, tiles_per_shard=(2, 10), seed=3
    )


@pytest.fixture(scope="module")
def image_ds_path(tmp_path_factory):
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("ids") / "tiles", n_shards=2, image_size=16, seed=4
    )


@pytest.fixture(scope="module")
def vocab(ds_path) -> TagVocabulary:
    return TagVocabulary.from_dataset(open_dataset(ds_path))


def all_region_ids(path) -> list[str]:
    return open_dataset(path).read_tiles(columns=["region_id"]).column("region_id").to_pylist()


def ids_of(batches) -> list[str]:
    return [r for b in batches for r in b.region_ids]


def test_every_tile_once_in_order(ds_path, vocab) -> None:
    batches = list(make_dataloader(ds_path, vocab, CFG, batch_size=5, shuffle=False, seed=0))
    assert ids_of(batches) == all_region_ids(ds_path)
    assert all(len(b) == 5 for b in batches[:-1]) and 1 <= len(batches[-1]) <= 5
    assert all(isinstance(b, TileBatch) for b in batches)


def test_collation_matches_the_data(ds_path, vocab) -> None:
    ds = open_dataset(ds_path)
    ents = ds.read_entities()
    batch = next(iter(make_dataloader(ds, vocab, CFG, batch_size=8, shuffle=False, seed=0)))
    b, e = batch.entity_valid.shape
    assert batch.tag_ids.shape[:2] == (b, e) and batch.geometry.shape == (b, e, 8, 2)
    assert batch.entity_box.shape == (b, e, 8) and batch.geometry_scalars.shape[:2] == (b, e)
    assert batch.tag_ids.dtype == torch.long and batch.entity_valid.dtype == torch.bool
    assert batch.image is None and not batch.image_valid.any()
    assert e == max(1, max(len(f) for f in batch.feature_ids))
    for i, rid in enumerate(batch.region_ids):
        rows = ents.filter(pc.equal(ents.column("region_id"), rid))
        n = rows.num_rows
        assert batch.feature_ids[i] == rows.column("feature_id").to_pylist()
        assert batch.entity_valid[i].tolist() == [True] * n + [False] * (e - n)
        # padding stays zero everywhere
        assert (batch.tag_ids[i, n:] == PAD).all() and (batch.geometry[i, n:] == 0).all()
        assert (batch.entity_box[i, n:] == 0).all() and (batch.geometry_scalars[i, n:] == 0).all()
        if n == 0:
            continue
        boxes = np.asarray(rows.column("box").to_pylist(), dtype=np.float32)
        np.testing.assert_allclose(batch.entity_box[i, :n].numpy(), boxes)
        outline, scalars = geometry_features(
            shapely.from_wkb(rows.column("geometry").to_numpy(zero_copy_only=False)), 8, boxes
        )
        np.testing.assert_allclose(batch.geometry[i, :n].numpy(), outline, atol=1e-6)
        np.testing.assert_allclose(batch.geometry_scalars[i, :n].numpy(), scalars, atol=1e-6)
        for j, tags in enumerate(rows.column("tags").to_pylist()):
            expected = [vocab.lookup(k, v) for k, v in tags]
            got = batch.tag_ids[i, j].tolist()
            assert got[: len(expected)] == expected and set(got[len(expected) :]) <= {PAD}


def test_tokenized_shards_are_the_loaders_dataset(ds_path, vocab) -> None:
    """`TokenizedShards` (the public dataset the loader, `embed` and `evaluate` share) holds
    every tile once, in dataset order, tokenised as the loader batches them."""
    shards = shards_mod.TokenizedShards(open_dataset(ds_path), vocab, CFG, seed=0, cache=False)
    arrays = shards.load_all()
    assert list(arrays.region_ids) == all_region_ids(ds_path)
    counts = np.concatenate([shards.entity_counts()[s] for s in shards.shards])
    assert np.array_equal(arrays.ent_count, counts)
    (batch,) = make_dataloader(ds_path, vocab, CFG, batch_size=len(arrays), shuffle=False, seed=0)
    _batches_equal([collate(arrays, None)], [batch])


def test_shuffle_is_seeded_and_per_epoch(ds_path, vocab) -> None:
    def run(seed: int, loader=None) -> list[str]:
        loader = loader or make_dataloader(
            ds_path, vocab, CFG, batch_size=4, shuffle=True, seed=seed, shuffle_buffer=6
        )
        return ids_of(loader)

    a, b, c = run(1), run(1), run(2)
    assert a == b and a != c
    assert sorted(a) == sorted(all_region_ids(ds_path))  # every tile exactly once
    loader = make_dataloader(ds_path, vocab, CFG, batch_size=4, shuffle=True, seed=1)
    epoch0, epoch1 = ids_of(loader), ids_of(loader)
    assert epoch0 != epoch1 and sorted(epoch0) == sorted(epoch1)
    loader.set_epoch(0)
    assert ids_of(loader) == epoch0


def test_worker_processes_cover_every_tile_once(ds_path, vocab) -> None:
    loader = make_dataloader(ds_path, vocab, CFG, batch_size=3, shuffle=True, seed=0, num_workers=2)
    got = ids_of(loader)
    assert Counter(got) == Counter(all_region_ids(ds_path))


def _run_slot(monkeypatch, ds_path, vocab, rank, world, wid, workers, even, drop_last=False):
    monkeypatch.setattr(loader_mod, "_dist_info", lambda: (rank, world))
    monkeypatch.setattr(
        loader_mod, "get_worker_info", lambda: SimpleNamespace(id=wid, num_workers=workers)
    )
    loader = make_dataloader(
        ds_path, vocab, CFG, batch_size=3, shuffle=True, seed=5, even_ranks=even,
        drop_last=drop_last,
    )  # fmt: skip
    return list(loader.dataset)


@pytest.mark.parametrize("world,workers", [(2, 1), (2, 2), (3, 2)])
def test_ranks_and_workers_split(monkeypatch, ds_path, vocab, world, workers) -> None:
    everything = Counter(all_region_ids(ds_path))
    slots = {
        (r, w): _run_slot(monkeypatch, ds_path, vocab, r, world, w, workers, even=False)
        for r in range(world)
        for w in range(workers)
    }
    got = Counter(rid for batches in slots.values() for rid in ids_of(batches))
    assert got == everything  # without evening: every tile exactly once over all slots
    for drop_last in (False, True):
        even = {
            (r, w): _run_slot(monkeypatch, ds_path, vocab, r, world, w, workers, True, drop_last)
            for r in range(world)
            for w in range(workers)
        }
        ids = Counter(rid for batches in even.values() for rid in ids_of(batches))
        assert max(ids.values()) == 1 and set(ids) <= set(everything)  # no tile twice
        for w in range(workers):  # same number of batches on every rank: DDP never hangs
            assert len({len(even[(r, w)]) for r in range(world)}) == 1
            assert len({len(ids_of(even[(r, w)])) for r in range(world)}) == 1


def test_plan_shards_balances() -> None:
    shards, sizes = list(range(10)), [64, 1, 30, 64, 64, 2, 50, 64, 10, 64]
    plan, quotas = plan_shards(shards, sizes, world=2, workers=2, shuffle=True, seed=0, epoch=0)
    flat = [s for rank in plan for worker in rank for s in worker]
    assert sorted(flat) == shards
    loads = [[sum(sizes[s] for s in worker) for worker in rank] for rank in plan]
    assert quotas == [min(loads[0][w], loads[1][w]) for w in range(2)]
    assert sum(quotas) * 2 >= sum(sizes) - 2 * 2 * max(sizes)  # drops at most ~a shard per slot
    again, _ = plan_shards(shards, sizes, world=2, workers=2, shuffle=True, seed=0, epoch=0)
    other, _ = plan_shards(shards, sizes, world=2, workers=2, shuffle=True, seed=0, epoch=1)
    assert again == plan and other != plan


def test_max_entities_is_a_seeded_deterministic_choice(ds_path, vocab) -> None:
    full = {
        r: f
        for b in make_dataloader(ds_path, vocab, CFG, batch_size=64, shuffle=False, seed=0)
        for r, f in zip(b.region_ids, b.feature_ids, strict=True)
    }
    capped_cfg = CFG.replace(max_entities=3)

    def capped(seed: int, shuffle: bool) -> dict[str, list[str]]:
        loader = make_dataloader(
            ds_path, vocab, capped_cfg, batch_size=4, shuffle=shuffle, seed=seed
        )
        out = {}
        for b in loader:
            assert b.entity_valid.shape[1] <= 3
            out.update(zip(b.region_ids, b.feature_ids, strict=True))
        return out

    a, b, c = capped(0, False), capped(0, True), capped(1, False)
    assert a == b  # independent of shuffling / batch composition
    big = [r for r, f in full.items() if len(f) > 3]
    assert big, "fixture should have tiles above the cap"
    for r in big:
        assert len(a[r]) == 3
        pos = [full[r].index(f) for f in a[r]]
        assert pos == sorted(pos)  # kept in on-disk order
    assert any(a[r] != c[r] for r in big)  # the seed matters
    assert all(a[r] == full[r] for r in full if len(full[r]) <= 3)


def drop_points_and_highway(entities: pa.Table) -> pa.Table:
    """Module-level (picklable) transform: remove point entities and every highway tag."""
    keep = pc.invert(pc.equal(entities.column("geom_type"), "Point"))
    entities = entities.filter(keep)
    tags = [[(k, v) for k, v in t if k != "highway"] for t in entities.column("tags").to_pylist()]
    i = entities.schema.get_field_index("tags")
    return entities.set_column(
        i, entities.schema.field(i), pa.array(tags, type=entities.schema.field(i).type)
    )


def test_entity_transform(ds_path, vocab) -> None:
    ents = open_dataset(ds_path).read_entities()
    points = set(
        ents.filter(pc.equal(ents.column("geom_type"), "Point")).column("feature_id").to_pylist()
    )
    highway = {i for e, i in vocab.index.items() if e.split("=")[0] == "highway"}
    batches = list(
        make_dataloader(
            ds_path, vocab, CFG, batch_size=4, shuffle=True, seed=0, num_workers=1,
            entity_transform=drop_points_and_highway,
        )
    )  # fmt: skip
    assert Counter(ids_of(batches)) == Counter(all_region_ids(ds_path))  # tiles are kept
    for b in batches:
        assert not points & {f for fs in b.feature_ids for f in fs}
        assert not highway & set(b.tag_ids.unique().tolist())
        assert b.entity_valid.sum().item() == sum(len(f) for f in b.feature_ids)


def test_images(image_ds_path) -> None:
    ds = open_dataset(image_ds_path)
    vocab = TagVocabulary.from_dataset(ds)
    tiles = ds.read_tiles()
    raw = dict(
        zip(tiles.column("region_id").to_pylist(), tiles.column("image").to_pylist(), strict=True)
    )
    cfg = CFG.replace(use_image=True, image_size=16, patch_size=8)
    seen = 0
    for b in make_dataloader(ds, vocab, cfg, batch_size=4, shuffle=False, seed=0):
        assert b.image is not None and b.image.dtype == torch.uint8
        assert b.image.shape == (len(b), 3, 16, 16)
        for i, rid in enumerate(b.region_ids):
            assert bool(b.image_valid[i]) == (raw[rid] is not None)
            if raw[rid] is None:
                assert (b.image[i] == 0).all()
            else:
                hwc = np.frombuffer(raw[rid], dtype=np.uint8).reshape(16, 16, 3)
                assert np.array_equal(b.image[i].permute(1, 2, 0).numpy(), hwc)
                seen += 1
    assert seen > 0
    # a stored image of the wrong size is a clear input error, not a crash
    arrays = shards_mod.tokenize_shard(tiles, ds.read_entities(), vocab, cfg, seed=0)
    with pytest.raises(InputError, match="bytes, expected"):
        collate(arrays, 8)
    # without use_image the image column is not even read
    b = next(iter(make_dataloader(ds, vocab, CFG, batch_size=4, shuffle=False, seed=0)))
    assert b.image is None and not b.image_valid.any()


def test_batch_to_and_errors(ds_path, vocab, tmp_path) -> None:
    b = next(iter(make_dataloader(ds_path, vocab, CFG, batch_size=2, shuffle=False, seed=0)))
    moved = b.to("cpu")
    assert torch.equal(moved.tag_ids, b.tag_ids) and moved.region_ids == b.region_ids
    with pytest.raises(InputError):
        make_dataloader(tmp_path, vocab, CFG, batch_size=2, shuffle=False, seed=0)
    with pytest.raises(ConfigError):
        make_dataloader(ds_path, vocab, CFG, batch_size=0, shuffle=False, seed=0)


def _batches_equal(a: list[TileBatch], b: list[TileBatch]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.region_ids == y.region_ids and x.feature_ids == y.feature_ids
        for name in ("entity_valid", "tag_ids", "geometry", "geometry_scalars", "entity_box"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name
        assert torch.equal(x.image_valid, y.image_valid)
        assert (x.image is None) == (y.image is None)
        if x.image is not None:
            assert torch.equal(x.image, y.image)


def test_token_cache(tmp_path, monkeypatch) -> None:
    path = write_synthetic_dataset(tmp_path / "ds", n_shards=3, image_size=16, seed=9)
    ds = open_dataset(path)
    vocab = TagVocabulary.from_dataset(ds)
    cfg = CFG.replace(use_image=True, image_size=16, patch_size=8)

    def run(**kw) -> list[TileBatch]:
        return list(make_dataloader(ds, vocab, cfg, batch_size=4, shuffle=True, seed=0, **kw))

    first = run()
    files = sorted((path / "cache").glob("tokens-*/shard-*.npz"))
    assert len(files) == len(ds.shards)

    def fail(*args, **kwargs):
        raise AssertionError("tokenize_shard called despite the cache")

    monkeypatch.setattr(shards_mod, "tokenize_shard", fail)
    _batches_equal(first, run())  # served from the cache, images re-read: identical
    with pytest.raises(AssertionError, match="despite the cache"):
        run(cache=False)
    with pytest.raises(AssertionError, match="despite the cache"):
        run(entity_transform=drop_points_and_highway)  # transforms are never cached
    monkeypatch.undo()
    # another config (e.g. more outline points) is another cache entry
    list(make_dataloader(ds, vocab, CFG.replace(geometry_points=4), 4, shuffle=False, seed=0))
    assert len(list((path / "cache").glob("tokens-*"))) == 2
    # a corrupt cache file is ignored (rebuilt), not fatal
    files[0].write_bytes(b"garbage")
    _batches_equal(first, run())


def test_shard_without_entities(ds_path, vocab) -> None:
    ds = open_dataset(ds_path)
    tiles = ds.read_tiles(ds.shards[0], columns=["region_id"])
    empty = ds.read_entities(ds.shards[0]).slice(0, 0)
    arrays = shards_mod.tokenize_shard(tiles, empty, vocab, CFG, seed=0)
    batch = collate(arrays, None)
    assert batch.region_ids == tiles.column("region_id").to_pylist()
    assert batch.entity_valid.shape == (tiles.num_rows, 1) and not batch.entity_valid.any()
    assert batch.feature_ids == [[] for _ in range(tiles.num_rows)]


def test_token_budget_batches_cover_every_tile_within_budget(ds_path, vocab) -> None:
    budget = 40
    for shuffle in (False, True):
        loader = make_dataloader(
            ds_path, vocab, CFG, batch_size=2, shuffle=shuffle, seed=1, tokens_per_batch=budget,
            shuffle_buffer=16,
        )  # fmt: skip
        batches = list(loader)
        assert Counter(ids_of(batches)) == Counter(all_region_ids(ds_path))
        tokens = [np.maximum(b.entity_valid.sum(1).numpy(), 1) for b in batches]
        # at most the budget in real tokens, unless a single tile is bigger
        assert all(t.sum() <= budget or len(t) == 1 for t in tokens)
        assert max(len(b) for b in batches) > 2  # batch_size does not cap a budgeted batch
        # length bucketing: batches are cut from a length-sorted pool, so they are homogeneous
        assert all(np.all(np.diff(t) >= 0) for t in tokens)
        assert loader.dataset.planned_batches() == len(batches)
    again = list(make_dataloader(ds_path, vocab, CFG, 2, True, 1, tokens_per_batch=budget))
    other = list(make_dataloader(ds_path, vocab, CFG, 2, True, 2, tokens_per_batch=budget))
    same = list(make_dataloader(ds_path, vocab, CFG, 2, True, 1, tokens_per_batch=budget))
    assert [b.region_ids for b in again] == [b.region_ids for b in same]
    assert [b.region_ids for b in again] != [b.region_ids for b in other]


def test_tile_batcher_rules() -> None:
    rng = np.random.default_rng(0)
    counts = np.array([0, 1, 5, 30, 2, 2, 9, 3])
    full, rest = TileBatcher(4, tokens_per_batch=10).split(counts, rng, shuffle=False)
    # sorted lengths 1,1,2,2,3,5,9,30; a batch holds at most 10 real tokens
    assert [list(b) for b in full] == [[0, 1, 4, 5, 7], [2], [6], [3]]  # 30 > 10: on its own
    assert list(rest) == []
    full, rest = TileBatcher(4, tokens_per_batch=1000).split(counts, rng, shuffle=False)
    assert full == [] and sorted(rest) == list(range(8))  # not full: carried to the next buffer
    with pytest.raises(ConfigError, match="tokens_per_batch"):
        TileBatcher(4, tokens_per_batch=0)


def test_token_budget_counts_real_tokens_not_padded_slots() -> None:
    """The budget bounds the sum of the tiles' lengths (what the packed model computes), not
    tiles × the batch's longest tile: padding never takes a tile's place in a batch."""
    counts = np.array([1] * 8 + [4])  # 8 one-entity tiles and one of 4: 12 real tokens
    full, rest = TileBatcher(1, tokens_per_batch=12).split(counts, np.random.default_rng(0), False)
    assert [sorted(b) for b in full] == [list(range(9))] and len(rest) == 0  # not 9 × 4 = 36

    rng = np.random.default_rng(0)
    counts = np.minimum(rng.zipf(1.6, size=3000), 511)  # heavy-tailed, as OSM tiles are
    batcher = TileBatcher(1, tokens_per_batch=200)
    lens = batcher.lengths(counts)
    full, rest = batcher.split(counts, rng, shuffle=False)
    for a, b in pairwise(full):
        assert lens[a].sum() <= 200 or len(a) == 1
        assert lens[a].sum() + lens[b[0]] > 200  # greedy: the next tile would not have fit
        assert lens[a].max() <= lens[b].min()  # cut from the length-sorted pool


def test_auto_budget_gives_batch_size_tiles_a_step_on_average(ds_path, vocab) -> None:
    """``tokens_per_batch="auto"``: the budget is batch_size × the data's mean tile length, so
    a step visits batch_size tiles on average (as fixed batches do) at the cost of real tokens."""
    counts = np.minimum(np.random.default_rng(1).zipf(1.6, size=4000), 511)  # OSM-like tail
    batcher = TileBatcher.averaging(16, [counts[:1000], counts[1000:]])
    lens = batcher.lengths(counts)
    assert batcher.tokens_per_batch == round(16 * lens.mean())
    full, rest = batcher.split(counts, np.random.default_rng(0), shuffle=True)
    visits = (len(counts) - len(rest)) / len(full)
    assert 12 <= visits <= 20, visits  # ~16 tiles a step (greedy cuts, big tiles alone)
    assert max(len(b) for b in full) > 16  # short tiles share a step

    loader = make_dataloader(ds_path, vocab, CFG, batch_size=3, shuffle=True, seed=1,
                             tokens_per_batch="auto")  # fmt: skip
    stream = loader.dataset
    mean = np.concatenate(list(stream.shards.entity_counts().values())).clip(min=1).mean()
    assert stream.batcher.tokens_per_batch == round(3 * mean)
    assert Counter(ids_of(loader)) == Counter(all_region_ids(ds_path))


@pytest.mark.parametrize("world,workers", [(2, 1), (3, 2)])
def test_token_budget_equal_batches_per_rank(monkeypatch, ds_path, vocab, world, workers) -> None:
    def slot(rank, wid):
        monkeypatch.setattr(loader_mod, "_dist_info", lambda: (rank, world))
        monkeypatch.setattr(
            loader_mod, "get_worker_info", lambda: SimpleNamespace(id=wid, num_workers=workers)
        )
        loader = make_dataloader(
            ds_path, vocab, CFG, batch_size=3, shuffle=True, seed=5, tokens_per_batch=30,
            shuffle_buffer=8,
        )  # fmt: skip
        return list(loader.dataset)

    runs = {(r, w): slot(r, w) for r in range(world) for w in range(workers)}
    ids = Counter(rid for batches in runs.values() for rid in ids_of(batches))
    assert max(ids.values()) == 1
    for w in range(workers):
        assert len({len(runs[(r, w)]) for r in range(world)}) == 1


def test_token_budget_under_ddp_refuses_counts_it_cannot_plan(monkeypatch, ds_path, vocab):
    monkeypatch.setattr(loader_mod, "_dist_info", lambda: (0, 2))
    loader = make_dataloader(
        ds_path, vocab, CFG, batch_size=3, shuffle=True, seed=5, tokens_per_batch=30,
        entity_transform=drop_points_and_highway,
    )  # fmt: skip
    with pytest.raises(InputError, match="n_entities"):
        list(loader.dataset)
