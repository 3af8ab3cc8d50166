"""Block-bootstrap intervals: weighted metrics, block weights, paired differences, verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from geojepa.eval.metrics import auroc, mae
from geojepa.eval.probes import ResultRow
from geojepa.eval.split import SplitConfig, make_split
from geojepa.eval.uncertainty import (
    block_weights,
    bootstrap_intervals,
    weighted_auroc,
    weighted_mae,
    win_summary,
)

IDS = [f"17/{x}/{y}" for x in range(40) for y in range(40)]


def test_weighted_metrics_equal_the_metrics_on_repeated_rows():
    rng = np.random.default_rng(0)
    y = (rng.random(60) < 0.3).astype(float)
    score = np.round(rng.random(60), 1)  # many ties
    counts = rng.integers(0, 4, size=60)
    counts[[np.flatnonzero(y == 1)[0], np.flatnonzero(y == 0)[0]]] = 1  # both classes present
    rep = np.repeat(np.arange(60), counts)
    got = weighted_auroc(y, score, counts[None].astype(float))[0]
    assert got == pytest.approx(auroc(y[rep], score[rep]))
    assert weighted_auroc(y, score, np.ones((1, 60)))[0] == pytest.approx(auroc(y, score))
    pred = rng.normal(size=60)
    assert weighted_mae(y, pred, counts[None].astype(float))[0] == pytest.approx(
        mae(y[rep], pred[rep])
    )
    assert np.isnan(weighted_auroc(y, score, (y == 1)[None].astype(float))[0])  # one class


def test_block_weights_resample_whole_blocks():
    blocks = np.array(["a", "a", "b", "c", "c", "c"], dtype=object)
    w = block_weights(blocks, n_boot=200, seed=1)
    assert w.shape == (200, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 5]).all()
    per_block = w[:, [0, 2, 3]]
    assert (per_block.sum(1) == 3).all()  # three blocks drawn with replacement each time
    assert np.array_equal(w, block_weights(blocks, n_boot=200, seed=1))


def _rows(model, probe, index, y, outputs, val=0.0, task="max_speed"):
    return [
        ResultRow(model, task, probe, seed, {}, {}, val, 0, 0, len(y), index, y, out)
        for seed, out in enumerate(outputs)
    ]


def test_paired_differences_and_verdicts():
    """A model whose errors are 4% larger on every tile is a clear loss against GeoJEPA,
    although the two models' own intervals (driven by the data) overlap: the difference is
    bootstrapped paired. A copy of GeoJEPA is a tie."""
    split = make_split(IDS, SplitConfig(block_zoom=14, seed=0))
    test = split[split["split"] == "test"]
    index = pd.Index(test["region_id"].to_numpy(), name="region_id")
    rng = np.random.default_rng(0)
    y = rng.normal(50, 20, size=len(index))
    geo = y + rng.normal(0, 5, size=len(index))
    rows = _rows("geojepa", "mlp", index, y, [geo, geo + 0.01], val=-1.0)
    rows += _rows("geojepa", "linear", index, y, [geo + 3.0], val=-2.0)
    rows += _rows("tag_counts", "mlp", index, y, [y + 1.04 * (geo - y)])
    rows += _rows("random_init", "mlp", index, y, [geo.copy()])
    rows += _rows("dummy", "dummy", index, y, [np.full(len(y), np.median(y))], val=np.nan)
    # a rival whose val choice is the linear probe: better than GeoJEPA's (poor) linear probe,
    # worse than GeoJEPA's chosen MLP; best meets best, so GeoJEPA wins
    rows += _rows("pooled_text", "linear", index, y, [y + 1.04 * (geo - y)], val=-0.5)
    rows += _rows("pooled_text", "mlp", index, y, [geo + 3.0], val=-3.0)
    areas = {rid: ("east" if int(rid.split("/")[1]) >= 20 else "west") for rid in IDS}
    intervals, by_area = bootstrap_intervals(rows, split, n_boot=300, areas=areas)
    row = intervals.set_index(["model", "probe"])
    assert (
        row.loc[("geojepa", "mlp"), "selected"] and not row.loc[("geojepa", "linear"), "selected"]
    )
    lo, hi = row.loc[("tag_counts", "mlp"), ["ci_low", "ci_high"]]
    assert lo < row.loc[("geojepa", "mlp"), "ci_high"]  # the two intervals overlap
    d_lo, d_hi = row.loc[("tag_counts", "mlp"), ["diff_low", "diff_high"]]
    assert 0 < d_lo <= row.loc[("tag_counts", "mlp"), "diff"] <= d_hi
    assert d_hi - d_lo < (hi - lo) / 2  # paired: far narrower than either interval
    assert row.loc[("tag_counts", "mlp"), "verdict"] == "win"  # for GeoJEPA
    assert row.loc[("random_init", "mlp"), "verdict"] == "tie"
    assert row.loc[("dummy", "dummy"), "reference_probe"] == "mlp"  # GeoJEPA's val choice
    assert row.loc[("dummy", "dummy"), "verdict"] == "win"
    assert row.loc[("pooled_text", "linear"), "selected"]
    assert row.loc[("pooled_text", "linear"), "reference_probe"] == "mlp"
    assert row.loc[("pooled_text", "linear"), "verdict"] == "win"
    # a probe that is not the model's choice meets GeoJEPA's same probe
    assert row.loc[("pooled_text", "mlp"), "reference_probe"] == "mlp"
    value = row.loc[("geojepa", "mlp"), "value"]
    assert value == pytest.approx(np.mean([mae(y, geo), mae(y, geo + 0.01)]))
    assert lo <= row.loc[("tag_counts", "mlp"), "value"] <= hi
    wins = win_summary(intervals, ["tag_counts", "random_init"])
    assert wins.loc["max_speed"].to_dict() == {
        "tag_counts": "win", "random_init": "tie", "wins_all": False,
    }  # fmt: skip
    assert set(by_area["area"]) == {"east", "west"}
    east = by_area.query("area == 'east' and model == 'geojepa'")
    mask = np.array([int(r.split("/")[1]) >= 20 for r in index])
    assert east["value"].iloc[0] == pytest.approx(
        np.mean([mae(y[mask], geo[mask]), mae(y[mask], geo[mask] + 0.01)])
    )
    assert east["n_test"].iloc[0] == mask.sum()


def test_results_table_says_which_probes_its_delta_compares():
    """results.md's Δ column is best against best: the header says so, each cell names
    GeoJEPA's val-chosen probe (here mlp, although the rival chose linear)."""
    from geojepa.eval.report import uncertainty_markdown

    split = make_split(IDS, SplitConfig(block_zoom=14, seed=0))
    test = split[split["split"] == "test"]
    index = pd.Index(test["region_id"].to_numpy(), name="region_id")
    rng = np.random.default_rng(0)
    y = rng.normal(50, 20, size=len(index))
    geo = y + rng.normal(0, 5, size=len(index))
    rows = _rows("geojepa", "mlp", index, y, [geo], val=-1.0)
    rows += _rows("geojepa", "linear", index, y, [geo + 3.0], val=-2.0)
    rows += _rows("pooled_text", "linear", index, y, [geo + 1.0], val=-0.5)
    intervals, _ = bootstrap_intervals(rows, split, n_boot=50)
    text = uncertainty_markdown(intervals, None)
    assert "| Δ = this val-chosen probe − GeoJEPA's val-chosen probe (named) [95%] |" in text
    row = next(line for line in text.splitlines() if "| pooled_text | linear |" in line)
    assert "] vs mlp |" in row
