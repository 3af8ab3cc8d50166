"""Spatial block split: train/val/test by parent tile, so neighbours do not straddle splits.

Adjacent tiles share roads, buildings and land use; a random tile split would put near-copies of
a test tile into train. Tiles are grouped by their parent at ``block_zoom`` (default z14, about
1–2 km), blocks are shuffled with a fixed seed and dealt out to the splits so that the *tile*
fractions come close to the requested ones. The split is saved (``region_id, block_id, split``)
and reloaded, so that pretraining (train blocks only) and evaluation use the very same one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import field_validator

from geojepa.config import Config
from geojepa.constants import REGIONS_INDEX
from geojepa.errors import InputError, OutputError
from geojepa.io.atomic import write_atomic

SPLITS = ("train", "val", "test")
#: Tiles a split sets aside: evaluation drops them before reading labels (search_split's test).
UNUSED = "unused"
SPLIT_COLUMNS = (REGIONS_INDEX, "block_id", "split")


class SplitConfig(Config):
    """How tiles are split: block zoom, tile fractions (train, val, test), seed."""

    block_zoom: int = 14
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0

    @field_validator("block_zoom")
    @classmethod
    def _zoom(cls, value: int) -> int:
        if not 0 <= value <= 24:
            raise ValueError("block_zoom must be in 0..24")
        return value

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f <= 0 for f in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError("fractions must be three positive numbers summing to 1")
        return value


def parse_region_ids(region_ids: pd.Index | np.ndarray | list[str]) -> pd.DataFrame:
    """Columns z, x, y (int64) of ``z/x/y`` ids; InputError naming the first malformed one."""
    ids = pd.Series(np.asarray(region_ids, dtype=object), dtype=object)
    parts = ids.str.extract(r"^(\d+)/(\d+)/(\d+)$")
    bad = parts.isna().any(axis=1)
    if bad.any():
        raise InputError(f"region_id {ids[bad].iloc[0]!r} is not of the form 'z/x/y'")
    return parts.astype(np.int64).set_axis(["z", "x", "y"], axis=1)


def block_ids(region_ids: pd.Index | np.ndarray | list[str], block_zoom: int) -> np.ndarray:
    """The ``z/x/y`` id of each tile's ancestor at ``block_zoom``."""
    zxy = parse_region_ids(region_ids)
    if (zxy["z"] < block_zoom).any():
        raise InputError(
            f"tiles at zoom {int(zxy['z'].min())} are coarser than block zoom {block_zoom}; "
            "choose a block zoom at or below the tile zoom"
        )
    shift = (zxy["z"] - block_zoom).to_numpy()
    bx = zxy["x"].to_numpy() >> shift
    by = zxy["y"].to_numpy() >> shift
    return np.array([f"{block_zoom}/{x}/{y}" for x, y in zip(bx, by, strict=True)], dtype=object)


def make_split(
    region_ids: pd.Index | np.ndarray | list[str], config: SplitConfig | None = None
) -> pd.DataFrame:
    """Assign every tile to train/val/test by block; deterministic for a given seed.

    Blocks are sorted, shuffled with ``config.seed``; the first three go one to each split (so
    none is empty), every further block to the split furthest below its target tile count.
    """
    config = config or SplitConfig()
    ids = pd.Index(np.asarray(region_ids, dtype=object)).unique()
    if len(ids) == 0:
        raise InputError("cannot split zero tiles")
    blocks = block_ids(ids, config.block_zoom)
    sizes = pd.Series(blocks).value_counts().sort_index()
    if len(sizes) < len(SPLITS):
        raise InputError(
            f"only {len(sizes)} block(s) at zoom {config.block_zoom}: need at least 3 for "
            "train/val/test; use a finer block zoom"
        )
    order = np.random.default_rng(config.seed).permutation(len(sizes))
    targets = np.asarray(config.fractions) * len(ids)
    filled = np.zeros(len(SPLITS))
    assignment: dict[str, str] = {}
    for rank, index in enumerate(order):
        block, size = sizes.index[index], int(sizes.iloc[index])
        split = rank if rank < len(SPLITS) else int(np.argmax(targets - filled))
        assignment[block] = SPLITS[split]
        filled[split] += size
    frame = pd.DataFrame({REGIONS_INDEX: np.asarray(ids, dtype=object), "block_id": blocks})
    frame["split"] = frame["block_id"].map(assignment)
    return frame.sort_values(REGIONS_INDEX, ignore_index=True)


def search_split(split: pd.DataFrame, val_fraction: float = 0.25, seed: int = 0) -> pd.DataFrame:
    """A split for choosing a recipe without reading test: test set aside, val scored as "test".

    Model and recipe selection must never look at the test blocks. Their tiles are marked
    ``unused`` (evaluation drops them before any label or embedding). This keeps the train blocks
    (minus a seeded ``val_fraction`` of their tiles, dealt out by whole blocks, which become the
    probes' own "val" for early stopping and probe choice) and relabels the original **val**
    blocks "test", so ``evaluate`` and its intervals run unchanged and score on the original
    val. Pretraining on the original train blocks is still unseen-data-free for the new "test".
    """
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}")
    _validate(split, "given to search_split")
    train = split[split["split"] == "train"]
    sizes = train["block_id"].value_counts().sort_index()
    if len(sizes) < 2 or not (split["split"] == "val").any():
        raise InputError("search_split needs at least 2 train blocks and some val blocks")
    order = np.random.default_rng(seed).permutation(len(sizes))
    target = val_fraction * len(train)
    inner_val: set[str] = set()
    filled = 0
    for rank, index in enumerate(order):
        if rank == len(order) - 1 or (filled >= target and inner_val):
            break  # at least one block stays train
        inner_val.add(sizes.index[index])
        filled += int(sizes.iloc[index])
    out = split.copy()
    out["split"] = np.select(
        [out["split"] == "test", out["split"] == "val", out["block_id"].isin(inner_val)],
        [UNUSED, "test", "val"],
        "train",
    ).astype(object)
    return out.reset_index(drop=True)


def label_subset(split: pd.DataFrame, fraction: float, seed: int = 0) -> pd.DataFrame:
    """The split with only a seeded ``fraction`` of its train tiles labelled (label efficiency).

    Whole train blocks are kept in a seeded order until ``fraction`` of the train tiles is
    reached (at least one block); the other train blocks become ``unused`` (evaluation drops
    them). Val and test are unchanged, so scores at 5%, 25% and 100% are comparable, and for one
    seed the blocks of a smaller fraction are a subset of a larger one's.
    """
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"label fraction must be in (0, 1], got {fraction}")
    _validate(split, "given to label_subset")
    train = split[split["split"] == "train"]
    if train.empty:
        raise InputError("label_subset needs a split with train tiles")
    sizes = train["block_id"].value_counts().sort_index()
    order = np.random.default_rng(seed).permutation(len(sizes))
    target = fraction * len(train)
    kept: set[str] = set()
    filled = 0
    for index in order:
        if filled >= target and kept:
            break
        kept.add(sizes.index[index])
        filled += int(sizes.iloc[index])
    out = split.copy()
    dropped = (out["split"] == "train") & ~out["block_id"].isin(kept)
    out.loc[dropped, "split"] = UNUSED
    return out.reset_index(drop=True)


def save_split(split: pd.DataFrame, path: str | Path) -> Path:
    """Write a split as Parquet (``.parquet``) or CSV (``.csv``)."""
    path = Path(path)
    _validate(split, str(path))
    if path.suffix not in (".parquet", ".csv"):
        raise OutputError(f"split file must end in .parquet or .csv, got {path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = split.loc[:, list(SPLIT_COLUMNS)]
        if path.suffix == ".parquet":
            write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))
        else:
            write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))
    except OSError as exc:
        raise OutputError(f"cannot write split to {path}: {exc}") from None
    return path


def load_split(path: str | Path) -> pd.DataFrame:
    """Read a split written by ``save_split``; InputError if missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"split file not found: {path}")
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # any reader failure is a bad input file
        raise InputError(f"cannot read split file {path}: {exc}") from None
    _validate(frame, str(path))
    return frame.loc[:, list(SPLIT_COLUMNS)].astype(object).reset_index(drop=True)


def _validate(split: pd.DataFrame, where: str) -> None:
    missing = [c for c in SPLIT_COLUMNS if c not in split.columns]
    if missing:
        raise InputError(f"split {where} lacks column(s) {missing}")
    bad = ~split["split"].isin((*SPLITS, UNUSED))
    if bad.any():
        raise InputError(f"split {where}: unknown split name {split['split'][bad].iloc[0]!r}")
    if split[REGIONS_INDEX].duplicated().any():
        raise InputError(f"split {where}: a region_id appears more than once")
    if split.groupby("block_id")["split"].nunique().max() > 1:
        raise InputError(f"split {where}: a block is spread over several splits")


def file_sha256(path: str | Path) -> str:
    """Hash of a file (the split's provenance in reports)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def assign_split(index: pd.Index, split: pd.DataFrame) -> pd.Series:
    """The split name of each label row (tile or entity rows inherit their tile's split).

    ``index`` is a label index: ``region_id`` or (``region_id``, ``feature_id``). InputError
    when some tiles are not in the split (a split made for another dataset).
    """
    regions = index.get_level_values(REGIONS_INDEX) if index.nlevels > 1 else index
    lookup = pd.Series(split["split"].to_numpy(), index=split[REGIONS_INDEX].to_numpy())
    out = pd.Series(lookup.reindex(np.asarray(regions, dtype=object)).to_numpy(), index=index)
    missing = out.isna()
    if missing.any():
        raise InputError(
            f"{int(missing.sum())} labelled tile(s) are not in the split "
            f"(e.g. {regions[missing.to_numpy()][0]}): was the split made for this dataset?"
        )
    return out.astype(object)


def tiles_in(split: pd.DataFrame, region_ids: Sequence[str], name: str = "train") -> list[str]:
    """The tiles of ``region_ids`` in split ``name`` (e.g. what pretraining may see).

    InputError when a tile is not in the split: a split made for other data would silently
    let val/test tiles of this dataset into pretraining.
    """
    if name not in SPLITS:
        raise InputError(f"unknown split name {name!r} (known: {', '.join(SPLITS)})")
    names = assign_split(pd.Index(list(region_ids), name=REGIONS_INDEX), split)
    return names.index[names.to_numpy() == name].tolist()


def drop_shared_entities(split_of_rows: pd.Series) -> pd.Series:
    """Entity rows whose OSM entity has clips in tiles of *different* splits, removed.

    A long way clipped into tiles of a train block and a test block would carry the same label
    on both sides of the split; its clips are dropped from entity tasks.
    """
    features = split_of_rows.index.get_level_values("feature_id")
    n_splits = split_of_rows.groupby(features).transform("nunique")
    return split_of_rows[n_splits.to_numpy() == 1]
