"""`make benchmark`: the whole chain on the real areas in ../shared/data, report committed.

    .venv/bin/python benchmarks/evaluate.py [--work runs/benchmark] [--report reports/benchmark]
        [--steps 600] [--seeds 5] [--supervised-seeds 1] [--no-corpus]

1. prepare Neubrandenburg (PBF), Liechtenstein (PBF) and Montevideo (features GeoParquet) at
   zoom 16, read where they lie (skipped with a message if absent);
2. one spatial block split (z14 blocks, seed 0) over all their tiles, saved;
3. merge the areas and keep only the **train** tiles: pretraining sees no val/test block; add
   the ten corpus extracts of ``../shared/data/corpus/`` (other places, zoom 16) unless
   ``--no-corpus``: the shipped default model's data;
4. pretrain the ``cpu-base`` preset (the recipe chosen on val: ``benchmarks/ablation.py`` for
   its size, ``benchmarks/scaling.py`` for its loss, teacher and length; the shipped model's
   recipe) for a **fixed** number of steps (``--steps``, default ``STEPS``, step 600 of the
   preset's 2,400-step schedule): the time it took is reported, never used to decide how long
   to train, so two runs on a busy and a quiet machine train the same model;
5. ``geojepa evaluate`` with the ``benchmark`` preset of settings on the three areas with the
   saved split → ``--report`` (results.md/.csv/.png, provenance.json, split.parquet,
   benchmark.json with phase timings).

Every option is checked before any long work starts; a bad one ends with one ``error:`` line.
Datasets, runs and weights stay under ``--work`` (git-ignored ``runs/``), never in the report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
AREAS = {
    "neubrandenburg": "neubrandenburg.osm.pbf",
    "liechtenstein": "liechtenstein-2013-08-03.osm.pbf",
    "montevideo": "montevideo-2017.features.parquet",
}
PRESET = "cpu-base"
#: Pretraining steps of the benchmark: fixed, so the model does not depend on the machine's load
#: (the preset's own 600 steps of 16 tiles, ~2 epochs of the train tiles).
STEPS = 600


def log(message: str) -> None:
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", flush=True)


def check_options(args: argparse.Namespace) -> None:
    """ConfigError/InputError on any bad option, before minutes of preparing and training."""
    from geojepa.errors import ConfigError, InputError
    from geojepa.eval.evaluate import ALL_BASELINES
    from geojepa.eval.tasks import get_task
    from geojepa.train import PretrainConfig

    for name in ("steps", "seeds", "supervised_seeds", "supervised_epochs", "supervised_tiles"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.supervised_seeds > args.seeds:
        raise ConfigError(
            f"--supervised-seeds {args.supervised_seeds} is more than --seeds {args.seeds}"
        )
    for task in (args.tasks or "").split(","):
        if task:
            get_task(task)
    if args.baselines not in (None, "none"):
        bad = [b for b in args.baselines.split(",") if b not in ALL_BASELINES]
        if bad:
            raise ConfigError(f"unknown baseline(s) {bad} (known: {', '.join(ALL_BASELINES)})")
    if args.config is not None:
        if not args.config.is_file():
            raise InputError(f"--config {args.config} not found")
        PretrainConfig.load(args.config)  # raises on a bad file
    if args.report.exists() and not args.report.is_dir():
        raise ConfigError(f"--report {args.report} exists and is not a directory")


def prepare_inputs(sources: dict[str, Path], work: Path):
    """Prepare the areas (zoom 16), the saved block split and the train-blocks-only dataset.

    Returns ``(datasets by area, split path, pretraining dataset)``; re-runs reuse what exists.
    """
    from geojepa.data.combine import merge_datasets, subset_dataset
    from geojepa.data.config import PrepareConfig
    from geojepa.data.prepare import prepare_tiles
    from geojepa.data.reader import open_dataset
    from geojepa.eval import make_split, save_split
    from geojepa.eval.evaluate import evaluate_preset

    done = work / "inputs.json"
    if done.is_file():  # a finished earlier call (also lets parallel ablations share them)
        datasets = {name: open_dataset(work / "data" / name) for name in sources}
        return datasets, work / "split.parquet", open_dataset(work / "pretrain-data")
    datasets = {}
    for name, source in sources.items():
        log(f"prepare {name} (zoom 16)")
        datasets[name] = prepare_tiles(
            source, work / "data" / name, PrepareConfig(zoom=16), progress=False
        )
        log(f"  {datasets[name]}")
    ids = [
        rid
        for ds in datasets.values()
        for rid in ds.read_tiles(columns=["region_id"]).column("region_id").to_pylist()
    ]
    split = make_split(ids, evaluate_preset("benchmark").split)
    split_path = save_split(split, work / "split.parquet")
    log(f"split: {split['split'].value_counts().to_dict()}")
    merged = merge_datasets(list(datasets.values()), work / "merged", overwrite=True)
    train_ids = split.loc[split["split"] == "train", "region_id"]
    train_ds = subset_dataset(merged, train_ids, work / "pretrain-data", overwrite=True)
    log(f"pretraining data (train blocks only): {train_ds}")
    done.write_text(json.dumps({"areas": sorted(sources)}) + "\n")
    return datasets, split_path, train_ds


def corpus_dataset(work: Path, train_ds: Any | None, corpus: Path = SHARED / "corpus") -> Any:
    """The benchmark's train blocks + every corpus extract in ``corpus`` (zoom 16), merged
    once; with ``train_ds`` None the corpus alone (no tile of the benchmark's three areas: the
    transfer row)."""
    from geojepa.data.combine import merge_datasets
    from geojepa.data.config import PrepareConfig
    from geojepa.data.prepare import prepare_tiles
    from geojepa.data.reader import open_dataset

    out = work / ("pretrain-corpus" if train_ds is not None else "pretrain-corpus-only")
    if (out / "manifest.json").is_file():
        return open_dataset(out)
    parts = [] if train_ds is None else [train_ds]
    for source in sorted(corpus.glob("*.osm.pbf")):
        name = source.name.removesuffix(".osm.pbf")
        target = work / "corpus" / name
        if (target / "manifest.json").is_file():
            parts.append(open_dataset(target))
            continue
        log(f"prepare corpus {name} (zoom 16)")
        parts.append(prepare_tiles(source, target, PrepareConfig(zoom=16), progress=False))
    merged = merge_datasets(parts, out, overwrite=True)
    log(f"pretraining data ({'train blocks + ' if train_ds is not None else ''}corpus): {merged}")
    return merged


def pretrain_fixed(train_ds, work: Path, run_name: str, steps: int, config: Path | None) -> float:
    """Pretrain ``config`` (default: the preset) for ``steps``; seconds it took. At the config's
    own length its own schedules hold (cpu-base: step 600 of 2,400); another length is a run of
    that length with schedules to match.

    A finished run of the same config and data in ``work/run_name`` is reused (its time is
    read back); a run of another config or data there is replaced.
    """
    from geojepa.train import PretrainConfig, preset_config, pretrain
    from geojepa.train.pretrain import resolve_config

    run_dir = work / run_name
    run_info = work / f"{run_name}.json"
    base = PretrainConfig.load(config) if config else preset_config(PRESET)
    # max_steps only when --steps changes the length: the preset's own run stops at step 600 of
    # its 2,400-step schedule, and a length given to pretrain() is the schedules' length too
    max_steps = None if steps == base.trainer.max_steps else steps
    wanted = {"config": resolve_config(config=base, max_steps=max_steps).model_dump(mode="json"),
              "data": str(Path(train_ds.path).resolve()), "steps": steps}  # fmt: skip
    if (run_dir / "model.safetensors").is_file() and run_info.is_file():
        info = json.loads(run_info.read_text())
        if {k: info.get(k) for k in wanted} == wanted:
            log(f"reusing the finished run {run_dir} ({steps} steps)")
            return float(info["seconds"])
        log(f"{run_dir} holds a run of another config or data: training anew")
    log(f"pretraining {steps} steps (fixed)")
    shutil.rmtree(run_dir, ignore_errors=True)
    t = time.perf_counter()
    pretrain(train_ds.path, run_dir, config=base, max_steps=max_steps, progress=False)
    seconds = time.perf_counter() - t
    run_info.write_text(json.dumps({**wanted, "seconds": seconds}) + "\n")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "benchmark")
    parser.add_argument("--report", type=Path, default=ROOT / "reports" / "benchmark")
    parser.add_argument("--data", type=Path, default=SHARED, help="folder of the real areas")
    parser.add_argument(
        "--steps", type=int, default=STEPS,
        help=f"pretraining optimiser steps (fixed; default {STEPS}, the committed report's)",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--supervised-seeds", type=int, default=1)
    parser.add_argument("--supervised-epochs", type=int, default=None, help="default: preset")
    parser.add_argument(
        "--supervised-tiles", type=int, default=None, help="train tiles/epoch (default: preset)"
    )
    parser.add_argument("--tasks", default=None, help="comma-separated (default: all)")
    parser.add_argument(
        "--baselines", default=None,
        help="comma-separated baselines (default: all; 'none' = the pretrained model only, "
        "e.g. for a training-length ablation)",
    )  # fmt: skip
    parser.add_argument(
        "--no-corpus", action="store_true",
        help="pretrain on the train blocks alone (default: + the corpus extracts in "
        "DATA/corpus, the shipped model's data, when present)",
    )  # fmt: skip
    parser.add_argument("--run-name", default="run", help="run directory inside --work")
    parser.add_argument(
        "--config", type=Path, default=None,
        help=f"PretrainConfig JSON instead of the {PRESET} preset (e.g. an ablation)",
    )  # fmt: skip
    parser.add_argument("--title", default=None, help="report title")
    parser.add_argument("--fresh", action="store_true", help="delete --work first")
    parser.add_argument("--note", action="append", default=[], help="extra report note")
    args = parser.parse_args(argv)

    from geojepa.errors import GeojepaError

    try:
        check_options(args)
        return run(args)
    except GeojepaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def run(args: argparse.Namespace) -> int:
    from geojepa.eval.evaluate import evaluate, evaluate_preset, format_summary

    preset = evaluate_preset("benchmark")

    sources = {name: args.data / file for name, file in AREAS.items()}
    missing = [str(p) for p in sources.values() if not p.exists()]
    if missing:
        print(f"benchmark skipped: real-area data absent ({', '.join(missing)})")
        return 0
    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    phases: dict[str, float] = {}
    started = time.perf_counter()

    t = time.perf_counter()
    datasets, split_path, train_ds = prepare_inputs(sources, args.work)

    corpus = sorted((args.data / "corpus").glob("*.osm.pbf"))
    if corpus and not args.no_corpus:
        pretrain_ds = corpus_dataset(args.work, train_ds, args.data / "corpus")
        data_note = (f"the merged **train** blocks + the {len(corpus)} corpus extracts of "
                     f"`../shared/data/corpus/` ({pretrain_ds.manifest['n_tiles']} tiles, zoom 16; "
                     "no tile of a val/test block)")  # fmt: skip
    else:
        pretrain_ds = train_ds
        data_note = f"the merged **train** blocks only ({train_ds.manifest['n_tiles']} tiles)"
    phases["prepare_split_s"] = time.perf_counter() - t

    t = time.perf_counter()
    pretrain_s = pretrain_fixed(pretrain_ds, args.work, args.run_name, args.steps, args.config)
    phases["pretrain_s"] = time.perf_counter() - t
    steps = args.steps
    run_dir = args.work / args.run_name

    t = time.perf_counter()
    seeds = args.seeds
    what = f"config `{args.config.name}`" if args.config else f"preset `{PRESET}`"
    run_saved = json.loads((run_dir / "config.json").read_text())
    budget, batch = run_saved["data"].get("tokens_per_batch"), run_saved["data"]["batch_size"]
    batch = f"{batch} tiles" if budget is None else f"~{batch} tiles (token budget: {budget})"
    run_config = run_saved["trainer"]
    schedule = (f" (stopped along a {run_config['schedule_steps']}-step schedule)"
                if run_config.get("schedule_steps") else "")  # fmt: skip
    sup = preset.supervised.replace(
        **{k: v for k, v in (("max_epochs", args.supervised_epochs),
                             ("tiles_per_epoch", args.supervised_tiles)) if v is not None}
    )  # fmt: skip
    with_supervised = args.baselines is None or "supervised" in args.baselines.split(",")
    supervised_note = (
        f"the supervised transformer ran on {args.supervised_seeds} seed(s) for at most "
        f"{sup.max_epochs} epoch(s) of {sup.tiles_per_epoch} random train tiles each (patience "
        f"{sup.patience}), early-stopped on {sup.max_val_tiles} val tiles."
        if with_supervised
        else "no supervised transformer line (`make benchmark-full` adds it: ~2/3 of the time)."
    )
    notes = [
        "Benchmark (`make benchmark`, benchmarks/evaluate.py): Neubrandenburg 2016 (PBF), "
        "Liechtenstein 2013 (PBF) and Montevideo 2016–17 (features GeoParquet), zoom 16; data "
        "© OpenStreetMap contributors, ODbL.",
        f"Pretraining: {what} on {data_note}, {steps} optimiser steps of {batch}"
        f"{schedule}, fixed in advance ({pretrain_s / 60:.1f} min on this machine, reported "
        "only) — a short CPU run, far from the paper's 100 epochs.",
        "Probe settings: the `benchmark` preset (`geojepa evaluate --preset benchmark`): the "
        "MLP probes have one width (128) and weight decay (0.01), epochs chosen on val (at "
        "most 60, patience 5); the tag-count baseline keeps the 1000 most frequent tag "
        f"strings; {supervised_note}",
        *args.note,
    ]
    config = preset.replace(
        supervised=sup,
        supervised_seeds=args.supervised_seeds,
        title=args.title
        or "GeoJEPA benchmark: Neubrandenburg, Liechtenstein, Montevideo (zoom 16, CPU)",
        notes=tuple(notes),
    )
    baselines = None
    if args.baselines is not None:
        baselines = [] if args.baselines == "none" else args.baselines.split(",")
    result = evaluate(
        run_dir,
        [ds.path for ds in datasets.values()],
        args.report,
        tasks=args.tasks.split(",") if args.tasks else None,
        baselines=baselines,
        seeds=range(seeds),
        split=split_path,
        config=config,
    )
    phases["evaluate_s"] = time.perf_counter() - t
    phases["total_s"] = time.perf_counter() - started
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "phases_s": {k: round(v, 1) for k, v in phases.items()},
        "pretrain_steps": steps,
        "pretrain_s": round(pretrain_s, 1),
        "areas": {name: ds.manifest.get("n_tiles") for name, ds in datasets.items()},
        "pretrain_tiles": pretrain_ds.manifest["n_tiles"],
        "pretrain_data": data_note,
        "argv": sys.argv[1:],
    }
    (args.report / "benchmark.json").write_text(json.dumps(record, indent=2) + "\n")
    timings = ", ".join(f"{k[:-2]} {v / 60:.1f} min" for k, v in phases.items())
    with open(result.paths["markdown"], "a") as f:
        f.write(f"\n## Benchmark timings\n\n{timings} ({record['date']}).\n")
    print(format_summary(result))
    log(f"done in {phases['total_s'] / 60:.1f} min: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
