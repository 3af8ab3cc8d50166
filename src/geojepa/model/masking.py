"""Context/target masking for JEPA pretraining, vectorised over the batch.

Every sample (``strategy_per="sample"``, the default) or every batch (``"batch"``, the paper's
choice: one strategy for the whole batch) draws one strategy with exactly the configured
probabilities (one uniform number through the inverse cumulative distribution; unlike
``torch.multinomial`` this has no device→host check), then selects K target sets and a context
set among its *valid* tokens:

- ``random`` with ``random_targets="dealt"`` (default): a random ``random_target_fraction`` of
  the tokens are targets, dealt round-robin into the K targets (disjoint, each ~fraction/K);
  with ``"per_target"`` (the paper's): *each* of the K targets is its own random
  ``random_target_fraction`` of the tokens, so targets may overlap each other and the context
  is what no target holds (with 0.45 and K = 4 about 0.55⁴ ≈ 9 % of the tokens, so the minimum
  context repair below usually decides its size);
- ``contiguous``: K runs of ``contiguous_target_fraction`` of the tokens in token order (runs may
  overlap each other, as I-JEPA's blocks do);
- ``area``: K axis-aligned rectangles in tile coordinates with an area fraction drawn uniformly
  from ``area_fraction`` (the paper: fixed 0.35, i.e. ``(0.35, 0.35)``) and an aspect ratio
  (w/h, log-uniform) from ``area_aspect``, placed wholly inside the tile; a token belongs to a
  rectangle's target iff the centroid of its 4 box corners falls inside it;
- ``modality``: context = the tokens of one modality (entity vs. image), targets = the tokens of
  the other, dealt into K targets. A tile that lacks one of the two modalities cannot be masked
  this way and falls back to ``random`` (documented, deterministic given the generator). A
  tags-only model has one modality, so for it ``p_modality`` is in effect more ``p_random``;
  the tags-only presets therefore give modality's share to random explicitly.

The context is every valid token that is in no target, so ``context ∩ targets = ∅`` by
construction. Two repairs keep each sample useful without ever breaking disjointness:

1. if a sample has no target token at all (e.g. every rectangle fell on empty ground), one random
   context token becomes target 0;
2. if the context holds fewer than ``max(1, ceil(min_context_fraction * n))`` tokens, random
   target tokens are *removed from every target* and given to the context (never copied): the
   targets shrink, keeping at least one target token in all.

Samples with fewer than 2 valid tokens cannot have both a context and a target: all their valid
tokens (0 or 1) form the context and they have no target, so they add nothing to the loss.
Padding tokens are never context or target.

The result is dense and padded for batched gathering: context indices ``[B, Lc]`` + mask and
target indices ``[B, K, Lt]`` + mask. Padded index slots point at token 0 and are masked out.
Computing ``Lc``/``Lt`` needs one small device→host copy per call (two integers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator

from geojepa.config import Config

STRATEGIES = ("random", "contiguous", "area", "modality")


class MaskingConfig(Config):
    """Masking strategy mix and sizes.

    Defaults: the paper's strategy mix and target count (DESIGN.md §1.4) with this project's
    earlier choices for the rest (targets dealt from one random draw, area 0.15–0.35, strategy
    per sample, min context 0.15); the ``paper-*`` and ``cpu-paper`` presets use the paper's
    forms. docs/method.md lists every difference.
    """

    p_random: float = Field(0.2, ge=0.0, le=1.0)
    p_contiguous: float = Field(0.0, ge=0.0, le=1.0)
    p_area: float = Field(0.6, ge=0.0, le=1.0)
    p_modality: float = Field(0.2, ge=0.0, le=1.0)
    num_targets: int = Field(4, ge=1, le=64)
    random_target_fraction: float = Field(0.45, gt=0.0, lt=1.0)
    contiguous_target_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    area_fraction: tuple[float, float] = (0.15, 0.35)
    area_aspect: tuple[float, float] = (0.5, 2.0)
    min_context_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    random_targets: Literal["dealt", "per_target"] = Field(
        "dealt",
        description="random strategy: dealt = one draw of random_target_fraction split into "
        "num_targets disjoint targets; per_target = each target draws the fraction on its own "
        "(the paper; targets may overlap)",
    )
    strategy_per: Literal["sample", "batch"] = Field(
        "sample", description="draw the masking strategy per sample or once per batch (paper)"
    )

    @model_validator(mode="after")
    def _check(self) -> MaskingConfig:
        total = self.p_random + self.p_contiguous + self.p_area + self.p_modality
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"strategy probabilities must sum to 1, got {total:.6g}")
        lo, hi = self.area_fraction
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"area_fraction must satisfy 0 < min <= max <= 1, got {lo}, {hi}")
        lo, hi = self.area_aspect
        if not 0.0 < lo <= hi:
            raise ValueError(f"area_aspect must satisfy 0 < min <= max, got {lo}, {hi}")
        return self

    @property
    def probabilities(self) -> tuple[float, float, float, float]:
        """Probabilities in the order of STRATEGIES."""
        return (self.p_random, self.p_contiguous, self.p_area, self.p_modality)


@dataclass
class Masks:
    """Dense, padded context/target selection for a batch of B samples."""

    context_index: torch.Tensor  # long [B, Lc] token positions (padding slots: 0)
    context_valid: torch.Tensor  # bool [B, Lc]
    target_index: torch.Tensor  # long [B, K, Lt]
    target_valid: torch.Tensor  # bool [B, K, Lt]
    strategy: torch.Tensor  # long [B] strategy actually used (index into STRATEGIES)
    context: torch.Tensor  # bool [B, L] membership (for tests and statistics)
    targets: torch.Tensor  # bool [B, K, L]


def _uniform(shape: tuple[int, ...], gen: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(shape, generator=gen, device=device)


def _rank(scores: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """Rank (0 = first) of each eligible position by score; ineligible positions rank last."""
    scores = scores.masked_fill(~eligible, math.inf)
    return scores.argsort(dim=-1).argsort(dim=-1)


def _deal(selected: torch.Tensor, k: int, gen, device) -> torch.Tensor:
    """Split each row's selected tokens at random into k disjoint, near-equal targets [B,k,L]."""
    rank = _rank(_uniform(selected.shape, gen, device), selected)
    slot = rank % k
    ks = torch.arange(k, device=device).view(1, k, 1)
    return selected.unsqueeze(1) & (slot.unsqueeze(1) == ks)


def _compact(member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions of True entries first (in token order): indices, validity, count per row."""
    count = member.sum(-1)
    # Stable sort of (not member) puts member positions first, keeping their token order.
    order = (~member).to(torch.int8).argsort(dim=-1, stable=True)
    return order, member.gather(-1, order), count


class MaskGenerator:
    """Draws context/target masks for batches of tokens (see the module docstring)."""

    def __init__(self, config: MaskingConfig) -> None:
        self.config = config

    def __call__(
        self,
        valid: torch.Tensor,
        modality: torch.Tensor,
        boxes: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> Masks:
        """valid bool [B,L], modality long [B,L] (0 = entity, >0 = image), boxes float [B,L,8].

        Every strategy's targets are drawn for every sample (vectorised), then each sample
        keeps its own strategy's; the draws from ``generator`` come in a fixed order.
        """
        cfg = self.config
        b = valid.shape[0]
        gen = generator
        n = valid.sum(-1)  # [B]
        strategy = _draw_strategies(cfg, b, gen, valid.device)
        t_random = _random_targets(cfg, valid, gen)
        t_contig = _contiguous_targets(cfg, valid, gen)
        t_area = _area_targets(cfg, valid, boxes, gen)
        t_modality, both = _modality_targets(cfg.num_targets, valid, modality, gen)

        # Samples whose tile lacks a modality fall back to random.
        strategy = torch.where((strategy == 3) & ~both, torch.zeros_like(strategy), strategy)
        choice = strategy.view(b, 1, 1)
        targets = torch.where(
            choice == 0,
            t_random,
            torch.where(choice == 1, t_contig, torch.where(choice == 2, t_area, t_modality)),
        )
        # Samples with < 2 valid tokens: no targets, their token (if any) is context.
        targets = targets & (n >= 2).view(b, 1, 1)
        context, targets = _repair(cfg, valid, targets, gen)

        c_idx, c_valid, c_count = _compact(context)
        t_idx, t_valid, t_count = _compact(targets)
        lc, lt = torch.stack([c_count.max(), t_count.max()]).clamp(min=1).tolist()
        return Masks(
            context_index=c_idx[:, :lc] * c_valid[:, :lc],
            context_valid=c_valid[:, :lc],
            target_index=t_idx[..., :lt] * t_valid[..., :lt],
            target_valid=t_valid[..., :lt],
            strategy=strategy,
            context=context,
            targets=targets,
        )


def _draw_strategies(
    cfg: MaskingConfig, b: int, gen: torch.Generator | None, dev: torch.device
) -> torch.Tensor:
    """long [B]: each sample's strategy (index into STRATEGIES), by the inverse CDF."""
    cdf = torch.tensor(cfg.probabilities, dtype=torch.float64).cumsum(0)
    cdf = (cdf / cdf[-1]).to(device=dev, dtype=torch.float32)
    cdf[-1] = 2.0  # u < 1 always lands in a bucket; zero-probability buckets are empty
    u = _uniform((b,), gen, dev)
    if cfg.strategy_per == "batch":  # one strategy for the whole batch
        u = u[:1].repeat(b)
    return torch.searchsorted(cdf, u, right=True)


def _random_targets(
    cfg: MaskingConfig, valid: torch.Tensor, gen: torch.Generator | None
) -> torch.Tensor:
    """bool [B,K,L]: a fraction of the tokens, dealt into k disjoint targets, or that
    fraction drawn for each target on its own (they may overlap)."""
    dev = valid.device
    b, n_tok = valid.shape
    k = cfg.num_targets
    n_rand = (valid.sum(-1).to(torch.float32) * cfg.random_target_fraction).ceil().long()
    if cfg.random_targets == "per_target":
        rank_k = _rank(_uniform((b, k, n_tok), gen, dev), valid.unsqueeze(1).expand(b, k, -1))
        return valid.unsqueeze(1) & (rank_k < n_rand[:, None, None])
    rank = _rank(_uniform((b, n_tok), gen, dev), valid)
    t_random = valid.unsqueeze(1) & (rank < n_rand[:, None]).unsqueeze(1)
    ks = torch.arange(k, device=dev).view(1, k, 1)
    return t_random & ((rank % k).unsqueeze(1) == ks)


def _contiguous_targets(
    cfg: MaskingConfig, valid: torch.Tensor, gen: torch.Generator | None
) -> torch.Tensor:
    """bool [B,K,L]: k runs in token order over the valid tokens."""
    b, k = valid.shape[0], cfg.num_targets
    nf = valid.sum(-1).to(torch.float32)
    pos = valid.long().cumsum(-1) - 1  # position among valid tokens
    run = (nf * cfg.contiguous_target_fraction).round().clamp(min=1)
    start = (_uniform((b, k), gen, valid.device) * (nf[:, None] - run[:, None] + 1)).floor()
    p = pos.unsqueeze(1).float()
    t_contig = (p >= start[..., None]) & (p < (start + run[:, None])[..., None])
    return t_contig & valid.unsqueeze(1)


def _area_targets(
    cfg: MaskingConfig, valid: torch.Tensor, boxes: torch.Tensor, gen: torch.Generator | None
) -> torch.Tensor:
    """bool [B,K,L]: k rectangles; a token is in a target iff its box centroid is inside."""
    dev = valid.device
    b, n_tok = valid.shape
    k = cfg.num_targets
    a_lo, a_hi = cfg.area_fraction
    r_lo, r_hi = (math.log(v) for v in cfg.area_aspect)
    area = a_lo + (a_hi - a_lo) * _uniform((b, k), gen, dev)
    aspect = torch.exp(r_lo + (r_hi - r_lo) * _uniform((b, k), gen, dev))
    w = (area * aspect).sqrt().clamp(max=1.0)
    h = (area / aspect).sqrt().clamp(max=1.0)
    x0 = _uniform((b, k), gen, dev) * (1.0 - w)
    y0 = _uniform((b, k), gen, dev) * (1.0 - h)
    centre = boxes.float().view(b, n_tok, 4, 2).mean(2)  # [B,L,2]
    cx, cy = centre[..., 0].unsqueeze(1), centre[..., 1].unsqueeze(1)
    t_area = (cx >= x0[..., None]) & (cx < (x0 + w)[..., None])
    return t_area & (cy >= y0[..., None]) & (cy < (y0 + h)[..., None]) & valid.unsqueeze(1)


def _modality_targets(
    k: int, valid: torch.Tensor, modality: torch.Tensor, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """bool [B,K,L]: context = one modality, targets = the other (dealt into k targets);
    and bool [B]: whether the sample has both modalities (else it falls back to random)."""
    is_ent = valid & (modality == 0)
    is_img = valid & (modality != 0)
    both = is_ent.any(-1) & is_img.any(-1)
    ctx_is_ent = _uniform((valid.shape[0],), gen, valid.device) < 0.5
    tgt_mod = torch.where(ctx_is_ent[:, None], is_img, is_ent)
    return _deal(tgt_mod, k, gen, valid.device), both


def _repair(
    cfg: MaskingConfig, valid: torch.Tensor, targets: torch.Tensor, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The module docstring's two repairs; returns (context bool [B,L], targets [B,K,L])."""
    dev = valid.device
    b, n_tok = valid.shape
    n = valid.sum(-1)
    nf = n.to(torch.float32)
    ks = torch.arange(cfg.num_targets, device=dev).view(1, cfg.num_targets, 1)

    # Repair 1: at least one target token (when the sample has >= 2 tokens).
    union = targets.any(1)
    empty = (n >= 2) & ~union.any(-1)
    first = _rank(_uniform((b, n_tok), gen, dev), valid) == 0
    pick = empty[:, None] & first
    targets = targets | (pick.unsqueeze(1) & (ks == 0))
    union = targets.any(1)
    context = valid & ~union

    # Repair 2: minimum context, by removing tokens from the targets (never copying).
    need = (nf * cfg.min_context_fraction).ceil().long().clamp(min=1)
    need = need.minimum((n - 1).clamp(min=0))
    n_union = union.sum(-1)
    deficit = (need - context.sum(-1)).clamp(min=0).minimum((n_union - 1).clamp(min=0))
    urank = _rank(_uniform((b, n_tok), gen, dev), union)
    move = union & (urank < deficit[:, None])
    targets = targets & ~move.unsqueeze(1)
    context = context | move
    return context, targets
