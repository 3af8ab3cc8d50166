"""Metrics of the evaluation, written out in numpy so that their definition is explicit.

MAE and RMSE for counts and speeds; balanced accuracy (mean per-class recall, so a
majority-class guess scores 0.5 whatever the imbalance) and AUROC for binary tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from geojepa.errors import InputError


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


METRICS: dict[str, Metric] = {
    "mae": Metric("mae", False),
    "rmse": Metric("rmse", False),
    "balanced_accuracy": Metric("balanced_accuracy", True),
    "auroc": Metric("auroc", True),
}

#: Metrics reported per task kind; the first one is the headline of the report table.
METRICS_BY_KIND: dict[str, tuple[str, ...]] = {
    "regression": ("mae", "rmse"),
    "count": ("mae", "rmse"),
    "binary": ("auroc", "balanced_accuracy"),
}


def _pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=float).ravel()
    y_pred = np.asarray(y_pred, dtype=float).ravel()
    if y_true.shape != y_pred.shape:
        raise InputError(f"metric inputs differ in length: {y_true.size} vs {y_pred.size}")
    if y_true.size == 0:
        raise InputError("cannot compute a metric on zero samples")
    return y_true, y_pred


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute error."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Root mean squared error."""
    t, p = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((t - p) ** 2)))


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over the classes present in ``y_true`` of the fraction predicted correctly."""
    t, p = _pair(y_true, y_pred)
    recalls = [np.mean(p[t == c] == c) for c in np.unique(t)]
    return float(np.mean(recalls))


def auroc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count ½.

    NaN when ``y_true`` holds a single class (the area is undefined, not 0.5).
    """
    t, s = _pair(y_true, y_score)
    positive = t == 1
    n_pos = int(positive.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks handle ties (Mann-Whitney U)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def compute_metrics(
    kind: str, y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None = None
) -> dict[str, float]:
    """All metrics of a task kind. Binary: ``y_pred`` are 0/1 decisions, ``y_score`` scores."""
    if kind == "binary":
        score = y_pred if y_score is None else y_score
        return {
            "auroc": auroc(y_true, score),
            "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        }
    if kind in ("regression", "count"):
        return {"mae": mae(y_true, y_pred), "rmse": rmse(y_true, y_pred)}
    raise InputError(f"unknown task kind '{kind}'")
