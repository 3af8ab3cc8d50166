"""Stages 2 and 3 of `evaluate`: per removal rule, tokenise and embed the masked input once;
per task, score the networks (frozen features through the probes), the tag baselines on the
same input, and the supervised transformer trained end to end on the same tokens.

Every model and baseline sees the same input: the entities the tokenizer keeps (at most
``max_entities`` per tile, a seeded choice; at most ``max_tags`` tags each), so tag counts,
pooled text and SRAI counts are computed on exactly what the networks embed. Entity tasks are
scored on those kept entities (the others cannot have an embedding).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from geojepa.errors import InputError
from geojepa.eval.baselines import (
    EmbedTexts,
    sentence_transformer_embedder,
    srai_available,
    tag_count_features,
)
from geojepa.eval.inputs import LabelledData, ModelSetup, label_problem
from geojepa.eval.masked import MaskedTokens, same_input, token_entities, tokenize_masked
from geojepa.eval.probes import ResultRow, evaluate_embeddings
from geojepa.eval.request import GEOJEPA, RANDOM, SUPERVISED, EvaluateRequest
from geojepa.eval.suite import baseline_features
from geojepa.eval.supervised import train_supervised
from geojepa.eval.tasks import Task
from geojepa.optional import install_hint


@dataclass
class Scores:
    """What scoring produced: per-seed rows and what the report says about them."""

    rows: list[ResultRow] = field(default_factory=list)
    entity_coverage: dict[str, dict[str, int]] = field(default_factory=dict)  # entity tasks
    task_seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # baselines that could not run


@dataclass
class TaskInput:
    """One task's labels and the input every model of it sees."""

    task: Task
    labels: pd.Series  # entity tasks: only the entities the tokenizer kept
    masked: pa.Table  # the removed entities, cut to what the networks see (`same_input`)
    tokens: MaskedTokens  # the same input, tokenised (shared by the rule's tasks)


def removal_groups(tasks: list[Task], labels: dict[str, pd.Series]) -> list[list[Task]]:
    """The scorable tasks grouped by removal rule (in order of first appearance): tasks sharing
    a rule share one tokenization and one embedding pass per network."""
    groups: dict[object, list[Task]] = {}
    for task in tasks:
        if task.name in labels:
            groups.setdefault(task.remove, []).append(task)
    return list(groups.values())


def score_tasks(request: EvaluateRequest, models: ModelSetup, data: LabelledData) -> Scores:
    """Every scorable task, one removal rule at a time (which bounds memory to one rule's
    tokens and embeddings)."""
    baselines = request.baselines
    embedder = sentence_transformer_embedder() if "pooled_text" in baselines else None
    embed_texts = _memoized(embedder) if embedder is not None else None
    scores = Scores()
    for group in removal_groups(request.tasks, data.labels):
        tokens = None
        for task in group:
            started = time.perf_counter()
            if tokens is None:
                request.log(f"{task.name}: tokenizing the masked input")
                tokens = MaskedTokens(
                    tokenize_masked(
                        request.datasets, task, models.networks.vocab, models.tokenizer, seed=0
                    ),  # as `embed`
                    with_entities=any(t.level == "entity" for t in group),
                    batch_tokens=request.config.batch_tokens,
                    image_size=models.image_size,
                    log=request.log,
                )
            inputs = task_input(task, data, tokens, models.tokenizer.max_tags, scores)
            scores.rows += score_networks(request, models, inputs, data.split)
            scores.rows += score_baselines(request, inputs, data.split, embed_texts, scores.skipped)
            if SUPERVISED in baselines:
                scores.rows += score_supervised(request, models, inputs, data.split)
            scores.task_seconds[task.name] = round(time.perf_counter() - started, 1)
            request.log(f"{task.name}: done in {scores.task_seconds[task.name]} s")
    return scores


def task_input(
    task: Task, data: LabelledData, tokens: MaskedTokens, max_tags: int, scores: Scores
) -> TaskInput:
    """The task's labels and masked entities, both cut to what the tokenizer kept (entity tasks
    record how many labelled entities that leaves in ``scores.entity_coverage``)."""
    y = data.labels[task.name]
    # the baselines see the entities (and tags) the networks see, no more
    masked = same_input(task.remove(data.entities), tokens.arrays, max_tags)
    if task.level == "entity":
        kept = token_entities(tokens.arrays)
        n_all = len(y)
        y = y[y.index.isin(kept)]
        scores.entity_coverage[task.name] = {"labelled": n_all, "kept_by_tokenizer": len(y)}
        problem = label_problem(task, y, data.split)
        if problem is not None:
            raise InputError(f"task {task.name}: {problem} among the entities kept")
    return TaskInput(task, y, masked, tokens)


def score_networks(
    request: EvaluateRequest, models: ModelSetup, inputs: TaskInput, split: pd.DataFrame
) -> list[ResultRow]:
    """The pretrained network and its random-weights twin: frozen features through the probes."""
    config, task = request.config, inputs.task
    rows: list[ResultRow] = []
    nets = models.networks
    for name, net in ((GEOJEPA, nets.pretrained), (RANDOM, nets.random_init)):
        if net is None:
            continue
        tiles, entities = inputs.tokens.embeddings(name, net, task)
        X = tiles if task.level == "tile" else entities
        request.log(f"{task.name}: probes on {name}")
        rows += evaluate_embeddings(
            X, inputs.labels, split, task, request.seeds, config.probes, name, config.probe
        )
    return rows


def score_baselines(
    request: EvaluateRequest,
    inputs: TaskInput,
    split: pd.DataFrame,
    embed_texts: EmbedTexts | None,
    skipped: dict[str, str],
) -> list[ResultRow]:
    """The tag baselines on the task's masked input (a baseline that cannot run here is noted
    in ``skipped``)."""
    config, task, y = request.config, inputs.task, inputs.labels
    rows: list[ResultRow] = []
    for name in request.baselines:
        if name in (RANDOM, SUPERVISED):
            continue
        if name == "srai_counts" and (task.level != "tile" or not srai_available()):
            if name not in skipped and not srai_available():
                skipped[name] = f"srai is not installed ({install_hint('srai')})"
            continue
        request.log(f"{task.name}: baseline {name}")
        if name == "tag_counts":
            X = tag_count_features(
                inputs.masked, y.index, level=task.level, context=task.level == "entity",
                max_features=config.tag_count_max_features,
            )  # fmt: skip
        else:
            X = baseline_features(name, task, inputs.masked, y.index, embed_texts)
        rows += evaluate_embeddings(
            X, y, split, task, request.seeds, config.probes, name, config.probe
        )
    return rows


def score_supervised(
    request: EvaluateRequest, models: ModelSetup, inputs: TaskInput, split: pd.DataFrame
) -> list[ResultRow]:
    """The supervised transformer, trained end to end on the task's tokens (the upper line)."""
    seeds = request.supervised_seeds or []
    request.log(f"{inputs.task.name}: supervised transformer, seeds {seeds}")
    return train_supervised(
        inputs.tokens.arrays, inputs.labels, split, inputs.task, models.tokenizer,
        models.networks.table, seeds, request.config.supervised, models.image_size,
    )  # fmt: skip


def _memoized(embed: EmbedTexts) -> Callable[[list[str]], np.ndarray]:
    """Embed each distinct text once over all tasks (their masked inputs share most tags)."""
    cache: dict[str, np.ndarray] = {}

    def embed_texts(texts: list[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in cache]
        if new:
            cache.update(zip(new, np.asarray(embed(new), dtype=np.float32), strict=True))
        return np.stack([cache[t] for t in texts]) if texts else np.zeros((0, 0), np.float32)

    return embed_texts
