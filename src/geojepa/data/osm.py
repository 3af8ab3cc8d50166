"""Streaming OSM PBF / XML reading with pyosmium: raw batches of tagged elements.

One pass with node locations and multipolygon area assembly. The main process does only what
must happen in order (pyosmium's C++ iteration and geometry building as WKB); decoding,
reprojection and tiling of each batch happen in worker processes (`geojepa.data.prepare`).

Rules (also in docs/dataset.md):
- untagged elements are skipped (pyosmium's EmptyTagFilter, in C++);
- nodes become points and ways become lines; closed ways with area tags become polygons later,
  in the worker, by `geojepa.data.tags.is_area`;
- multipolygon and boundary relations become (multi)polygons through pyosmium's area assembly,
  with id ``relation/<id>``; areas that pyosmium builds from closed ways are ignored (the way
  itself is used);
- other relations (routes, restrictions, sites, ...) are skipped: their members are entities of
  their own, and a route's geometry would duplicate its ways;
- a way with missing node locations (cut at the extract border) or too few points, and a
  relation whose area cannot be assembled, is skipped and counted.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import osmium
from osmium.filter import EmptyTagFilter

from geojepa.errors import InputError

OSM_SUFFIXES = (".pbf", ".osm", ".osm.bz2", ".osm.gz", ".osc", ".opl", ".o5m")
AREA_RELATION_TYPES = frozenset({"multipolygon", "boundary"})
_OPL_TAG_FIELD = re.compile(r" T([^ \n]*)")


@dataclass
class RawBatch:
    """Tagged elements as read, before decoding (picklable, sent to a worker)."""

    index: int
    ids: list[str] = field(default_factory=list)
    #: WKB (hex text from pyosmium or bytes from a features table), EPSG:4326 or ``crs``
    geoms: list[str | bytes] = field(default_factory=list)
    #: per element: text (OPL or JSON, see ``tags_format``), a mapping, or (k, v) pairs
    tags: list[object] = field(default_factory=list)
    tags_format: str = "opl"  # how str entries are encoded: "opl" or "json"
    from_osm: bool = True  # closed OSM ways may still need to become polygons
    crs: str | None = None  # None = EPSG:4326; else anything pyproj understands

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class ReadStats:
    elements: int = 0
    skipped_ways: int = 0  # missing node locations or fewer than two points
    skipped_nodes: int = 0  # tagged nodes without a valid location (corrupt or hand-made XML)
    skipped_relations: int = 0  # multipolygon/boundary relations that did not assemble
    other_relations: int = 0  # tagged relations of other types (skipped by rule)
    duplicate_ids: int = 0  # elements whose id an earlier element had (`data/ids.py`)


def is_osm_file(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in OSM_SUFFIXES)


def _opl_tag_fields(path: Path) -> list[str]:
    """The tag field (after ``T``) of each line of an OPL file written without metadata."""
    # one scan in C: each line has exactly one " T" field (an id never holds a space, and
    # OPL escapes spaces in tags as %20%, so the field runs to the next space or line end)
    return _OPL_TAG_FIELD.findall(path.read_text(encoding="utf-8"))


class _OplBatch:
    """A batch being filled, and the OPL file pyosmium writes its node/way tags to.

    Writing tags as OPL in C++ and parsing the file in one regex pass is far faster than
    building a Python list per element; ``slots`` are the batch positions that await them.
    """

    def __init__(self, work_dir: Path, index: int) -> None:
        self.path = work_dir / f"tags-{os.getpid()}-{index}.opl"
        self.writer = osmium.SimpleWriter(osmium.io.File(str(self.path), "opl,add_metadata=false"))
        self.batch = RawBatch(index=index)
        self.slots: list[int] = []

    def finish(self) -> RawBatch:
        """The batch with its OPL tag texts filled in; the file is removed."""
        self.writer.close()
        fields = _opl_tag_fields(self.path)
        self.path.unlink()
        if len(fields) != len(self.slots):
            raise RuntimeError("OPL tag side channel out of step with the element stream")
        for slot, text in zip(self.slots, fields, strict=True):
            self.batch.tags[slot] = text
        self.batch.tags_format = "opl"
        return self.batch


def _processor(path: Path, location_index: str) -> osmium.FileProcessor:
    """One pass over tagged elements, with node locations and assembled areas."""
    return (
        osmium.FileProcessor(str(path))
        .with_locations(location_index)
        .with_areas()
        .with_filter(EmptyTagFilter())
    )


# The per-element loop stays inline (no helper call per element): it runs millions of times.
def iter_osm_batches(
    path: Path,
    work_dir: Path,
    stats: ReadStats,
    batch_size: int = 10000,
    location_index: str = "flex_mem",
) -> Iterator[RawBatch]:
    """Yield batches of tagged elements of an OSM file; raise InputError if it is unreadable."""
    factory = osmium.geom.WKBFactory()
    point, line, multipolygon = (
        factory.create_point,
        factory.create_linestring,
        factory.create_multipolygon,
    )
    work_dir.mkdir(parents=True, exist_ok=True)
    area_relations = 0
    assembled = 0
    cur = _OplBatch(work_dir, 0)
    batch, writer, opl_slots = cur.batch, cur.writer, cur.slots
    complete = False
    try:
        for obj in _processor(path, location_index):
            if obj.is_node():
                try:
                    wkb = point(obj)
                except (osmium.InvalidLocationError, RuntimeError):  # lat="abc", lon="999"
                    stats.skipped_nodes += 1
                    continue
                batch.geoms.append(wkb)
                batch.ids.append(f"node/{obj.id}")
                writer.add_node(obj)
            elif obj.is_way():
                try:
                    wkb = line(obj)
                except (osmium.InvalidLocationError, RuntimeError):
                    stats.skipped_ways += 1
                    continue
                batch.geoms.append(wkb)
                batch.ids.append(f"way/{obj.id}")
                writer.add_way(obj)
            elif obj.is_area():
                if obj.from_way():
                    continue
                try:
                    wkb = multipolygon(obj)
                except (osmium.InvalidLocationError, RuntimeError):
                    continue
                assembled += 1
                batch.geoms.append(wkb)
                batch.ids.append(f"relation/{obj.orig_id()}")
                batch.tags.append([(t.k, t.v) for t in obj.tags])  # few: Python is fine
                continue
            else:  # relation
                if obj.tags.get("type") in AREA_RELATION_TYPES:
                    area_relations += 1
                else:
                    stats.other_relations += 1
                continue
            opl_slots.append(len(batch.tags))
            batch.tags.append(None)
            if len(batch.ids) >= batch_size:  # (the list's len: no Python-level __len__)
                stats.elements += len(batch)
                yield cur.finish()
                cur = _OplBatch(work_dir, batch.index + 1)
                batch, writer, opl_slots = cur.batch, cur.writer, cur.slots
        complete = True
    except osmium.InvalidLocationError as exc:  # an unparsable lat/lon text in OSM XML
        raise InputError(f"{path} holds a malformed coordinate ({exc}): fix the file") from None
    except (RuntimeError, ValueError) as exc:  # corrupt/truncated input; an id out of range
        raise InputError(f"cannot read OSM data from {path}: {exc}") from None
    finally:
        if not complete:
            with contextlib.suppress(Exception):
                cur.writer.close()
            cur.path.unlink(missing_ok=True)
    stats.elements += len(batch)
    stats.skipped_relations = max(area_relations - assembled, 0)
    if len(batch):
        yield cur.finish()
    else:
        cur.writer.close()
        cur.path.unlink(missing_ok=True)
