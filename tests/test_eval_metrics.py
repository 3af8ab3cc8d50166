"""Metrics against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geojepa.errors import InputError
from geojepa.eval.metrics import auroc, balanced_accuracy, compute_metrics, mae, rmse


def test_mae_rmse_by_hand():
    y = [1.0, 2.0, 4.0, 0.0]
    p = [2.0, 2.0, 1.0, 0.0]
    # errors 1, 0, 3, 0
    assert mae(y, p) == pytest.approx(4 / 4)
    assert rmse(y, p) == pytest.approx(math.sqrt((1 + 0 + 9 + 0) / 4))


def test_balanced_accuracy_by_hand():
    y = [0, 0, 0, 0, 0, 0, 1, 1]
    p = [0, 0, 0, 0, 0, 1, 1, 0]
    # recall(0) = 5/6, recall(1) = 1/2
    assert balanced_accuracy(y, p) == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert balanced_accuracy(y, [0] * 8) == pytest.approx(0.5)


def test_auroc_by_hand_with_ties():
    y = [0, 0, 1, 1, 0, 1]
    s = [0.1, 0.4, 0.35, 0.8, 0.35, 0.9]
    # pairs (pos, neg): positives 0.35, 0.8, 0.9; negatives 0.1, 0.4, 0.35
    # 0.35: >0.1 yes, >0.4 no, =0.35 half → 1.5; 0.8: 3; 0.9: 3 → 7.5 / 9
    assert auroc(y, s) == pytest.approx(7.5 / 9)
    assert auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert auroc([1, 0], [0.9, 0.1]) == pytest.approx(1.0)
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))


def test_auroc_matches_sklearn_on_random_data():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # rounding creates ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_compute_metrics_by_kind_and_errors():
    assert set(compute_metrics("count", [1, 2], [1, 3])) == {"mae", "rmse"}
    binary = compute_metrics("binary", [0, 1], [0, 1], [0.2, 0.7])
    assert binary == {"auroc": 1.0, "balanced_accuracy": 1.0}
    with pytest.raises(InputError):
        mae([1, 2], [1])
    with pytest.raises(InputError):
        mae([], [])
    with pytest.raises(InputError):
        compute_metrics("ranking", [1], [1])
