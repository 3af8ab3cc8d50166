"""Baseline features on hand-made tiles, computed on the masked input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from geojepa.data.tags import tag_strings
from geojepa.errors import InputError
from geojepa.eval.baselines import (
    dummy_features,
    pooled_text_features,
    srai_available,
    srai_count_features,
    tag_count_features,
)
from geojepa.eval.split import SplitConfig, make_split
from geojepa.eval.suite import evaluate_baselines, masked_tag_strings
from geojepa.eval.tasks import TASKS
from helpers.tables import make_entities, make_tiles

A, B, C = "17/100/200", "17/101/200", "17/102/200"


@pytest.fixture()
def entities():
    return make_entities(
        [
            (A, "node/1", {"highway": "traffic_signals"}, "Point"),
            (A, "way/2", {"highway": "primary", "name": None}, "LineString"),
            (B, "way/2", {"highway": "primary", "name": None}, "LineString"),
            (B, "way/3", {"building": "yes"}, "Polygon"),
            (B, "way/4", {"building": "yes"}, "Polygon"),
        ]
    )


def fake_embed(texts: list[str]) -> np.ndarray:
    """Deterministic 2-d 'text vectors': (length, number of '=')."""
    return np.array([[len(t), t.count("=")] for t in texts], dtype=float)


def test_tag_strings(entities):
    parent, strings = tag_strings(entities)
    assert list(parent) == [0, 1, 1, 2, 2, 3, 4]
    assert list(strings) == [
        "highway=traffic_signals",
        "highway=primary",
        "name",
        "highway=primary",
        "name",
        "building=yes",
        "building=yes",
    ]


def test_tag_counts_tile(entities):
    index = pd.Index([A, B, C], name="region_id")
    X = tag_count_features(entities, index, min_count=1).sparse.to_dense()
    assert X.loc[A, "tag:highway=primary"] == 1
    assert X.loc[B, "tag:building=yes"] == 2
    assert X.loc[A, "tag:name"] == 1
    assert (X.loc[C] == 0).all()
    assert X.columns[0] == "tag:building=yes"  # most frequent first (ties alphabetical)
    X2 = tag_count_features(entities, index, min_count=2)
    assert "tag:highway=traffic_signals" not in X2.columns
    assert list(tag_count_features(entities, index, min_count=1, max_features=2).columns) == [
        "tag:building=yes",
        "tag:highway=primary",
    ]


def test_tag_counts_entity_with_context(entities):
    X = tag_count_features(entities, level="entity", min_count=1, context=True).sparse.to_dense()
    assert X.index.names == ["region_id", "feature_id"]
    assert len(X) == 5
    assert X.loc[(A, "way/2"), "tag:highway=primary"] == 1
    assert X.loc[(A, "way/2"), "tag:highway=traffic_signals"] == 0
    assert X.loc[(A, "way/2"), "tile_tag:highway=traffic_signals"] == 1
    with pytest.raises(InputError):
        tag_count_features(entities, context=True)


@pytest.mark.parametrize("chunk", [1, 2, 200_000])
def test_pooled_text_mean_max(entities, chunk):
    index = pd.Index([A, B, C], name="region_id")
    X = pooled_text_features(entities, index, embed_texts=fake_embed, chunk_entries=chunk)
    # A: "highway=traffic_signals" (23,1), "highway=primary" (15,1), "name" (4,0)
    assert X.loc[A, ["mean_0", "mean_1"]].tolist() == pytest.approx([42 / 3, 2 / 3])
    assert X.loc[A, ["max_0", "max_1"]].tolist() == [23, 1]
    # B: (15,1), (4,0), (12,1), (12,1)
    assert X.loc[B, ["mean_0", "max_0"]].tolist() == pytest.approx([43 / 4, 15])
    assert (X.loc[C] == 0).all()
    E = pooled_text_features(entities, level="entity", embed_texts=fake_embed)
    assert E.loc[(B, "way/3")].tolist() == [12, 1, 12, 1]


def test_pooled_text_bad_embedder(entities):
    with pytest.raises(InputError, match="returned shape"):
        pooled_text_features(entities, embed_texts=lambda t: np.zeros((1, 3)))


def test_dummy_features():
    X = dummy_features(pd.Index([A, B], name="region_id"))
    assert X.shape == (2, 0)


@pytest.mark.slow  # importing srai alone takes ~10 s
@pytest.mark.skipif(not srai_available(), reason="optional srai extra not installed")
def test_srai_count_features(entities):
    index = pd.Index([A, B, C], name="region_id")
    X = srai_count_features(entities, index)
    assert X.loc[B, "srai:building_yes"] == 2
    assert X.loc[A, "srai:highway_traffic_signals"] == 1
    assert (X.loc[C] == 0).all()


def _grid_dataset(n_side: int = 16):
    """Tiles in a grid; each has some buildings and a signal point in every second tile."""
    rng = np.random.default_rng(0)
    ids = [f"17/{1000 + x}/{2000 + y}" for x in range(n_side) for y in range(n_side)]
    rows = []
    for i, tile in enumerate(ids):
        n_build = int(rng.integers(0, 6))
        rows += [(tile, f"way/{i}_{k}", {"building": "yes"}, "Polygon") for k in range(n_build)]
        rows += [
            (tile, f"way/r{i}_{k}", {"highway": "residential"}, "LineString")
            for k in range(n_build)
        ]
        if i % 2:
            rows.append((tile, f"node/{i}", {"highway": "traffic_signals"}, "Point"))
            rows.append((tile, f"node/c{i}", {"crossing": "traffic_signals"}, "Point"))
    return ids, make_tiles(ids), make_entities(rows)


FORBIDDEN = {
    "traffic_signals": lambda s: "traffic_signals" in s,
    "max_speed": lambda s: "maxspeed" in s,
    "road_speed": lambda s: "maxspeed" in s,
    "building_count": lambda s: s.startswith("building"),
    "bridge": lambda s: "bridge" in s or s.startswith("layer"),
    "car_bridge": lambda s: "bridge" in s or s.startswith("layer"),
    "way_bridge": lambda s: "bridge" in s or s.startswith("layer"),
}


def test_baselines_never_see_removed_tags():
    _, _, entities = _grid_dataset(4)
    extra = make_entities(
        [
            (
                A,
                "way/9",
                {
                    "highway": "primary",
                    "maxspeed": "50",
                    "bridge": "yes",
                    "layer": "1",
                    "source:maxspeed": "DE:urban",
                },
                "LineString",
            )
        ]
    )
    import pyarrow as pa

    entities = pa.concat_tables([entities, extra])
    for name, forbidden in FORBIDDEN.items():
        task = TASKS[name]
        original = set(tag_strings(entities)[1].tolist())
        assert any(forbidden(s) for s in original), name  # the input did hold label tags
        left = masked_tag_strings(task, entities)
        assert not any(forbidden(s) for s in left), name
        level = task.level
        X = tag_count_features(task.remove(entities), level=level, min_count=1)
        assert not any(forbidden(c.removeprefix("tag:")) for c in X.columns), name


def test_evaluate_baselines_end_to_end():
    ids, tiles, entities = _grid_dataset()
    split = make_split(ids, SplitConfig(block_zoom=15))
    from geojepa.eval.probes import ProbeConfig

    config = ProbeConfig(mlp_hidden=(8,), mlp_weight_decays=(0.01,), mlp_max_epochs=5)
    rows = evaluate_baselines(
        TASKS["building_count"],
        tiles,
        entities,
        split,
        baselines=("dummy", "tag_counts", "pooled_text"),
        seeds=[0],
        probes=("linear",),
        embed_texts=fake_embed,
        config=config,
    )
    by = {r.model: r.metrics["mae"] for r in rows}
    assert set(by) == {"dummy", "tag_counts", "pooled_text"}
    # buildings are removed, but their residential roads (one per building) remain
    assert by["tag_counts"] < 0.5 * by["dummy"]
