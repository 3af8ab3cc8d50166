"""`geojepa evaluate`: tasks × models × baselines × probes over seeds on a spatial split.

For every task (``geojepa.eval.tasks``):

1. labels from the **original** entities; the input every model sees is ``task.remove``'d;
2. the masked tiles are tokenized once (the run's tokenizer settings and vocabulary), and that
   one token set feeds the pretrained GeoJEPA's frozen target encoder, the *same network with
   random weights* (what pretraining adds) and the supervised transformer (the upper line);
3. frozen features (tile: [max ‖ mean] of the token outputs; entity: its output token) and the
   tag baselines (dummy, tag counts, pooled tag text vectors, SRAI counts if installed) go
   through the same probes on the same split, over the seeds: squared-error ones (ridge,
   MLP) and, for regression/count tasks, ones fit for the MAE they are scored on (L1 linear and
   MLP, a Poisson GLM predicting its median count);
4. 95% intervals that include the data: a paired bootstrap over the test split's blocks for
   every model and for its difference to GeoJEPA, and a per-area (per-dataset) breakdown
   (``geojepa.eval.uncertainty``);
5. ``write_report`` writes results.csv/.md/.png, results_by_area.csv and provenance.json
   (config, split hash, data sources, git commit, machine, date, wall time).

Every model and baseline sees the same input: the entities the tokenizer keeps (at most
``max_entities`` per tile, a seeded choice; at most ``max_tags`` tags each); entity tasks are
scored on those kept entities and the number left out is in the provenance.

The stages, each a function a test can call, each in its own module:

* the request (`geojepa.eval.request`): `evaluate`'s arguments checked → `EvaluateRequest`;
* inputs (`geojepa.eval.inputs`): `load_models` (networks, tokenizer settings, checks) and
  `load_labels` (data, split, labels);
* per removal rule, tokenise + embed (`geojepa.eval.masked`), and per task, score networks,
  baselines and the supervised model (`geojepa.eval.scoring`: `score_tasks`);
* the report (`geojepa.eval.provenance`: `write_results`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from geojepa.data.reader import TileDataset
from geojepa.eval.inputs import load_labels, load_models
from geojepa.eval.masked import encode_arrays, same_input, token_entities, tokenize_masked
from geojepa.eval.provenance import write_results
from geojepa.eval.request import (
    ALL_BASELINES,
    DEFAULT_BASELINES,
    EVALUATE_PRESETS,
    GEOJEPA,
    RANDOM,
    SPLIT_FILE,
    SUPERVISED,
    EvaluateConfig,
    EvaluateRequest,
    EvaluateResult,
    evaluate_preset,
    load_config,
    make_request,
)
from geojepa.eval.scoring import score_tasks


def evaluate(
    run: str | Path | None,
    datasets: Sequence[str | Path | TileDataset],
    output: str | Path,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    baselines: Sequence[str] | None = None,
    split: str | Path | None = None,
    config: EvaluateConfig | None = None,
    progress: bool = True,
) -> EvaluateResult:
    """Evaluate a pretrained run (or, with ``run=None``, only the baselines) on ``datasets``.

    ``tasks``: names from ``geojepa.eval.TASKS`` (default all; then tasks that cannot be scored
    on this split — no positive train label, an empty split — are skipped and listed in the
    report; named tasks raise InputError instead). ``split``: a saved split file covering every
    tile, else a new spatial block split (``config.split``) saved as ``OUTPUT/split.parquet``.
    A report directory this call created is removed again when the call fails, if still empty.
    """
    started = time.perf_counter()
    report = Path(output)
    created = not report.exists()
    try:
        request = make_request(
            run, datasets, output, tasks, seeds, baselines, split, config, progress
        )
        return run_evaluation(request, started)
    except BaseException:
        if created:  # a report directory this run made and wrote nothing into goes again
            with contextlib.suppress(OSError):
                report.rmdir()
        raise


def run_evaluation(request: EvaluateRequest, started: float | None = None) -> EvaluateResult:
    """The stages of an evaluation on a checked request (``started``: the `time.perf_counter`
    its wall time counts from; now by default)."""
    started = time.perf_counter() if started is None else started
    models = load_models(request)
    data = load_labels(request, models)
    scores = score_tasks(request, models, data)
    return write_results(request, models, data, scores, started)


def format_summary(result: EvaluateResult) -> str:
    """A short text summary for the CLI: headline metric (mean ± std) per task and model.

    Only the (model, probe) pairs that were run get a row; a task a model could not be scored on
    shows "–", never NaN.
    """
    s = result.summary
    head = s[s["metric"].isin(["mae", "auroc"])]
    if head.empty:
        return f"no scores\n\nreport: {result.paths['markdown']}"
    arrow = {"mae": "↓", "auroc": "↑"}
    cells = head.assign(
        column=[f"{t} {m} {arrow[m]}" for t, m in zip(head["task"], head["metric"], strict=True)],
        value=[
            f"{m:.3f}" if pd.isna(sd) or n < 2 else f"{m:.3f} ± {sd:.3f}"
            for m, sd, n in zip(head["mean"], head["std"], head["n_seeds"], strict=True)
        ],
    )
    table = cells.pivot(index=["model", "probe"], columns="column", values="value")
    rows = list(dict.fromkeys(zip(cells["model"], cells["probe"], strict=True)))
    table = table.reindex(index=rows, columns=list(dict.fromkeys(cells["column"]))).fillna("–")
    table.index.names = ["model", "probe"]
    table.columns.name = None
    seeds = int(head["n_seeds"].max())
    return (
        f"test split, mean ± std over {seeds} seed(s); ↓ lower / ↑ higher is better\n"
        f"{table.to_string()}\n\nreport: {result.paths['markdown']}"
    )


__all__ = [
    "ALL_BASELINES",
    "DEFAULT_BASELINES",
    "EVALUATE_PRESETS",
    "GEOJEPA",
    "RANDOM",
    "SPLIT_FILE",
    "SUPERVISED",
    "EvaluateConfig",
    "EvaluateRequest",
    "EvaluateResult",
    "encode_arrays",
    "evaluate",
    "evaluate_preset",
    "format_summary",
    "load_config",
    "make_request",
    "run_evaluation",
    "same_input",
    "token_entities",
    "tokenize_masked",
]
