"""PNG figures (`geojepa.explore.plots`): embedding scatter and training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geojepa.errors import InputError
from geojepa.explore.plots import (
    kmeans,
    plot_curves,
    plot_embeddings,
    read_metrics,
    tag_key_values,
)
from test_explore_knn import CLUSTER_TAGS, write_entities, write_tiles


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


def test_tag_key_values_read_the_value_of_that_key():
    tags = pd.Series(["building=yes; highway=primary; building:levels=3", "amenity=building",
                      None, "start_date; building=house; building=yes"])  # fmt: skip
    assert tag_key_values(tags, "building") == ["yes", None, None, "house"]  # the first one
    assert tag_key_values(tags, "highway") == ["primary", None, None, None]
    assert tag_key_values(tags, "start_date") == [None, None, None, "start_date"]


@pytest.mark.parametrize("color_by", ["cluster", "n_entities", "leisure"])
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
    plot_embeddings(tmp_path / "c.parquet", tmp_path / "c.png", color_by="n_entities")
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
    assert labels == {"linear", "mlp", "dummy", "dummy: train median / majority"}
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2
    assert {ax.get_ylabel().split()[0] for ax in visible} == {"auroc", "mae"}
    assert all("better" in ax.get_ylabel() for ax in visible)


def test_results_chart_names_models_once_and_marks_the_baseline(tmp_path: Path, figures):
    """Each model named once, the error bars explained, and a panel where the median
    baseline beats every model says so."""
    from geojepa.eval.report import plot_results

    rows = [("geojepa", "linear", 5.5, 0.0), ("geojepa", "mlp", 5.2, 0.3),
            ("tag_counts", "linear", 5.4, 0.0), ("tag_counts", "mlp", 5.6, 0.2),
            ("dummy", "dummy", 3.57, 0.0)]  # fmt: skip
    summary = pd.DataFrame(
        [(m, p, "max_speed", "mae", v, sd, 2) for m, p, v, sd in rows],
        columns=["model", "probe", "task", "metric", "mean", "std", "n_seeds"],
    )
    plot_results(summary, tmp_path / "r.png")
    fig = figures[-1]
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["geojepa", "tag_counts", "dummy"]
    assert "dummy baseline beats every model" in ax.get_title()
    assert any(line.get_linestyle() == "--" and line.get_ydata()[0] == 3.57
               for line in ax.get_lines())  # fmt: skip
    assert any("standard deviation over the seeds" in t.get_text() for t in fig.texts)
    summary.loc[0, "mean"] = 3.0  # geojepa beats the median: no such note
    plot_results(summary, tmp_path / "r2.png")
    assert "beats" not in figures[-1].axes[0].get_title()


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


def _legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend is not None else []


def test_default_colours_are_embedding_clusters_named_by_their_tags(tmp_path: Path, figures):
    """By default the colours separate the tiles (k-means of the embeddings) and the legend
    says what each colour holds: the top tags over-represented among its tiles."""
    tiles, truth = write_tiles(tmp_path / "t.parquet")
    plot_embeddings(tiles, tmp_path / "p.png", clusters=3)
    ax = figures[-1].axes[0]
    assert "k-means" in ax.get_title()
    names = _legend_texts(ax)
    assert len(names) == 3
    for group in CLUSTER_TAGS:  # every true group is named by one of its own tags
        tags = [t.strip() for t in group.split(";")]
        assert sum(any(t in name for t in tags) for name in names) == 1, (group, names)
    assert sum(int(name.rsplit("(", 1)[1].split()[0]) for name in names) == len(truth)


def test_kmeans_recovers_separated_groups():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = np.repeat([0, 1, 2], [30, 20, 10])
    labels = kmeans(centres[truth] + rng.normal(size=(60, 2)), 3)
    assert [len(set(labels[truth == g])) for g in range(3)] == [1, 1, 1]
    assert len(set(labels)) == 3 and (labels == 0).sum() == 30  # 0 is the largest cluster


def test_color_by_key_colours_by_its_value(tmp_path: Path, figures):
    """``--color-by building`` colours each tile by its building=* value, not by a count."""
    tiles, truth = write_tiles(tmp_path / "t.parquet")
    plot_embeddings(tiles, tmp_path / "b.png", color_by="building")
    ax = figures[-1].axes[0]
    n = {c: sum(1 for v in truth.values() if v == c) for c in range(3)}
    names = _legend_texts(ax)
    assert sorted(names) == sorted([f"building=apartments ({n[0]} tiles)",
                                    f"building=retail ({n[2]} tiles)"])  # fmt: skip
    title = ax.get_legend().get_title().get_text()
    assert "building value" in title and f"grey: {n[1]} tiles without it" in title
    colours = {tuple(np.round(c.get_facecolor()[0], 3)) for c in ax.collections}
    assert len(colours) == 3  # two values and grey


def test_pca_axes_say_their_share_of_the_variance(tmp_path: Path, figures):
    import geopandas as gpd

    from geojepa.explore.embeddings import embedding_matrix, pca

    tiles, _ = write_tiles(tmp_path / "t.parquet")
    plot_embeddings(tiles, tmp_path / "v.png", color_by="n_entities")
    ax = figures[-1].axes[0]
    x = embedding_matrix(gpd.read_parquet(tiles), normalize=True).astype(np.float64)
    singular = np.linalg.svd(x - x.mean(0), compute_uv=False)
    share = singular**2 / (singular**2).sum()
    assert np.allclose(pca(x, 2)[1], share[:2])
    assert ax.get_xlabel() == f"PC1 ({share[0]:.0%} of the variance)"
    assert ax.get_ylabel() == f"PC2 ({share[1]:.0%} of the variance)"
