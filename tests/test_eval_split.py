"""Spatial block split: disjoint blocks, full coverage, determinism, save/load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from geojepa.errors import ConfigError, InputError, OutputError
from geojepa.eval.split import (
    SplitConfig,
    assign_split,
    block_ids,
    drop_shared_entities,
    file_sha256,
    label_subset,
    load_split,
    make_split,
    save_split,
    search_split,
)

IDS = [f"17/{x}/{y}" for x in range(1000, 1048) for y in range(2000, 2040)]  # 48 × 40 tiles


def test_block_ids_are_parents():
    assert list(block_ids(["17/1025/2049", "17/1031/2055", "14/128/256"], 14)) == [
        "14/128/256",
        "14/128/256",
        "14/128/256",
    ]
    assert block_ids(["16/5/7"], 16)[0] == "16/5/7"


def test_every_tile_once_and_blocks_disjoint():
    split = make_split(IDS, SplitConfig(block_zoom=15))
    assert len(split) == len(IDS)
    assert set(split["region_id"]) == set(IDS)
    assert set(split["split"]) == {"train", "val", "test"}
    assert (split.groupby("block_id")["split"].nunique() == 1).all()
    blocks = {name: set(part["block_id"]) for name, part in split.groupby("split")}
    assert not blocks["train"] & blocks["val"]
    assert not blocks["train"] & blocks["test"]
    assert not blocks["val"] & blocks["test"]
    expected = block_ids(split["region_id"], 15)
    assert (split["block_id"].to_numpy() == expected).all()


def test_fractions_are_approximately_met():
    split = make_split(IDS, SplitConfig(block_zoom=15, fractions=(0.5, 0.25, 0.25)))
    share = split["split"].value_counts(normalize=True)
    # blocks hold 16 tiles of 1920: the greedy deal is within about one block of the target
    assert share["train"] == pytest.approx(0.5, abs=0.02)
    assert share["val"] == pytest.approx(0.25, abs=0.02)
    assert share["test"] == pytest.approx(0.25, abs=0.02)


def test_deterministic_by_seed():
    a = make_split(IDS, SplitConfig(block_zoom=15, seed=3))
    b = make_split(list(reversed(IDS)), SplitConfig(block_zoom=15, seed=3))
    c = make_split(IDS, SplitConfig(block_zoom=15, seed=4))
    pd.testing.assert_frame_equal(a, b)
    assert not a["split"].equals(c["split"])


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_save_and_load_roundtrip(tmp_path, suffix):
    split = make_split(IDS, SplitConfig(block_zoom=15))
    path = save_split(split, tmp_path / f"split{suffix}")
    loaded = load_split(path)
    assert list(loaded.columns) == ["region_id", "block_id", "split"]
    assert (loaded["region_id"].to_numpy() == split["region_id"].to_numpy()).all()
    assert (loaded["split"].to_numpy() == split["split"].to_numpy()).all()
    assert len(file_sha256(path)) == 64


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="z/x/y"):
        make_split(["17/1/a"])
    with pytest.raises(InputError, match="coarser"):
        make_split(["13/1/1"], SplitConfig(block_zoom=14))
    with pytest.raises(InputError, match="at least 3"):
        make_split(["17/0/0", "17/1/1"], SplitConfig(block_zoom=14))
    with pytest.raises(ConfigError):
        SplitConfig.from_dict({"fractions": (0.5, 0.5, 0.0)})
    with pytest.raises(ConfigError):
        SplitConfig.from_dict({"block_zom": 14})
    with pytest.raises(InputError, match="not found"):
        load_split(tmp_path / "missing.parquet")
    with pytest.raises(OutputError):
        save_split(make_split(IDS), tmp_path / "split.txt")
    broken = make_split(IDS, SplitConfig(block_zoom=15))
    broken.loc[0, "split"] = "dev"
    broken.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match="unknown split"):
        load_split(tmp_path / "bad.csv")


def test_entities_inherit_split_and_shared_ways_dropped():
    split = make_split(IDS, SplitConfig(block_zoom=15))
    by_region = dict(zip(split["region_id"], split["split"], strict=True))
    train_tile = split.loc[split["split"] == "train", "region_id"].iloc[0]
    test_tile = split.loc[split["split"] == "test", "region_id"].iloc[0]
    index = pd.MultiIndex.from_tuples(
        [(train_tile, "way/1"), (test_tile, "way/1"), (train_tile, "way/2"), (test_tile, "way/3")],
        names=["region_id", "feature_id"],
    )
    names = assign_split(index, split)
    assert list(names) == [by_region[train_tile], by_region[test_tile], "train", "test"]
    kept = drop_shared_entities(names)
    assert list(kept.index.get_level_values("feature_id")) == ["way/2", "way/3"]


def test_assign_split_rejects_foreign_tiles():
    split = make_split(IDS, SplitConfig(block_zoom=15))
    with pytest.raises(InputError, match="not in the split"):
        assign_split(pd.Index(["17/1/1"], name="region_id"), split)
    # tile index works too
    names = assign_split(pd.Index(IDS[:5], name="region_id"), split)
    assert np.isin(names.to_numpy(), ["train", "val", "test"]).all()


def test_search_split_never_holds_test_and_scores_on_val():
    split = make_split(IDS, SplitConfig(block_zoom=15))
    search = search_split(split, val_fraction=0.25, seed=1)
    original = split.set_index("region_id")["split"]
    new = search.set_index("region_id")["split"]
    # every original test tile is set aside; original val is what gets scored ("test")
    assert set(new.index) == set(original.index)
    assert (new[original.index[original == "test"]] == "unused").all()
    assert (original[new.index[new == "unused"]] == "test").all()
    assert (original[new.index[new == "test"]] == "val").all()
    assert (new[original.index[original == "val"]] == "test").all()
    # the probes' own val is carved out of train, by whole blocks, near the asked fraction
    inner = new.index[new == "val"]
    assert (original[inner] == "train").all()
    assert (search.groupby("block_id")["split"].nunique() == 1).all()
    n_train = int((original == "train").sum())
    assert len(inner) / n_train == pytest.approx(0.25, abs=16 / n_train + 0.01)
    pd.testing.assert_frame_equal(search, search_split(split, val_fraction=0.25, seed=1))
    with pytest.raises(InputError):
        search_split(split, val_fraction=0.0)


def test_label_subset_keeps_whole_train_blocks_nested_and_leaves_val_test():
    split = make_split(IDS, SplitConfig(block_zoom=16))
    original = split.set_index("region_id")["split"]
    n_train = int((original == "train").sum())
    kept = {}
    for fraction in (0.05, 0.25, 1.0):
        subset = label_subset(split, fraction, seed=3)
        new = subset.set_index("region_id")["split"]
        assert set(new.index) == set(original.index)
        # val and test untouched; only train tiles become unused
        for name in ("val", "test"):
            assert (new[original == name] == name).all()
        assert (original[new.index[new == "unused"]] == "train").all()
        assert set(new[original == "train"]) == ({"train", "unused"} if fraction < 1 else {"train"})
        assert (subset.groupby("block_id")["split"].nunique() == 1).all()  # whole blocks
        kept[fraction] = set(new.index[new == "train"])
        # near the asked share of the train tiles (a block of 4 tiles is the granularity)
        assert len(kept[fraction]) / n_train == pytest.approx(fraction, abs=4 / n_train + 1e-9)
    assert kept[0.05] < kept[0.25] < kept[1.0]  # nested: a smaller share is a subset
    assert kept[1.0] == set(original.index[original == "train"])
    other = label_subset(split, 0.25, seed=4).set_index("region_id")["split"]
    assert set(other.index[other == "train"]) != kept[0.25]  # the seed chooses the blocks
    pd.testing.assert_frame_equal(
        label_subset(split, 0.25, seed=3), label_subset(split, 0.25, seed=3)
    )
    for bad in (0.0, 1.5):
        with pytest.raises(InputError, match="label fraction"):
            label_subset(split, bad)
