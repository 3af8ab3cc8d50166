"""Read the benchmark's **test** blocks once for a chosen model: its test row, its transfer row,
and its label efficiency (issue 21, parts 3 and 4).

    .venv/bin/python benchmarks/test_read.py NAME --model DIR [--label-fraction 0.05]
        [--seeds 2] [--fp16]
    .venv/bin/python benchmarks/test_read.py --table

Evaluates model directory ``--model`` with the ``benchmark`` probe settings on the benchmark's
saved block split (`runs/benchmark/split.parquet`, as `make benchmark`), every rival in the same
call (median dummy, tag counts, pooled tag text, the random-weight twin) so that every verdict has
paired intervals, and writes ``reports/benchmark/test-read/NAME/``. With ``--label-fraction F``
the probes see only a seeded share F of the train tiles' labels, by whole blocks
(`geojepa split --from SPLIT --label-fraction F`); val and test are unchanged. ``--fp16`` scores
the weights as a float16 export carries them (every tensor rounded to float16 and back), so the
row is that of the shipped file, not of its float32 parent.

The model is chosen on **val** before this runs (`benchmarks/scaling.py`), never from this
output: nothing here feeds back into a recipe.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from ablation import (  # noqa: E402
    BASELINES,
    _markdown,
    chosen_rows,
    margins,
    verdict_cells,
    win_counts,
    write_readme,
)
from evaluate import AREAS, SHARED, log, prepare_inputs  # noqa: E402

WORK = ROOT / "runs" / "benchmark"
REPORTS = ROOT / "reports" / "benchmark" / "test-read"
FP16_NOTE = " (weights rounded to float16, as shipped)"


def fp16_copy(model: Path, out: Path) -> Path:
    """A copy of model directory ``model`` whose weights are rounded to float16 (kept float32)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from geojepa.model.directory import TAG_TABLE_FILE, WEIGHTS_FILE

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model, out)
    for name in (WEIGHTS_FILE, TAG_TABLE_FILE):
        with safe_open(str(model / name), framework="pt") as f:
            meta = f.metadata()
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        rounded = {
            k: v.to(torch.float16).to(v.dtype) if v.is_floating_point() else v
            for k, v in state.items()
        }
        save_file(rounded, str(out / name), metadata=meta)
    return out


def _pretraining_tiles(model: Path) -> int | None:
    """How many tiles the model was pretrained on (never the machine path of that data)."""
    record = model / "training_data.json"
    return json.loads(record.read_text()).get("n_tiles") if record.is_file() else None


def table() -> Path:
    """``README.md`` + ``table.csv`` of every read: one line per read (test metric of the
    val-chosen probe, verdicts against each rival), then each model's metric by label share."""
    import pandas as pd

    reads, shares, gaps = [], [], []
    for record_file in sorted(REPORTS.glob("*/read.json")):
        record = json.loads(record_file.read_text())
        chosen = chosen_rows(record_file.parent / "results.csv")
        row: dict[str, Any] = {
            "read": record["name"],
            "labels": f"{record['label_fraction']:.0%}",
            "pretrain tiles": record.get("pretraining_tiles"),
        }
        cells, verdicts = verdict_cells(chosen)
        row.update(cells)
        row.update(win_counts(verdicts))
        reads.append(row)
        gaps.append(margins(chosen).assign(read=record["name"], labels=row["labels"]))
        for part in chosen.itertuples():
            shares.append({"read": record["name"], "labels": row["labels"], "task": part.task,
                           "model": part.model, "mean": round(float(part.mean), 3)})  # fmt: skip
    frame = pd.DataFrame(reads)
    REPORTS.mkdir(parents=True, exist_ok=True)
    frame.to_csv(REPORTS / "table.csv", index=False)
    md = [
        "# Test read: the chosen model, its transfer twin, label efficiency (issue 21)",
        "",
        "Written by `benchmarks/test_read.py --table`; each read's report is in `NAME/`. "
        "Metric: the **test** score of the probe chosen on val, mean over seeds. `vs` = verdict "
        "against tag counts, pooled tag text and the random-weight twin (W win, L loss, = tie: "
        "95% paired block-bootstrap interval of the difference on test).",
        "",
        _markdown(frame) if len(frame) else "(no read yet)",
        "",
    ]
    if shares:
        by_share = pd.DataFrame(shares).pivot_table(
            index=["task", "model"], columns=["read", "labels"], values="mean", sort=False
        )
        by_share.columns = [f"{read} @{labels}" for read, labels in by_share.columns]
        md += ["## Every model by read and label share", "",
               _markdown(by_share.reset_index()), ""]  # fmt: skip
    if gaps:
        md += _how_far(pd.concat(gaps, ignore_index=True))
    return write_readme(REPORTS, md)


def _how_far(gaps: Any) -> list[str]:
    """``margins.csv`` (every read, task and rival) and the README's "how far" section: per
    task of each full-label read, GeoJEPA's margin over its strongest rival and over its
    random twin with their intervals, and how far its score must move to beat all three."""
    gaps.to_csv(REPORTS / "margins.csv", index=False)
    lines = [
        "## How far from the target",
        "",
        "Per task of each read with all the labels: `margin` = how much better GeoJEPA's "
        "test score is than the rival's (positive = better: lower MAE, higher AUROC) with "
        "its 95% paired interval; the strongest rival is the one with the lowest margin; "
        "`to beat all 3` = how far GeoJEPA's score must move for every interval to exclude "
        "zero (0 = it beats all three), also as a share of its score. Every rival: "
        "`margins.csv`.",
        "",
    ]
    rows = []
    for (read, task), part in gaps[gaps["labels"] == "100%"].groupby(["read", "task"],
                                                                     sort=False):  # fmt: skip
        worst = part.loc[part["margin"].idxmin()]
        twin = part[part["rival"] == "random_init"].iloc[0]
        needed = part["needed"].max()
        rows.append({
            "read": read, "task": task, "metric": worst["metric"],
            "geojepa": round(worst["geojepa"], 3),
            "strongest rival": f"{worst['rival']} {worst['value']:.3f}",
            "margin [95%]": f"{worst['margin']:+.3f} [{worst['low']:+.3f}, {worst['high']:+.3f}]",
            "vs twin [95%]": f"{twin['margin']:+.3f} [{twin['low']:+.3f}, {twin['high']:+.3f}]",
            "to beat all 3": f"{needed:.3f} ({needed / worst['geojepa']:.1%})",
        })  # fmt: skip
    import pandas as pd

    return [*lines, _markdown(pd.DataFrame(rows)), ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?")
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--label-fraction", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.table:
        table()
        return 0
    if not args.name or args.model is None:
        parser.error("NAME and --model are needed (or --table)")
    if any(not (SHARED / f).exists() for f in AREAS.values()):
        print("test read skipped: real-area data absent")
        return 0

    import torch

    from geojepa.eval import label_subset, load_split, save_split
    from geojepa.eval.evaluate import evaluate, evaluate_preset

    torch.set_num_threads(args.threads)
    sources = {name: SHARED / file for name, file in AREAS.items()}
    datasets, split_path, _ = prepare_inputs(sources, WORK)
    out = REPORTS / args.name
    model = args.model
    if args.fp16:
        model = fp16_copy(model, WORK / f"test-read-{args.name}-fp16")
    split = split_path
    if args.label_fraction < 1.0:
        split = save_split(
            label_subset(load_split(split_path), args.label_fraction, seed=0),
            WORK / f"split-labels-{args.label_fraction:g}.parquet",
        )
    started = time.perf_counter()
    config = evaluate_preset("benchmark").replace(
        supervised_seeds=None,
        title=f"Test read `{args.name}`",
        notes=(
            f"Model `{args.model.name}`{FP16_NOTE if args.fp16 else ''}, chosen on val; the "
            "benchmark's **test** blocks, read once. Train labels: "
            f"{args.label_fraction:.0%} of the train tiles (whole blocks, seed 0).",
        ),
    )
    log(f"test read {args.name}: {model} (labels {args.label_fraction:.0%})")
    evaluate(model, [datasets[n] for n in AREAS], out, seeds=range(args.seeds),
             baselines=BASELINES, split=split, config=config, progress=False)  # fmt: skip
    record = {
        "name": args.name,
        "model": args.model.name,
        "fp16": args.fp16,
        "label_fraction": args.label_fraction,
        "seeds": args.seeds,
        "evaluate_s": round(time.perf_counter() - started, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "pretraining_tiles": _pretraining_tiles(args.model),
    }
    (out / "read.json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"test read {args.name} done: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
