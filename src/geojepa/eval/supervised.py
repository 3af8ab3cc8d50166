"""The supervised reference: a small transformer trained end to end on one task's masked tokens.

It reads exactly what the frozen models read — the project's `TileTokenizer` over the task's
leakage-free entities, plus the same position/modality prior — and is trained for the label
directly, so it shows how far a frozen representation + probe is from a model that may adapt
every weight to the task. Protocol as for the probes: fit on train, keep the epoch with the
best val score (early stopping), score test once, one run per seed.

Batches are formed by similar entity counts under a token budget: padding costs as much as a
real token in every dense layer, and tiles range from a handful to hundreds of entities.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import nn

from geojepa.config import Config
from geojepa.constants import REGIONS_INDEX
from geojepa.errors import InputError
from geojepa.eval.metrics import auroc, compute_metrics, mae
from geojepa.eval.probes import ResultRow
from geojepa.eval.split import SPLITS, assign_split, drop_shared_entities
from geojepa.eval.tasks import Task
from geojepa.model.jepa import pool_tiles
from geojepa.model.prior import PositionPrior
from geojepa.model.transformer import Transformer
from geojepa.tokenize.collate import collate
from geojepa.tokenize.shards import TileArrays
from geojepa.tokenize.tokenizer import TileTokenizer, TokenizerConfig

MODEL_NAME = "supervised"
PROBE_NAME = "end2end"


class SupervisedConfig(Config):
    """Size and training of the supervised transformer."""

    width: int | None = Field(
        None, ge=8, description="token width; None = the evaluated network's tokenizer width"
    )
    depth: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    head_hidden: int = Field(64, ge=1, description="hidden width of the output MLP")
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    max_epochs: int = Field(10, ge=1)
    patience: int = Field(2, ge=1, description="epochs without val improvement before stopping")
    tokens_per_batch: int = Field(4096, ge=16, description="padded tokens per batch (budget)")
    max_tiles_per_batch: int = Field(64, ge=1)
    tiles_per_epoch: int | None = Field(
        None, ge=1, description="train on a random sample of this many train tiles per epoch "
        "(bounds CPU time; None = all)",
    )  # fmt: skip
    max_val_tiles: int | None = Field(
        None, ge=1, description="early-stop on a fixed random sample of this many val tiles",
    )  # fmt: skip


class SupervisedTransformer(nn.Module):
    """Tokenizer + prior + transformer + MLP head on [max ‖ mean] (tile) or entity outputs."""

    def __init__(
        self,
        tokenizer_config: TokenizerConfig,
        tag_table: torch.Tensor,
        level: str,
        config: SupervisedConfig,
    ) -> None:
        super().__init__()
        width = tokenizer_config.width
        self.level = level
        self.tokenizer = TileTokenizer(tokenizer_config, tag_table)
        self.prior = PositionPrior(width)
        self.encoder = Transformer(width, config.depth, config.heads)
        d_in = 2 * width if level == "tile" else width
        self.head = nn.Sequential(
            nn.Linear(d_in, config.head_hidden), nn.GELU(), nn.Linear(config.head_hidden, 1)
        )

    def forward(self, batch) -> torch.Tensor:
        """Tile tasks: [B] outputs; entity tasks: [B, E] outputs (padding slots: garbage)."""
        tok = self.tokenizer(batch)
        x = tok.tokens + self.prior(tok.boxes, tok.modality).to(tok.tokens.dtype)
        h = self.encoder(x, tok.valid)
        if self.level == "tile":
            return self.head(pool_tiles(h, tok.valid)).squeeze(-1)
        return self.head(h[:, : tok.n_entity_slots]).squeeze(-1)


@dataclass
class _Part:
    """One split: tiles to feed and the labelled targets inside them."""

    tiles: np.ndarray  # tile rows of the arrays
    target_tile: np.ndarray  # tile row of each target (tile tasks: = tiles)
    target_slot: np.ndarray  # entity slot of each target (-1 for tile tasks)
    y: np.ndarray
    index: pd.Index  # the labels' index of these targets


def _parts(arrays: TileArrays, labels: pd.Series, split: pd.DataFrame, task: Task) -> dict:
    """Map labels to (tile row, entity slot) of ``arrays``, by split (as the probes do)."""
    names = assign_split(labels.index, split)
    if task.level == "entity":
        names = drop_shared_entities(names)
    labels = labels.loc[names.index]
    tile_of = pd.Index(arrays.region_ids)
    parts: dict[str, _Part] = {}
    if task.level == "tile":
        rows = tile_of.get_indexer(labels.index)
        if (rows < 0).any():
            raise InputError(f"task {task.name}: labelled tiles missing from the tokenized input")
        for name in SPLITS:
            sel = names.to_numpy() == name
            y = labels.to_numpy()[sel]
            parts[name] = _Part(rows[sel], rows[sel], np.full(len(y), -1), y, labels.index[sel])
    else:
        counts = arrays.ent_count
        ent_tile = np.repeat(np.arange(len(counts)), counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        ent_slot = np.arange(len(ent_tile)) - starts[ent_tile]
        keys = pd.MultiIndex.from_arrays(
            [np.asarray(arrays.region_ids)[ent_tile], arrays.feature_ids],
            names=[REGIONS_INDEX, "feature_id"],
        )
        pos = keys.get_indexer(labels.index)
        if (pos < 0).any():
            raise InputError(
                f"task {task.name}: {int((pos < 0).sum())} labelled entities are not in the "
                "tokenized input (restrict labels to the entities the tokenizer keeps)"
            )
        for name in SPLITS:
            sel = names.to_numpy() == name
            p = pos[sel]
            parts[name] = _Part(
                np.unique(ent_tile[p]), ent_tile[p], ent_slot[p], labels.to_numpy()[sel],
                labels.index[sel],
            )  # fmt: skip
    for name, part in parts.items():
        if len(part.y) == 0:
            raise InputError(f"task {task.name}: the {name} split has no labelled rows")
    return parts


def _batches(
    tiles: np.ndarray, ent_count: np.ndarray, config: SupervisedConfig, rng=None
) -> Iterator[np.ndarray]:
    """Tile rows grouped by similar entity count under the token budget (shuffled with rng)."""
    counts = np.maximum(ent_count[tiles], 1)
    jitter = rng.random(len(tiles)) if rng is not None else np.zeros(len(tiles))
    order = np.lexsort((jitter, counts))
    batches, start = [], 0
    while start < len(order):
        stop = start + 1
        # counts are ascending, so the last tile sets the padded length
        while (
            stop < len(order)
            and stop - start < config.max_tiles_per_batch
            and (stop - start + 1) * counts[order[stop]] <= config.tokens_per_batch
        ):
            stop += 1
        batches.append(tiles[order[start:stop]])
        start = stop
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    yield from batches


def _sample(part: _Part, n_tiles: int, rng: np.random.Generator) -> _Part:
    """The targets of a random sample of ``n_tiles`` of the part's tiles."""
    if len(part.tiles) <= n_tiles:
        return part
    tiles = np.sort(rng.choice(part.tiles, size=n_tiles, replace=False))
    keep = np.isin(part.target_tile, tiles)
    return _Part(
        tiles, part.target_tile[keep], part.target_slot[keep], part.y[keep], part.index[keep]
    )


class _Runner:
    """Forward passes over a split, with the targets' outputs gathered in target order."""

    def __init__(self, arrays: TileArrays, part: _Part, image_size: int | None, config) -> None:
        self.arrays, self.part, self.image_size, self.config = arrays, part, image_size, config
        # targets grouped by tile row, to gather them per batch
        self.order = np.argsort(part.target_tile, kind="stable")
        self.sorted_tiles = part.target_tile[self.order]

    def batches(
        self, rng=None, n_tiles: int | None = None
    ) -> Iterator[tuple[object, torch.Tensor, torch.Tensor, np.ndarray]]:
        """Batches of (a random sample of ``n_tiles`` of) the part's tiles."""
        tiles_all = self.part.tiles
        if n_tiles is not None and rng is not None and n_tiles < len(tiles_all):
            tiles_all = np.sort(rng.choice(tiles_all, size=n_tiles, replace=False))
        for tiles in _batches(tiles_all, self.arrays.ent_count, self.config, rng):
            batch = collate(self.arrays.take(tiles), self.image_size)
            lo = np.searchsorted(self.sorted_tiles, tiles, side="left")
            hi = np.searchsorted(self.sorted_tiles, tiles, side="right")
            idx = np.concatenate([self.order[a:b] for a, b in zip(lo, hi, strict=True)])
            row_of = {int(t): i for i, t in enumerate(tiles)}
            rows = np.array([row_of[int(t)] for t in self.part.target_tile[idx]], dtype=np.int64)
            yield batch, torch.from_numpy(rows), torch.from_numpy(self.part.target_slot[idx]), idx

    def predict(self, net: SupervisedTransformer) -> np.ndarray:
        out = np.zeros(len(self.part.y))
        net.eval()
        with torch.inference_mode():
            for batch, rows, slots, idx in self.batches():
                out[idx] = _select(net(batch), rows, slots).double().numpy()
        return out


def _select(out: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    return out[rows] if out.dim() == 1 else out[rows, slots]


@dataclass
class _Objective:
    """The task's loss, and how raw network outputs become outputs and validation scores.

    Binary tasks train on logits (positives re-weighted); others on standardised values.
    """

    kind: str
    loss_fn: nn.Module
    center: float = 0.0
    scale: float = 1.0

    @property
    def binary(self) -> bool:
        return self.kind == "binary"

    def output(self, raw: np.ndarray) -> np.ndarray:
        """Probabilities (binary) or values in the label's units."""
        return 1 / (1 + np.exp(-raw)) if self.binary else raw * self.scale + self.center

    def val_score(self, y: np.ndarray, raw: np.ndarray) -> float:
        """Higher is better: AUROC (or log-likelihood with one class), else -MAE."""
        out = self.output(raw)
        if self.binary:
            if len(np.unique(y)) == 2:
                return auroc(y, out)
            p = np.clip(out, 1e-7, 1 - 1e-7)
            return float(np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
        return -mae(y, np.maximum(out, 0.0) if self.kind == "count" else out)


def _objective(task: Task, y_train: np.ndarray) -> _Objective:
    """The loss and output scaling for ``task``, from the train labels."""
    if task.kind == "binary":
        n_pos = float(y_train.sum())
        if n_pos == 0 or n_pos == len(y_train):
            raise InputError(f"task {task.name}: the train split holds a single class")
        pos_weight = torch.tensor((len(y_train) - n_pos) / n_pos)
        return _Objective(task.kind, nn.BCEWithLogitsLoss(pos_weight=pos_weight), 0.0, 1.0)
    center, scale = float(y_train.mean()), float(y_train.std()) or 1.0
    return _Objective(task.kind, nn.HuberLoss(delta=1.0), center, scale)


@dataclass
class _Fit:
    """One seed's training: the best val score, its weights and epoch, and when it stopped."""

    score: float
    state: dict | None
    epoch: int
    stopped_at: int
    converged: bool  # val stopped improving: early-stopped, not capped


def train_supervised(
    arrays: TileArrays,
    labels: pd.Series,
    split: pd.DataFrame,
    task: Task,
    tokenizer_config: TokenizerConfig,
    tag_table: torch.Tensor,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    config: SupervisedConfig | None = None,
    image_size: int | None = None,
    progress: bool = False,
) -> list[ResultRow]:
    """Train and score the supervised transformer once per seed; one ResultRow per seed.

    ``arrays`` are the tokenized **masked** tiles (``task.remove`` applied), ``labels`` come
    from the original entities, indexed like the probes' labels.
    """
    config = config or SupervisedConfig()
    if config.width is not None:
        tokenizer_config = tokenizer_config.replace(width=config.width)
    if tokenizer_config.width % config.heads:
        raise InputError(f"tokenizer width {tokenizer_config.width} not divisible by heads")
    parts = _parts(arrays, labels, split, task)
    if config.max_val_tiles is not None:
        parts["val"] = _sample(parts["val"], config.max_val_tiles, np.random.default_rng(12345))
    objective = _objective(task, parts["train"].y.astype(float))
    runners = {name: _Runner(arrays, parts[name], image_size, config) for name in SPLITS}

    rows: list[ResultRow] = []
    for seed in seeds:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        net = SupervisedTransformer(tokenizer_config, tag_table, task.level, config)
        fit = _fit(net, runners, objective, rng, config, progress, f"{task.name} seed {seed}")
        if fit.state is not None:
            net.load_state_dict(fit.state)
        details = {"epochs": fit.epoch, "stopped_at": fit.stopped_at, "converged": fit.converged,
                   "depth": config.depth, "width": tokenizer_config.width}  # fmt: skip
        rows.append(_score(net, runners["test"], objective, task, seed, parts, fit.score, details))
    return rows


def _fit(
    net: SupervisedTransformer,
    runners: dict[str, _Runner],
    objective: _Objective,
    rng: np.random.Generator,
    config: SupervisedConfig,
    progress: bool,
    label: str,
) -> _Fit:
    """Train ``net`` epoch by epoch until val stops improving for ``patience`` epochs."""
    params = [p for p in net.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    train_y = runners["train"].part.y
    target = torch.as_tensor((train_y - objective.center) / objective.scale, dtype=torch.float32)
    best = (-math.inf, None, 0)
    stale, converged, epoch = 0, False, 0
    for epoch in range(1, config.max_epochs + 1):
        net.train()
        for batch, b_rows, b_slots, idx in runners["train"].batches(rng, config.tiles_per_epoch):
            optim.zero_grad()
            loss = objective.loss_fn(_select(net(batch), b_rows, b_slots), target[idx])
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            optim.step()
        score = objective.val_score(runners["val"].part.y, runners["val"].predict(net))
        if progress:
            print(f"  supervised {label} epoch {epoch}: val {score:.4f}")
        if score > best[0]:
            best, stale = (score, copy.deepcopy(net.state_dict()), epoch), 0
        else:
            stale += 1
            if stale >= config.patience:
                converged = True
                break
    return _Fit(best[0], best[1], best[2], epoch, converged)


def _score(
    net: SupervisedTransformer,
    test: _Runner,
    objective: _Objective,
    task: Task,
    seed: int,
    parts: dict[str, _Part],
    val_score: float,
    details: dict[str, Any],
) -> ResultRow:
    """Score the trained ``net`` on the test split, once."""
    out = objective.output(test.predict(net))
    y_test = parts["test"].y.astype(float)
    if objective.binary:
        pred = out
        metrics = compute_metrics("binary", y_test, (out >= 0.5).astype(float), out)
    else:
        pred = np.maximum(out, 0.0) if task.kind == "count" else out
        metrics = compute_metrics(task.kind, y_test, pred, None)
    return ResultRow(
        MODEL_NAME,
        task.name,
        PROBE_NAME,
        int(seed),
        metrics,
        details,
        val_score,
        len(parts["train"].y),
        len(parts["val"].y),
        len(y_test),
        test_index=parts["test"].index,
        test_y=y_test,
        test_output=np.asarray(pred, dtype=float),
    )
