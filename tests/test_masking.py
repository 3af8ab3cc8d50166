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


@pytest.mark.parametrize(
    ("strategy", "random_targets"),
    [(s, "dealt") for s in STRATEGIES] + [("random", "per_target"), ("modality", "per_target")],
)
def test_disjoint_padding_and_dense_indices(strategy: str, random_targets: str) -> None:
    probs = {f"p_{s}": float(s == strategy) for s in STRATEGIES}
    cfg = MaskingConfig(**probs, random_targets=random_targets)
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


def _all_valid(b: int, n_tok: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(b, n_tok, dtype=torch.bool)
    modality = torch.zeros(b, n_tok, dtype=torch.long)
    return valid, modality, torch.rand(b, n_tok, 8, generator=g)


def test_dealt_random_targets_split_the_target_fraction() -> None:
    """Dealt (default): ceil(0.45·n) tokens in all, split into K disjoint, near-equal targets."""
    cfg = MaskingConfig(p_random=1.0, p_area=0.0, p_modality=0.0, min_context_fraction=0.0)
    valid, modality, boxes = _all_valid(16, 200)
    m = MaskGenerator(cfg)(valid, modality, boxes, torch.Generator().manual_seed(0))
    want = math.ceil(200 * cfg.random_target_fraction)  # 90
    assert (m.targets.any(1).sum(-1) == want).all()
    assert (m.targets.sum(1) <= 1).all()  # disjoint
    sizes = m.targets.sum(-1)
    assert (sizes.max(1).values - sizes.min(1).values <= 1).all()
    assert (m.context.sum(-1) == 200 - want).all()


def test_per_target_random_targets_each_draw_the_fraction_and_may_overlap() -> None:
    """Per target (the paper's): every target holds ceil(0.45·n) tokens on its own, targets
    overlap each other, the context is exactly the tokens of no target."""
    cfg = MaskingConfig(
        p_random=1.0, p_area=0.0, p_modality=0.0, min_context_fraction=0.0,
        random_targets="per_target",
    )  # fmt: skip
    valid, modality, boxes = _all_valid(16, 200)
    m = MaskGenerator(cfg)(valid, modality, boxes, torch.Generator().manual_seed(0))
    want = math.ceil(200 * cfg.random_target_fraction)
    assert (m.targets.sum(-1) == want).all()  # [B,K]: each target its own 45 %
    assert (m.targets.sum(1) >= 2).any()  # some token is in two targets
    assert torch.equal(m.context, valid & ~m.targets.any(1))
    assert not (m.context[:, None] & m.targets).any()
    # with K = 4 the context is what remains: about 0.55⁴ ≈ 9 % of the tokens
    frac = m.context.sum(-1).float().mean().item() / 200
    assert 0.05 < frac < 0.14


def test_per_target_min_context_shrinks_targets_never_copies() -> None:
    cfg = MaskingConfig(
        p_random=1.0, p_area=0.0, p_modality=0.0, min_context_fraction=0.3,
        random_targets="per_target",
    )  # fmt: skip
    valid, modality, boxes = _batch(b=200, n_tok=60, images=False)
    m = MaskGenerator(cfg)(valid, modality, boxes, torch.Generator().manual_seed(2))
    n = valid.sum(-1)
    ok = n >= 2
    need = torch.ceil(n.float() * 0.3).long().clamp(min=1).minimum(n - 1)
    assert (m.context.sum(-1)[ok] >= need[ok]).all()
    assert not (m.context[:, None] & m.targets).any()
    assert torch.equal(m.context | m.targets.any(1), valid)  # every token: context or target
    # the targets shrank below the drawn fraction to make room
    drawn = torch.ceil(n.float() * cfg.random_target_fraction).long()
    assert (m.targets.sum(-1) <= drawn[:, None]).all()
    assert (m.targets.sum(-1)[ok] < drawn[ok, None]).any()


def test_strategy_per_batch_is_one_strategy_per_batch_with_the_configured_mix() -> None:
    cfg = MaskingConfig(p_random=0.2, p_area=0.5, p_modality=0.3, strategy_per="batch")
    valid = torch.ones(6, 4, dtype=torch.bool)
    modality = torch.tensor([0, 0, 1, 1]).expand(6, 4)
    boxes = torch.rand(6, 4, 8)
    gen = torch.Generator().manual_seed(4)
    masker = MaskGenerator(cfg)
    drawn = []
    for _ in range(3000):
        s = masker(valid, modality, boxes, gen).strategy
        assert (s == s[0]).all()  # every tile of the batch: one strategy
        drawn.append(int(s[0]))
    freq = torch.bincount(torch.tensor(drawn), minlength=4).float() / len(drawn)
    for got, want in zip(freq.tolist(), cfg.probabilities, strict=True):
        assert abs(got - want) < 4.5 * math.sqrt(want * (1 - want) / len(drawn)) + 1e-9


def test_strategy_per_batch_still_falls_back_per_tile_without_both_modalities() -> None:
    cfg = MaskingConfig(p_random=0.0, p_area=0.0, p_modality=1.0, strategy_per="batch")
    valid, modality, _, m = _draw(cfg, images=True, n_tok=40)
    both = ((modality == 0) & valid).any(-1) & ((modality == 1) & valid).any(-1)
    assert (m.strategy[both] == STRATEGIES.index("modality")).all()
    assert (m.strategy[~both] == STRATEGIES.index("random")).all()


def test_fixed_area_fraction_gives_rectangles_of_that_area() -> None:
    """area_fraction (0.35, 0.35), the paper's: every rectangle covers 35 % of the tile."""
    cfg = MaskingConfig(
        p_random=0.0, p_area=1.0, p_modality=0.0, min_context_fraction=0.0,
        area_fraction=(0.35, 0.35),
    )  # fmt: skip
    g = 50  # a 50x50 grid of point tokens: the share of points inside ≈ the area
    xs, ys = torch.meshgrid(torch.arange(g) / g + 0.01, torch.arange(g) / g + 0.01, indexing="ij")
    pts = torch.stack([xs.flatten(), ys.flatten()], -1)
    b = 8
    boxes = pts.repeat(1, 4).view(1, g * g, 8).expand(b, -1, -1)
    valid = torch.ones(b, g * g, dtype=torch.bool)
    m = MaskGenerator(cfg)(valid, torch.zeros(b, g * g, dtype=torch.long), boxes,
                           torch.Generator().manual_seed(1))  # fmt: skip
    share = m.targets.sum(-1).float() / (g * g)
    assert ((share - 0.35).abs() < 0.04).all(), share


def test_paper_masking_fields_are_typed_and_unknown_keys_rejected() -> None:
    with pytest.raises(ConfigError, match="random_targets"):
        MaskingConfig.from_dict({"random_targets": "overlapping"})
    with pytest.raises(ConfigError, match="strategy_per"):
        MaskingConfig.from_dict({"strategy_per": "epoch"})
    with pytest.raises(ConfigError, match="unknown config key 'strategy_pre'"):
        MaskingConfig.from_dict({"strategy_pre": "batch"})
