"""`embed_tiles`: a trained model + a tile dataset → GeoParquet embeddings of tiles and entities.

Works shard by shard, so memory is bounded by one shard whatever the dataset's size, and each
output file is written to a temporary name and renamed only when complete.

Output format (what `knn`, `map`, `plot` and `evaluate` read):

* tiles: index ``region_id`` (``z/x/y``), ``n_entities``, ``top_tags`` (the tile's most frequent
  ``key=value`` tags, ``; ``-separated), ``emb_0 … emb_{2W-1}`` ([max ‖ mean] of the target
  encoder's outputs over the tile's real tokens), geometry = the tile polygon, EPSG:4326.
* entities (optional): index ``feature_id``, ``region_id``, ``tags`` (JSON), ``emb_0 …
  emb_{W-1}`` (the entity's output token, in the context of its tile), geometry = the clip in
  EPSG:4326. A feature clipped into several tiles has one row per tile.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import shapely
import torch

from geojepa import constants
from geojepa.constants import REGIONS_INDEX
from geojepa.data.reader import TileDataset, local_to_lonlat, open_dataset
from geojepa.data.tags import tag_strings
from geojepa.errors import ConfigError, InputError
from geojepa.io.geoparquet import GeoParquetWriter
from geojepa.model.jepa import GeoJEPA
from geojepa.model.ready import model_for
from geojepa.model.ready import model_on_device as model_on_device  # SRAI imports it here
from geojepa.progress import progress_bar
from geojepa.tokenize.collate import collate
from geojepa.tokenize.sampler import TileBatcher
from geojepa.tokenize.shards import TileArrays, TokenizedShards

if TYPE_CHECKING:
    import geopandas as gpd

    from geojepa.entity_features import FeatureWriter

EMBEDDING_PREFIX = "emb_"
TOP_TAGS = 5

EntityTransform = Callable[[pa.Table], pa.Table]


@dataclass
class ShardEmbeddings:
    """Embeddings of one shard: tile frame + polygons, and optionally entity frame + clips."""

    tiles: pd.DataFrame
    tile_geometry: np.ndarray
    entities: pd.DataFrame | None = None
    entity_geometry: np.ndarray | None = None


def embedding_columns(width: int) -> list[str]:
    return [f"{EMBEDDING_PREFIX}{i}" for i in range(width)]


def top_tags(entities: pa.Table, k: int = TOP_TAGS) -> pd.Series:
    """Per region_id (sorted): its ``k`` most frequent ``key=value`` tags (``key`` when value
    dropped), most frequent first, ties in tag order, ``; ``-joined."""
    parent, text = tag_strings(entities)
    region = np.asarray(entities.column(REGIONS_INDEX).to_numpy(zero_copy_only=False), object)
    # Counted and ranked on integer codes (codes of sorted uniques keep the string order).
    tag_code, tags = pd.factorize(text, sort=True)  # a missing tag gets -1: not counted
    region_code, regions = pd.factorize(region[parent], sort=True)
    kept = tag_code >= 0
    pairs, n = np.unique(region_code[kept] * len(tags) + tag_code[kept], return_counts=True)
    if not len(pairs):
        return pd.Series(dtype=object)
    pair_region, pair_tag = np.divmod(pairs, len(tags))  # sorted by region
    order = np.lexsort((pair_tag, -n, pair_region))  # region, most frequent, tag
    pair_region, pair_tag = pair_region[order], pair_tag[order]
    starts = np.flatnonzero(np.r_[True, pair_region[1:] != pair_region[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    best = rank < k
    pair_region, pair_tag = pair_region[best], pair_tag[best]
    starts = np.flatnonzero(np.r_[True, pair_region[1:] != pair_region[:-1]])
    # One C-level concatenation per tile instead of a Python join per group.
    joined = np.add.reduceat(np.asarray(tags, dtype=object)[pair_tag] + "; ", starts)
    index = pd.Index(np.asarray(regions, dtype=object)[pair_region[starts]], name=REGIONS_INDEX)
    return pd.Series([t[:-2] for t in joined], index=index)


def _single_shard(ds: TileDataset, shard: int) -> TileDataset:
    return TileDataset(ds.path, ds.config, {**ds.manifest, "shards": [shard]})


#: Default budget of real tokens per forward pass when embedding (length-sorted batches).
#: On CPU 1,024–2,048 ran fastest (cpu-small and cpu-base, Neubrandenburg z16/z17, one
#: thread: 4,096 was 15–20% slower, 16,384 50% slower: bigger batches spread more lengths
#: and leave the cache; measured when the budget counted tiles × longest tile, nearly the
#: same on length-sorted batches); a GPU likely wants more (`--tokens-per-batch`; not measured).
EMBED_TOKENS_PER_BATCH = constants.EMBED_TOKENS_PER_BATCH
EMBED_BATCH_SIZE = constants.EMBED_BATCH_SIZE


def encode_tiles(
    model: GeoJEPA,
    arrays: TileArrays,
    *,
    entities: bool = False,
    tokens_per_batch: int | None = EMBED_TOKENS_PER_BATCH,
    batch_size: int = EMBED_BATCH_SIZE,
    image_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The one embedding loop (`embed_tiles` and the evaluation both use it).

    Target-encoder outputs of tokenised tiles: [max ‖ mean] tile vectors ``[n_tiles, 2W]`` in
    the order of ``arrays`` and, if asked, entity vectors ``[n_entities, W]`` in the order of
    ``arrays.feature_ids``. Batches are length-sorted under ``tokens_per_batch`` real tokens
    (``None``: ``batch_size`` tiles in order); the model runs them packed. A tile's vectors do
    not depend on its batch.
    """
    device = next(model.parameters()).device
    n = len(arrays)
    tile_out = np.zeros((n, model.tile_width), dtype=np.float32)
    offsets = np.cumsum(arrays.ent_count) - arrays.ent_count  # first entity of each tile
    n_ent = int(arrays.ent_count.sum())
    ent_out = np.zeros((n_ent, model.entity_width), np.float32) if entities else None
    full, rest = TileBatcher(batch_size, tokens_per_batch).split(
        arrays.ent_count, np.random.default_rng(0), shuffle=False
    )
    batches = full + ([rest] if len(rest) else [])
    model.eval()
    with torch.inference_mode():
        for rows in batches:
            batch = collate(arrays.take(rows), image_size)
            if device.type == "cuda":
                batch = batch.pin_memory()
            batch = batch.to(device)
            h, valid = model.encode(batch)
            tile_out[rows] = model.pool(h, valid).float().cpu().numpy()
            if ent_out is not None:
                e = batch.entity_valid.shape[1]
                hv = h[:, :e][batch.entity_valid].float().cpu().numpy()  # row-major: tile order
                counts = arrays.ent_count[rows]
                starts = np.cumsum(counts) - counts
                ent_rows = np.repeat(offsets[rows] - starts, counts) + np.arange(counts.sum())
                ent_out[ent_rows] = hv
    return tile_out, ent_out


def embed_shard(
    model: GeoJEPA,
    ds: TileDataset,
    shard: int,
    *,
    entities: bool = False,
    batch_size: int = EMBED_BATCH_SIZE,
    entity_transform: EntityTransform | None = None,
    tokens_per_batch: int | None = EMBED_TOKENS_PER_BATCH,
) -> ShardEmbeddings:
    """Embed every tile of one shard (and its entities, if asked) with the target encoder."""
    tiles = ds.read_tiles(shard, columns=[REGIONS_INDEX, "west", "south", "east", "north"])
    if entity_transform is not None:
        ents = entity_transform(ds.read_entities(shard))
    else:  # the tokens come from the cache: read only what the output needs
        ents = ds.read_entities(shard, columns=_ENTITY_COLUMNS[: 4 if entities else 2])
    directory = model.require_directory()
    tok_cfg = directory.spec.tokenizer
    TileBatcher(batch_size, tokens_per_batch)  # a bad batch size fails before tokenising
    shards = TokenizedShards(
        _single_shard(ds, shard), directory.vocab, tok_cfg, seed=0,
        entity_transform=entity_transform, cache=entity_transform is None,
    )  # fmt: skip
    arrays = shards.load(shard)  # tokenised once (or read from the token cache)
    if tok_cfg.use_image:
        image_size: int | None = ds.config.image_size
    else:
        image_size = None
    tile_vecs, ent_vecs = encode_tiles(
        model, arrays, entities=entities, tokens_per_batch=tokens_per_batch,
        batch_size=batch_size, image_size=image_size,
    )  # fmt: skip
    ids = [str(r) for r in arrays.region_ids]
    index = pd.Index(ids, name=REGIONS_INDEX)
    frame = pd.DataFrame(tile_vecs, index=index, columns=embedding_columns(tile_vecs.shape[1]))
    tile_ids = pd.Index(tiles.column(REGIONS_INDEX).to_numpy(zero_copy_only=False))
    tile_rows = tile_ids.get_indexer(index)  # tiles-file row of each output row
    if (tile_rows < 0).any():
        raise InputError(f"{ds.path}: shard {shard}'s token cache lists tiles its tiles file lacks")
    bounds = [tiles.column(c).to_numpy()[tile_rows] for c in ("west", "south", "east", "north")]
    ent_rows = _positions(index, ents.column(REGIONS_INDEX))  # output row of each entity
    n_entities = np.bincount(ent_rows[ent_rows >= 0], minlength=len(index)).astype(np.int32)
    frame.insert(0, "n_entities", n_entities)
    frame.insert(1, "top_tags", top_tags(ents).reindex(index).fillna("").values)
    result = ShardEmbeddings(frame, np.asarray(shapely.box(*bounds)))
    if entities:
        assert ent_vecs is not None
        keys = list(zip(np.repeat(np.asarray(ids, dtype=object), arrays.ent_count),
                        arrays.feature_ids, strict=True))  # fmt: skip
        result.entities, result.entity_geometry = _entity_frame(ents, keys, [ent_vecs])
    return result


#: Entity columns `embed_shard` reads: tile summaries need the first two, entity rows all four.
_ENTITY_COLUMNS = [REGIONS_INDEX, "tags", "feature_id", "geometry"]


def _positions(index: pd.Index, values: pa.ChunkedArray) -> np.ndarray:
    """Position in ``index`` of each of ``values`` (-1 where absent), without Python strings."""
    found = pc.index_in(values, value_set=pa.array(index.to_numpy(), pa.string()))
    return np.asarray(found.fill_null(-1).to_numpy(), dtype=np.int64)


def _entity_frame(
    ents: pa.Table, keys: list[tuple[str, str]], vecs: list[np.ndarray]
) -> tuple[pd.DataFrame, np.ndarray]:
    """Entity embeddings joined with their tags and their clip in EPSG:4326."""
    matrix = np.concatenate(vecs) if vecs else np.zeros((0, 0), np.float32)
    key_frame = pd.DataFrame(keys, columns=[REGIONS_INDEX, "feature_id"])
    table = ents.select([REGIONS_INDEX, "feature_id", "tags", "geometry"]).to_pandas()
    table["row"] = np.arange(len(table))
    joined = key_frame.merge(table, on=[REGIONS_INDEX, "feature_id"], how="left", validate="1:1")
    local = shapely.from_wkb(joined["geometry"].to_numpy())
    geometry = np.empty(len(joined), dtype=object)
    for region, rows in joined.groupby(REGIONS_INDEX, sort=False).indices.items():
        z, x, y = (int(v) for v in region.split("/"))
        geometry[rows] = local_to_lonlat(local[rows], z, x, y)
    frame = pd.DataFrame(
        matrix, index=pd.Index(joined["feature_id"], name="feature_id"),
        columns=embedding_columns(matrix.shape[1]),
    )  # fmt: skip
    frame.insert(0, REGIONS_INDEX, joined[REGIONS_INDEX].to_numpy())
    frame.insert(
        1, "tags", [json.dumps(dict(t), ensure_ascii=False) for t in joined["tags"].to_numpy()]
    )
    return frame, geometry


def embed_tiles(
    model: GeoJEPA | str | Path,
    dataset: str | Path | TileDataset,
    output: str | Path,
    *,
    entities_output: str | Path | None = None,
    batch_size: int = EMBED_BATCH_SIZE,
    device: str = "cpu",
    entity_transform: EntityTransform | None = None,
    progress: bool = True,
    open_vocabulary: bool = True,
    entity_rows: str = "feature",
    tokens_per_batch: int | None = EMBED_TOKENS_PER_BATCH,
    devices: int = 1,
) -> Path:
    """Write tile (and optionally entity) embeddings of ``dataset`` as GeoParquet.

    Tile embeddings do not depend on the batch a tile lands in: padding never enters attention
    or pooling. ``entity_transform`` rewrites each shard's entities before embedding (the
    evaluation uses it to remove the tags that define a label). ``open_vocabulary``: tags
    the model never saw get their own text vectors (an in-memory model is extended in place).
    ``entity_rows``: ``feature`` (one row per feature, unique ``feature_id``; see
    `geojepa.entity_features`) or ``clip`` (one row per (tile, feature) clip, key
    ``(feature_id, region_id)``). ``tokens_per_batch`` batches tiles of similar length up to
    that many real tokens; ``None`` takes ``batch_size`` tiles in dataset order instead. Rows
    come out in dataset order either way. ``devices > 1`` embeds shards in that many processes
    (``cuda:0 …`` when ``device`` is CUDA, else CPU processes sharing the cores); the main
    process writes their results in shard order, so the files are those of one device.
    """
    from geojepa.entity_features import FeatureWriter, last_shards

    ds = _checked_dataset(model, dataset, output, entities_output, entity_rows, devices)
    net = model_for(model, ds, device, open_vocabulary)  # also caches open-vocabulary vectors
    per_feature = entities_output is not None and entity_rows == "feature"
    last = last_shards(ds) if per_feature else {}  # read before any output is opened
    tile_writer, ent_writer = _open_writers(output, entities_output)
    pooler = FeatureWriter(ent_writer, last) if ent_writer is not None and per_feature else None
    bar = progress_bar(progress, total=int(ds.manifest.get("n_tiles", 0)) or None, unit="tiles",
                       desc="embed")  # fmt: skip
    options = {
        "entities": ent_writer is not None,
        "batch_size": batch_size,
        "entity_transform": entity_transform,
        "tokens_per_batch": tokens_per_batch,
    }
    try:
        for shard, part in _shard_parts(net, model, ds, options, device, devices,
                                        open_vocabulary):  # fmt: skip
            _write_part(shard, part, model, tile_writer, ent_writer, pooler)
            bar.update(len(part.tiles))
        if pooler is not None:
            pooler.finish()
    except BaseException:
        tile_writer.abort()
        if ent_writer is not None:
            ent_writer.abort()
        raise
    finally:
        bar.close()
    tile_writer.close()
    if ent_writer is not None:
        ent_writer.close()
    return Path(output)


def _checked_dataset(
    model: GeoJEPA | str | Path,
    dataset: str | Path | TileDataset,
    output: str | Path,
    entities_output: str | Path | None,
    entity_rows: str,
    devices: int,
) -> TileDataset:
    """The opened dataset, once the options of `embed_tiles` are known to fit together."""
    from geojepa.entity_features import ENTITY_ROWS

    if entity_rows not in ENTITY_ROWS:
        raise ConfigError(f"entity rows must be {' or '.join(ENTITY_ROWS)}, got {entity_rows!r}")
    if entities_output is not None and _same_path(output, entities_output):
        raise ConfigError(f"--entities must differ from the tile output ({output})")
    ds = dataset if isinstance(dataset, TileDataset) else open_dataset(dataset)
    if devices < 1:
        raise ConfigError(f"--devices must be at least 1, got {devices}")
    if devices > 1 and not isinstance(model, (str, Path)):
        raise ConfigError("embedding on several devices needs a model directory, not a model")
    return ds


def _open_writers(
    output: str | Path, entities_output: str | Path | None
) -> tuple[GeoParquetWriter, GeoParquetWriter | None]:
    """The tile writer and, if asked, the entity writer (neither leaves a file if one fails)."""
    tile_writer = GeoParquetWriter(output, REGIONS_INDEX, ["Polygon"])
    try:
        ent_writer = (
            GeoParquetWriter(entities_output, "feature_id", []) if entities_output else None
        )
    except BaseException:
        tile_writer.abort()
        raise
    return tile_writer, ent_writer


def _write_part(
    shard: int,
    part: ShardEmbeddings,
    model: GeoJEPA | str | Path,
    tile_writer: GeoParquetWriter,
    ent_writer: GeoParquetWriter | None,
    pooler: FeatureWriter | None,
) -> None:
    """Write one shard's embeddings, once they are known to be finite; entities go to the
    per-feature ``pooler`` when there is one, else to ``ent_writer`` as clips."""
    _check_finite(part.tiles, model)
    tile_writer.write(part.tiles, part.tile_geometry)
    if part.entities is not None:
        _check_finite(part.entities, model)
    if pooler is not None:
        pooler.add(shard, part.entities, part.entity_geometry)
    elif ent_writer is not None and part.entities is not None:
        ent_writer.write(part.entities, part.entity_geometry)


def _shard_parts(
    net: GeoJEPA,
    model: GeoJEPA | str | Path,
    ds: TileDataset,
    options: dict,
    device: str,
    devices: int,
    open_vocabulary: bool,
) -> Iterator[tuple[int, ShardEmbeddings]]:
    """(shard, embeddings) in shard order, from this process or from ``devices`` workers."""
    if devices == 1:
        for shard in ds.shards:
            yield shard, embed_shard(net, ds, shard, **options)
        return
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    from geojepa.data.pool import bounded_map

    ctx = mp.get_context("spawn")  # fork would copy this process's torch threads and state
    cuda = torch.device(device).type == "cuda"
    queue = ctx.Queue()
    for i in range(devices):
        queue.put(f"cuda:{i}" if cuda else "cpu")
    threads = 1 if cuda else max(1, (os.cpu_count() or 1) // devices)
    init = (str(model), str(ds.path), queue, open_vocabulary, threads, os.getpid())
    with ProcessPoolExecutor(devices, mp_context=ctx, initializer=_init_worker,
                             initargs=init) as pool:  # fmt: skip
        try:
            parts = bounded_map(pool, _embed_in_worker, ds.shards, 2 * devices, options)
            yield from zip(ds.shards, parts, strict=True)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


_WORKER: dict[str, object] = {}


def _init_worker(
    model: str, dataset: str, queue: object, open_vocabulary: bool, threads: int, parent: int
) -> None:
    """One embedding process: its own device, model and dataset handle."""
    from geojepa.data.pool import die_with_parent

    die_with_parent(parent)
    torch.set_num_threads(threads)
    ds = open_dataset(dataset)
    _WORKER["ds"] = ds
    _WORKER["net"] = model_for(model, ds, queue.get(), open_vocabulary)  # type: ignore[attr-defined]


def _embed_in_worker(shard: int, options: dict) -> ShardEmbeddings:
    return embed_shard(_WORKER["net"], _WORKER["ds"], shard, **options)  # type: ignore[arg-type]


def embed_frames(
    model: GeoJEPA | str | Path,
    dataset: str | Path | TileDataset,
    *,
    entities: bool,
    batch_size: int,
    device: str,
    progress: bool,
    open_vocabulary: bool = True,
    rows: str = "feature",
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame | None]:
    """Tile (and entity) embeddings of a whole dataset, in memory, shard by shard: the frames
    of `geojepa.embed_tiles`/`embed_entities` without an output (rows in the files' order)."""
    import geopandas as gpd

    from geojepa.entity_features import FeatureWriter, last_shards
    from geojepa.io.geoparquet import spatial_order

    ds = dataset if isinstance(dataset, TileDataset) else open_dataset(dataset)
    net = model_for(model, ds, device, open_vocabulary)
    tiles, tile_geoms, ents, ent_geoms = [], [], [], []

    class Collect:  # the row order of `geojepa embed` files: spatial within each write
        def write(self, frame: pd.DataFrame, geometry: np.ndarray) -> None:
            order = spatial_order(geometry)
            ents.append(frame.iloc[order])
            ent_geoms.append(np.asarray(geometry)[order])

    pooler = FeatureWriter(Collect(), last_shards(ds)) if entities and rows == "feature" else None
    bar = progress_bar(progress, total=int(ds.manifest.get("n_tiles", 0)) or None, unit="tiles",
                       desc="embed")  # fmt: skip
    with bar:
        for shard in ds.shards:
            part = embed_shard(net, ds, shard, entities=entities, batch_size=batch_size)
            order = spatial_order(part.tile_geometry)  # the row order of `geojepa embed` files
            tiles.append(part.tiles.iloc[order])
            tile_geoms.append(np.asarray(part.tile_geometry)[order])
            if pooler is not None:
                pooler.add(shard, part.entities, part.entity_geometry)
            elif part.entities is not None:
                Collect().write(part.entities, part.entity_geometry)
            bar.update(len(part.tiles))
        if pooler is not None:
            pooler.finish()

    def frame(parts: list[pd.DataFrame], geoms: list[np.ndarray]) -> gpd.GeoDataFrame:
        return gpd.GeoDataFrame(
            pd.concat(parts), geometry=np.concatenate(geoms) if geoms else [], crs="EPSG:4326"
        )

    tile_frame = frame(tiles, tile_geoms)
    return tile_frame, (frame(ents, ent_geoms) if entities else None)


def _same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _check_finite(frame: pd.DataFrame, model: GeoJEPA | str | Path) -> None:
    """Refuse NaN/inf embeddings before anything is renamed into place."""
    values = frame[[c for c in frame.columns if str(c).startswith("emb_")]].to_numpy()
    if values.size and not np.isfinite(values).all():
        name = model if isinstance(model, (str, Path)) else "the given model"
        raise InputError(
            f"model {name} produced non-finite (NaN/inf) embeddings; its weights are probably "
            "corrupt or diverged: nothing was written"
        )
