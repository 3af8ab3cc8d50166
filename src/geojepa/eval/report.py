"""Report helpers: results table → ``results.csv``, ``results.md``, a bar chart, provenance.

The Markdown table has one row per (model, probe) and one column per (task, metric), cells
``mean ± std`` over seeds; the best mean per column is bold; arrows say whether higher (↑) or
lower (↓) is better. The provenance block records what produced the numbers (config, split file
hash, data source), so that a reader can check that two reports are comparable.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geojepa.errors import InputError, OutputError
from geojepa.eval.metrics import METRICS, METRICS_BY_KIND
from geojepa.eval.probes import ResultRow, row_record
from geojepa.eval.split import file_sha256
from geojepa.eval.tasks import TASKS
from geojepa.io.atomic import write_atomic, write_json_atomic, write_text_atomic


def results_frame(rows: list[ResultRow]) -> pd.DataFrame:
    """Long per-seed frame: model, task, probe, seed, metric, value (+ sizes, params)."""
    if not rows:
        raise InputError("no results to report")
    records = []
    for row in rows:
        base = row_record(row)
        metrics = base.pop("metrics")
        base["params"] = json.dumps(base["params"], sort_keys=True)
        for metric, value in metrics.items():
            records.append({**base, "metric": metric, "value": value})
    return pd.DataFrame.from_records(records)


def summarize(rows: list[ResultRow]) -> pd.DataFrame:
    """Mean ± std (ddof=1; 0 for one seed) per model, probe, task and metric."""
    frame = results_frame(rows)
    keys = ["model", "probe", "task", "metric"]
    grouped = frame.groupby(keys, sort=False)["value"]
    out = grouped.agg(mean="mean", std=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)
    out["n_seeds"] = grouped.size()
    out["n_test"] = frame.groupby(keys, sort=False)["n_test"].first()
    return out.reset_index()


def _column_order(summary: pd.DataFrame) -> list[tuple[str, str]]:
    tasks = list(dict.fromkeys(summary["task"]))
    columns = []
    for task in tasks:
        kind = TASKS[task].kind if task in TASKS else None
        present = list(dict.fromkeys(summary.loc[summary["task"] == task, "metric"]))
        order = [m for m in METRICS_BY_KIND.get(kind, ()) if m in present]
        columns += [(task, m) for m in order + [m for m in present if m not in order]]
    return columns


def markdown_table(summary: pd.DataFrame, digits: int = 3) -> str:
    """Model × (task, metric) table, ``mean ± std``, best mean per column in bold."""
    columns = _column_order(summary)
    models = list(dict.fromkeys(zip(summary["model"], summary["probe"], strict=True)))
    cell = summary.set_index(["model", "probe", "task", "metric"])
    header = ["model", "probe"] + [
        f"{task} {metric} {METRICS[metric].arrow if metric in METRICS else ''}".rstrip()
        for task, metric in columns
    ]
    best: dict[tuple[str, str], float] = {}
    for task, metric in columns:
        means = summary.loc[(summary["task"] == task) & (summary["metric"] == metric), "mean"]
        means = means.dropna()
        if len(means):
            higher = METRICS[metric].higher_is_better if metric in METRICS else True
            best[(task, metric)] = means.max() if higher else means.min()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, probe in models:
        cells = [model, probe]
        for task, metric in columns:
            key = (model, probe, task, metric)
            if key not in cell.index:
                cells.append("–")
                continue
            mean, std = cell.loc[key, "mean"], cell.loc[key, "std"]
            text = f"{mean:.{digits}f} ± {std:.{digits}f}"
            if (task, metric) in best and np.isclose(mean, best[(task, metric)]):
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def make_provenance(
    config: dict[str, Any] | None = None,
    split_path: str | Path | None = None,
    data_source: str | dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """What produced a report: configs, split file and its sha256, data source, versions."""
    from geojepa import __version__ as version

    provenance: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "geojepa_version": version,
        "python": platform.python_version(),
        "config": config or {},
        "data_source": data_source,
    }
    if split_path is not None:
        provenance["split_file"] = str(split_path)
        provenance["split_sha256"] = file_sha256(split_path)
    provenance.update(extra)
    return provenance


_PROBE_COLORS = {
    "dummy": "tab:gray",
    "linear": "tab:blue",
    "mlp": "tab:orange",
    "linear_l1": "tab:cyan",
    "mlp_l1": "tab:red",
    "poisson": "tab:green",
    "end2end": "tab:purple",
}


#: The model whose score every other is measured against in the chart: the train median
#: (regression/count) or majority class (binary), no features.
BASELINE = "dummy"


def plot_results(summary: pd.DataFrame, path: str | Path) -> Path:
    """Bar chart: one panel per (task, headline metric), bars grouped by model, ±std.

    Each model is named once, under its group of bars (one bar per probe, coloured by probe,
    legend on top). The dummy baseline is also a dashed line across its panel, and a panel
    says when it beats every model. The error bars are ± one std over seeds (said under the
    chart); each panel's y axis names its metric and whether lower or higher is better.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    panels = [(t, m) for t, m in _column_order(summary) if m in ("mae", "auroc")]
    panels = panels or _column_order(summary)
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 0.6, 3.9 * nrows + 0.8),
                             squeeze=False)  # fmt: skip
    for ax, (task, metric) in zip(axes.flat, panels, strict=False):
        part = summary[(summary["task"] == task) & (summary["metric"] == metric)]
        models = list(dict.fromkeys(part["model"]))
        x, centres, start = [], [], 0.0
        for model in models:  # a gap of one bar between models
            n = int((part["model"] == model).sum())
            x += [start + i for i in range(n)]
            centres.append(start + (n - 1) / 2)
            start += n + 1
        colors = [_PROBE_COLORS.get(p, "tab:purple") for p in part["probe"]]
        ax.bar(x, part["mean"], yerr=part["std"].fillna(0), color=colors, capsize=3)
        ax.set_xticks(centres, models, rotation=45, ha="right", fontsize=7)
        higher = METRICS[metric].higher_is_better if metric in METRICS else None
        better = ""
        if higher is not None:
            way = "higher" if higher else "lower"
            better = f" {METRICS[metric].arrow} ({way} is better)"
        ax.set_ylabel(f"{metric}{better}", fontsize=8)
        title = task
        base = part.loc[part["model"] == BASELINE, "mean"]
        others = part.loc[part["model"] != BASELINE, "mean"]
        if len(base) and higher is not None:
            ax.axhline(float(base.iloc[0]), color="0.3", linestyle="--", linewidth=1, zorder=0)
            beaten = others.max() <= base.iloc[0] if higher else others.min() >= base.iloc[0]
            if len(others) and beaten:
                title += f"\nthe {BASELINE} baseline beats every model"
        ax.set_title(title, fontsize=9, color="tab:red" if "\n" in title else "black")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    probes = list(dict.fromkeys(summary["probe"]))
    handles: list[Any] = [Patch(color=_PROBE_COLORS.get(p, "tab:purple"), label=p)
                          for p in probes]  # fmt: skip
    if (summary["model"] == BASELINE).any():
        handles.append(Line2D([], [], color="0.3", linestyle="--",
                              label=f"{BASELINE}: train median / majority"))  # fmt: skip
    fig.legend(handles=handles, title="probe", loc="upper center", ncol=min(len(handles), 7),
               fontsize=8, title_fontsize=8, frameon=False)  # fmt: skip
    seeds = int(summary["n_seeds"].max()) if "n_seeds" in summary else None
    over = f"{seeds} seed(s)" if seeds else "seeds"
    fig.text(0.01, 0.005, f"Bars: test score, mean over {over}; error bars: ± one standard "
             "deviation over the seeds (none for deterministic probes: linear, poisson, dummy).",
             fontsize=7, color="0.3", va="bottom")  # fmt: skip
    rows = -(-len(handles) // 7)
    top = (0.35 + 0.2 * rows) / fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, 0.25 / fig.get_size_inches()[1], 1, 1 - top))
    path = Path(path)
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


#: What the Δ column compares: best against best, each side's probe chosen on val
#: (`eval.uncertainty` pairs a model's val-chosen probe with GeoJEPA's val-chosen probe).
DELTA_HEADER = "Δ = this val-chosen probe − GeoJEPA's val-chosen probe (named)"

#: The models GeoJEPA must beat (the issue's target), in the order of the win table.
RIVALS = ("random_init", "tag_counts", "pooled_text")


def _fmt(value: float, low: float, high: float, digits: int = 3) -> str:
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def uncertainty_markdown(intervals: pd.DataFrame, by_area: pd.DataFrame | None) -> str:
    """Sections for results.md: 95% block-bootstrap intervals of every model's val-chosen
    probe and of its difference to GeoJEPA, the wins, and the per-area breakdown."""
    from geojepa.eval.uncertainty import win_summary

    sel = intervals[intervals["selected"]]
    lines = [
        "## Uncertainty: 95% intervals over the test data\n",
        "Paired bootstrap over the test split's spatial blocks (the headline metric, mean over "
        "seeds, each model's probe chosen on **val**). Δ = model − GeoJEPA, each model's "
        "val-chosen probe against GeoJEPA's val-chosen probe; a **win** (for "
        "GeoJEPA) only when Δ's interval excludes 0 on GeoJEPA's side, a loss when it excludes "
        "0 on the other side, else a tie.\n",
        f"| task | model | probe | value [95%] | {DELTA_HEADER} [95%] | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in sel.iterrows():
        has_diff = "diff" in r and pd.notna(r.get("diff"))
        diff = _fmt(r["diff"], r["diff_low"], r["diff_high"]) if has_diff else "–"
        if has_diff and pd.notna(r.get("reference_probe")):
            diff += f" vs {r['reference_probe']}"
        verdict = r["verdict"] if has_diff else "–"
        value = _fmt(r["value"], r["ci_low"], r["ci_high"])
        lines.append(
            f"| {r['task']} {r['metric']} | {r['model']} | {r['probe']} | {value} | {diff} | "
            f"{verdict} |"
        )
    rivals = [m for m in RIVALS if m in set(sel["model"])]
    if rivals and "diff" in sel.columns:
        wins = win_summary(intervals, rivals)
        n = int(wins["wins_all"].sum())
        lines += [
            "",
            f"GeoJEPA wins against all of {', '.join(rivals)} (intervals excluding 0) on "
            f"**{n} of {len(wins)}** task(s): "
            + (", ".join(wins.index[wins["wins_all"]]) or "none")
            + ".",
        ]
    if by_area is not None and not by_area.empty:
        table = by_area.pivot_table(
            index=["task", "model", "probe"], columns="area", values="value", sort=False
        )
        counts = by_area.groupby(["task", "area"], sort=False)["n_test"].first()
        areas = list(table.columns)
        lines += [
            "",
            "### Per area (test rows of each dataset; val-chosen probe)\n",
            "| task | model | probe | " + " | ".join(areas) + " |",
            "|---|---|---|" + "---|" * len(areas),
        ]
        for (task, model, probe), values in table.iterrows():
            cells = [f"{v:.3f}" if pd.notna(v) else "–" for v in values]
            lines.append(f"| {task} | {model} | {probe} | " + " | ".join(cells) + " |")
        sizes = ", ".join(f"{t}/{a}: {n}" for (t, a), n in counts.items())
        lines.append(f"\nTest rows per task and area: {sizes}.")
    return "\n".join(lines) + "\n"


def report_dir(path: str | Path) -> Path:
    """The report directory, created if needed (OutputError, one line, when it cannot be)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputError(f"report location {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create report directory {out}: {exc}") from None
    return out


def write_report(
    rows: list[ResultRow],
    out_dir: str | Path,
    provenance: dict[str, Any] | None = None,
    title: str = "GeoJEPA evaluation",
    intervals: pd.DataFrame | None = None,
    by_area: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """Write ``results.csv`` (summary), ``results_per_seed.csv``, ``results.md``,
    ``results.png`` and ``provenance.json`` into ``out_dir``; returns their paths.

    With ``intervals`` (`geojepa.eval.uncertainty.bootstrap_intervals`), results.csv gains the
    95% interval columns of the headline metrics, results.md their section, and ``by_area``
    goes to ``results_by_area.csv``.
    """
    out = report_dir(out_dir)
    summary = summarize(rows)
    paths = {
        "csv": out / "results.csv",
        "per_seed": out / "results_per_seed.csv",
        "markdown": out / "results.md",
        "plot": out / "results.png",
        "provenance": out / "provenance.json",
    }
    if intervals is not None and not intervals.empty:
        keys = ["model", "probe", "task", "metric"]
        extra = [c for c in intervals.columns if c not in (*keys, "value", "n_test")]
        summary = summary.merge(intervals[keys + extra], on=keys, how="left")
    if by_area is not None and not by_area.empty:
        paths["by_area"] = out / "results_by_area.csv"
        write_atomic(paths["by_area"], lambda tmp: by_area.to_csv(tmp, index=False))
    write_atomic(paths["csv"], lambda tmp: summary.to_csv(tmp, index=False))
    write_atomic(paths["per_seed"], lambda tmp: results_frame(rows).to_csv(tmp, index=False))
    plot_results(summary, paths["plot"])
    provenance = provenance or make_provenance()
    write_json_atomic(paths["provenance"], provenance)
    seeds = sorted({row.seed for row in rows})
    text = [
        f"# {title}\n",
        f"Mean ± std over {len(seeds)} seed(s) {seeds} on the test split; probe settings chosen "
        "on val. ↓ lower is better, ↑ higher is better; best mean per column in **bold**.\n",
        markdown_table(summary),
        f"![results]({paths['plot'].name})\n",
        *(
            [uncertainty_markdown(intervals, by_area)]
            if intervals is not None and not intervals.empty
            else []
        ),
        "## Provenance\n",
        "```json\n" + json.dumps(provenance, indent=2, default=str) + "\n```\n",
    ]
    write_text_atomic(paths["markdown"], "\n".join(text))
    return paths
