"""The tag filter, OSM tag decoding and the closed-way area rule."""

from __future__ import annotations

import random

import pytest

from geojepa.data.tags import TagFilter, decode_opl_tags, decode_tags, is_area


@pytest.mark.parametrize(
    "key",
    [
        "name",
        "name:en",
        "old_name",
        "addr:street",
        "addr:housenumber",
        "ref",
        "ref:bag",
        "railway:ref",
        "local_ref",
        "note",
        "description",
        "fixme",
        "source",
        "source:maxspeed",
        "wikipedia",
        "wikidata",
        "brand:wikidata",
        "website",
        "url",
        "email",
        "phone",
        "contact:phone",
        "opening_hours",
        "operator",
    ],
)
def test_free_text_and_identifiers_keep_only_the_key(key: str) -> None:
    assert TagFilter()([(key, "some value"), ("highway", "primary")]) == [
        *sorted([(key, None), ("highway", "primary")])
    ]


@pytest.mark.parametrize(
    "key",
    ["created_by", "tiger:county", "gnis:feature_id", "import_uuid", "osak:identifier",
     "mvdgis:padron", "odbl", "source_1"],
)  # fmt: skip
def test_metadata_keys_are_dropped(key: str) -> None:
    assert TagFilter()([(key, "x"), ("building", "yes")]) == [("building", "yes")]


@pytest.mark.parametrize(
    "tag",
    [("highway", "residential"), ("building", "yes"), ("maxspeed", "50"), ("bridge", "yes"),
     ("layer", "1"), ("amenity", "cafe"), ("traffic_signals", "signal")],
)  # fmt: skip
def test_descriptive_tags_keep_their_value(tag: tuple[str, str]) -> None:
    assert TagFilter()([tag]) == [tag]


def test_filter_is_deterministic_and_sorted() -> None:
    tags = [("name", "A"), ("highway", "primary"), ("lanes", "2"), ("created_by", "JOSM")]
    tf = TagFilter()
    expected = [("highway", "primary"), ("lanes", "2"), ("name", None)]
    for seed in range(5):
        shuffled = tags[:]
        random.Random(seed).shuffle(shuffled)
        assert tf(shuffled) == expected
    assert TagFilter()(tags) == expected  # a fresh cache decides the same


def test_extra_patterns_and_disabled_filter() -> None:
    tf = TagFilter(drop_keys=("lanes",), key_only=("surface",))
    assert tf([("lanes", "2"), ("surface", "asphalt"), ("highway", "x")]) == [
        ("highway", "x"),
        ("surface", None),
    ]
    off = TagFilter(enabled=False)
    assert off([("name", "A"), ("created_by", "JOSM")]) == [("created_by", "JOSM"), ("name", "A")]


def test_metadata_only_elements_end_up_empty() -> None:
    assert TagFilter()([("created_by", "JOSM"), ("source", "survey")]) == [("source", None)]
    assert TagFilter()([("created_by", "JOSM")]) == []


def test_decode_opl_unescapes_special_characters() -> None:
    assert decode_opl_tags("name=A%20%B%2c%C%3d%,highway=x") == [
        ("name", "A B,C="),
        ("highway", "x"),
    ]
    assert decode_opl_tags("name:ja=%30ce%%30a4%") == [("name:ja", "ノイ")]
    assert decode_opl_tags("") == []


def test_decode_tags_accepts_json_mapping_and_pairs() -> None:
    assert decode_tags('{"a": "1", "b": 2}') == [("a", "1"), ("b", "2")]
    assert decode_tags({"a": "1"}) == [("a", "1")]
    assert decode_tags([("a", "1")]) == [("a", "1")]
    assert decode_tags(None) == []
    with pytest.raises(ValueError):
        decode_tags("[1, 2]")


@pytest.mark.parametrize(
    ("tags", "area"),
    [
        ([("building", "yes")], True),
        ([("landuse", "grass")], True),
        ([("natural", "wood")], True),
        ([("natural", "coastline")], False),
        ([("highway", "residential")], False),
        ([("highway", "residential"), ("junction", "roundabout")], False),
        ([("highway", "pedestrian"), ("area", "yes")], True),
        ([("building", "yes"), ("area", "no")], False),
        ([("barrier", "fence")], False),
        ([("area", "yes")], True),
        ([("railway", "platform")], True),
        ([("railway", "rail")], False),
        ([("waterway", "riverbank")], True),
        ([("waterway", "stream")], False),
    ],
)
def test_closed_way_area_rule(tags: list[tuple[str, str]], area: bool) -> None:
    assert is_area(tags) is area


def test_fused_opl_filter_equals_decode_then_filter() -> None:
    tf = TagFilter()
    fields = [
        "name=A%20%B%2c%C,highway=primary,created_by=JOSM,addr:street=X%3d%Y",
        "building=yes",
        "",
        "note=a%25%b,surface=asphalt,tiger:cfcc=A41,name:ja=%30ce%",
    ]
    for field in fields:
        assert tf.filter_opl(field) == tf(decode_opl_tags(field))
