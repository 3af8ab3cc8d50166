"""`make benchmark`: the whole chain on the real areas in ../shared/data, report committed.

    .venv/bin/python benchmarks/evaluate.py [--work runs/benchmark] [--report reports/benchmark]
        [--pretrain-minutes 12] [--max-steps 2000] [--seeds 5] [--supervised-seeds 2]

1. prepare Neubrandenburg (PBF), Liechtenstein (PBF) and Montevideo (features GeoParquet) at
   zoom 16, read where they lie (skipped with a message if absent);
2. one spatial block split (z14 blocks, seed 0) over all their tiles, saved;
3. merge the areas and keep only the **train** tiles: pretraining sees no val/test block;
4. pretrain the ``cpu-small`` preset; its number of steps is sized from a measured step time
   so the run fits ``--pretrain-minutes`` (the number used is in the report);
5. ``geojepa evaluate`` on the three areas with the saved split → ``--report``
   (results.md/.csv/.png, provenance.json, split.parquet, benchmark.json with phase timings).

Datasets, runs and weights stay under ``--work`` (git-ignored ``runs/``), never in the report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
AREAS = {
    "neubrandenburg": "neubrandenburg.osm.pbf",
    "liechtenstein": "liechtenstein-2013-08-03.osm.pbf",
    "montevideo": "montevideo-2017.features.parquet",
}
PRESET = "cpu-small"


def log(message: str) -> None:
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", flush=True)


def measure_step_seconds(
    dataset: Path, steps: int = 12, warmup: int = 3, config: Path | None = None
) -> float:
    """Seconds per optimiser step of the preset on ``dataset`` (forward, backward, AdamW, EMA).

    Uses the same vocabulary, tag table cache, token cache and loader as `pretrain`, so the
    caches it fills are reused by the real run.
    """
    from geojepa.data.reader import open_dataset
    from geojepa.tokenize.loader import make_dataloader
    from geojepa.tokenize.tags import TagVocabulary, build_tag_table
    from geojepa.train import PretrainConfig, preset_config
    from geojepa.train.export import build_model

    cfg = PretrainConfig.load(config) if config is not None else preset_config(PRESET)
    ds = open_dataset(dataset)
    vocab = TagVocabulary.from_dataset(ds)
    table = build_tag_table(vocab, cfg.tokenizer.text_model, cache_dir=ds.path)
    torch.manual_seed(0)
    model = build_model(cfg, table).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loader = make_dataloader(
        ds, vocab, cfg.tokenizer, cfg.data.batch_size, shuffle=True, seed=0,
        shuffle_buffer=cfg.data.shuffle_buffer,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    times = []
    for i, batch in enumerate(loader):
        start = time.perf_counter()
        out = model(batch, generator)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.update_target(0.99)
        if i >= warmup:
            times.append(time.perf_counter() - start)
        if len(times) >= steps:
            break
    return sum(times) / len(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "benchmark")
    parser.add_argument("--report", type=Path, default=ROOT / "reports" / "benchmark")
    parser.add_argument("--data", type=Path, default=SHARED, help="folder of the real areas")
    parser.add_argument("--pretrain-minutes", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=None, help="pretraining steps (fixed)")
    parser.add_argument("--max-steps", type=int, default=2000, help="upper bound on steps")
    parser.add_argument(
        "--overhead", type=float, default=3.0,
        help="sized steps = budget / (measured step time × overhead): Lightning, logging, "
        "checkpoints and the load of a shared machine are not in the measurement",
    )  # fmt: skip
    parser.add_argument("--min-steps", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--supervised-seeds", type=int, default=1)
    parser.add_argument("--supervised-epochs", type=int, default=4)
    parser.add_argument("--supervised-tiles", type=int, default=512, help="train tiles/epoch")
    parser.add_argument("--tasks", default=None, help="comma-separated (default: all)")
    parser.add_argument(
        "--baselines", default=None,
        help="comma-separated baselines (default: all; 'none' = the pretrained model only, "
        "e.g. for a training-length ablation)",
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

    from geojepa.data.combine import merge_datasets, subset_dataset
    from geojepa.data.config import PrepareConfig
    from geojepa.data.prepare import prepare_tiles
    from geojepa.eval import ProbeConfig, SplitConfig, make_split, save_split
    from geojepa.eval.evaluate import EvaluateConfig, evaluate, format_summary
    from geojepa.eval.supervised import SupervisedConfig
    from geojepa.train import preset_config, pretrain

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
    datasets = {}
    for name, source in sources.items():
        log(f"prepare {name} (zoom 16)")
        datasets[name] = prepare_tiles(
            source, args.work / "data" / name, PrepareConfig(zoom=16), progress=False
        )
        log(f"  {datasets[name]}")
    phases["prepare_s"] = time.perf_counter() - t

    t = time.perf_counter()
    split_cfg = SplitConfig(block_zoom=14, fractions=(0.6, 0.2, 0.2), seed=0)
    ids = [
        rid
        for ds in datasets.values()
        for rid in ds.read_tiles(columns=["region_id"]).column("region_id").to_pylist()
    ]
    split = make_split(ids, split_cfg)
    split_path = save_split(split, args.work / "split.parquet")
    log(f"split: {split['split'].value_counts().to_dict()}")
    merged = merge_datasets(list(datasets.values()), args.work / "merged", overwrite=True)
    train_ids = split.loc[split["split"] == "train", "region_id"]
    train_ds = subset_dataset(merged, train_ids, args.work / "pretrain-data", overwrite=True)
    log(f"pretraining data (train blocks only): {train_ds}")
    phases["split_merge_subset_s"] = time.perf_counter() - t

    t = time.perf_counter()
    run_dir = args.work / args.run_name
    run_info = args.work / f"{args.run_name}.json"
    if (run_dir / "model.safetensors").is_file():
        info = json.loads(run_info.read_text())
        steps, step_s, seconds = info["steps"], info["measured_step_s"], info["seconds"]
        log(f"reusing the finished run {run_dir} ({steps} steps)")
    else:
        step_s = measure_step_seconds(train_ds.path, config=args.config)
        budget = args.pretrain_minutes * 60
        steps = int(min(args.max_steps, max(args.min_steps, budget / (step_s * args.overhead))))
        if args.steps is not None:
            steps = args.steps
        log(f"measured {step_s:.2f} s/step → pretraining {steps} steps")
        shutil.rmtree(run_dir, ignore_errors=True)
        phases["calibrate_s"] = time.perf_counter() - t
        t = time.perf_counter()
        pretrain(
            train_ds.path, run_dir, config=args.config, preset=PRESET, max_steps=steps,
            progress=False,
        )  # fmt: skip
        seconds = time.perf_counter() - t
        info = {"steps": steps, "measured_step_s": step_s, "seconds": seconds}
        run_info.write_text(json.dumps(info) + "\n")
    phases["pretrain_s"] = time.perf_counter() - t
    pretrain_s = seconds

    t = time.perf_counter()
    seeds = args.seeds
    batch = preset_config(PRESET).data.batch_size
    what = f"config `{args.config.name}`" if args.config else f"preset `{PRESET}`"
    notes = [
        "Benchmark (`make benchmark`, benchmarks/evaluate.py): Neubrandenburg 2016 (PBF), "
        "Liechtenstein 2013 (PBF) and Montevideo 2016–17 (features GeoParquet), zoom 16; data "
        "© OpenStreetMap contributors, ODbL.",
        f"Pretraining: {what} on the merged **train** blocks only "
        f"({train_ds.manifest['n_tiles']} tiles), {steps} optimiser steps of "
        f"{batch} tiles ({pretrain_s / 60:.1f} min on this machine; a bare step measured "
        f"{step_s:.2f} s) — a short CPU run, far from the paper's 100 epochs.",
        "Reduced for CPU time: the MLP probe has one width (128) and weight decay (0.01), its "
        "epochs chosen on val (at most 60, patience 5); the tag-count baseline keeps the 1000 "
        "most frequent tag strings; the supervised transformer ran on "
        f"{args.supervised_seeds} seed(s) for at most {args.supervised_epochs} epochs of "
        f"{args.supervised_tiles} random train tiles each (patience 1), early-stopped on 512 "
        "val tiles, so it is an under-trained upper line.",
        *args.note,
    ]
    config = EvaluateConfig(
        split=split_cfg,
        probe=ProbeConfig(
            mlp_hidden=(128,), mlp_weight_decays=(0.01,), mlp_max_epochs=60, mlp_patience=5
        ),
        supervised=SupervisedConfig(
            max_epochs=args.supervised_epochs, patience=1,
            tiles_per_epoch=args.supervised_tiles, max_val_tiles=512,
        ),
        tag_count_max_features=1000,
        supervised_seeds=args.supervised_seeds,
        title=args.title
        or "GeoJEPA benchmark: Neubrandenburg, Liechtenstein, Montevideo (zoom 16, CPU)",
        notes=tuple(notes),
    )  # fmt: skip
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
        "measured_step_s": round(step_s, 3),
        "areas": {name: ds.manifest.get("n_tiles") for name, ds in datasets.items()},
        "pretrain_tiles": train_ds.manifest["n_tiles"],
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
