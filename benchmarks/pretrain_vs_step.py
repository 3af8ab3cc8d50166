"""`geojepa pretrain` against a bare training-step loop on the same data and the same batches.

``benchmarks/train_step.py`` times steps of pre-collated batches; the command adds the loader,
Lightning (hooks, closure, scheduler, gradient clipping), logging, the EMA update, progress and
checkpoints. This script runs both on one prepared dataset, in one process, with the same
torch threads:

- ``pretrain``: `geojepa.pretrain` itself for ``--steps`` steps (a fresh run directory each
  time); its speed is the one it reports (``speed/…`` in its CSV log: from the start of
  training to the last step, the loader included), and ``wall_s`` is the whole call (start-up,
  tag table, export);
- ``step_loop``: the same loader (same config, seed and batches) feeding a plain loop of what a
  step computes: host plan, forward, backward, gradient clipping, AdamW, EMA update.

for each batching: ``tiles`` (the preset's ``batch_size`` tiles a step, the default) and
``tokens`` (``--tokens-per-batch``, default batch size × the dataset's mean real tokens per
tile). The runs alternate (pretrain, loop, pretrain, loop… for ``--rounds`` rounds), so load
from other processes hits both alike; each figure is the median over the rounds. ``ratio`` is
loop ÷ pretrain (1.0 = the command is as fast as its step)::

    python benchmarks/pretrain_vs_step.py --data DATASET --preset cpu-base --steps 60 \\
        --out benchmarks/results/pretrain_vs_step-cpu.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from geojepa.data.reader import open_dataset
from geojepa.tokenize.loader import make_dataloader
from geojepa.tokenize.sampler import TileBatcher
from geojepa.tokenize.shards import TokenizedShards
from geojepa.tokenize.tags import TagVocabulary, build_tag_table
from geojepa.train import pretrain
from geojepa.train.config import preset_config
from geojepa.train.export import build_model
from geojepa.train.module import param_groups


def auto_budget(ds, vocab, cfg) -> tuple[float, int]:
    """(mean capped tokens per tile, the budget `pretrain`'s ``auto`` picks): the loader's own
    counts and rule (`TokenizedShards.entity_counts`, `TileBatcher.averaging`), so the
    benchmark and the command cannot disagree."""
    shards = TokenizedShards(ds, vocab, cfg.tokenizer, cfg.trainer.seed)
    counts = list(shards.entity_counts().values())
    extra = cfg.tokenizer.n_image_tokens if cfg.tokenizer.use_image else 0
    batcher = TileBatcher.averaging(cfg.data.batch_size, counts, extra)
    return float(batcher.lengths(np.concatenate(counts)).mean()), batcher.tokens_per_batch


def run_pretrain(ds, preset: str, steps: int, tokens_per_batch: int | None, work: Path) -> dict:
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    pretrain(ds, out, preset=preset, max_steps=steps, tokens_per_batch=tokens_per_batch,
             resume=False, progress=False, keep_checkpoints=0)  # fmt: skip
    wall = time.perf_counter() - t0
    log = pd.concat(pd.read_csv(p) for p in (out / "logs").glob("*/metrics.csv"))
    last = log.dropna(subset=["speed/real_tokens_per_s"]).sort_values("step").iloc[-1]
    return {
        "real_tokens_per_s": float(last["speed/real_tokens_per_s"]),
        "tiles_per_s": float(last["speed/tiles_per_s"]),
        "logged_at_step": int(last["step"]) + 1,
        "wall_s": wall,
    }


def run_loop(ds, vocab, table, preset: str, steps: int, tokens_per_batch: int | None) -> dict:
    """What each `pretrain` step computes, without Lightning; the same batches."""
    cfg = preset_config(preset)
    torch.manual_seed(cfg.trainer.seed)
    model = build_model(cfg, table).train()
    decay, no_decay = param_groups(model)
    params = decay + no_decay
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.04}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.optim.lr, betas=cfg.optim.betas,
    )  # fmt: skip
    loader = make_dataloader(
        ds, vocab, cfg.tokenizer, cfg.data.batch_size, shuffle=True, seed=cfg.trainer.seed,
        shuffle_buffer=cfg.data.shuffle_buffer, tokens_per_batch=tokens_per_batch,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(cfg.trainer.seed * 1000)
    tokens = tiles = done = 0
    t0 = time.perf_counter()
    while done < steps:
        for batch in loader:
            plan = model.plan(batch, gen)
            loss = model(batch, plan=plan).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip, foreach=True)
            opt.step()
            model.update_target(0.996)
            tokens += int(plan.tokens.index.shape[0])
            tiles += len(batch)
            done += 1
            if done == steps:
                break
    elapsed = time.perf_counter() - t0
    return {"real_tokens_per_s": tokens / elapsed, "tiles_per_s": tiles / elapsed,
            "seconds": elapsed, "real_tokens": tokens, "tiles": tiles}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="prepared dataset")
    ap.add_argument("--preset", default="cpu-base")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (both sides)")
    ap.add_argument("--batching", nargs="+", default=["tiles", "tokens"],
                    choices=["tiles", "tokens"])  # fmt: skip
    ap.add_argument("--tokens-per-batch", type=int, default=None,
                    help="budget of the tokens batching (default: batch size × mean)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = open_dataset(args.data)
    cfg = preset_config(args.preset)
    vocab = TagVocabulary.from_dataset(ds)
    table = build_tag_table(vocab, cfg.tokenizer.text_model, cache_dir=ds.path)
    mean, auto = auto_budget(ds, vocab, cfg)
    budget = args.tokens_per_batch or auto
    budgets = {"tiles": None, "tokens": budget}
    report: dict = {
        "machine": {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_1min_before": os.getloadavg()[0],
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "dataset": str(args.data), "preset": args.preset, "steps": args.steps,
        "rounds": args.rounds, "batch_size": cfg.data.batch_size,
        "mean_tokens_per_tile": mean, "tokens_per_batch": budget,
    }  # fmt: skip
    raw: dict[str, dict[str, list[dict]]] = {b: {"pretrain": [], "step_loop": []} for b in budgets}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for batching in args.batching:
                tpb = budgets[batching]
                sides = [("pretrain", lambda t=tpb: run_pretrain(ds, args.preset, args.steps, t,
                                                                  Path(tmp))),
                         ("step_loop", lambda t=tpb: run_loop(ds, vocab, table, args.preset,
                                                               args.steps, t))]  # fmt: skip
                for name, fn in sides if r % 2 == 0 else sides[::-1]:
                    result = fn()
                    raw[batching][name].append(result)
                    print(json.dumps({"round": r, "batching": batching, name: result}), flush=True)
    figures: dict = {}
    for batching in args.batching:
        entry: dict = {}
        for name, runs in raw[batching].items():
            entry[name] = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
            entry[name]["runs"] = runs
        entry["ratio_real_tokens_per_s"] = (
            entry["step_loop"]["real_tokens_per_s"] / entry["pretrain"]["real_tokens_per_s"]
        )
        figures[batching] = entry
    report["figures"] = figures
    if "tiles" in figures and "tokens" in figures:
        # the comparison: the command's default batching against the benchmark's
        report["loop_tokens_over_pretrain_tiles"] = (
            figures["tokens"]["step_loop"]["real_tokens_per_s"]
            / figures["tiles"]["pretrain"]["real_tokens_per_s"]
        )
    print(json.dumps({k: v for k, v in report.items() if k != "figures"}, indent=2))
    for batching, entry in figures.items():
        p, s = entry["pretrain"], entry["step_loop"]
        print(f"{batching:>6}: pretrain {p['real_tokens_per_s']:7.0f} real tokens/s "
              f"({p['tiles_per_s']:.1f} tiles/s) · loop {s['real_tokens_per_s']:7.0f} "
              f"({s['tiles_per_s']:.1f} tiles/s) · loop/pretrain "
              f"{entry['ratio_real_tokens_per_s']:.2f}")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
