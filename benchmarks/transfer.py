"""Leave-one-area-out transfer: pretrain on two areas, probe the third, open vs closed vocabulary.

    .venv/bin/python benchmarks/transfer.py [--holdout montevideo] [--steps 600] [--seeds 5]

What a user with a model trained elsewhere gets. The pretraining sees every tile of the two
other areas and none of the held-out one; the held-out area is then evaluated with the
`benchmark` evaluate preset (its own spatial block split: probes fit on its train blocks, chosen
on val, scored once on test) against the baselines (tag counts, pooled tag text, the same
network with random weights). It runs twice: with the open vocabulary (the held-out area's
unseen tags get their own text vectors) and with the closed one (they fall back to their key or
UNKNOWN), which measures what the open vocabulary is worth across areas. Reports go to
``reports/benchmark/transfer-<holdout>-{open,closed}/`` and a summary JSON beside them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from evaluate import AREAS, PRESET, SHARED, STEPS  # noqa: E402  (the benchmark's settings)

BASELINES = ("tag_counts", "pooled_text", "random_init")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holdout", default="montevideo", choices=sorted(AREAS))
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work-transfer")
    parser.add_argument("--reports", type=Path, default=ROOT / "reports" / "benchmark")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)

    from geojepa.data.combine import merge_datasets
    from geojepa.data.config import PrepareConfig
    from geojepa.data.prepare import prepare_tiles
    from geojepa.eval.evaluate import evaluate, evaluate_preset, format_summary
    from geojepa.train import pretrain

    if args.steps < 1 or args.seeds < 1:
        print("error: --steps and --seeds must be at least 1", file=sys.stderr)
        return 2
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    datasets = {}
    for name, file in AREAS.items():
        out = args.work / "data" / name
        datasets[name] = prepare_tiles(args.data / file, out, PrepareConfig(zoom=16),
                                       progress=False)  # fmt: skip
    train_areas = [n for n in AREAS if n != args.holdout]
    merged = merge_datasets([datasets[n] for n in train_areas], args.work / "train-data",
                            overwrite=True)  # fmt: skip
    t = time.perf_counter()
    run = pretrain(merged, args.work / f"run-{args.holdout}", preset=PRESET,
                   max_steps=args.steps, progress=False)  # fmt: skip
    pretrain_s = time.perf_counter() - t
    summary: dict = {
        "benchmark": "transfer",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "holdout": args.holdout,
        "pretrained_on": train_areas,
        "preset": PRESET,
        "steps": args.steps,
        "pretrain_seconds": round(pretrain_s, 1),
        "runs": {},
    }
    for vocab in ("open", "closed"):
        config = evaluate_preset("benchmark").replace(
            open_vocabulary=vocab == "open",
            title=f"Transfer: pretrained on {' + '.join(train_areas)}, evaluated on "
            f"{args.holdout} ({vocab} vocabulary)",
            supervised_seeds=None,
        )
        out = args.reports / f"transfer-{args.holdout}-{vocab}"
        t = time.perf_counter()
        result = evaluate(run, [datasets[args.holdout]], out, seeds=range(args.seeds),
                          baselines=BASELINES, config=config, progress=True)  # fmt: skip
        print(format_summary(result))
        summary["runs"][vocab] = {"report": str(out.relative_to(ROOT)),
                                  "seconds": round(time.perf_counter() - t, 1)}  # fmt: skip
    summary["total_seconds"] = round(time.perf_counter() - started, 1)
    path = args.reports / f"transfer-{args.holdout}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
