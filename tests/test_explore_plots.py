"""PNG figures (`geojepa.explore.plots`): embedding scatter and training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geojepa.errors import InputError
from geojepa.explore.plots import plot_curves, plot_embeddings, read_metrics, tag_key_counts
from test_explore_knn import write_entities, write_tiles


def _nontrivial(path: Path) -> None:
    """The PNG exists, is a real image and is not one uniform colour."""
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] > 200 and image.shape[1] > 200
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50
    assert image.std() > 10


def write_run(run: Path, steps: int = 40) -> Path:
    """A Lightning-style CSV log: columns logged on different rows, as Lightning writes them."""
    rows = []
    for s in range(0, steps, 2):
        rows.append(
            {
                "step": s,
                "epoch": s // 10,
                "train/loss": 2.0 * np.exp(-s / 15) + 0.1,
                "train/pred_loss": 1.5 * np.exp(-s / 15),
                "sched/lr": 1e-3 * min(1.0, (s + 1) / 10),
                "sched/ema_momentum": 0.996 + 0.004 * s / steps,
                "monitor/target_std": 0.5 + 0.01 * s,
                "monitor/effective_rank": 10 + s,
            }
        )
        if s % 10 == 0:
            rows.append({"step": s, "epoch": s // 10, "val/loss": 1.0 / (s + 1)})
    path = run / "logs" / "csv" / "metrics.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return run


def test_tag_key_counts_counts_keys_not_values():
    tags = pd.Series(["building=yes; highway=primary; building:levels=3", "amenity=building", None])
    assert tag_key_counts(tags, "building").tolist() == [1, 0, 0]
    assert tag_key_counts(tags, "highway").tolist() == [1, 0, 0]


@pytest.mark.parametrize("color_by", ["n_entities", "leisure"])
def test_embedding_scatter_is_written(tmp_path: Path, color_by: str):
    tiles, _ = write_tiles(tmp_path / "t.parquet")
    out = plot_embeddings(tiles, tmp_path / "figs" / "emb.png", color_by=color_by)
    _nontrivial(out)


def test_embedding_scatter_errors(tmp_path: Path):
    tiles, _ = write_tiles(tmp_path / "t.parquet")
    entities, _ = write_entities(tmp_path / "e.parquet")
    with pytest.raises(
        InputError, match=r"'railway' is in no tile's top_tags; frequent keys: .*building"
    ):
        plot_embeddings(tiles, tmp_path / "x.png", color_by="railway")
    with pytest.raises(InputError, match="expected tiles"):
        plot_embeddings(entities, tmp_path / "x.png")


def test_umap_falls_back_to_pca_when_not_installed(monkeypatch):
    import sys

    from geojepa.explore.embeddings import project

    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` raises ImportError
    x = np.random.default_rng(0).normal(size=(30, 6))
    with pytest.warns(UserWarning, match="umap-learn is not installed"):
        got = project(x, 2, "umap")
    np.testing.assert_allclose(got, project(x, 2, "pca"))
    # PCA: uncorrelated axes, the first carrying the most variance
    assert abs(np.corrcoef(got.T)[0, 1]) < 1e-8
    assert got[:, 0].var() >= got[:, 1].var()


@pytest.mark.slow
def test_umap_scatter(tmp_path: Path):
    pytest.importorskip("umap", reason="umap-learn (extra 'umap') is not installed")
    tiles, _ = write_tiles(tmp_path / "t.parquet")
    _nontrivial(plot_embeddings(tiles, tmp_path / "u.png", method="umap"))


def test_training_curves(tmp_path: Path):
    run = write_run(tmp_path / "run")
    metrics = read_metrics(run)
    assert metrics["step"].is_unique  # rows of one step are merged
    assert metrics.loc[metrics["step"] == 0, "val/loss"].item() == 1.0
    _nontrivial(plot_curves(run, tmp_path / "curves.png"))


def test_training_curves_errors(tmp_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        plot_curves(tmp_path / "nope", tmp_path / "c.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no Lightning CSV log \(metrics.csv\)"):
        plot_curves(tmp_path / "empty", tmp_path / "c.png")
    bad = tmp_path / "bad" / "metrics.csv"
    bad.parent.mkdir()
    pd.DataFrame({"step": [1, 2], "epoch": [0, 0], "other": [3, 4]}).to_csv(bad, index=False)
    with pytest.raises(InputError, match="no loss, lr, momentum or monitor"):
        plot_curves(bad.parent, tmp_path / "c.png")


# --------------------------------------------------------------------------- readable pictures


@pytest.fixture
def figures(monkeypatch) -> list:
    """Figures the plotting functions close, kept open for inspection."""
    import matplotlib.pyplot as plt

    kept: list = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    for fig in kept:
        real_close(fig)


def test_count_scale_is_discrete_and_robust_to_an_outlier():
    from geojepa.explore.plots import count_scale

    # the reported case: 93 of 95 tiles at 0-1, one far outlier
    values = np.array([0] * 50 + [1] * 43 + [2, 80])
    scale = count_scale(values)
    assert scale.kind == "discrete" and scale.lo == 0 and scale.hi <= 2
    assert scale.n_above == 1 and "1 tiles above" in scale.note and "max 80" in scale.note
    tail = np.concatenate([np.zeros(40), np.arange(1, 60) ** 2]).astype(int)  # long tail
    assert count_scale(tail).kind == "log"
    spread = np.arange(100, 400)  # wide but no tail
    assert count_scale(spread).kind == "linear" and count_scale(spread).note == ""


def test_count_plot_gives_low_counts_their_own_colours(tmp_path: Path, figures):
    import geopandas as gpd

    tiles, _ = write_tiles(tmp_path / "t.parquet")
    gdf = gpd.read_parquet(tiles)
    n = len(gdf)
    counts = np.array([0] * (n // 2) + [1] * (n - n // 2 - 1) + [500])  # one outlier
    gdf["n_entities"] = counts
    gdf.to_parquet(tmp_path / "c.parquet")
    plot_embeddings(tmp_path / "c.parquet", tmp_path / "c.png")
    fig = figures[-1]
    ax = fig.axes[0]
    points = ax.collections[0]
    zero, one = (np.asarray(points.cmap(points.norm(v)))[:3] for v in (0, 1))
    assert np.abs(zero - one).max() > 0.3  # 0 and 1 look different despite the outlier
    text = " ".join(t.get_text() for t in ax.texts)
    assert "1 tiles above" in text and "max 500" in text


def test_scatter_axes_ignore_far_outliers(tmp_path: Path, figures):
    from geojepa.explore.plots import robust_limits

    v = np.concatenate([np.linspace(-1, 1, 200), [50.0]])
    lo, hi = robust_limits(v)
    assert hi < 2 and lo > -2
    lo, hi = robust_limits(np.linspace(-1, 1, 200))  # nothing far: the full range
    assert lo < -1 and hi > 1


def test_results_chart_has_a_legend_and_y_labels(tmp_path: Path, figures):
    from geojepa.eval.report import plot_results

    rows = []
    for task, metric in (("bridge", "auroc"), ("road_speed", "mae")):
        for model, probe in (("geojepa", "linear"), ("geojepa", "mlp"), ("dummy", "dummy")):
            rows.append((model, probe, task, metric, 0.5, 0.1))
    summary = pd.DataFrame(rows, columns=["model", "probe", "task", "metric", "mean", "std"])
    _nontrivial(plot_results(summary, tmp_path / "results.png"))
    fig = figures[-1]
    assert fig.legends, "no legend"
    labels = {t.get_text() for legend in fig.legends for t in legend.get_texts()}
    assert labels == {"linear", "mlp", "dummy"}
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2
    assert {ax.get_ylabel().split()[0] for ax in visible} == {"auroc", "mae"}
    assert all("better" in ax.get_ylabel() for ax in visible)


def test_curves_have_y_labels_and_legends_beside_the_data(tmp_path: Path, figures):
    run = write_run(tmp_path / "run")
    plot_curves(run, tmp_path / "curves.png")
    fig = figures[-1]
    renderer = fig.canvas.get_renderer()
    for ax in (a for a in fig.axes if a.get_visible()):
        assert ax.get_ylabel(), ax.get_title()
        legend = ax.get_legend()
        assert legend is not None
        box, frame = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert box.x0 >= frame.x1 - 1, f"legend of {ax.get_title()!r} overlaps the data"
