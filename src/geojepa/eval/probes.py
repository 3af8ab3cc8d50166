"""Probes on frozen features with an honest protocol.

Fit on **train**, choose every hyper-parameter (regularisation, MLP width/weight decay, number of
epochs by early stopping) on **val**, then score **test once** with the model that was chosen —
the one fit on train; it is *not* refit on train+val, because the epoch count chosen by early
stopping does not carry over to a larger training set and the scored model should be exactly the
selected one. Repeat over seeds and report mean ± std. Standardisation is fit on train only.

Probes:
- ``dummy``: train median (regression/count) or train majority class (binary); ignores X.
- ``linear``: ridge (regression/count) or class-balanced logistic regression (binary), strength
  chosen on val. Deterministic: computed once and reported for every seed (std 0).
- ``mlp``: one hidden layer (torch), Huber loss on standardised targets or class-balanced BCE,
  AdamW; width and weight decay chosen on val, epochs by early stopping on val; seeded.

Probes fit for the metric (regression and count tasks only, skipped on binary ones): MAE is the
score, and a squared-error fit of a zero-inflated count aims at the mean, which MAE punishes
(the train median beat both probes above on such a task). So:

- ``linear_l1`` / ``mlp_l1``: the same linear map / MLP trained with the **L1** loss (it aims
  at the conditional median, the MAE-optimal prediction); weight decay and epochs on val.
- ``poisson``: a Poisson GLM (log link; strength chosen on val) for count tasks, predicting the
  **median** of the fitted Poisson law (the MAE-optimal point of that law).

The iterative sklearn fits (logistic, Poisson) record ``n_iter`` and ``converged`` in their
``params`` instead of printing ConvergenceWarning blocks; they run on ``sklearn_threads``
BLAS/OpenMP threads (one by default): on a busy 2-core machine, sklearn's multi-threaded Poisson
loss spin-waited ~100× slower than one thread (6.5 s against 0.08 s for five fits of 200 × 128;
one demo task took 11 minutes).

Binary decisions use threshold 0.5 on the class-balanced models (no threshold tuning). Count
predictions are clipped at 0. Selection criterion on val: MAE (regression/count); AUROC
(binary), or log-loss when val holds a single class.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, PoissonRegressor, Ridge
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from geojepa.config import Config
from geojepa.constants import REGIONS_INDEX
from geojepa.errors import InputError
from geojepa.eval.metrics import auroc, compute_metrics, mae
from geojepa.eval.split import SPLITS, assign_split, drop_shared_entities
from geojepa.eval.tasks import Task

if TYPE_CHECKING:
    import torch

PROBES = ("dummy", "linear", "mlp", "linear_l1", "mlp_l1", "poisson")

#: Probes that apply to some task kinds only (the others are skipped on other kinds).
PROBE_KINDS: dict[str, frozenset[str]] = {
    "linear_l1": frozenset({"regression", "count"}),
    "mlp_l1": frozenset({"regression", "count"}),
    "poisson": frozenset({"count"}),
}


def probe_applies(probe: str, kind: str) -> bool:
    """Whether ``probe`` is run on a task of ``kind``."""
    return kind in PROBE_KINDS.get(probe, frozenset({kind}))


class ProbeConfig(Config):
    """Hyper-parameter grids (all chosen on val) and MLP training settings."""

    ridge_alphas: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
    logistic_cs: tuple[float, ...] = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0)
    mlp_hidden: tuple[int, ...] = (64, 256)
    mlp_weight_decays: tuple[float, ...] = (0.0001, 0.01)
    mlp_lr: float = 0.001
    mlp_batch_size: int = 256
    mlp_max_epochs: int = 200
    poisson_alphas: tuple[float, ...] = (0.0001, 0.001, 0.01, 0.1, 1.0)
    mlp_patience: int = 10
    #: torch threads while training probe MLPs: their batches are tiny, and several intra-op
    #: threads on a busy machine were measured 30× slower than one (0 = leave torch's setting)
    mlp_threads: int = 1
    #: BLAS/OpenMP threads while fitting the sklearn probes (ridge, logistic, Poisson): one
    #: was ~100× faster than two on a busy 2-core machine (0 = leave the libraries' setting)
    sklearn_threads: int = 1


@dataclass
class ResultRow:
    """One probe's test scores for one model, task and seed."""

    model: str
    task: str
    probe: str
    seed: int
    metrics: dict[str, float]
    params: dict[str, Any] = field(default_factory=dict)
    val_score: float = math.nan
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    #: test rows' index, labels and the model's output on them (prediction; the positive-class
    #: score for binary tasks), for intervals over the data (not written to the CSV files)
    test_index: pd.Index | None = field(default=None, repr=False)
    test_y: np.ndarray | None = field(default=None, repr=False)
    test_output: np.ndarray | None = field(default=None, repr=False)


#: ResultRow fields that hold per-row arrays, not summary numbers.
ARRAY_FIELDS = ("test_index", "test_y", "test_output")


def row_record(row: ResultRow) -> dict[str, Any]:
    """A ResultRow's summary fields as a dict (the per-row arrays left out)."""
    return {f.name: getattr(row, f.name) for f in fields(row) if f.name not in ARRAY_FIELDS}


@dataclass
class _Data:
    x: dict[str, np.ndarray | sp.csr_matrix]
    y: dict[str, np.ndarray]
    kind: str
    test_index: pd.Index | None = None


@dataclass
class _Fit:
    """One fitted probe: its test metrics, chosen settings, val score and test output."""

    metrics: dict[str, float]
    params: dict[str, Any]
    val_score: float
    output: np.ndarray


def evaluate_embeddings(
    X: pd.DataFrame,
    labels: pd.Series,
    split: pd.DataFrame | pd.Series,
    task: Task,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    probes: Sequence[str] = ("linear", "mlp"),
    model: str = "model",
    config: ProbeConfig | None = None,
) -> list[ResultRow]:
    """Score features ``X`` on ``task`` with each probe and seed; one ResultRow per pair.

    ``X`` is indexed like ``labels`` (``region_id``, or ``region_id``/``feature_id`` for entity
    tasks) and may hold extra rows; every labelled row must be present. ``split`` is a saved
    split table (``region_id, block_id, split``) or a Series of split names aligned to
    ``labels``. For entity tasks, entities with clips in several splits are dropped. ``X`` with
    no columns (the dummy baseline) runs only the ``dummy`` probe.
    """
    config = config or ProbeConfig()
    unknown = [p for p in probes if p not in PROBES]
    if unknown:
        raise InputError(f"unknown probe(s) {unknown} (known: {', '.join(PROBES)})")
    if len(seeds) == 0:
        raise InputError("at least one seed is needed")
    data = _prepare(X, labels, split, task)
    probes = ("dummy",) if X.shape[1] == 0 else tuple(probes)
    probes = tuple(p for p in probes if probe_applies(p, task.kind))
    rows: list[ResultRow] = []
    sizes = {f"n_{name}": len(data.y[name]) for name in SPLITS}
    for probe in probes:
        cached: _Fit | None = None
        for seed in seeds:
            if probe in ("mlp", "mlp_l1", "linear_l1"):
                fit = _run_mlp(data, config, seed, probe)
            else:  # deterministic: fit once, same numbers for every seed
                if cached is None:
                    runner = {"dummy": _run_dummy, "linear": _run_linear, "poisson": _run_poisson}
                    with _sklearn_threads(config.sklearn_threads):
                        cached = runner[probe](data, config)
                fit = cached
            rows.append(
                ResultRow(
                    model,
                    task.name,
                    probe,
                    int(seed),
                    dict(fit.metrics),
                    dict(fit.params),
                    fit.val_score,
                    **sizes,
                    test_index=data.test_index,
                    test_y=data.y["test"],
                    test_output=fit.output,
                )
            )
    return rows


def embedding_features(frame: pd.DataFrame, level: str = "tile") -> pd.DataFrame:
    """The numeric ``X`` of an embeddings table as written by ``geojepa embed``.

    Tile embeddings: index ``region_id``. Entity embeddings: index ``feature_id`` and a
    ``region_id`` column → index (``region_id``, ``feature_id``). Only the embedding columns
    (``emb_*``) are kept: other numeric columns, such as a tile's ``n_entities``, are not the
    model's output and would leak into the probe.
    """
    from geojepa.embed import EMBEDDING_PREFIX  # lazy: geojepa.embed imports torch

    if level == "entity":
        if REGIONS_INDEX not in frame.columns:
            raise InputError("entity embeddings need a 'region_id' column")
        frame = frame.set_index(REGIONS_INDEX, append=True).swaplevel(0, 1)
        frame.index = frame.index.set_names([REGIONS_INDEX, "feature_id"])
    elif level != "tile":
        raise InputError(f"level must be 'tile' or 'entity', got {level!r}")
    columns = [c for c in frame.columns if str(c).startswith(EMBEDDING_PREFIX)]
    if not columns:
        raise InputError(f"the embeddings table has no embedding columns ({EMBEDDING_PREFIX}*)")
    return pd.DataFrame(frame[columns].astype(np.float64))


# --------------------------------------------------------------------------------------------
# Data preparation


def _prepare(X: pd.DataFrame, labels: pd.Series, split, task: Task) -> _Data:
    if labels.empty:
        raise InputError(f"task {task.name} has no labelled rows")
    if isinstance(split, pd.DataFrame):
        names = assign_split(labels.index, split)
    else:
        names = split.reindex(labels.index)
        if names.isna().any():
            raise InputError(f"{int(names.isna().sum())} labelled row(s) have no split")
    if task.level == "entity":
        names = drop_shared_entities(names)
    labels = labels.loc[names.index]
    if X.index.has_duplicates:
        raise InputError("feature table has duplicate index entries")
    positions = X.index.get_indexer(labels.index)
    missing = positions < 0
    if missing.any():
        raise InputError(
            f"{int(missing.sum())} labelled row(s) of task {task.name} have no features "
            f"(e.g. {labels.index[missing][0]}); embeddings are incomplete"
        )
    matrix = _matrix(X)[positions]  # row selection on the array: pandas sparse .loc is slow
    x, y = {}, {}
    test_index = None
    for name in SPLITS:
        rows = np.flatnonzero(names.to_numpy() == name)
        if len(rows) == 0:
            raise InputError(f"task {task.name}: the {name} split has no labelled rows")
        x[name] = matrix[rows]
        y[name] = labels.to_numpy(dtype=float)[rows]
        if name == "test":
            test_index = labels.index[rows]
    if task.kind == "binary":
        present = set(np.unique(y["train"]).tolist())
        if 1.0 not in present:
            raise InputError(f"task {task.name}: no positive label in the train split")
        if 0.0 not in present:
            raise InputError(f"task {task.name}: no negative label in the train split")
    return _Data(x, y, task.kind, test_index)


def _matrix(X: pd.DataFrame) -> np.ndarray | sp.csr_matrix:
    """Features as float64: CSR if every column is sparse, dense otherwise; InputError on NaN."""
    if X.shape[1] > 0 and all(isinstance(t, pd.SparseDtype) for t in X.dtypes):
        matrix = sp.csr_matrix(X.sparse.to_coo(), dtype=np.float64)
        values = matrix.data
    else:
        matrix = X.to_numpy(dtype=np.float64)
        values = matrix
    if not np.isfinite(values).all():
        raise InputError("features contain NaN or infinite values")
    return matrix


def _standardise(data: _Data) -> dict[str, np.ndarray | sp.csr_matrix]:
    sparse = sp.issparse(data.x["train"])
    scaler = StandardScaler(with_mean=not sparse).fit(data.x["train"])
    return {name: scaler.transform(data.x[name]) for name in SPLITS}


def _finish(
    data: _Data, pred: np.ndarray, score: np.ndarray | None, params: dict, val: float
) -> _Fit:
    """Test metrics of a prediction (counts clipped at 0; binary: decision + score)."""
    if data.kind == "count":
        pred = np.maximum(pred, 0.0)
    metrics = compute_metrics(data.kind, data.y["test"], pred, score)
    return _Fit(metrics, params, val, np.asarray(score if score is not None else pred, float))


def _binary_val_score(y: np.ndarray, prob: np.ndarray) -> float:
    """Higher is better: AUROC, or minus log-loss when val holds one class."""
    if len(np.unique(y)) == 2:
        return auroc(y, prob)
    p = np.clip(prob, 1e-7, 1 - 1e-7)
    return float(np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


# --------------------------------------------------------------------------------------------
# Probes


@contextmanager
def _sklearn_threads(threads: int) -> Iterator[None]:
    """Cap BLAS/OpenMP threads (``threads`` 0: leave them) for small sklearn fits."""
    if threads <= 0:
        yield
        return
    with threadpool_limits(limits=threads):
        yield


def _fit_quietly(estimator: Any, x: Any, y: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """Fit an iterative estimator; its iterations and whether it converged, not a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(x, y)
    n_iter = int(np.max(estimator.n_iter_))
    return estimator, {"n_iter": n_iter, "converged": n_iter < estimator.max_iter}


def _run_dummy(data: _Data, config: ProbeConfig) -> _Fit:
    n = len(data.y["test"])
    if data.kind == "binary":
        rate = float(np.mean(data.y["train"]))
        majority = float(rate > 0.5)
        return _finish(
            data, np.full(n, majority), np.full(n, rate), {"constant": majority}, math.nan
        )
    median = float(np.median(data.y["train"]))
    val = -mae(data.y["val"], np.full(len(data.y["val"]), median))
    return _finish(data, np.full(n, median), None, {"constant": median}, val)


def _run_linear(data: _Data, config: ProbeConfig) -> _Fit:
    x = _standardise(data)
    best: tuple[float, Any, Any] | None = None
    if data.kind == "binary":
        for c in config.logistic_cs:
            clf, fitted = _fit_quietly(
                LogisticRegression(C=c, class_weight="balanced", max_iter=2000),
                x["train"], data.y["train"],
            )  # fmt: skip
            score = _binary_val_score(data.y["val"], clf.predict_proba(x["val"])[:, 1])
            if best is None or score > best[0]:
                best = (score, {"C": c, **fitted}, clf)
        score, params, clf = best
        prob = clf.predict_proba(x["test"])[:, 1]
        return _finish(data, (prob >= 0.5).astype(float), prob, params, score)
    for alpha in config.ridge_alphas:
        reg = Ridge(alpha=alpha).fit(x["train"], data.y["train"])
        pred = reg.predict(x["val"])
        if data.kind == "count":
            pred = np.maximum(pred, 0.0)
        score = -mae(data.y["val"], pred)
        if best is None or score > best[0]:
            best = (score, alpha, reg)
    score, alpha, reg = best
    return _finish(data, reg.predict(x["test"]), None, {"alpha": alpha}, score)


def _poisson_median(mean: np.ndarray) -> np.ndarray:
    """Median of Poisson(mean): the MAE-optimal point prediction under the fitted law."""
    from scipy.stats import poisson

    return poisson.ppf(0.5, np.maximum(mean, 1e-12))


def _run_poisson(data: _Data, config: ProbeConfig) -> _Fit:
    """Poisson GLM (log link) on standardised features; strength chosen on val MAE."""
    x = _standardise(data)
    # exp() of a linear predictor extrapolates without bound: a rare tag seen on a few train
    # tiles and many times on a test tile gave inf (then NaN) on the real benchmark. A count
    # probe never predicts more than twice the largest train count.
    cap = 2.0 * float(np.max(data.y["train"])) + 1.0

    def predict(glm: PoissonRegressor, split: str) -> np.ndarray:
        with np.errstate(over="ignore"):
            return _poisson_median(np.fmin(glm.predict(x[split]), cap))

    best: tuple[float, dict[str, Any], PoissonRegressor] | None = None
    for alpha in config.poisson_alphas:
        glm, fitted = _fit_quietly(
            PoissonRegressor(alpha=alpha, max_iter=1000), x["train"], data.y["train"]
        )
        score = -mae(data.y["val"], predict(glm, "val"))
        score = score if np.isfinite(score) else -math.inf
        if best is None or score > best[0]:
            best = (score, {"alpha": alpha, **fitted}, glm)
    score, params, glm = best
    return _finish(data, predict(glm, "test"), None, params, score)


def _dense_tensor(matrix: np.ndarray | sp.csr_matrix) -> torch.Tensor:
    import torch

    dense = matrix.toarray() if sp.issparse(matrix) else matrix
    return torch.as_tensor(np.asarray(dense), dtype=torch.float32)


def _run_mlp(data: _Data, config: ProbeConfig, seed: int, probe: str = "mlp") -> _Fit:
    import torch  # lazy: importing geojepa.eval stays light

    previous = torch.get_num_threads()
    if config.mlp_threads > 0:
        torch.set_num_threads(config.mlp_threads)
    try:
        return _run_mlp_inner(data, config, seed, probe)
    finally:
        torch.set_num_threads(previous)


def _run_mlp_inner(data: _Data, config: ProbeConfig, seed: int, probe: str) -> _Fit:
    """``mlp`` (Huber / BCE), ``mlp_l1`` (L1) or ``linear_l1`` (L1, no hidden layer)."""
    import torch

    x = {name: _dense_tensor(m) for name, m in _standardise(data).items()}
    y_train = data.y["train"]
    binary = data.kind == "binary"
    l1 = probe in ("mlp_l1", "linear_l1")
    if binary:
        target = torch.as_tensor(y_train, dtype=torch.float32)
        n_pos = float(y_train.sum())
        loss_fn = torch.nn.BCEWithLogitsLoss(
            pos_weight=torch.tensor((len(y_train) - n_pos) / n_pos)
        )
        center, scale = 0.0, 1.0
    else:
        # L1 aims at the median: centre there, so that a zero output is the dummy's guess
        center = float(np.median(y_train) if l1 else y_train.mean())
        scale = float(y_train.std()) or 1.0
        target = torch.as_tensor((y_train - center) / scale, dtype=torch.float32)
        loss_fn = torch.nn.L1Loss() if l1 else torch.nn.HuberLoss(delta=1.0)

    def predict(net: torch.nn.Module, inputs: torch.Tensor) -> np.ndarray:
        net.eval()
        with torch.no_grad():
            out = net(inputs).squeeze(1).double().numpy()
        return 1 / (1 + np.exp(-out)) if binary else out * scale + center

    def val_score(net: torch.nn.Module) -> float:
        out = predict(net, x["val"])
        if binary:
            return _binary_val_score(data.y["val"], out)
        if data.kind == "count":
            out = np.maximum(out, 0.0)
        return -mae(data.y["val"], out)

    hiddens = (0,) if probe == "linear_l1" else config.mlp_hidden
    best: tuple[float, dict, torch.nn.Module] | None = None
    for hidden in hiddens:
        for decay in config.mlp_weight_decays:
            net, epochs, score = _fit_mlp(
                x["train"], target, loss_fn, val_score, hidden, decay, config, seed
            )
            params = {"weight_decay": decay, "epochs": epochs}
            if hidden:
                params["hidden"] = hidden
            if best is None or score > best[0]:
                best = (score, params, net)
    score, params, net = best
    out = predict(net, x["test"])
    if binary:
        return _finish(data, (out >= 0.5).astype(float), out, params, score)
    return _finish(data, out, None, params, score)


def _fit_mlp(x, target, loss_fn, val_score, hidden, decay, config: ProbeConfig, seed: int):
    """Train one MLP (``hidden`` 0: a linear map); keep the weights of the epoch with the best
    val score (early stopping)."""
    import torch

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = (
        torch.nn.Sequential(
            torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
        )
        if hidden
        else torch.nn.Sequential(torch.nn.Linear(x.shape[1], 1))  # a linear map
    )
    optim = torch.optim.AdamW(net.parameters(), lr=config.mlp_lr, weight_decay=decay)
    best_score, best_state, best_epoch, stale = -math.inf, None, 0, 0
    for epoch in range(1, config.mlp_max_epochs + 1):
        net.train()
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], config.mlp_batch_size):
            batch = order[start : start + config.mlp_batch_size]
            optim.zero_grad()
            loss = loss_fn(net(x[batch]).squeeze(1), target[batch])
            loss.backward()
            optim.step()
        score = val_score(net)
        if score > best_score:
            best_score, best_state, best_epoch, stale = (
                score,
                copy.deepcopy(net.state_dict()),
                epoch,
                0,
            )
        else:
            stale += 1
            if stale >= config.mlp_patience:
                break
    if best_state is not None:  # None only if every val score was NaN (diverged)
        net.load_state_dict(best_state)
    return net, best_epoch, best_score
