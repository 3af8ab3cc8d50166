"""Recipe search on **val** only: one line per hypothesis, test never read.

    .venv/bin/python benchmarks/ablation.py NAME [NAME ...] [--seeds 2]
    .venv/bin/python benchmarks/ablation.py --list
    .venv/bin/python benchmarks/ablation.py --table      # rebuild the table from the runs

Each hypothesis is a set of changes to the ``cpu-small`` preset and a fixed number of steps
(``HYPOTHESES``). It is pretrained on the benchmark's train blocks (as `make benchmark`), then
evaluated with the ``benchmark`` probe settings on the **search split**
(``geojepa.eval.split.search_split``): the benchmark's test blocks are dropped, its val blocks
are scored (called "test" inside the report), and a quarter of the train blocks become the
probes' own val for early stopping and probe choice. Every run carries the baselines (tag
counts, pooled tag text, the same network with random weights, the train median) so its
verdicts have paired block-bootstrap intervals on val. Reports go to
``reports/benchmark/ablation-search/NAME/``; ``--table`` writes ``ablation-search/README.md``
and ``table.csv`` (one line per hypothesis: the val metric of the val-chosen probe per task,
wins/ties/losses against each rival). The chosen recipe is then read once on test by
``make benchmark``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from evaluate import AREAS, SHARED, log, prepare_inputs, pretrain_fixed  # noqa: E402

REPORTS = ROOT / "reports" / "benchmark" / "ablation-search"
BASELINES = ("dummy", "tag_counts", "pooled_text", "random_init")
RIVALS = ("tag_counts", "pooled_text", "random_init")

WIDE = {
    "tokenizer": {"width": 256},
    "model": {
        "width": 256,
        "depth": 4,
        "heads": 8,
        "predictor_width": 128,
        "predictor_depth": 2,
        "predictor_heads": 4,
        "var_weight": 0.05,
        "cov_weight": 0.05,
    },
}


def _merge(*parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for part in parts:
        for section, changes in part.items():
            out.setdefault(section, {}).update(changes)
    return out


# `reg_weight` w (as these runs were configured) = var_weight = cov_weight = w
REG1 = _merge(WIDE, {"model": {"var_weight": 1.0, "cov_weight": 1.0}})
COUNT = {"model": {"tile_pooling": "max_mean_count"}}

#: name → (what it tests, changes to cpu-small by config section, optimiser steps).
HYPOTHESES: dict[str, tuple[str, dict[str, dict[str, Any]], int]] = {
    "control": ("cpu-small as it is (64 wide, 2 deep)", {}, 484),
    "wide": ("width 256, depth 4, predictor 128x2, reg_weight 0.05", WIDE, 600),
    "wide-reg1": ("wide + a stronger regulariser (reg_weight 1.0)", REG1, 600),
    "reg1-count": (
        "wide-reg1, read out with size-aware pooling [max ‖ mean ‖ log(1+n)] (its weights)",
        _merge(REG1, COUNT),
        600,
    ),
    "reg1-layers4": (
        "wide-reg1, teacher targets and embeddings from the average of all 4 blocks",
        _merge(REG1, {"model": {"target_layers": 4}}),
        600,
    ),
    "wide-reg3": (
        "wide + a still stronger regulariser (reg_weight 3.0)",
        _merge(WIDE, {"model": {"var_weight": 3.0, "cov_weight": 3.0}}),
        600,
    ),
    # defined, not run yet
    "wide-long": ("wide, 3x longer (1800 steps)", WIDE, 1800),
    "control-long": ("cpu-small, 3x longer (1452 steps)", {}, 1452),
    "wide-count": (
        "wide, read out with size-aware pooling [max ‖ mean ‖ log(1+n)] (same weights as wide)",
        _merge(WIDE, COUNT),
        600,
    ),
    "wide-layers2": (
        "wide, teacher targets and embeddings from the average of the last 2 blocks",
        _merge(WIDE, {"model": {"target_layers": 2}}),
        600,
    ),
    "wide-layers4": (
        "wide, teacher targets and embeddings from the average of all 4 blocks",
        _merge(WIDE, {"model": {"target_layers": 4}}),
        600,
    ),
    "wide-dropout": (
        "wide + dropout 0.1 in the student encoder and predictor",
        _merge(WIDE, {"model": {"dropout": 0.1}}),
        600,
    ),
    "wide-ema": (
        "wide + a faster teacher for a short run (EMA momentum 0.99 → 0.999)",
        _merge(WIDE, {"model": {"ema_momentum": (0.99, 0.999)}}),
        600,
    ),
}

#: Hypotheses that change only how embeddings are read out of a trained network: they reuse the
#: weights of the named run instead of pretraining the same network again.
READOUT_ONLY = {"wide-count": "wide", "reg1-count": "wide-reg1"}


def hypothesis_config(name: str) -> Any:
    """The PretrainConfig of a hypothesis (cpu-small with its changes)."""
    from geojepa.train import preset_config

    _, changes, _ = HYPOTHESES[name]
    config = preset_config("cpu-small").with_overrides(**changes)
    return config.replace(preset=f"ablation-{name}")


def reuse_weights(work: Path, base: str, name: str, config_path: Path) -> float:
    """Copy the finished run of ``base`` with this hypothesis's config (a read-out change)."""
    import shutil

    from geojepa.errors import InputError
    from geojepa.train import PretrainConfig

    source, target = work / f"run-{base}", work / f"run-{name}"
    if not (source / "model.safetensors").is_file():
        raise InputError(f"hypothesis {name} reuses the weights of {base}: run {base} first")
    changed = PretrainConfig.load(config_path)
    trained = PretrainConfig.load(source / "config.json")
    same_weights = changed.model.replace(tile_pooling=trained.model.tile_pooling) == trained.model
    run_set = {"model": trained.model, "preset": trained.preset, "trainer": trained.trainer}
    if not same_weights or changed.replace(**run_set) != trained:  # max_steps is set per run
        raise InputError(f"{name} differs from {base} in more than the model's read-out")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    changed.save(target / "config.json")
    return float(json.loads((work / f"run-{base}.json").read_text())["seconds"])


def run_one(name: str, sources: dict[str, Path], work: Path, seeds: int) -> Path:
    from geojepa.eval import load_split, save_split, search_split
    from geojepa.eval.evaluate import evaluate, evaluate_preset, format_summary

    what, _, steps = HYPOTHESES[name]
    datasets, split_path, train_ds = prepare_inputs(sources, work)
    search = save_split(search_split(load_split(split_path)), work / "search-split.parquet")
    config_path = work / "configs" / f"{name}.json"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    hypothesis_config(name).save(config_path)
    if name in READOUT_ONLY:
        seconds = reuse_weights(work, READOUT_ONLY[name], name, config_path)
    else:
        seconds = pretrain_fixed(train_ds, work, f"run-{name}", steps, config_path)
    out = REPORTS / name
    config = evaluate_preset("benchmark").replace(
        supervised_seeds=None,
        title=f"Ablation `{name}` on val (search split): {what}",
        notes=(
            f"Hypothesis `{name}`: {what}; {steps} steps ({seconds / 60:.1f} min pretraining "
            "on this machine). Scored on the benchmark's **val** blocks (shown as test); the "
            "probes chose epochs and probe family on a quarter of the train blocks. The "
            "benchmark's test blocks are not read.",
        ),
    )
    t = time.perf_counter()
    result = evaluate(
        work / f"run-{name}", [ds.path for ds in datasets.values()], out,
        seeds=range(seeds), baselines=BASELINES, split=search, config=config, progress=False,
    )  # fmt: skip
    print(format_summary(result))
    record = {
        "hypothesis": name,
        "what": what,
        "steps": steps,
        "pretrain_s": round(seconds, 1),
        "evaluate_s": round(time.perf_counter() - t, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "changes": HYPOTHESES[name][1],
    }
    (out / "ablation.json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"{name} done: {out}")
    return out


def chosen_rows(results_csv: Path) -> Any:
    """The rows of a report's ``results.csv`` whose probe each model chose on val."""
    import pandas as pd

    frame = pd.read_csv(results_csv)
    return frame[frame["selected"].astype(str) == "True"]


def win_counts(verdicts: dict[str, dict[str, str]]) -> dict[str, int]:
    """Tasks on which GeoJEPA beats all of `RIVALS`, and its random-weight twin."""
    return {
        "beats all 3": sum(all(v.get(m) == "win" for m in RIVALS) for v in verdicts.values()),
        "beats twin": sum(v.get("random_init") == "win" for v in verdicts.values()),
    }


def margins(chosen: Any) -> Any:
    """GeoJEPA's margin over each rival per task, from a report's val-chosen rows: ``margin``
    is how much better GeoJEPA's chosen probe scores than the rival's (positive = better, in
    the metric's units: MAE lower or AUROC higher), ``low``/``high`` its 95% paired interval
    where the report pairs best with best (None in older reports), and ``needed`` how far
    GeoJEPA's score must move for the interval to exclude zero (0 once it does)."""
    import pandas as pd

    from geojepa.eval.metrics import METRICS

    rows = []
    for task, part in chosen.groupby("task", sort=False):
        own = part[part["model"] == "geojepa"].iloc[0]
        sign = -1.0 if METRICS[own["metric"]].higher_is_better else 1.0
        for rival in part[part["model"].isin(RIVALS)].itertuples():
            bounds = sorted(sign * b for b in (rival.diff_low, rival.diff_high))
            paired = rival.reference_probe == own["probe"]
            low, high = bounds if paired else (None, None)
            rows.append({
                "task": task, "metric": own["metric"], "geojepa": float(own["mean"]),
                "rival": rival.model, "value": float(rival.mean),
                "margin": sign * (float(rival.mean) - float(own["mean"])),
                "low": low, "high": high,
                "needed": None if low is None else max(0.0, -low),
            })  # fmt: skip
    return pd.DataFrame(rows)


def target_gap(gaps: Any) -> Any:
    """Per task of ``margins``' rows (or `scaling.py pool`'s, over pretraining seeds): how much
    better GeoJEPA's score would have to be for its interval against *every* rival to exclude
    zero, the noise held as measured (a shift of the score moves each interval by as much):
    ``needed`` = −(lowest interval end), 0 where the target is met, in the metric's units;
    ``binding`` is the rival that sets it, ``value_needed`` the score that would do it;
    ``reachable`` is False where that score lies beyond the metric's range (an AUROC over 1, an
    MAE under 0): the data's noise then hides a win over that rival, however good the model."""
    import pandas as pd

    from geojepa.eval.metrics import METRICS

    rows = []
    for task, part in gaps.groupby("task", sort=False):
        worst = part.loc[part["low"].idxmin()]
        needed = max(0.0, -float(worst["low"]))
        sign = 1.0 if METRICS[worst["metric"]].higher_is_better else -1.0
        value = float(worst["geojepa"]) + sign * needed
        rows.append({"task": task, "metric": worst["metric"], "geojepa": worst["geojepa"],
                     "needed": needed, "binding": worst["rival"], "value_needed": value,
                     "reachable": value <= 1.0 if sign > 0 else value >= 0.0})  # fmt: skip
    return pd.DataFrame(rows)


def verdict_cells(chosen: Any) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """From a report's val-chosen rows (``results.csv`` where ``selected``): per task the
    GeoJEPA metric and its ``vs`` cell (W/L/= against each of `RIVALS`) as table cells, and
    each task's verdicts by model."""
    cells: dict[str, Any] = {}
    verdicts: dict[str, dict[str, str]] = {}
    for task, part in chosen.groupby("task", sort=False):
        own = part[part["model"] == "geojepa"].iloc[0]
        cells[f"{task} {own['metric']}"] = round(float(own["mean"]), 3)
        verdicts[task] = dict(zip(part["model"], part["verdict"].astype(str), strict=True))
        cells[f"{task} vs"] = verdict_marks(verdicts[task])
    return cells, verdicts


def verdict_marks(verdicts: dict[str, str]) -> str:
    """GeoJEPA's verdicts against `RIVALS`, in that order: W win, L loss, = tie (or none)."""
    return "".join({"win": "W", "loss": "L"}.get(verdicts.get(m), "=") for m in RIVALS)


def table() -> Path:
    """``README.md`` + ``table.csv``: one line per finished hypothesis."""
    import pandas as pd

    lines = []
    for name in HYPOTHESES:
        report = REPORTS / name
        if not (report / "ablation.json").is_file():
            continue
        info = json.loads((report / "ablation.json").read_text())
        chosen = chosen_rows(report / "results.csv")
        row: dict[str, Any] = {"hypothesis": name, "steps": info["steps"],
                               "pretrain_min": round(info["pretrain_s"] / 60, 1)}  # fmt: skip
        cells, verdicts = verdict_cells(chosen)
        row.update(cells)
        against = [[v.get(m) for m in RIVALS] for v in verdicts.values()]
        row["tasks beating all 3"] = sum(all(x == "win" for x in a) for a in against)
        row["net W-L"] = sum(a.count("win") - a.count("loss") for a in against)
        row["what"] = info["what"]
        lines.append(row)
    if lines:  # the fixed rivals, as the last finished report scored them (same in every run)
        for rival in ("tag_counts", "pooled_text", "dummy"):
            row = {"hypothesis": f"({rival})", "steps": "", "pretrain_min": ""}
            for task, part in chosen.groupby("task", sort=False):
                own = part[part["model"] == rival]
                metric = part["metric"].iloc[0]
                row[f"{task} {metric}"] = round(float(own["mean"].iloc[0]), 3) if len(own) else ""
                row[f"{task} vs"] = ""
            row.update({"tasks beating all 3": "", "net W-L": "", "what": "baseline"})
            lines.append(row)
    frame = pd.DataFrame(lines)
    REPORTS.mkdir(parents=True, exist_ok=True)
    frame.to_csv(REPORTS / "table.csv", index=False)
    md = [
        "# Recipe search on val (issue 12, part 3)",
        "",
        "Written by `benchmarks/ablation.py --table`; each row's report is in its folder. "
        "Metric: the val score of the probe chosen on the probes' own val (train blocks), mean "
        "over seeds. `vs` = verdict against tag counts, pooled tag text and random weights "
        "(W win, L loss, = tie: 95% paired block-bootstrap interval of the difference on val).",
        "",
        _markdown(frame) if len(frame) else "(no finished hypothesis)",
        "",
    ]
    runs = frame[~frame["hypothesis"].astype(str).str.startswith("(")] if len(frame) else frame
    if len(runs):
        order = ["tasks beating all 3", "net W-L"]
        ranked = runs.sort_values(order, ascending=False, kind="stable")
        md += [
            "Rule: the most tasks where GeoJEPA beats all three rivals (the issue's target), "
            "ties broken by the net count of wins minus losses. Chosen: "
            f"**{ranked['hypothesis'].iloc[0]}**; the shipped `cpu-base` preset is that "
            "recipe, read once on test by `make benchmark`.",
            "",
        ]
    not_run = [n for n in HYPOTHESES if not (REPORTS / n / "ablation.json").is_file()]
    if not_run:
        md += [f"Defined in `benchmarks/ablation.py` but not run yet: {', '.join(not_run)}.", ""]
    (REPORTS / "README.md").write_text("\n".join(md))
    print("\n".join(md))
    return REPORTS / "README.md"


def write_readme(folder: Path, lines: list[str]) -> Path:
    """``folder/README.md``: the generated ``lines`` then the hand-written ``reading.md`` kept
    beside them (printed too)."""
    reading = folder / "reading.md"
    if reading.is_file():
        lines = [*lines, reading.read_text()]
    (folder / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return folder / "README.md"


def _markdown(frame: Any) -> str:
    cells = [[str(c) for c in frame.columns]] + [[str(v) for v in row] for row in frame.values]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join([lines[0], "|" + "---|" * len(frame.columns), *lines[1:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="hypotheses to run (see --list)")
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "benchmark")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args(argv)
    if args.list:
        for name, (what, _, steps) in HYPOTHESES.items():
            print(f"{name:20s} {steps:5d} steps  {what}")
        return 0
    unknown = [n for n in args.names if n not in HYPOTHESES]
    if unknown:
        print(f"error: unknown hypothesis {unknown} (see --list)", file=sys.stderr)
        return 2
    sources = {name: args.data / file for name, file in AREAS.items()}
    if any(not p.exists() for p in sources.values()):
        print("ablation skipped: real-area data absent")
        return 0
    for name in args.names:
        hypothesis_config(name)  # a bad hypothesis fails before any work
    for name in args.names:
        run_one(name, sources, args.work, args.seeds)
    if args.table or args.names:
        table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
