"""Model-independent evaluation core: tasks with leakage-free inputs, spatial split, probes,
metrics, baselines and report helpers. See ``docs/evaluation.md`` for the exact rules."""

from geojepa.eval.metrics import auroc, balanced_accuracy, compute_metrics, mae, rmse
from geojepa.eval.probes import ProbeConfig, ResultRow, embedding_features, evaluate_embeddings
from geojepa.eval.report import make_provenance, summarize, write_report
from geojepa.eval.split import (
    SplitConfig,
    assign_split,
    label_subset,
    load_split,
    make_split,
    save_split,
    search_split,
)
from geojepa.eval.suite import evaluate_baselines
from geojepa.eval.tasks import ENTITY_TASKS, TASKS, TILE_TASKS, Task, get_task, parse_maxspeed

__all__ = [
    "ENTITY_TASKS",
    "TASKS",
    "TILE_TASKS",
    "ProbeConfig",
    "ResultRow",
    "SplitConfig",
    "Task",
    "assign_split",
    "auroc",
    "balanced_accuracy",
    "compute_metrics",
    "embedding_features",
    "evaluate_baselines",
    "evaluate_embeddings",
    "get_task",
    "label_subset",
    "load_split",
    "mae",
    "make_provenance",
    "make_split",
    "parse_maxspeed",
    "rmse",
    "save_split",
    "search_split",
    "summarize",
    "write_report",
]
