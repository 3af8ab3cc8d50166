"""Probe protocol: val-only selection, test once, seeds, dummy, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from geojepa.errors import InputError
from geojepa.eval.metrics import mae
from geojepa.eval.probes import ProbeConfig, embedding_features, evaluate_embeddings
from geojepa.eval.split import SplitConfig, make_split
from geojepa.eval.tasks import TASKS

IDS = [f"17/{x}/{y}" for x in range(32) for y in range(24)]
FAST = ProbeConfig(
    ridge_alphas=(0.1, 10.0, 1000.0),
    logistic_cs=(0.01, 1.0),
    mlp_hidden=(16,),
    mlp_weight_decays=(0.01,),
    mlp_lr=0.01,
    mlp_max_epochs=30,
    mlp_patience=3,
)


@pytest.fixture(scope="module")
def split() -> pd.DataFrame:
    return make_split(IDS, SplitConfig(block_zoom=15))


@pytest.fixture(scope="module")
def features() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(rng.normal(size=(len(IDS), 8)), index=pd.Index(IDS, name="region_id"))


def _count_labels(X: pd.DataFrame) -> pd.Series:
    return pd.Series(np.maximum(0, np.round(3 * X[0] + X[1] + 3)), index=X.index)


def test_regression_probes_beat_dummy(features, split):
    labels = _count_labels(features)
    rows = evaluate_embeddings(
        features,
        labels,
        split,
        TASKS["building_count"],
        seeds=[0, 1],
        probes=["dummy", "linear", "mlp"],
        model="toy",
        config=FAST,
    )
    assert [(r.probe, r.seed) for r in rows] == [
        ("dummy", 0),
        ("dummy", 1),
        ("linear", 0),
        ("linear", 1),
        ("mlp", 0),
        ("mlp", 1),
    ]
    by = {(r.probe, r.seed): r for r in rows}
    assert by["linear", 0].metrics["mae"] < 0.5 * by["dummy", 0].metrics["mae"]
    assert by["mlp", 0].metrics["mae"] < by["dummy", 0].metrics["mae"]
    assert by["linear", 0].params["alpha"] in FAST.ridge_alphas
    assert 1 <= by["mlp", 0].params["epochs"] <= FAST.mlp_max_epochs
    sizes = {(r.n_train, r.n_val, r.n_test) for r in rows}
    assert sizes == {tuple((split["split"] == s).sum() for s in ("train", "val", "test"))}
    assert all(r.model == "toy" and r.task == "building_count" for r in rows)


def test_dummy_is_train_median(features, split):
    labels = _count_labels(features)
    rows = evaluate_embeddings(
        features.iloc[:, :0],
        labels,
        split,
        TASKS["building_count"],
        seeds=[0],
        probes=["linear", "mlp"],
    )
    assert [r.probe for r in rows] == ["dummy"]  # no columns: only the dummy probe runs
    is_split = split.set_index("region_id")["split"].reindex(labels.index)
    median = labels[is_split == "train"].median()
    test = labels[is_split == "test"]
    assert rows[0].metrics["mae"] == pytest.approx(mae(test, np.full(len(test), median)))


def test_selection_never_looks_at_test(features, split):
    """Scrambling the test labels changes test scores only, never what was chosen."""
    labels = _count_labels(features)
    is_test = (split.set_index("region_id")["split"].reindex(labels.index) == "test").to_numpy()
    scrambled = labels.copy()
    scrambled[is_test] = np.random.default_rng(1).permutation(labels[is_test].to_numpy()) + 7
    task = TASKS["building_count"]
    a = evaluate_embeddings(features, labels, split, task, [0], ["linear", "mlp"], config=FAST)
    b = evaluate_embeddings(features, scrambled, split, task, [0], ["linear", "mlp"], config=FAST)
    for ra, rb in zip(a, b, strict=True):
        assert ra.params == rb.params
        assert ra.val_score == rb.val_score
        assert ra.metrics["mae"] != rb.metrics["mae"]


def test_val_choice_changes_with_val_labels(features, split):
    """Selection does use val: if val labels become noise, strong regularisation wins."""
    labels = _count_labels(features)
    is_val = (split.set_index("region_id")["split"].reindex(labels.index) == "val").to_numpy()
    noisy = labels.copy()
    noisy[is_val] = labels[~is_val].median()
    task = TASKS["building_count"]
    clean = evaluate_embeddings(features, labels, split, task, [0], ["linear"], config=FAST)
    flat = evaluate_embeddings(features, noisy, split, task, [0], ["linear"], config=FAST)
    assert clean[0].params["alpha"] == 0.1
    assert flat[0].params["alpha"] == 1000.0


def test_mlp_seeds_differ_and_repeat(features, split):
    labels = _count_labels(features)
    task = TASKS["building_count"]
    a = evaluate_embeddings(features, labels, split, task, [0, 1], ["mlp"], config=FAST)
    b = evaluate_embeddings(features, labels, split, task, [0], ["mlp"], config=FAST)
    assert a[0].metrics == b[0].metrics
    assert a[0].metrics != a[1].metrics


def test_binary_probes(features, split):
    labels = (features[0] + 0.3 * features[1] > 0.8).astype(int)
    rows = evaluate_embeddings(
        features, labels, split, TASKS["bridge"], [0], ["dummy", "linear", "mlp"], config=FAST
    )
    by = {r.probe: r.metrics for r in rows}
    assert by["dummy"] == {"auroc": 0.5, "balanced_accuracy": 0.5}
    assert by["linear"]["auroc"] > 0.9
    assert by["linear"]["balanced_accuracy"] > 0.8
    assert by["mlp"]["auroc"] > 0.8


def test_binary_without_positive_in_train(features, split):
    is_train = split.set_index("region_id")["split"].reindex(features.index) == "train"
    labels = pd.Series((~is_train).astype(int).to_numpy(), index=features.index)
    with pytest.raises(InputError, match="no positive label in the train"):
        evaluate_embeddings(features, labels, split, TASKS["bridge"], [0], config=FAST)


def test_sparse_features(features, split):
    labels = _count_labels(features)
    sparse = features.clip(lower=0).astype(pd.SparseDtype(float, 0.0))
    rows = evaluate_embeddings(
        sparse, labels, split, TASKS["building_count"], [0], ["linear", "mlp"], config=FAST
    )
    assert all(np.isfinite(r.metrics["mae"]) for r in rows)


def test_bad_inputs(features, split):
    labels = _count_labels(features)
    task = TASKS["building_count"]
    with pytest.raises(InputError, match="have no features"):
        evaluate_embeddings(features.iloc[5:], labels, split, task, [0], config=FAST)
    broken = features.copy()
    broken.iloc[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        evaluate_embeddings(broken, labels, split, task, [0], config=FAST)
    with pytest.raises(InputError, match="unknown probe"):
        evaluate_embeddings(features, labels, split, task, [0], ["svm"])
    with pytest.raises(InputError, match="not in the split"):
        evaluate_embeddings(features, labels, split.iloc[10:], task, [0], config=FAST)


def test_entity_task_drops_ways_shared_across_splits(split):
    by_split = {s: split.loc[split["split"] == s, "region_id"].tolist() for s in split["split"]}
    rows, values = [], []
    for s, tiles in by_split.items():
        for i, tile in enumerate(tiles[:20]):
            rows.append((tile, f"way/{s}{i}"))
            values.append(float(i % 5) * 10 + 30)
    rows.append((by_split["test"][0], "way/train0"))  # way/train0 also clipped into a test tile
    values.append(30.0)
    index = pd.MultiIndex.from_tuples(rows, names=["region_id", "feature_id"])
    labels = pd.Series(values, index=index)
    X = pd.DataFrame(
        {"f": labels.to_numpy() + np.random.default_rng(0).normal(size=len(labels))}, index=index
    )
    out = evaluate_embeddings(X, labels, split, TASKS["road_speed"], [0], ["linear"], config=FAST)
    assert (out[0].n_train, out[0].n_val, out[0].n_test) == (19, 20, 20)
    assert out[0].metrics["mae"] < 2.0


def test_embedding_features_from_embed_tables():
    import geopandas as gpd
    import shapely

    tiles = gpd.GeoDataFrame(
        {"emb_0": [1.0, 2.0], "emb_1": [3.0, 4.0], "n_entities": [3, 70]},
        geometry=[shapely.Point(0, 0)] * 2,
        index=pd.Index(["17/1/1", "17/1/2"], name="region_id"),
        crs="EPSG:4326",
    )
    X = embedding_features(tiles)  # n_entities is not the model's output: it must not enter
    assert list(X.columns) == ["emb_0", "emb_1"] and X.index.name == "region_id"
    entities = pd.DataFrame(
        {"region_id": ["17/1/1", "17/1/2"], "emb_0": [1.0, 2.0], "n_tags": [1, 2]},
        index=pd.Index(["way/1", "way/1"], name="feature_id"),
    )
    E = embedding_features(entities, level="entity")
    assert list(E.index) == [("17/1/1", "way/1"), ("17/1/2", "way/1")]
    assert E.index.names == ["region_id", "feature_id"] and list(E.columns) == ["emb_0"]
    with pytest.raises(InputError):
        embedding_features(entities.drop(columns="region_id"), level="entity")
    with pytest.raises(InputError, match="no embedding columns"):
        embedding_features(tiles[["n_entities"]])


# ------------------------------------------------------------------ probes fit for the metric


def test_l1_probes_aim_at_the_median(features, split):
    """30% of rows carry a +50 outlier: the mean (what squared error fits) is a poor MAE
    guess; the L1 probes fit the median and score a clearly lower MAE than their twins."""
    rng = np.random.default_rng(1)
    outlier = 50 * (rng.random(len(IDS)) < 0.3)
    labels = 3 * features[0] + outlier + 0.1 * rng.normal(size=len(IDS))
    rows = evaluate_embeddings(
        features, labels, split, TASKS["max_speed"], seeds=[0],
        probes=["dummy", "linear", "mlp", "linear_l1", "mlp_l1"], config=FAST,
    )  # fmt: skip
    score = {r.probe: r.metrics["mae"] for r in rows}
    assert score["linear_l1"] < 0.85 * score["linear"], score
    assert score["mlp_l1"] < 0.92 * score["mlp"], score
    assert score["linear_l1"] < score["dummy"], score
    assert rows[-1].params["hidden"] == 16 and "hidden" not in rows[-2].params


def test_poisson_probe_predicts_the_median_count(features, split):
    """Counts from a Poisson law with a log-linear rate: the Poisson GLM fits it, predicts
    whole numbers (the median of the fitted law) and beats the squared-error probes."""
    rng = np.random.default_rng(1)
    y = rng.poisson(np.exp(1.5 * features[0].to_numpy()))
    labels = pd.Series(y, index=features.index)
    rows = evaluate_embeddings(
        features, labels, split, TASKS["traffic_signals"], seeds=[0],
        probes=["dummy", "linear", "mlp", "poisson"], config=FAST,
    )  # fmt: skip
    score = {r.probe: r.metrics["mae"] for r in rows}
    assert score["poisson"] < 0.7 * min(score["linear"], score["mlp"], score["dummy"]), score
    out = rows[-1].test_output
    assert np.array_equal(out, np.round(out)) and len(out) == rows[-1].n_test  # a median count


def test_metric_probes_are_skipped_where_they_do_not_apply(features, split):
    labels = pd.Series((features[0] > 0).astype(int), index=features.index)
    rows = evaluate_embeddings(
        features, labels, split, TASKS["bridge"], seeds=[0],
        probes=["linear", "linear_l1", "mlp_l1", "poisson"], config=FAST,
    )  # fmt: skip
    assert [r.probe for r in rows] == ["linear"]
    rows = evaluate_embeddings(
        features, _count_labels(features).astype(float), split, TASKS["max_speed"], seeds=[0],
        probes=["linear_l1", "poisson"], config=FAST,
    )  # fmt: skip
    assert [r.probe for r in rows] == ["linear_l1"]  # poisson is for counts only


def test_poisson_probe_does_not_explode_on_a_rare_feature(split):
    """A tag seen on two train tiles (with big counts) and 60 times on some val/test tiles:
    exp() of the linear predictor overflowed (NaN on the real benchmark); predictions are
    capped at twice the largest train count."""
    from geojepa.eval.split import assign_split

    names = assign_split(pd.Index(IDS, name="region_id"), split).to_numpy()
    rng = np.random.default_rng(0)
    x = np.zeros((len(IDS), 3))
    x[:, 0] = rng.poisson(2, len(IDS))
    y = rng.poisson(np.exp(0.3 * x[:, 0]))
    train, other = np.flatnonzero(names == "train"), np.flatnonzero(names != "train")
    x[train[:2], 1], y[train[:2]] = 1.0, 40
    x[other[:5], 1] = 60.0
    X = pd.DataFrame(x, index=pd.Index(IDS, name="region_id"))
    X = X.astype(pd.SparseDtype(float, 0.0))
    rows = evaluate_embeddings(
        X, pd.Series(y, index=X.index), split, TASKS["traffic_signals"], seeds=[0],
        probes=["poisson"], config=FAST,
    )  # fmt: skip
    assert np.isfinite(rows[0].val_score) and rows[0].metrics["mae"] < 10, rows[0].metrics
    assert rows[0].test_output.max() <= 2 * y[train].max() + 1


def test_iterative_fits_record_convergence_instead_of_warning(features, split):
    """lbfgs that stops at its cap is a recorded fact (``converged`` False), never a printed
    ConvergenceWarning block."""
    import warnings

    labels = _count_labels(features)
    capped = FAST.replace(poisson_alphas=(1e-4,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        poisson = evaluate_embeddings(
            features, labels, split, TASKS["building_count"], [0], ["poisson"], config=capped
        )
    assert poisson[0].params["converged"] is True and poisson[0].params["n_iter"] >= 1
    binary = pd.Series((features[0] > 0).astype(float), index=features.index)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = _logistic_at_cap(features, binary, split)
    assert rows[0].params["converged"] is False and rows[0].params["n_iter"] == 1


def _logistic_at_cap(features, labels, split):
    """The logistic probe with sklearn's iteration cap at 1: it cannot converge."""
    from unittest import mock

    from sklearn.linear_model import LogisticRegression

    from geojepa.eval import probes

    def one_iteration(**kwargs):
        return LogisticRegression(**{**kwargs, "max_iter": 1})

    with mock.patch.object(probes, "LogisticRegression", one_iteration):
        return evaluate_embeddings(
            features, labels, split, TASKS["bridge"], [0], ["linear"], config=FAST
        )


def test_sklearn_probes_fit_on_one_thread(features, split, monkeypatch):
    """BLAS/OpenMP pools are capped at ``sklearn_threads`` while sklearn probes fit: their
    default pools spin-waited ~100× slower on a busy machine (one demo task took 11 min)."""
    from threadpoolctl import threadpool_info

    from geojepa.eval import probes

    seen: list[int] = []
    real = probes._run_poisson

    def spy(data, config):
        seen.append(max(pool["num_threads"] for pool in threadpool_info()))
        return real(data, config)

    monkeypatch.setattr(probes, "_run_poisson", spy)
    labels = _count_labels(features)
    evaluate_embeddings(features, labels, split, TASKS["building_count"], [0], ["poisson"],
                        config=FAST)  # fmt: skip
    assert seen == [1]
