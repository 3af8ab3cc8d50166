"""Label and removal rules of every evaluation task, on hand-made tiles."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest

from geojepa.data.schema import ENTITY_SCHEMA
from geojepa.errors import ConfigError, InputError
from geojepa.eval.tasks import (
    ENTITY_TASKS,
    MPH,
    TASKS,
    TILE_TASKS,
    get_task,
    parse_maxspeed,
    remove_bridges,
    remove_buildings,
    remove_maxspeed,
    remove_traffic_signals,
)
from helpers.tables import make_entities, make_tiles, tags_of

A, B, C = "17/100/200", "17/101/200", "17/102/200"


@pytest.fixture()
def tiles() -> pa.Table:
    return make_tiles([A, B, C])


def _all_tag_pairs(entities: pa.Table) -> list[tuple[str, str | None]]:
    return [pair for tags in tags_of(entities) for pair in tags.items()]


# ---------------------------------------------------------------------------- maxspeed parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("50", 50.0),
        ("50 km/h", 50.0),
        ("50km/h", 50.0),
        ("50 kmh", 50.0),
        ("30 mph", 30 * 1.609344),
        ("30mph", 30 * 1.609344),
        ("RU:urban", 60.0),
        ("DE:rural", 100.0),
        ("DE:zone30", 30.0),
        ("DE:zone:30", 30.0),
        ("GB:nsl_single", 60 * 1.609344),
        ("50;70", 70.0),
        ("none", None),
        ("signals", None),
        ("walk", None),
        ("DE:motorway", None),
        ("XX:unknown", None),
        ("fast", None),
        ("0", None),
        ("999", None),
        (None, None),
    ],
)
def test_parse_maxspeed(text, expected):
    result = parse_maxspeed(text)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


# ---------------------------------------------------------------------------- traffic signals


def test_traffic_signals_counts_signal_points_only(tiles):
    entities = make_entities(
        [
            (A, "node/1", {"highway": "traffic_signals"}, "Point"),
            (A, "node/2", {"highway": "traffic_signals", "traffic_signals": "signal"}, "Point"),
            (A, "node/3", {"highway": "crossing", "crossing": "traffic_signals"}, "Point"),
            (A, "way/4", {"highway": "traffic_signals"}, "LineString"),  # not a point
            (B, "node/5", {"highway": "traffic_signals"}, "Point"),
            (B, "way/6", {"highway": "primary"}, "LineString"),
        ]
    )
    labels = TASKS["traffic_signals"].labels(tiles, entities)
    assert labels.to_dict() == {A: 2, B: 1, C: 0}
    assert labels.index.name == "region_id"


def test_traffic_signals_removal(tiles):
    entities = make_entities(
        [
            (A, "node/1", {"highway": "traffic_signals", "crossing": "zebra"}, "Point"),
            (A, "node/3", {"highway": "crossing", "crossing": "traffic_signals"}, "Point"),
            (A, "node/7", {"highway": "crossing", "crossing:signals": "yes"}, "Point"),
            (A, "node/8", {"highway": "crossing", "button_operated": "yes"}, "Point"),
            (A, "node/9", {"traffic_signals:sound": "yes", "kerb": "lowered"}, "Point"),
            (B, "way/6", {"highway": "primary"}, "LineString"),
        ]
    )
    masked = remove_traffic_signals(entities)
    assert masked.schema.equals(ENTITY_SCHEMA)
    assert masked.column("feature_id").to_pylist() == [
        "node/3",
        "node/7",
        "node/8",
        "node/9",
        "way/6",
    ]
    for key, value in _all_tag_pairs(masked):
        assert "traffic_signals" not in key and "traffic_signals" not in (value or "")
        assert key not in ("crossing:signals", "button_operated")
    assert tags_of(masked)[0] == {"highway": "crossing"}
    assert tags_of(masked)[3] == {"kerb": "lowered"}
    assert TASKS["traffic_signals"].labels(tiles, masked).sum() == 0


# ---------------------------------------------------------------------------- max speed


def test_max_speed_labels_and_exclusion(tiles):
    entities = make_entities(
        [
            (A, "way/1", {"highway": "residential", "maxspeed": "30"}, "LineString"),
            (A, "way/2", {"highway": "primary", "maxspeed": "30 mph"}, "LineString"),
            (A, "way/3", {"highway": "primary", "maxspeed:forward": "70"}, "LineString"),
            (A, "node/4", {"highway": "give_way", "maxspeed": "120"}, "Point"),  # not a road
            (A, "way/5", {"railway": "rail", "maxspeed": "160"}, "LineString"),  # not a road
            (B, "way/6", {"highway": "motorway", "maxspeed": "none"}, "LineString"),
            (B, "way/7", {"highway": "residential"}, "LineString"),
            (C, "way/8", {"highway": "tertiary", "maxspeed": "RU:urban"}, "LineString"),
        ]
    )
    labels = TASKS["max_speed"].labels(tiles, entities)
    assert set(labels.index) == {A, C}  # B has roads but no parseable speed: excluded, not 0
    assert labels[A] == pytest.approx(70.0)
    assert labels[C] == pytest.approx(60.0)
    assert labels.dtype == float


def test_max_speed_mph_conversion(tiles):
    entities = make_entities(
        [(A, "way/2", {"highway": "primary", "maxspeed": "30 mph"}, "LineString")]
    )
    assert TASKS["max_speed"].labels(tiles, entities)[A] == pytest.approx(30 * MPH)


def test_maxspeed_removal_removes_every_maxspeed_key(tiles):
    entities = make_entities(
        [
            (
                A,
                "way/1",
                {
                    "highway": "primary",
                    "maxspeed": "50",
                    "maxspeed:hgv": "40",
                    "source:maxspeed": "DE:urban",
                    "lanes": "2",
                },
                "LineString",
            ),
            (B, "way/1", {"highway": "primary", "maxspeed": "50"}, "LineString"),  # same way
            (B, "way/2", {"maxspeed:conditional": "30 @ (22:00-06:00)"}, "LineString"),
        ]
    )
    masked = remove_maxspeed(entities)
    assert masked.num_rows == 2  # way/2 had only a maxspeed tag: dropped, not left bare
    assert all("maxspeed" not in key for key, _ in _all_tag_pairs(masked))
    assert tags_of(masked) == [{"highway": "primary", "lanes": "2"}, {"highway": "primary"}]
    assert TASKS["max_speed"].labels(tiles, masked).empty


def test_maxspeed_removal_removes_speed_limit_signs(tiles):
    entities = make_entities(
        [
            (A, "node/1", {"traffic_sign": "FI:363[40]"}, "Point"),
            (A, "node/2", {"traffic_sign": "DE:274", "highway": "give_way"}, "Point"),
            (A, "node/3", {"traffic_sign:forward": "maxspeed"}, "Point"),
            (A, "node/4", {"traffic_sign": "DE:206"}, "Point"),  # a stop sign stays
        ]
    )
    # nodes 1 and 3 were only speed signs: dropped, not left as bare points
    assert tags_of(remove_maxspeed(entities)) == [
        {"highway": "give_way"},
        {"traffic_sign": "DE:206"},
    ]


# ---------------------------------------------------------------------------- buildings


def test_building_count_and_removal(tiles):
    entities = make_entities(
        [
            (A, "way/1", {"building": "yes"}, "Polygon"),
            (A, "way/2", {"building:part": "yes", "height": "10"}, "Polygon"),
            (A, "way/3", {"amenity": "school", "building:levels": "3"}, "Polygon"),
            (A, "way/4", {"landuse": "residential"}, "Polygon"),
            (B, "way/1", {"building": "yes"}, "Polygon"),  # clipped into B as well
            (B, "node/5", {"amenity": "bench"}, "Point"),
        ]
    )
    labels = TASKS["building_count"].labels(tiles, entities)
    assert labels.to_dict() == {A: 3, B: 1, C: 0}
    masked = remove_buildings(entities)
    assert masked.column("feature_id").to_pylist() == ["way/4", "node/5"]
    assert all(not key.startswith("building") for key, _ in _all_tag_pairs(masked))
    assert TASKS["building_count"].labels(tiles, masked).sum() == 0


# ---------------------------------------------------------------------------- bridges


@pytest.fixture()
def bridge_entities() -> pa.Table:
    return make_entities(
        [
            (A, "way/1", {"highway": "footway", "bridge": "yes", "layer": "1"}, "LineString"),
            (A, "way/2", {"highway": "residential"}, "LineString"),
            (B, "way/3", {"highway": "primary", "bridge": "viaduct"}, "LineString"),
            (B, "way/4", {"man_made": "bridge"}, "Polygon"),
            (C, "way/5", {"highway": "service", "bridge": "no", "layer": "-1"}, "LineString"),
            (C, "way/6", {"railway": "rail", "bridge:structure": "arch"}, "LineString"),
            (C, "way/7", {"bridge": None}, "LineString"),  # key-only bridge entity
        ]
    )


def test_bridge_labels(tiles, bridge_entities):
    labels = TASKS["bridge"].labels(tiles, bridge_entities)
    assert labels.to_dict() == {A: 1, B: 1, C: 1}
    no_bridge = make_entities([(A, "way/5", {"highway": "service", "bridge": "no"}, "LineString")])
    assert TASKS["bridge"].labels(tiles, no_bridge).to_dict() == {A: 0, B: 0, C: 0}


def test_car_bridge_labels(tiles, bridge_entities):
    # A: footway bridge only; B: primary viaduct; C: service with bridge=no, rail bridge
    labels = TASKS["car_bridge"].labels(tiles, bridge_entities)
    assert labels.to_dict() == {A: 0, B: 1, C: 0}
    link = make_entities(
        [(A, "way/9", {"highway": "motorway_link", "bridge": "yes"}, "LineString")]
    )
    assert TASKS["car_bridge"].labels(tiles, link)[A] == 1


def test_bridge_removal_drops_entities_left_without_tags(tiles, bridge_entities):
    """A bridge stripped of all its tags would be a tag-less fingerprint: it goes entirely."""
    masked = remove_bridges(bridge_entities)
    # way/4 (man_made=bridge) and way/7 (key-only bridge) had only bridge tags
    kept = ["way/1", "way/2", "way/3", "way/5", "way/6"]
    assert masked.column("feature_id").to_pylist() == kept
    for key, value in _all_tag_pairs(masked):
        assert "bridge" not in key and "bridge" not in (value or "") and key != "layer"
    assert tags_of(masked)[0] == {"highway": "footway"}
    assert all(tags_of(masked))
    for name in ("bridge", "car_bridge", "way_bridge"):
        assert TASKS[name].labels(tiles, masked).sum() == 0


# ---------------------------------------------------------------------------- entity tasks


@pytest.mark.parametrize("name", sorted(TASKS))
def test_no_removal_leaves_an_entity_without_tags(name):
    """Every removal drops the entities it strips bare (and only those); untagged input stays."""
    entities = make_entities(
        [
            (A, "way/1", {"highway": "primary", "maxspeed": "50", "bridge": "yes"}, "LineString"),
            (A, "way/2", {"maxspeed": "30"}, "LineString"),
            (A, "node/3", {"crossing": "traffic_signals"}, "Point"),
            (A, "way/4", {"layer": "1"}, "Polygon"),
            (A, "way/5", {}, "Polygon"),  # no tags before the removal: not the removal's doing
        ]
    )
    masked = TASKS[name].remove(entities)
    before = dict(zip(entities.column("feature_id").to_pylist(), tags_of(entities), strict=True))
    for feature, tags in zip(masked.column("feature_id").to_pylist(), tags_of(masked), strict=True):
        assert tags or not before[feature], (name, feature)
    assert "way/5" in masked.column("feature_id").to_pylist()


def test_road_speed_entity_labels(tiles):
    entities = make_entities(
        [
            (A, "way/1", {"highway": "primary", "maxspeed": "50"}, "LineString"),
            (B, "way/1", {"highway": "primary", "maxspeed": "50"}, "LineString"),
            (B, "way/2", {"highway": "residential", "maxspeed": "walk"}, "LineString"),
            (B, "way/3", {"highway": "residential"}, "LineString"),
            (C, "node/4", {"highway": "stop", "maxspeed": "30"}, "Point"),
        ]
    )
    labels = TASKS["road_speed"].labels(tiles, entities)
    assert labels.index.names == ["region_id", "feature_id"]
    assert labels.to_dict() == {(A, "way/1"): 50.0, (B, "way/1"): 50.0}
    masked = TASKS["road_speed"].remove(entities)
    assert all("maxspeed" not in key for key, _ in _all_tag_pairs(masked))


def test_way_bridge_entity_labels(tiles, bridge_entities):
    labels = TASKS["way_bridge"].labels(tiles, bridge_entities)
    # transport ways only: the man_made=bridge area and the tagless way/7 are not labelled
    assert labels.to_dict() == {
        (A, "way/1"): 1,
        (A, "way/2"): 0,
        (B, "way/3"): 1,
        (C, "way/5"): 0,
        (C, "way/6"): 1,
    }


# ---------------------------------------------------------------------------- generic behaviour


def test_task_registry_and_kinds():
    assert set(TILE_TASKS) == {
        "traffic_signals",
        "max_speed",
        "building_count",
        "bridge",
        "car_bridge",
    }
    assert len(ENTITY_TASKS) >= 2
    assert get_task("bridge").kind == "binary"
    with pytest.raises(ConfigError, match="unknown task"):  # a usage mistake: exit 2
        get_task("bridges")


@pytest.mark.parametrize("name", list(TASKS))
def test_remove_is_picklable_and_schema_preserving(name, tiles, bridge_entities):
    task = TASKS[name]
    remove = pickle.loads(pickle.dumps(task.remove))
    masked = remove(bridge_entities)
    assert masked.schema.equals(ENTITY_SCHEMA)
    assert pickle.loads(pickle.dumps(task)).name == name


def test_removal_on_sliced_and_chunked_tables():
    rows = [
        (A, f"way/{i}", {"highway": "primary", "maxspeed": str(10 * i), "x": "y"}, "LineString")
        for i in range(1, 7)
    ]
    table = make_entities(rows)
    chunked = pa.concat_tables([table.slice(0, 2), table.slice(2)])
    sliced = table.slice(3)
    assert tags_of(remove_maxspeed(chunked)) == [{"highway": "primary", "x": "y"}] * 6
    assert tags_of(remove_maxspeed(sliced)) == [{"highway": "primary", "x": "y"}] * 3
    tiles = make_tiles([A])
    assert TASKS["max_speed"].labels(tiles, sliced)[A] == 60.0


def test_entities_outside_tiles_are_ignored():
    entities = make_entities([("17/9/9", "node/1", {"highway": "traffic_signals"}, "Point")])
    labels = TASKS["traffic_signals"].labels(make_tiles([A]), entities)
    assert labels.to_dict() == {A: 0}


def test_empty_and_bad_tables():
    empty = make_entities([])
    assert remove_bridges(empty).num_rows == 0
    assert TASKS["building_count"].labels(make_tiles([A]), empty).to_dict() == {A: 0}
    with pytest.raises(InputError, match="lacks column"):
        TASKS["bridge"].labels(make_tiles([A]), empty.drop_columns(["tags"]))


def test_removal_is_vectorised_enough():
    """~50k entities with ~4 tags each are masked well under a second per task."""
    import time

    n = 50_000
    rng = np.random.default_rng(0)
    kinds = rng.integers(0, 4, n)
    templates = [
        {"highway": "primary", "maxspeed": "50", "bridge": "yes", "layer": "1"},
        {"building": "yes", "addr:housenumber": "1"},
        {"highway": "traffic_signals", "crossing": "traffic_signals"},
        {"landuse": "grass"},
    ]
    geom = ["LineString", "Polygon", "Point", "Polygon"]
    rows = [(f"17/{i % 300}/0", f"way/{i}", templates[k], geom[k]) for i, k in enumerate(kinds)]
    table = make_entities(rows)
    tiles = make_tiles([f"17/{i}/0" for i in range(300)])
    start = time.perf_counter()
    for task in TASKS.values():
        task.remove(table)
        task.labels(tiles, table)
    assert time.perf_counter() - start < 10.0
