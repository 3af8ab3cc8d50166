"""Report helpers: summary statistics, Markdown table with best-in-bold, files written."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from geojepa.errors import InputError, OutputError
from geojepa.eval.probes import ResultRow
from geojepa.eval.report import make_provenance, markdown_table, summarize, write_report
from geojepa.eval.split import file_sha256, make_split, save_split


def _rows() -> list[ResultRow]:
    rows = []
    for seed, (a, b) in enumerate([(2.0, 3.0), (4.0, 3.5)]):
        rows.append(ResultRow("geojepa", "building_count", "mlp", seed, {"mae": a, "rmse": a + 1}))
        rows.append(ResultRow("tag_counts", "building_count", "mlp", seed, {"mae": b, "rmse": b}))
        rows.append(
            ResultRow(
                "geojepa",
                "bridge",
                "mlp",
                seed,
                {"auroc": 0.7 + 0.1 * seed, "balanced_accuracy": 0.6},
            )
        )
        rows.append(
            ResultRow("tag_counts", "bridge", "mlp", seed, {"auroc": 0.9, "balanced_accuracy": 0.5})
        )
    return rows


def test_summarize_mean_std():
    summary = summarize(_rows()).set_index(["model", "task", "metric"])
    row = summary.loc[("geojepa", "building_count", "mae")]
    assert row["mean"] == pytest.approx(3.0)
    assert row["std"] == pytest.approx(pd.Series([2.0, 4.0]).std())  # sample std, ddof=1
    assert row["n_seeds"] == 2
    single = summarize(_rows()[:1])
    assert single.loc[0, "std"] == 0.0


def test_markdown_marks_best_per_column_with_direction():
    table = markdown_table(summarize(_rows()))
    lines = table.strip().splitlines()
    header = lines[0]
    assert "building_count mae ↓" in header and "bridge auroc ↑" in header
    # mae: geojepa 3.0 vs tag_counts 3.25 → geojepa bold; auroc: 0.75 vs 0.9 → tag_counts bold
    cells = {line.split("|")[1].strip(): line.split("|")[3:-1] for line in lines[2:]}
    columns = [c.strip() for c in header.split("|")[3:-1]]
    bold = {m: [columns[i] for i, c in enumerate(v) if "**" in c] for m, v in cells.items()}
    # mae: geojepa 3.0 < 3.25; rmse: tag_counts 3.25 < 4.0; auroc: tag_counts 0.9 > 0.75;
    # balanced accuracy: geojepa 0.6 > 0.5
    assert bold["geojepa"] == ["building_count mae ↓", "bridge balanced_accuracy ↑"]
    assert bold["tag_counts"] == ["building_count rmse ↓", "bridge auroc ↑"]
    assert "3.000 ± 1.414" in cells["geojepa"][0]


def test_write_report(tmp_path):
    split = make_split([f"17/{x}/{y}" for x in range(16) for y in range(16)])
    split_path = save_split(split, tmp_path / "split.parquet")
    provenance = make_provenance({"probe": {"seeds": [0, 1]}}, split_path, "hand-made")
    paths = write_report(_rows(), tmp_path / "report", provenance)
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0
    csv = pd.read_csv(paths["csv"])
    assert {"model", "probe", "task", "metric", "mean", "std", "n_seeds"} <= set(csv.columns)
    per_seed = pd.read_csv(paths["per_seed"])
    assert len(per_seed) == 16
    text = paths["markdown"].read_text()
    assert "| model | probe |" in text and file_sha256(split_path) in text
    assert json.loads(paths["provenance"].read_text())["split_sha256"] == file_sha256(split_path)
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"


def test_report_errors(tmp_path):
    with pytest.raises(InputError):
        summarize([])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError):
        write_report(_rows(), blocker)
