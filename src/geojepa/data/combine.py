"""Dataset subsets and merges: new complete tile datasets built from existing ones.

Why: honest pretraining must see only the *train* blocks of the evaluation areas, and the
benchmark trains on several areas at once. ``subset_dataset`` keeps the tiles of a list of
region ids; ``merge_datasets`` joins datasets built with the same zoom, tag filter and image
size. Both write the on-disk layout of ``geojepa.data.schema`` with recomputed manifest counts
and vocabulary (the same code `prepare` uses), shards first and ``manifest.json`` last, each
file via a temporary name, so an interrupted run never leaves a dataset that reads as complete.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from geojepa.constants import REGIONS_INDEX
from geojepa.data import schema
from geojepa.data.config import PrepareConfig
from geojepa.data.manifest import SummaryMerger, manifest_header, shard_summary
from geojepa.data.reader import TileDataset, dataset_kind, open_dataset
from geojepa.data.resume import discard_build, remove_dataset_entries
from geojepa.errors import InputError, OutputError
from geojepa.io.atomic import OutputLock, write_atomic, write_json_atomic

#: PrepareConfig fields that must agree for datasets to be merged (they change what a tile
#: holds); bbox/polygon/sharding only decide *which* tiles exist and how they are grouped.
MERGE_FIELDS = ("zoom", "image_size", "tag_filter", "drop_keys", "key_only", "other_relations")


def _open(ds: TileDataset | str | Path) -> TileDataset:
    return ds if isinstance(ds, TileDataset) else open_dataset(ds)


def _prepare_output(out: Path, overwrite: bool, inputs: Sequence[TileDataset]) -> bool:
    """Make ``out`` writable; True if this call created it. Like `prepare`, only a provable
    dataset is ever replaced, and only its own entries."""
    resolved = out.resolve()
    if any(resolved == d.path.resolve() for d in inputs):
        raise OutputError(f"{out} is one of the input datasets; write to a new directory")
    created = not out.exists()
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"{out} exists and is not a directory")
        if any(out.iterdir()):
            if not overwrite:
                raise OutputError(f"{out} exists and is not empty (use overwrite=True)")
            if dataset_kind(out) not in ("dataset", "incomplete"):
                raise OutputError(f"{out} is not a tile dataset; refusing to overwrite it")
            remove_dataset_entries(out)
    try:
        (out / schema.SHARD_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc}") from None
    return created


def _write_shard(out: Path, shard: int, tiles: pa.Table, entities: pa.Table) -> None:
    """Entities first, tiles last, each renamed into place when complete (as `prepare` does)."""
    for table, name in ((entities, schema.entities_file), (tiles, schema.tiles_file)):
        write_atomic(
            out / name(shard), lambda tmp, t=table: pq.write_table(t, tmp, compression="zstd")
        )


def _write_dataset(
    out: Path,
    config: PrepareConfig,
    parts: Iterable[tuple[pa.Table, pa.Table]],
    source: dict[str, Any],
    overwrite: bool,
    inputs: Sequence[TileDataset],
) -> TileDataset:
    """Write (tiles, entities) shard pairs as a complete dataset; shards renumbered from 0."""
    with OutputLock(out):
        created = _prepare_output(out, overwrite, inputs)
        try:
            config.save(out / schema.CONFIG_FILE)
            merger, shard = SummaryMerger(), 0
            for tiles, entities in parts:
                if tiles.num_rows == 0:
                    continue
                _write_shard(out, shard, tiles, entities)
                merger.add(shard, shard_summary(tiles, entities, 0))
                shard += 1
            stats, vocab = merger.result()
            shards = stats.pop("shards")
            if stats["n_tiles"] == 0:
                raise InputError("no tiles selected: the new dataset would be empty")
            manifest = manifest_header(config, source, shards, stats)
            write_atomic(out / schema.VOCAB_FILE, lambda tmp: pq.write_table(vocab, tmp))
            write_json_atomic(out / schema.MANIFEST_FILE, manifest)
        except BaseException:
            discard_build(out, created)
            raise
        return open_dataset(out)


def _source_of(ds: TileDataset) -> dict[str, Any]:
    return {"dataset": str(ds.path.resolve()), "source": ds.manifest.get("source")}


def subset_dataset(
    ds: TileDataset | str | Path,
    region_ids: Iterable[str],
    out: str | Path,
    *,
    overwrite: bool = False,
) -> TileDataset:
    """A new complete dataset at ``out`` holding only the tiles ``region_ids`` of ``ds``.

    Shards keep their grouping (empty ones are left out); the manifest counts and the
    vocabulary are recomputed from what is kept, so pretraining on the subset learns nothing of
    the other tiles, not even their tag strings. InputError if an id is not in ``ds``.
    """
    ds = _open(ds)
    wanted = pa.array(sorted(set(map(str, region_ids))), type=pa.string())
    if len(wanted) == 0:
        raise InputError("subset_dataset: no region ids given")
    found = np.zeros(len(wanted), dtype=bool)

    def parts() -> Iterator[tuple[pa.Table, pa.Table]]:
        for _, tiles, entities in ds.iter_shards():
            keep = pc.is_in(tiles.column(REGIONS_INDEX), value_set=wanted)
            hits = pc.index_in(tiles.column(REGIONS_INDEX), value_set=wanted).drop_null()
            found[hits.to_numpy()] = True
            ekeep = pc.is_in(entities.column(REGIONS_INDEX), value_set=wanted)
            yield tiles.filter(keep), entities.filter(ekeep)
        if not found.all():
            missing = wanted.filter(pa.array(~found))
            raise InputError(
                f"{len(missing)} region id(s) are not tiles of {ds.path} "
                f"(e.g. {missing[0].as_py()}): was the list made for this dataset?"
            )

    source = {"kind": "subset", "of": _source_of(ds), "n_region_ids": len(wanted)}
    return _write_dataset(Path(out), ds.config, parts(), source, overwrite, [ds])


def merge_datasets(
    datasets: Sequence[TileDataset | str | Path],
    out: str | Path,
    *,
    overwrite: bool = False,
) -> TileDataset:
    """One dataset at ``out`` holding every tile of ``datasets`` (shards copied, renumbered).

    The inputs must agree on zoom, image size and tag filter (InputError naming the first
    difference) and must not share tiles (overlapping areas would give duplicate region ids).
    """
    opened = [_open(d) for d in datasets]
    if not opened:
        raise InputError("merge_datasets: no datasets given")
    first = opened[0].config
    for other in opened[1:]:
        for name in MERGE_FIELDS:
            a, b = getattr(first, name), getattr(other.config, name)
            if a != b:
                raise InputError(
                    f"cannot merge {opened[0].path} and {other.path}: different {name} "
                    f"({a!r} vs {b!r}); re-run `geojepa prepare` with the same settings"
                )
    seen: dict[str, Path] = {}
    for d in opened:
        ids = d.read_tiles(columns=[REGIONS_INDEX]).column(REGIONS_INDEX).to_pylist()
        for rid in ids:
            if rid in seen:
                raise InputError(
                    f"cannot merge: tile {rid} is in both {seen[rid]} and {d.path} "
                    "(overlapping areas); prepare them as one extract instead"
                )
            seen[rid] = d.path
    imagery = tuple(dict.fromkeys(s for d in opened for s in d.config.imagery))
    config = first.replace(bbox=None, polygon_wkt=None, imagery=imagery)

    def parts() -> Iterator[tuple[pa.Table, pa.Table]]:
        for d in opened:
            for _, tiles, entities in d.iter_shards():
                yield tiles, entities

    source = {"kind": "merge", "of": [_source_of(d) for d in opened]}
    return _write_dataset(Path(out), config, parts(), source, overwrite, opened)
