"""Intervals that include the data: a paired bootstrap over the test split's spatial blocks.

Seed-to-seed spread only covers a probe's initialisation; with a few hundred test tiles (21
positive `car_bridge` tiles in one re-run) the test sample itself moves the numbers more. The
test rows are resampled **by block** (the z14 blocks of the split: neighbouring tiles are not
independent), with replacement, ``n_boot`` times; each resample is one weight per test row (how
often its block was drawn), the same weights for every model, so a difference between two
models is bootstrapped *paired*. A model's value in a resample is its headline metric (MAE;
AUROC for binary tasks) averaged over its seeds. Intervals are the 2.5 and 97.5 percentiles.

A model counts as a **win** for GeoJEPA only when the interval of its difference to GeoJEPA
excludes zero on GeoJEPA's side.

Each model is represented by the probe with its best mean **val** score (never chosen on test);
every (model, probe) row also gets its own interval and its difference to GeoJEPA's same probe
(or to GeoJEPA's val-chosen probe when GeoJEPA has no such probe, e.g. ``dummy``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from geojepa.constants import REGIONS_INDEX
from geojepa.eval.metrics import METRICS, METRICS_BY_KIND
from geojepa.eval.probes import ResultRow
from geojepa.eval.tasks import TASKS

REFERENCE = "geojepa"


def block_weights(blocks: np.ndarray, n_boot: int, seed: int = 0) -> np.ndarray:
    """[n_boot, n_rows] weights: how often each row's block is drawn in each block resample."""
    codes, uniques = pd.factorize(np.asarray(blocks, dtype=object))
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(uniques), size=(n_boot, len(uniques)))
    per_block = np.stack([np.bincount(d, minlength=len(uniques)) for d in drawn])
    return per_block[:, codes].astype(np.float64)


def weighted_mae(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> np.ndarray:
    """MAE under each row of weights ``w`` [B, n] -> [B]."""
    return (w @ np.abs(y - pred)) / w.sum(1)


def weighted_auroc(y: np.ndarray, score: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUROC (ties count ½) under each row of weights ``w`` [B, n] -> [B]; NaN if a class
    has zero weight."""
    import scipy.sparse as sp

    groups, inverse = np.unique(score, return_inverse=True)  # ascending distinct scores
    pos = (y == 1).astype(np.float64)
    one_hot = sp.csr_matrix(
        (np.ones(len(score)), (np.arange(len(score)), inverse)), shape=(len(score), len(groups))
    )
    w_pos = np.asarray((one_hot.T @ (w * pos).T).T)  # [B, G] positive weight at each score
    w_neg = np.asarray((one_hot.T @ (w * (1 - pos)).T).T)
    below = np.cumsum(w_neg, axis=1) - w_neg  # negative weight strictly below each score
    pairs = (w_pos * (below + 0.5 * w_neg)).sum(1)
    total = w_pos.sum(1) * w_neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, pairs / np.where(total > 0, total, 1), np.nan)


def _headline(task: str) -> str:
    return METRICS_BY_KIND[TASKS[task].kind][0]


def _resampled(rows: Sequence[ResultRow], index: pd.Index, y: np.ndarray, w: np.ndarray):
    """[B] headline metric of ``rows`` (one per seed) averaged over seeds, on rows ``index``."""
    metric = _headline(rows[0].task)
    values, done = [], {}
    for row in rows:
        out = row.test_output
        if not row.test_index.equals(index):
            out = pd.Series(out, index=row.test_index).reindex(index).to_numpy()
        key = out.tobytes()  # deterministic probes repeat one output over the seeds
        if key not in done:
            done[key] = weighted_mae(y, out, w) if metric == "mae" else weighted_auroc(y, out, w)
        values.append(done[key])
    return np.mean(values, axis=0), metric


def _ci(samples: np.ndarray) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return np.nan, np.nan
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return float(lo), float(hi)


def selected_probes(rows: Sequence[ResultRow]) -> dict[tuple[str, str], str]:
    """(task, model) -> the model's probe with the best mean val score (ties: first listed)."""
    frame = pd.DataFrame(
        {"task": r.task, "model": r.model, "probe": r.probe, "val": r.val_score} for r in rows
    )
    mean = frame.groupby(["task", "model", "probe"], sort=False)["val"].mean().reset_index()
    mean["val"] = mean["val"].fillna(-np.inf)  # dummy probes without a val score come last
    best = mean.loc[mean.groupby(["task", "model"], sort=False)["val"].idxmax()]
    return {(t, m): p for t, m, p in zip(best["task"], best["model"], best["probe"], strict=True)}


def bootstrap_intervals(
    rows: Sequence[ResultRow],
    split: pd.DataFrame,
    n_boot: int = 1000,
    seed: int = 0,
    areas: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(intervals, by_area) for the headline metric of every task, model and probe.

    ``intervals``: task, metric, model, probe, selected (the model's val-chosen probe), value
    (mean over seeds on the whole test split), ci_low/ci_high, reference probe of GeoJEPA,
    diff = value − GeoJEPA's, diff_low/diff_high, and ``verdict``: "win" (GeoJEPA better,
    interval excludes 0), "loss" (GeoJEPA worse, excludes 0), "tie", or None where the metric
    is undefined (a test split with one class has no AUROC). ``by_area``: task,
    area, model, probe (selected ones), value, n_test, from ``areas`` (region_id -> area).
    """
    block_of = pd.Series(split["block_id"].to_numpy(), index=split[REGIONS_INDEX].to_numpy())
    chosen = selected_probes([r for r in rows if r.test_output is not None])
    records, area_records = [], []
    by_task: dict[str, list[ResultRow]] = {}
    for row in rows:
        if row.test_output is not None:
            by_task.setdefault(row.task, []).append(row)
    for task, task_rows in by_task.items():
        index, y = task_rows[0].test_index, task_rows[0].test_y
        regions = index.get_level_values(REGIONS_INDEX) if index.nlevels > 1 else index
        w = block_weights(
            block_of.reindex(np.asarray(regions, dtype=object)).to_numpy(), n_boot, seed
        )
        full = np.ones((1, len(y)))
        groups: dict[tuple[str, str], list[ResultRow]] = {}
        for row in task_rows:
            groups.setdefault((row.model, row.probe), []).append(row)
        samples, values = {}, {}
        for key, group in groups.items():
            samples[key], metric = _resampled(group, index, y, w)
            values[key] = float(_resampled(group, index, y, full)[0][0])
        higher = METRICS[metric].higher_is_better
        ref_default = chosen.get((task, REFERENCE))
        for (model, probe), s in samples.items():
            lo, hi = _ci(s)
            selected = chosen.get((task, model)) == probe
            record = {
                "task": task, "metric": metric, "model": model, "probe": probe,
                "selected": selected, "value": values[(model, probe)],
                "ci_low": lo, "ci_high": hi, "n_test": len(y),
            }  # fmt: skip
            # a model's val-chosen probe meets GeoJEPA's val-chosen one (best against best);
            # any other probe meets GeoJEPA's same probe (like against like)
            same = (REFERENCE, probe) in samples and not selected
            ref = probe if same else ref_default
            if ref is not None and model != REFERENCE:
                d = s - samples[(REFERENCE, ref)]
                d_lo, d_hi = _ci(d)
                better = d_hi < 0 if higher else d_lo > 0  # GeoJEPA's side of zero
                worse = d_lo > 0 if higher else d_hi < 0
                record.update(
                    reference_probe=ref, diff=values[(model, probe)] - values[(REFERENCE, ref)],
                    diff_low=d_lo, diff_high=d_hi,
                    verdict=None if np.isnan(d_lo) else "win" if better else "loss" if worse
                    else "tie",
                )  # fmt: skip
            records.append(record)
        if areas is not None:
            area = pd.Series(areas).reindex(np.asarray(regions, dtype=object)).to_numpy()
            for name in pd.unique(area):
                mask = (area == name)[None, :].astype(float)
                for (model, probe), group in groups.items():
                    if chosen.get((task, model)) != probe:
                        continue
                    value = float(_resampled(group, index, y, mask)[0][0])
                    area_records.append({
                        "task": task, "area": name, "model": model, "probe": probe,
                        "metric": metric, "value": value, "n_test": int(mask.sum()),
                    })  # fmt: skip
    return pd.DataFrame.from_records(records), pd.DataFrame.from_records(area_records)


def win_summary(intervals: pd.DataFrame, against: Sequence[str]) -> pd.DataFrame:
    """Per task: GeoJEPA's (val-chosen probe) verdict against each model of ``against``
    (val-chosen probes), and whether it wins against all of them."""
    sel = intervals[intervals["selected"] & intervals["model"].isin(against)]
    table = sel.pivot_table(index="task", columns="model", values="verdict", aggfunc="first")
    table = table.reindex(columns=[m for m in against if m in table.columns])
    table["wins_all"] = (table == "win").all(axis=1)
    return table
