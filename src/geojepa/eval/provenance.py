"""Stage 4 of `evaluate`: the report — 95% intervals, the provenance (config, split hash, data
sources, git commit, machine, date, wall time) and the notes a reader needs next to the table,
written by `write_results` through `geojepa.eval.report.write_report`.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from geojepa.constants import REGIONS_INDEX
from geojepa.data.reader import TileDataset
from geojepa.eval.inputs import LabelledData, ModelSetup
from geojepa.eval.report import make_provenance, summarize, write_report
from geojepa.eval.request import EvaluateConfig, EvaluateRequest, EvaluateResult
from geojepa.eval.scoring import Scores
from geojepa.eval.uncertainty import bootstrap_intervals
from geojepa.io.atomic import write_text_atomic


def write_results(
    request: EvaluateRequest,
    models: ModelSetup,
    data: LabelledData,
    scores: Scores,
    started: float,
) -> EvaluateResult:
    """Intervals, provenance and report files of a scored evaluation (``started``: its
    `time.perf_counter` at the start, for the wall time)."""
    config, rows = request.config, scores.rows
    intervals = by_area = None
    if config.bootstrap:
        request.log(f"95% intervals: {config.bootstrap} block resamples of the test data")
        intervals, by_area = bootstrap_intervals(
            rows, data.split, config.bootstrap, areas=_areas(request.datasets)
        )
    wall = time.perf_counter() - started
    skipped = {**data.skipped, **scores.skipped}  # tasks, then baselines
    sup_seeds = request.supervised_seeds
    provenance = make_provenance(
        config={
            "evaluate": config.model_dump(mode="json"),
            "pretrain": models.networks.pretrain_config.model_dump(mode="json"),
            "tokenizer_used": models.tokenizer.model_dump(mode="json"),
        },
        split_path=data.split_path,
        data_source=[_data_source(ds) for ds in request.datasets],
        run=str(request.run.resolve()) if request.run is not None else None,
        run_training_data=models.training_data,
        tasks=[t.name for t in request.tasks if t.name in data.labels],
        seeds=request.seeds,
        supervised_seeds=list(sup_seeds) if sup_seeds is not None else None,
        baselines=list(request.baselines),
        skipped=skipped,
        entity_labels=scores.entity_coverage,
        vocab_coverage=round(models.vocab_coverage, 4),
        split=data.split_info,
        git=_git_commit(),
        machine=_machine(config.device),
        task_seconds=scores.task_seconds,
        wall_seconds=round(wall, 1),
    )
    paths = write_report(
        rows, request.output, provenance, title=config.title, intervals=intervals, by_area=by_area
    )
    overlap = data.split_info.get("pretraining_overlap") or {}
    _append_notes(
        paths["markdown"], config, skipped, sup_seeds, request.seeds, scores.entity_coverage,
        overlap,
    )  # fmt: skip
    request.log(f"report written to {request.output} ({wall:.0f} s)")
    return EvaluateResult(summarize(rows), rows, paths, skipped, wall)


def _git_commit() -> dict[str, Any] | None:
    root = Path(__file__).resolve().parents[3]
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def _machine(device: str) -> dict[str, Any]:
    info = {
        "host": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _areas(datasets: Sequence[TileDataset]) -> dict[str, str]:
    """region_id -> the name of its dataset (directory), for the per-area breakdown."""
    names = [ds.path.name for ds in datasets]
    if len(set(names)) < len(names):  # same directory names: tell them apart by position
        names = [f"{i}:{name}" for i, name in enumerate(names)]
    return {
        rid: name
        for ds, name in zip(datasets, names, strict=True)
        for rid in ds.read_tiles(columns=[REGIONS_INDEX]).column(REGIONS_INDEX).to_pylist()
    }


def _data_source(ds: TileDataset) -> dict[str, Any]:
    m = ds.manifest
    keys = ("source", "n_tiles", "n_entities", "vocab_size")
    return {"dataset": str(ds.path.resolve()), **{k: m.get(k) for k in keys}}


def _append_notes(
    path: Path,
    config: EvaluateConfig,
    skipped: dict[str, str],
    sup_seeds: Sequence[int] | None,
    seeds: Sequence[int],
    entity_coverage: dict[str, dict[str, int]],
    overlap: dict[str, int],
) -> None:
    """Notes a reader needs next to the table (inserted before the provenance block)."""
    lines = list(config.notes)
    lines.append(
        "Models: `geojepa` = the pretrained network's frozen target encoder; `random_init` = "
        "the same network with random weights; `supervised` = a small transformer trained end "
        "to end on the same masked tokens (probe `end2end`); the others are tag baselines on "
        "the same masked input. Probes choose every setting on val; test is scored once."
    )
    if sup_seeds is not None:
        sup = config.supervised
        lines.append(
            f"The supervised transformer trains until its val score has not improved for "
            f"{sup.patience} epoch(s) (at most {sup.max_epochs} epochs"
            + (f" of {sup.tiles_per_epoch} random train tiles" if sup.tiles_per_epoch else "")
            + "); `params` in results_per_seed.csv record the best epoch and whether it "
            "stopped early (`converged`) or at the cap."
        )
    if sup_seeds is not None and list(sup_seeds) != list(seeds):
        lines.append(f"The supervised transformer ran on seeds {list(sup_seeds)} only (cost).")
    if overlap.get("val", 0) or overlap.get("test", 0):
        lines.append(
            f"**Warning**: the run was pretrained on data holding {overlap.get('val', 0)} val "
            f"and {overlap.get('test', 0)} test tiles of this split; its scores are not "
            "those of a model that never saw the test area."
        )
    elif overlap:
        lines.append("The run's pretraining data holds no val or test tile of this split.")
    for name, why in skipped.items():
        lines.append(f"Skipped `{name}`: {why}.")
    for name, cov in entity_coverage.items():
        if cov["kept_by_tokenizer"] < cov["labelled"]:
            lines.append(
                f"`{name}`: {cov['kept_by_tokenizer']} of {cov['labelled']} labelled entity "
                "clips are kept by the tokenizer's per-tile entity cap; all models are scored "
                "on those."
            )
    text = path.read_text()
    notes = "## Notes\n\n" + "\n".join(f"- {line}" for line in lines) + "\n\n"
    marker = "## Provenance"
    text = text.replace(marker, notes + marker, 1) if marker in text else text + "\n" + notes
    write_text_atomic(path, text)
