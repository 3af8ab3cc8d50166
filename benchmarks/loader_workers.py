"""Do DataLoader worker processes help pretraining on this machine? (``num_workers`` default)

Two measurements on one prepared dataset, in one run:

- ``loader``: one shuffled epoch of the tile loader alone (tokenising from the token cache,
  collating) with 0, 1 and 2 workers: the cost of loading, without a model;
- ``pretrain``: ``geojepa.pretrain`` for ``--steps`` optimiser steps with 0, 1, 2… workers
  (cpu-small preset unless ``--preset``), wall time including start-up, after one untimed
  run (the first run in a process pays one-time costs: imports, the text table), then
  ``--repeats`` rounds of the ``--workers`` counts in order and reversed (0, 2, 2, 0) so that
  drift in the load from other processes hits all alike; medians per count.

On a CPU-only machine the workers compete with the training's compute threads for the same
cores; this tells whether the data loading they take off the main process pays for that::

    python benchmarks/loader_workers.py --data DATASET --out results.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from geojepa.data.reader import open_dataset
from geojepa.tokenize.loader import make_dataloader
from geojepa.tokenize.tags import TagVocabulary
from geojepa.train import preset_config, pretrain


def machine_info() -> dict:
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # other processes share the CPU: the 1-minute load average before the run tells how much
        "loadavg_1min_before": os.getloadavg()[0],
    }


def loader_epoch(ds, vocab, cfg, workers: int) -> dict:
    loader = make_dataloader(ds, vocab, cfg.tokenizer, batch_size=cfg.data.batch_size,
                             shuffle=True, seed=0, num_workers=workers)  # fmt: skip
    t0 = time.perf_counter()
    n = sum(len(b) for b in loader)
    s = time.perf_counter() - t0
    return {"workers": workers, "tiles": n, "seconds": s, "tiles_per_s": n / s}


def first_batches(ds, vocab, cfg, workers: int, steps: int) -> dict:
    """The work in the first ``steps`` batches: the worker count changes the data order (each
    worker shuffles its own part of the shards), so wall times must be read per real token."""
    loader = make_dataloader(ds, vocab, cfg.tokenizer, batch_size=cfg.data.batch_size,
                             shuffle=True, seed=0, num_workers=workers)  # fmt: skip
    batches = list(itertools.islice(loader, steps))
    loader.close()
    return {
        "workers": workers,
        "real_tokens": sum(int(b.entity_valid.sum()) for b in batches),
        "padded_slots": sum(b.entity_valid.numel() for b in batches),
    }


def pretrain_run(ds_path: Path, preset: str, steps: int, workers: int, tmp: Path) -> dict:
    cfg = preset_config(preset)
    data = cfg.model_dump()
    data["data"]["num_workers"] = workers
    data["trainer"].update(max_steps=steps, max_epochs=None, checkpoint_every_n_steps=10**6)
    out = tmp / f"run-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    pretrain(ds_path, out, config=type(cfg).from_dict(data), progress=False)
    s = time.perf_counter() - t0
    return {"workers": workers, "steps": steps, "seconds": s, "steps_per_s": steps / s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="prepared dataset")
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--steps", type=int, default=100, help="pretrain steps per run")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="counts compared")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of counts, then reversed")
    ap.add_argument("--skip-pretrain", action="store_true", help="loader figures only")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = ap.parse_args()
    ds = open_dataset(args.data)
    cfg = preset_config(args.preset)
    vocab = TagVocabulary.from_dataset(ds)
    report: dict = {"machine": machine_info(), "dataset": str(args.data),
                    "preset": args.preset, "batch_size": cfg.data.batch_size}  # fmt: skip
    loader_epoch(ds, vocab, cfg, 0)  # fills the token cache once (not timed)
    report["loader"] = [loader_epoch(ds, vocab, cfg, w) for w in (0, 1, 2)]
    print(json.dumps(report["loader"], indent=2), flush=True)
    report["first_batches"] = [first_batches(ds, vocab, cfg, w, args.steps) for w in args.workers]
    if args.skip_pretrain:
        print(json.dumps(report["first_batches"], indent=2))
        return
    with tempfile.TemporaryDirectory() as tmp:
        pretrain_run(args.data, args.preset, args.steps, 0, Path(tmp))  # one-time costs
        runs = [pretrain_run(args.data, args.preset, args.steps, w, Path(tmp))
                for w in (args.workers + args.workers[::-1]) * args.repeats]  # fmt: skip
    report["pretrain"] = runs
    times = {w: sorted(r["seconds"] for r in runs if r["workers"] == w) for w in args.workers}
    # the median: other processes on a shared CPU make single runs 2-5x slower now and then
    median = {w: t[len(t) // 2] if len(t) % 2 else sum(t[len(t) // 2 - 1 : len(t) // 2 + 1]) / 2
              for w, t in times.items()}  # fmt: skip
    report["pretrain_median_seconds"] = median
    report["ratio_median_seconds_over_0_workers"] = {w: m / median[0] for w, m in median.items()}
    tokens = {b["workers"]: b["real_tokens"] for b in report["first_batches"]}
    report["ratio_median_seconds_per_real_token_over_0_workers"] = {
        w: (m / tokens[w]) / (median[0] / tokens[0]) for w, m in median.items()
    }
    report["command"] = (
        f"python benchmarks/loader_workers.py --data DATASET --preset {args.preset} "
        f"--steps {args.steps} --repeats {args.repeats} --workers "
        + " ".join(map(str, args.workers))
    )
    print(json.dumps(report, indent=2), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
