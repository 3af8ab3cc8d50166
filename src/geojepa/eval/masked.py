"""Stage 2 of `evaluate`, per removal rule: the masked input tokenised once and embedded once
per network, shared by every task with that rule.

The embedding loop is that of `geojepa.embed` (`encode_tiles`: target encoder, [max ‖ mean]
pooling, length-sorted batches), run on token arrays shared by the networks: padding is masked
out, so a tile's embedding does not depend on its batch (tested against `embed_shard`).
`same_input` cuts the entities to what the networks see, so the tag baselines see no more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from geojepa.constants import EMBED_TOKENS_PER_BATCH, REGIONS_INDEX
from geojepa.data.reader import TileDataset
from geojepa.embed import embedding_columns, encode_tiles
from geojepa.eval.tasks import Task
from geojepa.model.jepa import GeoJEPA
from geojepa.tokenize.shards import TileArrays, TokenizedShards
from geojepa.tokenize.tags import TagVocabulary
from geojepa.tokenize.tokenizer import TokenizerConfig

#: (tile embeddings, entity embeddings or None), as `encode_arrays` returns them
Embeddings = tuple[pd.DataFrame, pd.DataFrame | None]


def tokenize_masked(
    datasets: Sequence[TileDataset],
    task: Task | None,
    vocab: TagVocabulary,
    config: TokenizerConfig,
    seed: int = 0,
) -> TileArrays:
    """Every tile of ``datasets`` tokenized with ``task.remove`` applied to its entities.

    The loader's dataset of tokenised shards with the removal as its entity transform (same cap
    of entities per tile, same seed; not cached), so the arrays are what `embed`/`pretrain`
    would feed the model.
    """
    remove = None if task is None else task.remove
    parts = [TokenizedShards(ds, vocab, config, seed, remove, cache=False) for ds in datasets]
    return TileArrays.concat([p.load_all() for p in parts])


def token_entities(arrays: TileArrays) -> pd.MultiIndex:
    """(``region_id``, ``feature_id``) of every entity the tokenizer kept, in token order."""
    return pd.MultiIndex.from_arrays(
        [
            np.repeat(np.asarray(arrays.region_ids, dtype=object), arrays.ent_count),
            np.asarray(arrays.feature_ids, dtype=object),
        ],
        names=[REGIONS_INDEX, "feature_id"],
    )


def same_input(entities: pa.Table, arrays: TileArrays, max_tags: int) -> pa.Table:
    """``entities`` cut to what the networks see in ``arrays``: the tokenizer's capped, seeded
    subset of entities per tile, each with its first ``max_tags`` tags.

    Baselines built from the result face exactly the input of the networks (else tag counts and
    pooled text would see entities that the networks never do).
    """
    keys = pd.MultiIndex.from_arrays(
        [
            entities.column(REGIONS_INDEX).to_numpy(zero_copy_only=False),
            entities.column("feature_id").to_numpy(zero_copy_only=False),
        ]
    )
    entities = entities.filter(pa.array(keys.isin(token_entities(arrays))))
    column = entities.column("tags")
    tags = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if isinstance(tags, pa.ChunkedArray):  # no chunks: an empty table
        return entities
    off = np.asarray(tags.offsets, dtype=np.int64)
    n_tags = np.diff(off)
    if not (n_tags > max_tags).any():
        return entities
    pos = np.arange(int(off[-1] - off[0])) - np.repeat(off[:-1] - off[0], n_tags)
    sel = pa.array(pos < max_tags)
    span = (int(off[0]), int(off[-1] - off[0]))
    offsets = np.concatenate([[0], np.cumsum(np.minimum(n_tags, max_tags))]).astype(np.int32)
    field = entities.schema.field("tags")
    cut = pa.MapArray.from_arrays(
        pa.array(offsets), tags.keys.slice(*span).filter(sel), tags.items.slice(*span).filter(sel)
    ).cast(field.type)
    return entities.set_column(entities.column_names.index("tags"), field, cut)


def encode_arrays(
    model: GeoJEPA,
    arrays: TileArrays,
    entities: bool = False,
    batch_tokens: int = EMBED_TOKENS_PER_BATCH,
    image_size: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Frozen target-encoder embeddings of tokenized tiles (as `embed_shard` computes them).

    Tiles: index ``region_id``, [max ‖ mean] columns ``emb_*``. Entities (if asked): index
    (``region_id``, ``feature_id``), the entity's output token.
    """
    tile_out, ent_out = encode_tiles(
        model, arrays, entities=entities, tokens_per_batch=batch_tokens, image_size=image_size
    )
    tiles = pd.DataFrame(
        tile_out,
        index=pd.Index(np.asarray(arrays.region_ids, dtype=object), name=REGIONS_INDEX),
        columns=embedding_columns(tile_out.shape[1]),
    )
    if ent_out is None:
        return tiles, None
    region = np.repeat(np.asarray(arrays.region_ids, dtype=object), arrays.ent_count)
    index = pd.MultiIndex.from_arrays(
        [region, np.asarray(arrays.feature_ids, dtype=object)], names=[REGIONS_INDEX, "feature_id"]
    )
    return tiles, pd.DataFrame(ent_out, index=index, columns=embedding_columns(ent_out.shape[1]))


class MaskedTokens:
    """One removal rule's tokenised input and, computed on first use, each network's embeddings
    of it (``with_entities``: entity vectors too, for the rule's entity tasks)."""

    def __init__(
        self,
        arrays: TileArrays,
        with_entities: bool,
        batch_tokens: int,
        image_size: int | None,
        log: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.arrays = arrays
        self.with_entities = with_entities
        self.batch_tokens = batch_tokens
        self.image_size = image_size
        self.log = log
        self._embedded: dict[str, Embeddings] = {}

    def embeddings(self, name: str, net: GeoJEPA, task: Task) -> Embeddings:
        """Network ``name``'s embeddings of the arrays (``task``: who asks, for the log)."""
        if name not in self._embedded:
            self.log(f"{task.name}: embedding with {name}")
            self._embedded[name] = encode_arrays(
                net, self.arrays, self.with_entities, self.batch_tokens, self.image_size
            )
        return self._embedded[name]
