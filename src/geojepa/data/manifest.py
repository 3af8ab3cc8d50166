"""Shard summaries → the dataset's `manifest.json` statistics and `vocab.parquet`; the
manifest fields common to `prepare` and `combine`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from geojepa.data import schema
from geojepa.data.arrow import buffer_array, bytes_array, to_numpy
from geojepa.data.config import PrepareConfig
from geojepa.environment import environment

#: Parquet metadata key of a shard file holding its build statistics.
STATS_KEY = b"geojepa_shard_stats"


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    qs = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0])
    names = ["min", "q25", "median", "q75", "q90", "q99", "max"]
    out = {n: float(q) for n, q in zip(names, qs, strict=True)}
    out["mean"] = float(values.mean())
    return out


def shard_summary(tiles: pa.Table, entities: pa.Table, clip_repaired: int) -> dict[str, Any]:
    """What the manifest needs from one shard (small; returned by the worker)."""
    tags = entities.column("tags").combine_chunks()
    # counted in Python: Arrow's group_by (and to_numpy) would import pandas
    pairs = Counter(zip(tags.keys.to_pylist(), tags.items.to_pylist(), strict=True))
    return {
        "n_entities": to_numpy(tiles.column("n_entities")),
        "coverage": to_numpy(tiles.column("image_coverage")),
        "types": {
            r["values"]: r["counts"]
            for r in entities.column("geom_type").value_counts().to_pylist()
        },
        # plain lists: unpickling pyarrow objects in the main process would import pandas
        "vocab": {
            "key": [k for k, _ in pairs],
            "value": [v for _, v in pairs],
            "count_all": list(pairs.values()),
        },
        "clip_repaired": clip_repaired,
    }


def _summary_from_files(output: Path, shard: int) -> dict[str, Any]:
    """The summary of a shard finished by an earlier (interrupted) run."""
    path = output / schema.tiles_file(shard)
    # ParquetFile.read, not pq.read_table: the latter imports pandas
    tiles = pq.ParquetFile(path).read(columns=["n_entities", "image_coverage"])
    meta = pq.read_schema(path).metadata or {}
    repaired = json.loads(meta.get(STATS_KEY, b"{}")).get("clip_repaired", 0)
    ents = pq.ParquetFile(output / schema.entities_file(shard)).read(columns=["geom_type", "tags"])
    return shard_summary(tiles, ents, repaired)


class SummaryMerger:
    """Shard summaries merged as they arrive, so a country's build holds one vocabulary counter
    and a few bytes per tile, not every shard's summary (the per-shard vocabularies were most
    of `prepare`'s memory growth with the input)."""

    def __init__(self) -> None:
        self.per_tile: dict[int, np.ndarray] = {}  # shard → entities per tile
        self.coverage: dict[int, np.ndarray] = {}
        self.types: Counter[str] = Counter()
        self.vocab: Counter[tuple[str, str | None]] = Counter()
        self.clip_repaired = 0

    def add(self, shard: int, summary: dict[str, Any]) -> None:
        if not len(summary["n_entities"]):
            return
        self.per_tile[shard] = summary["n_entities"]
        self.coverage[shard] = summary["coverage"]
        self.types.update(summary["types"])
        v = summary["vocab"]  # summed in Python: Arrow's group_by would import pandas
        for key, value, n in zip(v["key"], v["value"], v["count_all"], strict=True):
            self.vocab[(key, value)] += n
        self.clip_repaired += summary["clip_repaired"]

    def result(self) -> tuple[dict[str, Any], pa.Table]:
        """Manifest statistics and the vocabulary (counted over entity rows, i.e. clips)."""
        vocab_schema = pa.schema(
            [("key", pa.string()), ("value", pa.string()), ("count", pa.int64())]
        )
        counts = self.vocab
        if counts:
            vocab = pa.table(
                {
                    "key": bytes_array([k for k, _ in counts], pa.string()),
                    "value": bytes_array([v for _, v in counts], pa.string()),
                    "count": buffer_array(np.fromiter(counts.values(), np.int64), pa.int64()),
                }
            ).cast(vocab_schema)
        else:
            vocab = vocab_schema.empty_table()
        vocab = vocab.sort_by(
            [("count", "descending"), ("key", "ascending"), ("value", "ascending")]
        )
        shards = sorted(self.per_tile)  # in shard order, whatever order they finished in
        per_tile = np.concatenate([self.per_tile[s] for s in shards]) if shards else np.zeros(0)
        coverage = (
            np.concatenate([self.coverage[s] for s in shards]).astype(np.float64)
            if shards
            else np.zeros(0)
        )
        with_image = ~np.isnan(coverage)
        stats = {
            "n_tiles": len(per_tile),
            "n_entities": int(per_tile.sum()),
            "entities_per_tile": _quantiles(per_tile),
            "geometry_types": dict(sorted(self.types.items(), key=lambda kv: -kv[1])),
            "vocab_size": vocab.num_rows,
            "n_keys": len(pc.unique(vocab.column("key"))),
            "imagery": {
                "tiles_with_image": int(with_image.sum()),
                "mean_coverage": float(coverage[with_image].mean()) if with_image.any() else None,
            },
            "clip_repaired": self.clip_repaired,
            "shards": shards,
        }
        return stats, vocab


def finalize(
    output: Path, merger: SummaryMerger, missing: list[int], vocab_tmp: Path
) -> dict[str, Any]:
    """Add the summaries of shards finished by an earlier run (read from their files) and write
    the vocabulary to ``vocab_tmp``. Runs in a worker when there is a pool (reading the shards
    of an earlier run imports pandas: kept off the main process)."""
    for shard in missing:
        merger.add(shard, _summary_from_files(output, shard))
    stats, vocab = merger.result()
    pq.write_table(vocab, vocab_tmp)
    return stats


def manifest_header(
    config: PrepareConfig, source: Any, shards: list[int], stats: dict[str, Any]
) -> dict[str, Any]:
    """The manifest fields of every complete dataset, whether built by prepare or combined."""
    return {
        "format_version": schema.FORMAT_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "geojepa_version": _version(),
        "environment": environment(),
        "source": source,
        "zoom": config.zoom,
        "shard_zoom": config.shard_zoom,
        "shards": shards,
        "n_shards": len(shards),
        **{k: v for k, v in stats.items() if k != "clip_repaired"},
    }


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("geojepa")
    except Exception:
        return "unknown"
