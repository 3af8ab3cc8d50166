"""The tag filter, OSM tag decoding, the closed-way area rule, and the tag entries of a table.

Why a filter: names, addresses, references, notes and links are free text or identifiers.
They identify a place instead of describing it, so a model would memorise them and an
evaluation could read answers off them. Their *key* still says something ("this has a name",
"this has an address"), so we keep the key and drop the value. Import and editor metadata
(``created_by``, ``tiger:*``, ...) says nothing about the place at all and is dropped entirely.

The rules are glob patterns on the key (``fnmatch`` syntax, case-sensitive), checked in order:
drop rules first, then key-only rules; a key that matches neither keeps its value. The full
lists are in ``docs/dataset.md`` and below; extra patterns come from ``PrepareConfig``.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from geojepa.data.schema import TAGS_TYPE
from geojepa.errors import InputError

_KEY = itemgetter(0)

#: Keys dropped entirely: editor, import and bookkeeping metadata.
DROP_KEYS: tuple[str, ...] = (
    "created_by",
    "converted_by",
    "odbl",
    "odbl:*",
    "attribution",
    "history",
    "import",
    "import:*",
    "import_*",
    "tiger:*",
    "gnis:*",
    "osak:*",
    "nhd:*",
    "nhd-shp:*",
    "NHD:*",
    "canvec:*",
    "geobase:*",
    "linz:*",
    "linz2osm:*",
    "lacounty:*",
    "massgis:*",
    "chicago:*",
    "yh:*",
    "KSJ2:*",
    "mvdgis:*",
    "ursea:*",
    "naptan:*",
    "osmarender:*",
    "kms:*",
    "raba:*",
    "LINZ:*",
    "it:fvg:*",
    "*:uuid",
    "uuid",
    "fixme:*",
    "FIXME:*",
    "source_*",
    "check_date*",
    "survey:date",
    "survey_date",
)

#: Keys whose value is free text or an identifier: the key is kept, the value dropped.
KEY_ONLY_KEYS: tuple[str, ...] = (
    "name",
    "name:*",
    "*_name",
    "*_name:*",
    "noname",
    "not:name",
    "addr:*",
    "contact:*",
    "is_in",
    "is_in:*",
    "ref",
    "ref:*",
    "*_ref",
    "*:ref",
    "note",
    "note:*",
    "description",
    "description:*",
    "fixme",
    "FIXME",
    "source",
    "source:*",
    "wikipedia",
    "wikipedia:*",
    "*:wikipedia",
    "wikidata",
    "*:wikidata",
    "wikimedia_commons",
    "website",
    "website:*",
    "url",
    "url:*",
    "email",
    "phone",
    "phone:*",
    "fax",
    "mobile",
    "image",
    "mapillary",
    "opening_hours",
    "opening_hours:*",
    "collection_times",
    "service_times",
    "inscription",
    "inscription:*",
    "operator",
    "operator:*",
    "brand",
    "brand:*",
    "destination",
    "destination:*",
    "postal_code",
    "start_date",
    "end_date",
    "*:date",
)


def _compile(patterns: Iterable[str]) -> re.Pattern[str] | None:
    patterns = list(patterns)
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class TagFilter:
    """Deterministic key-based tag filter; decisions are cached per key (keys repeat a lot)."""

    KEEP, KEY_ONLY, DROP = 0, 1, 2

    def __init__(
        self,
        enabled: bool = True,
        drop_keys: Sequence[str] = (),
        key_only: Sequence[str] = (),
    ) -> None:
        self.enabled = enabled
        self._drop = _compile((*DROP_KEYS, *drop_keys)) if enabled else _compile(drop_keys)
        self._key_only = _compile((*KEY_ONLY_KEYS, *key_only)) if enabled else _compile(key_only)
        self._cache: dict[str, int] = {}
        #: free for callers: decoded results per raw tag text (tag texts repeat a lot)
        self.text_cache: dict[str, object] = {}

    def decision(self, key: str) -> int:
        """KEEP, KEY_ONLY or DROP for ``key``."""
        d = self._cache.get(key)
        if d is None:
            if self._drop is not None and self._drop.fullmatch(key):
                d = self.DROP
            elif self._key_only is not None and self._key_only.fullmatch(key):
                d = self.KEY_ONLY
            else:
                d = self.KEEP
            self._cache[key] = d
        return d

    def __call__(self, tags: Iterable[tuple[str, str]]) -> list[tuple[str, str | None]]:
        """Filtered tags sorted by key (value None = key kept, value dropped)."""
        out: list[tuple[str, str | None]] = []
        decision, cached = self.decision, self._cache.get
        for k, v in tags:
            d = cached(k)
            if d is None:
                d = decision(k)
            if d == 0:
                out.append((k, v))
            elif d == 1:
                out.append((k, None))
        out.sort(key=_KEY)
        return out

    def filter_opl(self, field: str) -> list[tuple[str, str | None]]:
        """``self(decode_opl_tags(field))``, fused: values that are dropped are never decoded."""
        if not field:
            return []
        out: list[tuple[str, str | None]] = []
        decision, cached = self.decision, self._cache.get
        for kv in field.split(","):
            k, _, v = kv.partition("=")
            if "%" in k:
                k = _opl_unescape(k)
            d = cached(k)
            if d is None:
                d = decision(k)
            if d == 0:
                out.append((k, _opl_unescape(v) if "%" in v else v))
            elif d == 1:
                out.append((k, None))
        out.sort(key=_KEY)
        return out


_OPL_ESCAPE = re.compile(r"%([0-9a-fA-F]+)%")


def _opl_unescape(s: str) -> str:
    if "%" not in s:
        return s
    return _OPL_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), s)


def decode_opl_tags(field: str) -> list[tuple[str, str]]:
    """Tags from libosmium's OPL tag field (``k=v,k=v``, special characters as ``%hex%``).

    OPL is how `prepare` moves tags out of pyosmium cheaply: writing objects in C++ and decoding
    the text here is several times faster than iterating pyosmium's per-tag Python objects.
    """
    if not field:
        return []
    out = []
    for kv in field.split(","):
        k, _, v = kv.partition("=")
        out.append((_opl_unescape(k), _opl_unescape(v)))
    return out


def decode_tags(raw: object) -> list[tuple[str, str]]:
    """Tags given as a JSON object text, a mapping, or a sequence of (key, value) pairs."""
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = json.loads(raw) if raw else {}
        if not isinstance(raw, dict):
            raise ValueError("tags JSON is not an object")
    if isinstance(raw, Mapping):
        # the usual case, all text: no per-tag conversion (map/set of types run in C)
        if set(map(type, raw)) <= _STR and set(map(type, raw.values())) <= _STR:
            return list(raw.items())
        items = raw.items()
    else:
        items = raw
    return [(str(k), "" if v is None else str(v)) for k, v in items]


_STR = {str}


# Closed ways are areas when they carry one of these keys (any value, unless excluded below),
# or area=yes; area=no always means a line. Modelled on the common OSM area conventions.
_AREA_KEYS = frozenset(
    {
        "building",
        "building:part",
        "landuse",
        "leisure",
        "amenity",
        "shop",
        "office",
        "craft",
        "tourism",
        "historic",
        "military",
        "place",
        "water",
        "wetland",
        "parking",
        "golf",
        "healthcare",
        "emergency",
        "public_transport",
        "aeroway",
        "man_made",
        "natural",
        "power",
        "railway",
        "highway",
        "waterway",
        "area:highway",
        "indoor",
        "sport",
    }
)
# key -> values that stay lines even on a closed way
_LINE_VALUES = {
    "natural": {"coastline", "cliff", "ridge", "arete", "tree_row", "valley", "gorge"},
    "man_made": {"embankment", "pipeline", "cutline", "breakwater", "groyne", "dyke"},
    "aeroway": {"taxiway", "runway", "parking_position"},
    "power": {"line", "minor_line", "cable"},
    "leisure": {"track", "slipway"},
    "amenity": {"bench"},
}
# key -> the only values that make an area (others are lines)
_AREA_ONLY_VALUES = {
    "railway": {"platform", "station", "turntable", "roundhouse"},
    "highway": {"pedestrian", "platform", "services", "rest_area"},
    "waterway": {"riverbank", "dock", "boatyard", "dam"},
    "public_transport": {"platform", "station"},
}


def is_area(tags: Iterable[tuple[str, str | None]]) -> bool:
    """Whether a *closed* way with these tags is a polygon (else a closed line).

    Works on raw or filtered tags: the filter never drops the keys this rule looks at.
    """
    verdict = False
    for k, v in tags:
        if k == "area":
            if v == "no":
                return False
            if v == "yes":
                verdict = True
            continue
        if k not in _AREA_KEYS or v == "no":
            continue
        only = _AREA_ONLY_VALUES.get(k)
        if only is not None:
            if v in only:
                verdict = True
            continue
        if v not in _LINE_VALUES.get(k, ()):
            verdict = True
    return verdict


# --------------------------------------------------------------------------------------------
# The tag entries of an entities table, flattened (the evaluation's tasks and baselines, the
# top tags of `embed`)


@dataclass(frozen=True)
class TagEntries:
    """The tag entries of an entities table: entry i belongs to entity row ``parent[i]``."""

    n_rows: int
    offsets: np.ndarray  # int64 [n_rows + 1], relative to the first entry
    parent: np.ndarray  # int64 [n_entries]
    keys: pa.Array  # string [n_entries]
    values: pa.Array  # string [n_entries], nullable

    @classmethod
    def of(cls, entities: pa.Table) -> TagEntries:
        if "tags" not in entities.column_names:
            raise InputError("entities table has no 'tags' column (see geojepa.data.schema)")
        column = entities.column("tags")
        tags = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if isinstance(tags, pa.ChunkedArray):  # zero chunks
            tags = pa.array([], type=TAGS_TYPE)
        raw = np.asarray(tags.offsets, dtype=np.int64)
        start, stop = int(raw[0]), int(raw[-1])
        offsets = raw - start
        counts = np.diff(offsets)
        parent = np.repeat(np.arange(len(tags), dtype=np.int64), counts)
        keys = tags.keys.slice(start, stop - start)
        values = tags.items.slice(start, stop - start)
        return cls(len(tags), offsets, parent, keys, values)

    def rows_with(self, entry_mask: np.ndarray) -> np.ndarray:
        """Bool per entity row: it has at least one entry in ``entry_mask``."""
        return np.bincount(self.parent[entry_mask], minlength=self.n_rows) > 0

    def key_is(self, key: str) -> np.ndarray:
        return arrow_bool(pc.equal(self.keys, key))

    def value_in(self, values: frozenset[str] | set[str]) -> np.ndarray:
        return arrow_bool(pc.is_in(self.values, value_set=pa.array(sorted(values), pa.string())))

    def key_contains(self, text: str) -> np.ndarray:
        return arrow_bool(pc.match_substring(self.keys, text))

    def value_contains(self, text: str) -> np.ndarray:
        return arrow_bool(pc.match_substring(self.values, text))

    def key_startswith(self, text: str) -> np.ndarray:
        return arrow_bool(pc.starts_with(self.keys, text))

    def value_of(self, key: str) -> np.ndarray:
        """Object array per entity row: the value of ``key`` (None if absent or key-only)."""
        out = np.full(self.n_rows, None, dtype=object)
        mask = self.key_is(key)
        out[self.parent[mask]] = np.asarray(self.values.filter(pa.array(mask)).to_pylist(), object)
        return out

    def strings(self) -> np.ndarray:
        """Each entry as ``key=value`` (``key`` if the value is null), an object array."""
        joined = pc.binary_join_element_wise(self.keys, self.values, "=")
        strings = pc.coalesce(joined, self.keys)
        return np.asarray(strings.to_numpy(zero_copy_only=False), dtype=object)


def tag_strings(entities: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(entity row of each tag entry, its ``key=value`` string; ``key`` if the value is null)."""
    tags = TagEntries.of(entities)
    return tags.parent, tags.strings()


def arrow_bool(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A pyarrow boolean result as numpy, nulls as False."""
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)
