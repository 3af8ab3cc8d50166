"""`prepare_tiles`: OSM data (+ imagery) → a sharded tile dataset (layout: `data/schema.py`).

Stream, then shard:

1. *Read* (main process, in order): pyosmium streams tagged elements as WKB + raw tags
   (`data/osm.py`), or a features table is read in record batches (`data/features.py`).
2. *Bucket* (per batch): decode and filter tags, close area ways into polygons,
   reproject to Web-Mercator, repair invalid geometries, find the tiles each element's bounds
   touch, and append the element to a bucket per shard (the parent tile at
   ``zoom - shard_levels``). An element spanning several shards goes to each.
3. *Shard* (per shard): map each (element, tile) candidate into the tile's local
   frame, clip to the unit square (vectorised ``clip_by_rect``: a way through a tile without a
   vertex in it is kept, multi-part clips stay multi-part), drop candidates whose clip is
   empty, compute boxes, read imagery, and write the shard atomically.

Steps 2 and 3 run in a process pool with buckets in Arrow files on disk, so memory is bounded
by a batch in step 2 and by a shard in step 3, never by the input; with ``workers=0`` an input
estimated under ``INLINE_MAX_ELEMENTS`` is instead built in the calling process with its
buckets kept in memory (a pool's start-up and the file round trip cost more than they save
there; ``workers=1`` on a big input runs in-process with its buckets on disk). Finished shards
are skipped on a re-run with the same config and source; ``manifest.json`` and
``vocab.parquet`` are written last, from the shard files, so they are right after a resume.

One module per stage; this one only orchestrates them:

* `data/resume.py` — the source check and fingerprint, the output directory (what may be
  replaced, whether a build resumes);
* `data/pool.py` — in-process or process pool, bounded in-flight work;
* `data/bucket.py` — step 2; `data/shard.py` — step 3 (`data/arrow.py`: Arrow without pandas);
* `data/manifest.py` — shard summaries → manifest statistics and vocabulary.
"""

from __future__ import annotations

import gc
import os
import shutil
import time
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from geojepa.data import schema
from geojepa.data.bucket import MAX_SHARD_CELLS, bucket_batch, region_tile_range, spread_huge
from geojepa.data.config import PrepareConfig
from geojepa.data.features import (
    iter_feature_file_batches,
    iter_geodataframe_batches,
)
from geojepa.data.ids import drop_duplicate_ids
from geojepa.data.manifest import SummaryMerger, finalize, manifest_header
from geojepa.data.osm import RawBatch, ReadStats, iter_osm_batches
from geojepa.data.pool import (
    INLINE_MAX_ELEMENTS,
    InlineExecutor,
    bounded_map,
    estimated_elements,
    make_executor,
    worker_count,
)
from geojepa.data.reader import TileDataset, open_dataset
from geojepa.data.resume import (
    SOURCE_FILE,
    WORK_DIR,
    SourceHasher,
    check_same_source,
    check_source,
    discard_build,
    prepare_output,
    sha256_file,
)
from geojepa.data.shard import ShardJob, build_shard, group_parents
from geojepa.data.tiling import (
    merc_to_lonlat,
)
from geojepa.errors import InputError, OutputError
from geojepa.io.atomic import OutputLock, write_json_atomic
from geojepa.progress import progress_bar

_GC_THRESHOLD = 100_000  # allocations between young-generation collections during a build


def prepare_tiles(
    source: str | Path | Any,
    output: str | Path,
    config: PrepareConfig | None = None,
    imagery: Any = None,
    overwrite: bool = False,
    progress: bool = True,
) -> TileDataset:
    """Build (or resume) a tile dataset; see the module docstring and docs/dataset.md.

    ``source``: an OSM PBF/XML file, a features GeoParquet, or a GeoDataFrame.
    ``imagery``: None, one or more raster/XYZ-folder paths, or an opened ``Imagery``.
    """
    # The build allocates millions of short-lived objects (tag lists, geometries) and holds many
    # long-lived ones: CPython's default GC thresholds (700 allocations) made full collections
    # scan them again and again, ~10-15% of a small build's CPU. A higher first threshold keeps
    # cycle collection, just less often; the old thresholds are restored afterwards (pool
    # workers forked meanwhile keep the higher one for their whole, build-only, life).
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], _GC_THRESHOLD), *thresholds[1:])
    try:
        with OutputLock(output):  # two builds into one folder would corrupt each other
            return _prepare_tiles(source, output, config, imagery, overwrite, progress)
    finally:
        gc.set_threshold(*thresholds)


@dataclass
class _Run:
    """What the clean-up after a failed build needs: the pool to stop, whether shards exist."""

    executor: Executor | None = None
    shards_written: int = 0


@dataclass
class _Read:
    """Step 2's result: counts for the manifest, the data's bounds, each parent's pieces."""

    totals: dict[str, int]
    read_stats: ReadStats
    bounds: list[float]
    pieces: dict[tuple[int, int], list[tuple[str, int, int]]]
    huge: list[tuple[str, int, int, int, int, int]]  # see bucket.MAX_SHARD_CELLS


@dataclass
class _Built:
    """A finished build, before its manifest: what the manifest is made of."""

    read: _Read
    source_id: dict[str, Any]
    stats: dict[str, Any]
    times: tuple[float, float, float]  # perf_counter after setup, reading, shards


def _prepare_tiles(
    source: str | Path | Any,
    output: str | Path,
    config: PrepareConfig | None = None,
    imagery: Any = None,
    overwrite: bool = False,
    progress: bool = True,
) -> TileDataset:
    """Check the inputs, build in a clean work folder, then write the manifest last."""
    started = time.perf_counter()
    config = config or PrepareConfig()
    output = Path(output)
    kind, path = check_source(source)
    imagery_obj, config = _open_imagery(imagery, config)
    region_tile_range(config)  # fails early if bbox and polygon do not overlap

    hasher = SourceHasher(path) if path is not None else None
    created, resuming = prepare_output(output, config, overwrite)
    if resuming and (output / schema.MANIFEST_FILE).is_file():
        # already complete: nothing to do unless the source changed
        if path is not None:
            check_same_source(output, {"sha256": sha256_file(path)})
        return open_dataset(output)
    work = output / WORK_DIR
    run = _Run()
    try:
        built = _build(run, source, kind, path, output, config, imagery_obj, hasher, progress)
    except BaseException:
        if run.executor is not None and not isinstance(run.executor, InlineExecutor):
            run.executor.shutdown(wait=True, cancel_futures=True)
            run.executor = None
        if run.shards_written == 0 and not resuming:
            discard_build(output, created)
        else:
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if run.executor is not None and not isinstance(run.executor, InlineExecutor):
            run.executor.shutdown(wait=True)

    nonempty = built.stats.pop("shards")
    if built.stats["n_tiles"] == 0:
        discard_build(output, created)
        raise InputError(f"no entities fall inside any tile of {source}: nothing to prepare")
    manifest = _manifest(config, nonempty, built, started)
    (work / "vocab.parquet").replace(output / schema.VOCAB_FILE)
    write_json_atomic(output / schema.MANIFEST_FILE, manifest)
    (output / SOURCE_FILE).unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    return open_dataset(output)


def _open_imagery(imagery: Any, config: PrepareConfig) -> tuple[Any, PrepareConfig]:
    """The opened imagery (or None) and the config that records where it came from."""
    if imagery is None:
        return None, config
    if isinstance(imagery, (str, os.PathLike, list, tuple)):
        from geojepa.data.imagery import open_imagery

        sources = [imagery] if isinstance(imagery, (str, os.PathLike)) else list(imagery)
        if not sources:
            return None, config
        return open_imagery(sources), config.replace(
            imagery=tuple(str(Path(s).resolve()) for s in sources)
        )
    # an opened Imagery: recorded by type (its sources are its own business)
    return imagery, config.replace(imagery=(f"<{type(imagery).__name__} object>",))


def _build(
    run: _Run,
    source: str | Path | Any,
    kind: str,
    path: Path | None,
    output: Path,
    config: PrepareConfig,
    imagery: Any,
    hasher: SourceHasher | None,
    progress: bool,
) -> _Built:
    """Steps 2 and 3 and the shard summaries; ``run`` tells a failure what to clean up."""
    work = output / WORK_DIR
    bucket_dir = work / "buckets"
    try:
        if work.exists():
            shutil.rmtree(work)
        bucket_dir.mkdir(parents=True)
        (output / schema.SHARD_DIR).mkdir(exist_ok=True)
    except OSError as exc:  # e.g. an existing read-only directory
        raise OutputError(f"cannot write into {output}: {exc.strerror or exc}") from None
    config.save(output / schema.CONFIG_FILE)

    estimate = estimated_elements(kind, path, source)
    n_workers = worker_count(config, estimate)
    run.executor = executor = make_executor(n_workers)
    # small input built in-process: its buckets stay in memory (no Arrow IPC round trip);
    # otherwise on disk, so memory stays bounded by a batch and a shard
    small = isinstance(executor, InlineExecutor) and estimate < INLINE_MAX_ELEMENTS
    memory: dict[str, tuple[pa.Table, np.ndarray]] | None = {} if small else None
    if hasher is not None:  # started after the fork: no thread is running at fork time
        hasher.start()
    t_setup = time.perf_counter()
    read = _bucket_all(source, kind, path, work, config, executor, n_workers, memory, progress)
    t_read = time.perf_counter()

    source_id: dict[str, Any] = {"kind": kind}
    if path is not None:
        source_id.update(
            {"path": str(path.resolve()), "size": path.stat().st_size, "sha256": hasher.value()}
        )
    check_same_source(output, source_id)
    write_json_atomic(output / SOURCE_FILE, source_id)

    if not read.pieces:
        what = "the bbox/polygon filter area" if read.totals["outside"] else str(source)
        raise InputError(f"no tagged entities in {what}: nothing to prepare")
    if imagery is not None:
        _check_imagery_overlap(imagery, read.bounds)

    merger, missing = _write_shards(
        run, read.pieces, output, config, imagery, memory, n_workers, progress
    )
    t_shards = time.perf_counter()
    stats = executor.submit(finalize, output, merger, missing, work / "vocab.parquet").result()
    return _Built(read, source_id, stats, (t_setup, t_read, t_shards))


def _bucket_all(
    source: str | Path | Any,
    kind: str,
    path: Path | None,
    work: Path,
    config: PrepareConfig,
    executor: Executor,
    n_workers: int,
    memory: dict[str, tuple[pa.Table, np.ndarray]] | None,
    progress: bool,
) -> _Read:
    """Step 2: read the source in order and bucket each batch by shard (in the pool)."""
    read_stats = ReadStats()
    if kind == "osm":
        batches: Iterable[RawBatch] = iter_osm_batches(
            path, work, read_stats, location_index=config.location_index
        )
    elif kind == "features":
        batches = iter_feature_file_batches(path)
    else:
        batches = iter_geodataframe_batches(source)
    batches = drop_duplicate_ids(batches, read_stats)
    totals = {"read": 0, "kept": 0, "untagged": 0, "repaired": 0, "skipped": 0,
              "bad_wkb": 0, "outside": 0, "bad_coordinates": 0,
              "beyond_mercator": 0, "fixed_tags": 0}  # fmt: skip
    bounds = [np.inf, np.inf, -np.inf, -np.inf]
    pieces: dict[tuple[int, int], list[tuple[str, int, int]]] = {}
    huge: list[tuple[str, int, int, int, int, int]] = []
    bar = progress_bar(progress, desc="reading", unit=" elements")
    for st in bounded_map(
        executor, bucket_batch, batches, n_workers + 1, work / "buckets", config, memory
    ):
        for k in totals:
            totals[k] += st[k]
        if st["bounds"] is not None:
            b = st["bounds"]
            bounds = [min(bounds[0], b[0]), min(bounds[1], b[1]),
                      max(bounds[2], b[2]), max(bounds[3], b[3])]  # fmt: skip
        for parent, piece in st["parents"].items():
            pieces.setdefault(parent, []).append(piece)
        huge += st["spread_limited"]
        bar.update(st["read"])
    bar.close()
    if huge and not pieces:
        raise InputError(
            f"{source} holds only elements whose bounds span more than {MAX_SHARD_CELLS:,} "
            f"shard cells at zoom {config.zoom} (e.g. a polygon of the whole world): they "
            "are cut only into shards that other data fills, and there is none"
        )
    spread_huge(pieces, huge, config.shard_levels)
    return _Read(totals, read_stats, bounds, pieces, huge)


def _check_imagery_overlap(imagery: Any, bounds: list[float]) -> None:
    """Fail when the imagery lies wholly outside the data's Web-Mercator ``bounds``."""
    west, south = merc_to_lonlat(bounds[0], bounds[1])
    east, north = merc_to_lonlat(bounds[2], bounds[3])
    iw, is_, ie, in_ = imagery.bounds_lonlat
    if iw >= east or ie <= west or is_ >= north or in_ <= south:
        raise InputError(
            f"imagery ({iw:.4f},{is_:.4f},{ie:.4f},{in_:.4f}) does not overlap the data "
            f"({west:.4f},{south:.4f},{east:.4f},{north:.4f})"
        )


def _write_shards(
    run: _Run,
    pieces: dict[tuple[int, int], list[tuple[str, int, int]]],
    output: Path,
    config: PrepareConfig,
    imagery: Any,
    memory: dict[str, tuple[pa.Table, np.ndarray]] | None,
    n_workers: int,
    progress: bool,
) -> tuple[SummaryMerger, list[int]]:
    """Step 3: group parents into shards, build those not finished yet (a resume skips them)."""
    groups = group_parents(pieces, config.min_shard_elements)
    jobs = [
        ShardJob(i, tuple((px, py, tuple(pieces[(px, py)])) for px, py in g), output)
        for i, g in enumerate(groups)
    ]
    todo = [j for j in jobs if not (output / schema.tiles_file(j.shard)).is_file()]
    for stale in (output / schema.SHARD_DIR).glob(".*.tmp"):
        stale.unlink()
    bar = progress_bar(progress, total=len(jobs), initial=len(jobs) - len(todo),
                        desc="shards", unit=" shards")  # fmt: skip
    merger = SummaryMerger()
    missing = [j.shard for j in jobs if j not in todo]
    for shard, summary in bounded_map(
        run.executor, build_shard, todo, 2 * n_workers, config, imagery, memory
    ):
        merger.add(shard, summary)
        run.shards_written += 1
        bar.update(1)
    bar.close()
    return merger, missing


def _manifest(
    config: PrepareConfig, nonempty: list[int], built: _Built, started: float
) -> dict[str, Any]:
    """The manifest: the header, what was read and dropped, repairs, and phase timings."""
    totals, read_stats, stats = built.read.totals, built.read.read_stats, built.stats
    t_setup, t_read, t_shards = built.times
    return {
        **manifest_header(config, built.source_id, nonempty, stats),
        "input": {
            "elements_read": totals["read"],
            "elements_kept": totals["kept"],
            "empty_after_tag_filter": totals["untagged"],
            "outside_filter_area": totals["outside"],
            "unreadable_geometry": totals["bad_wkb"],
            "bad_coordinates": totals["bad_coordinates"],
            "beyond_mercator_latitude": totals["beyond_mercator"],
            "tags_fixed": totals["fixed_tags"],
            "skipped_ways": read_stats.skipped_ways,
            "skipped_nodes": read_stats.skipped_nodes,
            "skipped_relations": read_stats.skipped_relations,
            "other_relations_skipped": read_stats.other_relations,
            "duplicate_ids": read_stats.duplicate_ids,
            "spread_limited": len(built.read.huge),  # cut only into shards other data fills
        },
        "geometry_repair": {
            "repaired": totals["repaired"],
            "skipped": totals["skipped"],
            "clip_repaired": stats["clip_repaired"],
        },
        "build_seconds": round(time.perf_counter() - started, 3),
        "phase_seconds": {
            "setup": round(t_setup - started, 3),
            "read_and_bucket": round(t_read - t_setup, 3),
            "shards": round(t_shards - t_read, 3),
        },
    }
