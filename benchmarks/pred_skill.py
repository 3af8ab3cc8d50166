"""What a trained predictor knows beyond a constant: its prediction loss against the loss of
predicting every target token as the batch's mean target, on batches of its own pretraining
data (issue 21: why pretraining does not change what the network knows).

    .venv/bin/python benchmarks/pred_skill.py NAME:STEP [NAME:STEP ...] [--batches 24]

``NAME`` is a run of ``benchmarks/scaling.py`` (``runs/benchmark/scaling-NAME``) and ``STEP``
one of its periodic checkpoints. For each, on the same ``--batches`` seeded batches and masks
of the run's data, with the predictor in eval mode: ``skill = 1 - predictor loss / mean loss``
(token means of smooth-L1, as training), for the targets as the run trained on them and for
both target forms (``token``: layer-normed; ``token_batch``: then each dimension standardised
over the batch). 0 means the predictor is no better than one constant vector per batch. The
same network with its initial (random) weights is measured beside it. Prints a table and
writes ``benchmarks/results/pred_skill-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "benchmark"
OUT = ROOT / "benchmarks" / "results" / "pred_skill-cpu.json"


def _batches(run: Path, n: int, batch_size: int) -> list[Any]:
    from geojepa.data.reader import open_dataset
    from geojepa.tokenize.loader import make_dataloader
    from geojepa.tokenize.tags import TagVocabulary
    from geojepa.train import PretrainConfig

    config = PretrainConfig.load(run / "checkpoints" / "config.json")
    record = json.loads((run.parent / f"{run.name}.json").read_text())
    vocab = TagVocabulary.load(run / "vocab.json")
    loader = make_dataloader(open_dataset(record["data"]), vocab, config.tokenizer, batch_size,
                             shuffle=True, seed=123, shuffle_buffer=4096)  # fmt: skip
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def _skill(model: Any, batches: list[Any], norm: str) -> dict[str, float]:
    import torch

    model.config = model.config.replace(target_norm=norm)
    generator = torch.Generator().manual_seed(7)
    pred = mean = 0.0
    with torch.no_grad():
        for batch in batches:
            out = model(batch, generator)
            pred += float(out.token_loss)
            mean += float(out.mean_loss)
    return {"pred_loss": pred / len(batches), "mean_loss": mean / len(batches),
            "skill": 1.0 - pred / mean}  # fmt: skip


def measure(spec: str, n_batches: int) -> list[dict[str, Any]]:
    import torch

    from geojepa.train import PretrainConfig
    from geojepa.train.export import build_model

    name, _, step = spec.partition(":")
    run = WORK / f"scaling-{name}"
    config = PretrainConfig.load(run / "checkpoints" / "config.json")
    state = torch.load(run / "checkpoints" / f"step={step}.ckpt", map_location="cpu",
                       weights_only=True)["state_dict"]  # fmt: skip
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    table = next(v for k, v in weights.items() if k.endswith("tag_table"))
    batches = _batches(run, n_batches, config.data.batch_size)
    rows = []
    for label in ("trained", "random"):
        torch.manual_seed(config.trainer.seed)
        model = build_model(config, table)
        if label == "trained":
            model.load_state_dict(weights)
        model.eval()
        for norm in ("token", "token_batch"):
            row = {"run": name, "step": int(step), "weights": label, "target_norm": norm,
                   "trained_with": config.model.target_norm}  # fmt: skip
            row.update(_skill(model, batches, norm))
            rows.append(row)
            print(f"{name}@{step} {label:8s} {norm:12s} pred {row['pred_loss']:.4f} "
                  f"mean {row['mean_loss']:.4f} skill {row['skill']:+.3f}", flush=True)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("points", nargs="+", metavar="NAME:STEP")
    parser.add_argument("--batches", type=int, default=24)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = [row for spec in args.points for row in measure(spec, args.batches)]
    record = {
        "figure": "predictor skill = 1 - predictor loss / loss of predicting the batch mean",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} {platform.processor() or ''} CPU, "
        f"torch {torch.__version__}, 1 thread",
        "batches": args.batches,
        "seconds": round(time.perf_counter() - started, 1),
        "command": "python benchmarks/pred_skill.py " + " ".join(sys.argv[1:]),
        "rows": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
