"""Masking invariants: disjointness, exact strategy probabilities, area rule, min context."""

from __future__ import annotations

import math

import pytest
import torch

from geojepa.errors import ConfigError
from geojepa.model.masking import STRATEGIES, MaskGenerator, MaskingConfig


def _batch(b: int = 64, n_tok: int = 60, seed: int = 0, images: bool = True):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, n_tok + 1, (b,), generator=g)
    valid = torch.arange(n_tok)[None] < lengths[:, None]
    modality = torch.zeros(b, n_tok, dtype=torch.long)
    if images:
        modality[:, n_tok // 2 :] = 1
    boxes = torch.rand(b, n_tok, 8, generator=g)
    return valid, modality, boxes


def _draw(cfg: MaskingConfig, seed: int = 1, **kw):
    valid, modality, boxes = _batch(**kw)
    masks = MaskGenerator(cfg)(valid, modality, boxes, torch.Generator().manual_seed(seed))
    return valid, modality, boxes, masks


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_disjoint_padding_and_dense_indices(strategy: str) -> None:
    probs = {f"p_{s}": float(s == strategy) for s in STRATEGIES}
    cfg = MaskingConfig(**probs)
    valid, _, _, m = _draw(cfg)
    # context and targets are disjoint, and only valid tokens are ever selected
    assert not (m.context[:, None] & m.targets).any()
    assert not (m.context & ~valid).any()
    assert not (m.targets & ~valid[:, None]).any()
    # every valid token of a sample with >= 2 tokens is either context or target
    n = valid.sum(-1)
    covered = m.context | m.targets.any(1)
    assert torch.equal(covered, valid)
    ok = n >= 2
    assert (m.context.sum(-1)[ok] >= 1).all()
    assert (m.targets.any(1).sum(-1)[ok] >= 1).all()
    # samples with < 2 valid tokens: no targets at all
    assert not m.targets[~ok].any()
    # dense indices reproduce the membership masks
    # (padding slots point at token 0 but carry weight 0, so add counts instead of writing)
    rebuilt = torch.zeros(m.context.shape, dtype=torch.long)
    rebuilt.scatter_add_(1, m.context_index, m.context_valid.long())
    assert torch.equal(rebuilt, m.context.long())
    rebuilt_t = torch.zeros(m.targets.shape, dtype=torch.long)
    rebuilt_t.scatter_add_(2, m.target_index, m.target_valid.long())
    assert torch.equal(rebuilt_t, m.targets.long())


def test_min_context_is_met_without_copying_targets() -> None:
    # Huge rectangles would leave almost no context.
    cfg = MaskingConfig(
        p_random=0.0, p_area=1.0, p_modality=0.0, area_fraction=(0.9, 1.0),
        min_context_fraction=0.4,
    )  # fmt: skip
    valid, _, _, m = _draw(cfg, b=200)
    n = valid.sum(-1)
    ok = n >= 2
    need = torch.ceil(n.float() * 0.4).long().clamp(max=n - 1)
    assert (m.context.sum(-1)[ok] >= need[ok]).all()
    assert not (m.context[:, None] & m.targets).any()
    assert (m.targets.any(1).sum(-1)[ok] >= 1).all()


def test_strategy_probabilities_are_exact() -> None:
    cfg = MaskingConfig(p_random=0.1, p_contiguous=0.2, p_area=0.3, p_modality=0.4)
    b = 40_000
    valid = torch.ones(b, 4, dtype=torch.bool)
    modality = torch.tensor([0, 0, 1, 1]).expand(b, 4)
    boxes = torch.rand(b, 4, 8)
    m = MaskGenerator(cfg)(valid, modality, boxes, torch.Generator().manual_seed(3))
    freq = torch.bincount(m.strategy, minlength=4).float() / b
    for got, want in zip(freq.tolist(), cfg.probabilities, strict=True):
        # 4.5 binomial standard deviations
        assert abs(got - want) < 4.5 * math.sqrt(want * (1 - want) / b), (freq, want)


def test_modality_falls_back_to_random_for_single_modality_tiles() -> None:
    cfg = MaskingConfig(p_random=0.0, p_area=0.0, p_modality=1.0)
    _, _, _, m = _draw(cfg, images=False)
    assert (m.strategy == STRATEGIES.index("random")).all()
    valid, modality, _, m = _draw(cfg, images=True, n_tok=40)
    both = ((modality == 0) & valid).any(-1) & ((modality == 1) & valid).any(-1)
    assert (m.strategy[both] == STRATEGIES.index("modality")).all()
    # with min context 0.15, a modality sample's context is exactly one modality plus at
    # most the top-up; its targets are only of the other modality
    for i in torch.nonzero(both).flatten().tolist():
        tmods = modality[i][m.targets[i].any(0)].unique()
        assert tmods.numel() == 1


def test_area_rule_centroid_in_rectangle() -> None:
    cfg = MaskingConfig(p_random=0.0, p_area=1.0, p_modality=0.0, min_context_fraction=0.0)
    valid = torch.ones(1, 400, dtype=torch.bool)
    # tiny boxes on a 20x20 grid: centroid = grid point
    xs, ys = torch.meshgrid(
        torch.linspace(0.025, 0.975, 20), torch.linspace(0.025, 0.975, 20), indexing="ij"
    )
    pts = torch.stack([xs.flatten(), ys.flatten()], -1)
    boxes = pts.repeat(1, 4).view(1, 400, 8)
    m = MaskGenerator(cfg)(valid, torch.zeros(1, 400, dtype=torch.long), boxes,
                           torch.Generator().manual_seed(5))  # fmt: skip
    for k in range(cfg.num_targets):
        sel = pts[m.targets[0, k]]
        if sel.numel() == 0:
            continue
        # the selected points fill an axis-aligned rectangle: every grid point inside the
        # bounding box of the selection is selected too
        lo, hi = sel.min(0).values, sel.max(0).values
        inside = ((pts >= lo) & (pts <= hi)).all(-1)
        assert torch.equal(inside, m.targets[0, k])
        frac = (hi - lo + 0.05).prod()
        assert cfg.area_fraction[0] * 0.5 <= frac <= cfg.area_fraction[1] * 1.6


def test_seeded_and_reproducible() -> None:
    cfg = MaskingConfig()
    a = _draw(cfg, seed=7)[3]
    b = _draw(cfg, seed=7)[3]
    c = _draw(cfg, seed=8)[3]
    assert torch.equal(a.targets, b.targets) and torch.equal(a.context, b.context)
    assert not torch.equal(a.targets, c.targets)


def test_bad_configs_are_rejected() -> None:
    with pytest.raises(ConfigError, match="sum to 1"):
        MaskingConfig.from_dict({"p_random": 0.5, "p_area": 0.6})
    with pytest.raises(ConfigError, match="unknown config key 'p_aera'"):
        MaskingConfig.from_dict({"p_aera": 0.6})
    with pytest.raises(ConfigError, match="area_fraction"):
        MaskingConfig.from_dict({"area_fraction": [0.5, 0.2]})
