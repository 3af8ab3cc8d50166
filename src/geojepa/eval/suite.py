"""One-call evaluations: labels + masked input + baselines + probes for a task.

The embed glue supplies a model's embeddings (computed on ``task.remove(entities)``); the
baselines are computed here from the same masked entities, so every row of a report faces the
same input and the same split.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import pyarrow as pa

from geojepa.data.tags import tag_strings
from geojepa.errors import ConfigError, InputError
from geojepa.eval.baselines import (
    EmbedTexts,
    dummy_features,
    pooled_text_features,
    srai_available,
    srai_count_features,
    tag_count_features,
)
from geojepa.eval.probes import ProbeConfig, ResultRow, evaluate_embeddings
from geojepa.eval.tasks import Task

BASELINES = ("dummy", "tag_counts", "pooled_text", "srai_counts")


def baseline_features(
    name: str,
    task: Task,
    masked: pa.Table,
    index: pd.Index,
    embed_texts: EmbedTexts | None = None,
) -> pd.DataFrame:
    """Feature frame of baseline ``name`` on already-masked entities, rows = ``index``."""
    if name == "dummy":
        return dummy_features(index)
    if name == "tag_counts":
        return tag_count_features(masked, index, level=task.level, context=task.level == "entity")
    if name == "pooled_text":
        return pooled_text_features(masked, index, level=task.level, embed_texts=embed_texts)
    if name == "srai_counts":
        if task.level != "tile":
            raise InputError("the srai baseline is tile-level only")
        return srai_count_features(masked, index)
    raise ConfigError(f"unknown baseline '{name}' (known: {', '.join(BASELINES)})")


def evaluate_baselines(
    task: Task,
    tiles: pa.Table,
    entities: pa.Table,
    split: pd.DataFrame,
    baselines: Sequence[str] = ("dummy", "tag_counts", "pooled_text"),
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    probes: Sequence[str] = ("linear", "mlp"),
    embed_texts: EmbedTexts | None = None,
    config: ProbeConfig | None = None,
) -> list[ResultRow]:
    """Labels from the original entities, baselines from the masked ones, probes on the split.

    ``srai_counts`` is skipped for entity tasks, and skipped when srai is not installed.
    """
    labels = task.labels(tiles, entities)
    masked = task.remove(entities)
    rows: list[ResultRow] = []
    for name in baselines:
        if name == "srai_counts" and (task.level != "tile" or not srai_available()):
            continue
        X = baseline_features(name, task, masked, labels.index, embed_texts)
        rows += evaluate_embeddings(X, labels, split, task, seeds, probes, name, config)
    return rows


def masked_tag_strings(task: Task, entities: pa.Table) -> set[str]:
    """Distinct ``key=value`` strings left in the masked input (for leakage checks)."""
    return set(tag_strings(task.remove(entities))[1].tolist())
