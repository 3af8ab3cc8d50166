"""Downstream tasks: labels from a tile dataset, and the leakage-free input to embed.

A probe on frozen embeddings only measures the representation if the tags that *define* the label
are gone from what was embedded; otherwise it reads the answer off the tags. Every task therefore
comes as a pair: ``labels(tiles, entities)`` computed on the **original** entities, and
``remove(entities)`` that rewrites an entities table (same schema, ``ENTITY_SCHEMA``) into the
masked input. ``remove`` is a module-level function, so it pickles into DataLoader workers as an
``entity_transform``. The exact rules are listed in ``docs/evaluation.md``.

Everything is vectorised over the flattened tag entries of a table (one pass of pyarrow compute
over ~10⁶ tag entries per shard); the only per-item Python work is parsing the few *distinct*
``maxspeed`` strings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from geojepa.constants import REGIONS_INDEX
from geojepa.data.tags import TagEntries, arrow_bool
from geojepa.errors import ConfigError, InputError

TaskKind = Literal["regression", "count", "binary"]
TaskLevel = Literal["tile", "entity"]

#: Entity index of entity-level labels (one row per clip of an entity in a tile).
ENTITY_INDEX = (REGIONS_INDEX, "feature_id")

POINT_TYPES = ("Point", "MultiPoint")

#: ``highway`` values that are roads for cars (car_bridge). ``living_street``, ``road`` and
#: ``track`` are deliberately not included, to follow the paper's "motorway…service" list.
CAR_ROADS = frozenset(
    [
        "motorway",
        "trunk",
        "primary",
        "secondary",
        "tertiary",
        "unclassified",
        "residential",
        "service",
        "motorway_link",
        "trunk_link",
        "primary_link",
        "secondary_link",
        "tertiary_link",
    ]
)

#: Keys whose value is the legal speed limit of a road, for the labels. Advisory, conditional,
#: vehicle-specific and variable limits are not the limit of the road for a car, so they do not
#: define the label (they are still removed from the input: every key containing "maxspeed").
MAXSPEED_LABEL_KEYS = ("maxspeed", "maxspeed:forward", "maxspeed:backward")

MPH = 1.609344
KNOT = 1.852

#: Implicit ("country:zone") limits in km/h that are unambiguous for cars. Unknown codes, and
#: codes that mean "no limit" (e.g. ``DE:motorway``) or "walking pace" (``*:living_street``),
#: are skipped: a road whose only limit is such a code has no parseable speed.
IMPLICIT_MAXSPEED: dict[str, float] = {
    "AT:urban": 50,
    "AT:rural": 100,
    "AT:trunk": 100,
    "AT:motorway": 130,
    "BE:urban": 50,
    "BE:motorway": 120,
    "CH:urban": 50,
    "CH:rural": 80,
    "CH:trunk": 100,
    "CH:motorway": 120,
    "CZ:urban": 50,
    "CZ:rural": 90,
    "CZ:motorway": 130,
    "DE:urban": 50,
    "DE:rural": 100,
    "DK:urban": 50,
    "DK:rural": 80,
    "DK:motorway": 130,
    "ES:urban": 50,
    "ES:rural": 90,
    "ES:motorway": 120,
    "FI:urban": 50,
    "FI:rural": 80,
    "FR:urban": 50,
    "FR:rural": 80,
    "FR:motorway": 130,
    "IT:urban": 50,
    "IT:rural": 90,
    "IT:motorway": 130,
    "LI:urban": 50,
    "LI:rural": 80,
    "NO:urban": 50,
    "NO:rural": 80,
    "PL:urban": 50,
    "PL:rural": 90,
    "PL:motorway": 140,
    "RU:urban": 60,
    "RU:rural": 90,
    "RU:motorway": 110,
    "SE:urban": 50,
    "SE:rural": 70,
    "UA:urban": 50,
    "UA:rural": 90,
    "UA:motorway": 130,
    "GB:nsl_single": 60 * MPH,
    "GB:nsl_dual": 70 * MPH,
    "GB:motorway": 70 * MPH,
}

_SKIPPED_MAXSPEED = frozenset(["none", "signals", "walk", "variable", "unposted", "no", "implicit"])
_NUMBER = re.compile(r"^(\d+(?:[.,]\d+)?)\s*(km/h|kmh|kph|km|mph|knots)?$")
_ZONE = re.compile(r"^[A-Za-z]{2}(?:-[A-Za-z]+)?:zone:?(\d+)$")
_MAX_PLAUSIBLE_KMH = 300.0


@lru_cache(maxsize=4096)
def parse_maxspeed(value: str | None) -> float | None:
    """An OSM ``maxspeed`` value in km/h, or None when it has no numeric meaning.

    ``"50"``, ``"50 km/h"``, ``"30 mph"`` (×1.609), ``"10 knots"``, a country code from
    ``IMPLICIT_MAXSPEED`` and ``"DE:zone30"``/``"DE:zone:30"`` parse; ``"none"``, ``"signals"``,
    ``"walk"``, unknown codes and implausible numbers (0 or > 300) give None. Several values
    separated by ``;`` (per lane / time) give their maximum.
    """
    if value is None:
        return None
    parts = [p.strip() for p in value.split(";")]
    speeds = [s for s in (_parse_one(p) for p in parts if p) if s is not None]
    return max(speeds) if speeds else None


def _parse_one(text: str) -> float | None:
    if text.lower() in _SKIPPED_MAXSPEED:
        return None
    if text in IMPLICIT_MAXSPEED:
        return float(IMPLICIT_MAXSPEED[text])
    zone = _ZONE.match(text)
    if zone:
        speed = float(zone.group(1))
        return speed * MPH if text.upper().startswith("GB") else speed
    number = _NUMBER.match(text.lower())
    if not number:
        return None
    speed = float(number.group(1).replace(",", "."))
    unit = number.group(2)
    if unit == "mph":
        speed *= MPH
    elif unit == "knots":
        speed *= KNOT
    if not 0.0 < speed <= _MAX_PLAUSIBLE_KMH:
        return None
    return speed


def _without_entries(entities: pa.Table, tags: TagEntries, drop: np.ndarray) -> pa.Table:
    """``entities`` with the tag entries in ``drop`` deleted (rows, order and schema kept)."""
    if not drop.any():
        return entities
    keep = ~drop
    kept_per_row = np.bincount(tags.parent[keep], minlength=tags.n_rows)
    offsets = np.concatenate([[0], np.cumsum(kept_per_row)]).astype(np.int32)
    keep_arr = pa.array(keep)
    new_tags = pa.MapArray.from_arrays(
        pa.array(offsets, pa.int32()), tags.keys.filter(keep_arr), tags.values.filter(keep_arr)
    ).cast(entities.schema.field("tags").type)
    index = entities.column_names.index("tags")
    return entities.set_column(index, entities.schema.field("tags"), new_tags)


def _emptied(tags: TagEntries, drop: np.ndarray) -> np.ndarray:
    """Bool per entity row: it had tags and ``drop`` deletes every one of them.

    Such rows are dropped by the removals: ``prepare`` never writes an entity without tags, so
    one left with none (a ``man_made=bridge`` outline stripped of its tags) is a fingerprint of
    the label that only the networks, which see geometry, could read.
    """
    n_all = np.diff(tags.offsets)
    n_drop = np.bincount(tags.parent[drop], minlength=tags.n_rows)
    return (n_all > 0) & (n_drop == n_all)


def _is_point(entities: pa.Table) -> np.ndarray:
    return arrow_bool(pc.is_in(entities.column("geom_type"), value_set=pa.array(POINT_TYPES)))


def _column_np(entities: pa.Table, name: str) -> np.ndarray:
    return np.asarray(entities.column(name).to_numpy(zero_copy_only=False), dtype=object)


# --------------------------------------------------------------------------------------------
# Per-task predicates and removals (module-level: picklable as DataLoader entity_transform)


def _signal_points(entities: pa.Table, tags: TagEntries) -> np.ndarray:
    """Rows that are traffic-signal points: a (multi)point with ``highway=traffic_signals``."""
    signal = tags.key_is("highway") & tags.value_in({"traffic_signals"})
    return tags.rows_with(signal) & _is_point(entities)


def _signal_entries(tags: TagEntries) -> np.ndarray:
    """Tag entries that reveal a signal: ``*traffic_signals*`` in key or value (e.g.
    ``crossing=traffic_signals``, ``traffic_signals:sound=*``), ``crossing:signals=*`` and
    ``button_operated=*`` (only found on signalised crossings)."""
    return (
        tags.key_contains("traffic_signals")
        | tags.value_contains("traffic_signals")
        | tags.key_is("crossing:signals")
        | tags.key_is("button_operated")
    )


def remove_traffic_signals(entities: pa.Table) -> pa.Table:
    """Drop the signal points; strip every signal-revealing tag from the other entities (and
    drop those left with no tag)."""
    tags = TagEntries.of(entities)
    drop = _signal_entries(tags)
    gone = _signal_points(entities, tags) | _emptied(tags, drop)
    return _without_entries(entities, tags, drop).filter(pa.array(~gone))


#: ``traffic_sign*`` values that state a speed limit: ``maxspeed``, a bracketed number
#: (``FI:363[40]``, ``DE:274[60]``) or a known speed-limit sign code (DE 274/275, FI 361–364 and
#: their C32–C35 renumbering).
SPEED_SIGN = r"maxspeed|\[\d+(\.\d+)?\]|DE:27[45]|FI:36[1-4]|FI:C3[2-5]"


def _maxspeed_entries(tags: TagEntries) -> np.ndarray:
    """Every entry whose key contains "maxspeed" (``maxspeed``, ``maxspeed:*``,
    ``source:maxspeed``, ``zone:maxspeed``, …), and speed-limit ``traffic_sign*`` entries."""
    speed_sign = arrow_bool(pc.match_substring_regex(tags.values, SPEED_SIGN))
    return tags.key_contains("maxspeed") | (tags.key_startswith("traffic_sign") & speed_sign)


def remove_maxspeed(entities: pa.Table) -> pa.Table:
    """Strip every ``*maxspeed*`` key and speed-limit traffic sign from every entity (all clips
    of every way included); drop the entities left with no tag."""
    tags = TagEntries.of(entities)
    drop = _maxspeed_entries(tags)
    return _without_entries(entities, tags, drop).filter(pa.array(~_emptied(tags, drop)))


def _road_speeds(entities: pa.Table, tags: TagEntries) -> np.ndarray:
    """Float per row: parsed legal limit (km/h) of a non-point ``highway=*`` entity, NaN if none.

    The maximum over ``MAXSPEED_LABEL_KEYS`` (a road can have different limits per direction).
    """
    speeds = np.full(tags.n_rows, np.nan)
    for key in MAXSPEED_LABEL_KEYS:
        raw = tags.value_of(key)
        present = np.flatnonzero(raw != None)  # noqa: E711  (object array comparison)
        if present.size == 0:
            continue
        uniques, inverse = np.unique(raw[present].astype(str), return_inverse=True)
        parsed = np.array([_nan_if_none(parse_maxspeed(u)) for u in uniques], dtype=float)
        speeds[present] = np.fmax(speeds[present], parsed[inverse])
    is_road = tags.rows_with(tags.key_is("highway")) & ~_is_point(entities)
    speeds[~is_road] = np.nan
    return speeds


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def _building_rows(tags: TagEntries) -> np.ndarray:
    """Rows with any ``building*`` key (``building``, ``building:part``, ``building:levels``…)."""
    return tags.rows_with(tags.key_startswith("building"))


def remove_buildings(entities: pa.Table) -> pa.Table:
    """Drop every entity that has a ``building*`` key."""
    return entities.filter(pa.array(~_building_rows(TagEntries.of(entities))))


def _bridge_entries(tags: TagEntries) -> np.ndarray:
    """Entries that mention a bridge: "bridge" in the key or the value (case-sensitive, so a
    brand like "Bridgestone" is not one), plus every ``layer`` tag (layer>0 marks bridges)."""
    return tags.key_contains("bridge") | tags.value_contains("bridge") | tags.key_is("layer")


def _bridge_rows(tags: TagEntries) -> np.ndarray:
    """Rows that *are* bridges: a ``*bridge*`` key with a value other than "no" (key-only
    entries count), or a value containing "bridge" (``man_made=bridge``)."""
    negative = tags.value_in({"no"})
    positive = (tags.key_contains("bridge") & ~negative) | tags.value_contains("bridge")
    return tags.rows_with(positive)


def remove_bridges(entities: pa.Table) -> pa.Table:
    """Strip every ``*bridge*`` key/value and every ``layer`` tag from every entity; an entity
    left with no tag (a ``man_made=bridge`` outline) is dropped, the others stay."""
    tags = TagEntries.of(entities)
    drop = _bridge_entries(tags)
    return _without_entries(entities, tags, drop).filter(pa.array(~_emptied(tags, drop)))


def _car_road_rows(tags: TagEntries) -> np.ndarray:
    return tags.rows_with(tags.key_is("highway") & tags.value_in(CAR_ROADS))


def _way_rows(entities: pa.Table, tags: TagEntries) -> np.ndarray:
    """Non-point transport ways: ``highway=*`` or ``railway=*`` lines/areas (way_bridge rows)."""
    transport = tags.rows_with(tags.key_is("highway") | tags.key_is("railway"))
    return transport & ~_is_point(entities)


# --------------------------------------------------------------------------------------------
# Label functions


def _tile_ids(tiles: pa.Table) -> pd.Index:
    if REGIONS_INDEX not in tiles.column_names:
        raise InputError("tiles table has no 'region_id' column (see geojepa.data.schema)")
    ids = pd.Index(_column_np(tiles, REGIONS_INDEX), name=REGIONS_INDEX)
    if ids.has_duplicates:
        raise InputError("tiles table has duplicate region_id values")
    return ids


def _per_tile(
    entities: pa.Table, values: np.ndarray, tiles: pa.Table, how: str, empty: float = 0.0
) -> pd.Series:
    """Aggregate a per-entity-row array to the tiles of ``tiles`` (entities elsewhere ignored);
    a tile without entities gets ``empty``."""
    ids = _tile_ids(tiles)
    series = pd.Series(values, index=pd.Index(_column_np(entities, REGIONS_INDEX)))
    grouped = series.groupby(level=0).agg(how)
    return grouped.reindex(ids, fill_value=empty)


def _per_entity(entities: pa.Table, values: np.ndarray, rows: np.ndarray, tiles: pa.Table):
    """Entity-level labels of the selected rows, indexed by (region_id, feature_id)."""
    ids = set(_tile_ids(tiles))
    region = _column_np(entities, REGIONS_INDEX)[rows]
    feature = _column_np(entities, "feature_id")[rows]
    frame = pd.DataFrame({REGIONS_INDEX: region, "feature_id": feature, "y": values[rows]})
    frame = frame[frame[REGIONS_INDEX].isin(ids)]
    # a (tile, entity) pair is one row in a valid dataset; max() keeps labels unique regardless
    return frame.groupby(list(ENTITY_INDEX), sort=True)["y"].max()


def _labels_traffic_signals(tiles: pa.Table, entities: pa.Table) -> pd.Series:
    tags = TagEntries.of(entities)
    return _per_tile(entities, _signal_points(entities, tags).astype(np.int64), tiles, "sum")


def _labels_max_speed(tiles: pa.Table, entities: pa.Table) -> pd.Series:
    speeds = _road_speeds(entities, TagEntries.of(entities))
    return _per_tile(
        entities, speeds, tiles, "max", math.nan
    ).dropna()  # no speed → excluded, not 0


def _labels_building_count(tiles: pa.Table, entities: pa.Table) -> pd.Series:
    rows = _building_rows(TagEntries.of(entities)).astype(np.int64)
    return _per_tile(entities, rows, tiles, "sum")


def _labels_bridge(tiles: pa.Table, entities: pa.Table) -> pd.Series:
    rows = _bridge_rows(TagEntries.of(entities)).astype(np.int64)
    return _per_tile(entities, rows, tiles, "max")


def _labels_car_bridge(tiles: pa.Table, entities: pa.Table) -> pd.Series:
    tags = TagEntries.of(entities)
    rows = (_bridge_rows(tags) & _car_road_rows(tags)).astype(np.int64)
    return _per_tile(entities, rows, tiles, "max")


def _labels_road_speed(tiles: pa.Table, entities: pa.Table) -> pd.Series:
    speeds = _road_speeds(entities, TagEntries.of(entities))
    return _per_entity(entities, speeds, ~np.isnan(speeds), tiles)


def _labels_way_bridge(tiles: pa.Table, entities: pa.Table) -> pd.Series:
    tags = TagEntries.of(entities)
    rows = _way_rows(entities, tags)
    return _per_entity(entities, _bridge_rows(tags).astype(np.int64), rows, tiles)


# --------------------------------------------------------------------------------------------
# Task objects


@dataclass(frozen=True)
class Task:
    """One downstream task: what it predicts, its labels and its leakage-free input.

    ``labels`` reads the **original** entities; embed ``remove(entities)`` instead of the
    original. ``remove`` is a module-level function (picklable for DataLoader workers).
    """

    name: str
    kind: TaskKind
    level: TaskLevel
    remove: Callable[[pa.Table], pa.Table]
    description: str
    _label_fn: Callable[[pa.Table, pa.Table], pd.Series] = field(repr=False)

    def labels(self, tiles: pa.Table, entities: pa.Table) -> pd.Series:
        """Labels indexed by ``region_id`` (tile tasks) or (``region_id``, ``feature_id``)."""
        _check_entities(entities)
        out = self._label_fn(tiles, entities)
        dtype = float if self.kind == "regression" else np.int64
        out = out.astype(dtype)
        out.name = self.name
        return out

    @property
    def unit(self) -> str:
        return {"regression": "km/h", "count": "count", "binary": "0/1"}[self.kind]


def _check_entities(entities: pa.Table) -> None:
    needed = {REGIONS_INDEX, "feature_id", "tags", "geom_type"}
    missing = needed - set(entities.column_names)
    if missing:
        raise InputError(f"entities table lacks column(s) {sorted(missing)} (see schema.py)")


TASKS: dict[str, Task] = {
    task.name: task
    for task in [
        Task(
            "traffic_signals",
            "count",
            "tile",
            remove_traffic_signals,
            "number of traffic-signal points (highway=traffic_signals) in the tile",
            _labels_traffic_signals,
        ),
        Task(
            "max_speed",
            "regression",
            "tile",
            remove_maxspeed,
            "highest legal speed limit (km/h) of a road in the tile; tiles without one excluded",
            _labels_max_speed,
        ),
        Task(
            "building_count",
            "count",
            "tile",
            remove_buildings,
            "number of entities with a building* key in the tile",
            _labels_building_count,
        ),
        Task(
            "bridge",
            "binary",
            "tile",
            remove_bridges,
            "the tile holds a bridge (any *bridge* tag, bridge=no excepted)",
            _labels_bridge,
        ),
        Task(
            "car_bridge",
            "binary",
            "tile",
            remove_bridges,
            "the tile holds a car road (motorway…service, *_link) that is a bridge",
            _labels_car_bridge,
        ),
        Task(
            "road_speed",
            "regression",
            "entity",
            remove_maxspeed,
            "legal speed limit (km/h) of a road clip, with every *maxspeed* tag removed",
            _labels_road_speed,
        ),
        Task(
            "way_bridge",
            "binary",
            "entity",
            remove_bridges,
            "a highway/railway way clip is a bridge, with *bridge* and layer tags removed",
            _labels_way_bridge,
        ),
    ]
}

TILE_TASKS = tuple(name for name, task in TASKS.items() if task.level == "tile")
ENTITY_TASKS = tuple(name for name, task in TASKS.items() if task.level == "entity")


def get_task(name: str) -> Task:
    """The task called ``name``; ConfigError (a usage mistake) listing the known ones otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task '{name}' (known: {', '.join(TASKS)})") from None
