"""Duplicate ids in the input: the first element with an id, in input order, is kept.

Two elements with one id (eight features sharing a ``feature_id``, an OSM XML file with node 1
twice at different places) would become two entities that nothing downstream can tell apart.
The read stage drops every later one and counts it (``manifest.json`` → ``input.duplicate_ids``).

Ids are compared by a 64-bit hash (FNV-1a, deterministic: a re-run drops the same elements),
held as sorted runs of ``uint64``: 8 bytes per element read (a million elements: 8 MB; a large
country's hundred million: 0.8 GB), never the id strings. Two distinct ids share a hash with a
chance under 1e-7 for a million elements (about 3e-4 for a hundred million).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from geojepa.data.osm import RawBatch, ReadStats

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def id_hashes(ids: list[str]) -> np.ndarray:
    """FNV-1a over the code points of each id, vectorised over the batch -> uint64 [N]."""
    if not ids:
        return np.zeros(0, np.uint64)
    chars = np.array(ids, dtype=str)
    points = chars.view(np.uint32).reshape(len(ids), -1).astype(np.uint64)
    h = np.full(len(ids), _FNV_OFFSET)
    with np.errstate(over="ignore"):
        for column in points.T:  # the padding of shorter ids (code point 0) is skipped
            h = np.where(column != 0, (h ^ column) * _FNV_PRIME, h)
    return h


class SeenIds:
    """The hashes of the ids read so far, as sorted runs merged LSM-style (a lookup is a few
    binary searches; all merges together cost O(n log n))."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def first_seen(self, keys: np.ndarray) -> np.ndarray:
        """Mark ``keys`` as seen; bool [N]: True where a key was not seen before (the first of
        equal keys within ``keys`` counts as first)."""
        order = np.argsort(keys, kind="stable")  # sorted keys: the searches walk the runs once
        ordered = keys[order]
        first = np.ones(len(keys), dtype=bool)
        first[1:] = ordered[1:] != ordered[:-1]
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, ordered), len(run) - 1)
            first &= run[at] != ordered
        new = np.empty(len(keys), dtype=bool)
        new[order] = first
        run = ordered[first]
        while self._runs and len(self._runs[-1]) <= len(run):
            # disjoint sorted runs: timsort merges them in linear time
            run = np.sort(np.concatenate([self._runs.pop(), run]), kind="stable")
        if len(run):
            self._runs.append(run)
        return new


def drop_duplicate_ids(batches: Iterable[RawBatch], stats: ReadStats) -> Iterator[RawBatch]:
    """``batches`` without the elements whose id an earlier element had (counted in
    ``stats.duplicate_ids``)."""
    seen = SeenIds()
    for batch in batches:
        keep = seen.first_seen(id_hashes(batch.ids))
        if not keep.all():
            stats.duplicate_ids += int((~keep).sum())
            rows = np.flatnonzero(keep).tolist()
            batch.ids = [batch.ids[i] for i in rows]
            batch.geoms = [batch.geoms[i] for i in rows]
            batch.tags = [batch.tags[i] for i in rows]
        yield batch
