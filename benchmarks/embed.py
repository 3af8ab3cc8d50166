"""`geojepa embed` throughput: packed, length-sorted token-budget batches vs the padded path.

Runs `embed_tiles` end to end (tokens from the token cache, model, pooling, GeoParquet
writing) on a prepared dataset twice in the same process:

- ``padded``: ``--batch-size`` tiles per pass in dataset order, padded layout (the design
  before token budgets and packing);
- ``packed``: ``--tokens-per-batch`` real tokens per pass, length-sorted, packed layout (the
  default of `geojepa embed`).

The two sides alternate ``--repeats`` times and each keeps its fastest pass (the machine may
be shared with other processes).

The model is the ``--preset`` architecture with random weights (throughput does not depend on
the weights) and a random stand-in text table. A first untimed pass fills the token cache, so
both timed passes read the same cached tokens.

Each side's fastest pass also reports where its time went (``stages``, seconds, from timers
around the stages; a stage called inside another counts for the outer one): ``model`` (the
tokenizer and encoder forward passes, pooling), ``read`` (tiles and entity columns, the token
cache), ``top_tags``, ``write`` (GeoParquet conversion, encoding, footer) and ``other`` (the
rest: batching, collating, building the frames, the finiteness check). ``--sweep`` also times
packed passes at other token budgets (``budget_sweep_seconds``): the default budget of
`geojepa embed` is the fastest of them on CPU. Example::

    python benchmarks/embed.py --data DATASET --out benchmarks/results/embed-cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import torch

import geojepa.embed
from geojepa.data.reader import TileDataset, open_dataset
from geojepa.embed import EMBED_TOKENS_PER_BATCH, embed_tiles
from geojepa.io.geoparquet import GeoParquetWriter
from geojepa.model.directory import ModelDirectory
from geojepa.model.jepa import GeoJEPA
from geojepa.tokenize.shards import TokenizedShards
from geojepa.tokenize.tags import PAD, UNKNOWN, TagVocabulary
from geojepa.train.config import preset_config
from geojepa.train.export import build_model

try:
    from train_step import machine_info
except ImportError:  # run as a module
    from benchmarks.train_step import machine_info


#: Stage → the (owner, attribute) callables whose time it counts.
STAGES = {
    "model": [(GeoJEPA, "encode"), (GeoJEPA, "pool")],
    "read": [
        (TileDataset, "read_tiles"),
        (TileDataset, "read_entities"),
        (TokenizedShards, "load"),
    ],
    "top_tags": [(geojepa.embed, "top_tags")],
    "write": [(GeoParquetWriter, "write"), (GeoParquetWriter, "close")],
}


@contextlib.contextmanager
def stage_timers() -> Iterator[dict[str, float]]:
    """Seconds spent in each of `STAGES` while inside; nested calls count for the outermost."""
    seconds = dict.fromkeys(STAGES, 0.0)
    depth = [0]

    def timed(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if depth[0]:
                return fn(*args, **kwargs)
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[stage] += time.perf_counter() - t0
                depth[0] -= 1

        return wrapper

    saved = [(owner, name, owner.__dict__[name]) for targets in STAGES.values()
             for owner, name in targets]  # fmt: skip
    for stage, targets in STAGES.items():
        for owner, name in targets:
            setattr(owner, name, timed(stage, owner.__dict__[name]))
    try:
        yield seconds
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--tokens-per-batch", type=int, default=EMBED_TOKENS_PER_BATCH)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=2, help="passes per side (fastest kept)")
    ap.add_argument("--sweep", type=int, nargs="*", default=[1024, 2048, 4096, 8192],
                    help="packed token budgets to time as well (the default's choice)")  # fmt: skip
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = open_dataset(args.data)
    cfg = preset_config(args.preset)
    vocab = TagVocabulary.from_dataset(ds)
    torch.manual_seed(0)
    table = torch.randn(len(vocab), 384)
    table[[PAD, UNKNOWN]] = 0.0
    model = build_model(cfg, table).eval()
    model.directory = ModelDirectory.of_run(cfg, vocab)
    n_tiles = int(ds.manifest["n_tiles"])
    counts = np.concatenate([ds.read_tiles(s, columns=["n_entities"]).column(0).to_numpy()
                             for s in ds.shards])  # fmt: skip
    report: dict = {
        "machine": machine_info(torch.device("cpu")), "dataset": str(args.data),
        "n_tiles": n_tiles, "n_entities": int(counts.sum()), "preset": args.preset,
        "batch_size": args.batch_size, "tokens_per_batch": args.tokens_per_batch,
    }  # fmt: skip
    runs = {
        "padded": (False, {"batch_size": args.batch_size, "tokens_per_batch": None}),
        "packed": (True, {"tokens_per_batch": args.tokens_per_batch}),
    }
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        embed_tiles(model, ds, Path(tmp) / "warm.parquet", progress=False)  # fills the cache
        for rep in range(args.repeats):  # alternate the sides; keep each side's fastest pass
            for name, (packed, kw) in runs.items():
                model.set_packed(packed)
                out = Path(tmp) / f"{name}.parquet"
                with stage_timers() as stages:
                    t0 = time.perf_counter()
                    embed_tiles(model, ds, out, progress=False, **kw)
                    elapsed = time.perf_counter() - t0
                best = report.get(name, {}).get("seconds", float("inf"))
                if elapsed < best:
                    stages["other"] = elapsed - sum(stages.values())
                    report[name] = {"seconds": elapsed, "tiles_per_s": n_tiles / elapsed,
                                    "entities_per_s": float(counts.sum()) / elapsed,
                                    "stages": stages}  # fmt: skip
                print(json.dumps({name: elapsed, "repeat": rep}), flush=True)
                outputs[name] = gpd.read_parquet(out)
        sweep = report["budget_sweep_seconds"] = {}
        model.set_packed(True)
        for _ in range(args.repeats):  # the budget of `geojepa embed` was chosen from this
            for budget in args.sweep:
                t0 = time.perf_counter()
                embed_tiles(model, ds, Path(tmp) / "sweep.parquet", progress=False,
                            tokens_per_batch=budget)  # fmt: skip
                elapsed = time.perf_counter() - t0
                sweep[str(budget)] = min(sweep.get(str(budget), elapsed), elapsed)
        print(json.dumps({"budget_sweep_seconds": sweep}), flush=True)
        a, b = outputs["padded"], outputs["packed"].loc[outputs["padded"].index]
        cols = [c for c in a.columns if c.startswith("emb_")]
        report["max_abs_diff_packed_vs_padded"] = float(
            np.abs(a[cols].to_numpy() - b[cols].to_numpy()).max()
        )
    report["ratio_tiles_per_s"] = report["packed"]["tiles_per_s"] / report["padded"]["tiles_per_s"]
    # what the ratio would be if only the model ran (the other stages cost both sides alike)
    report["ratio_model_only"] = (
        report["padded"]["stages"]["model"] / report["packed"]["stages"]["model"]
    )
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
