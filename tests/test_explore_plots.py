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
