"""GeoJEPA model: padding invariance, NaN safety, batched predictor, EMA maths, loss."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from geojepa.errors import ConfigError
from geojepa.model import GeoJEPA, MaskingConfig, ModelConfig, Transformer
from geojepa.model.jepa import _gather, ema_momentum, masked_vicreg, pool_tiles, vicreg_terms
from geojepa.model.transformer import key_mask

D = 32
SMALL = ModelConfig(
    width=D, depth=2, heads=4, predictor_width=16, predictor_depth=2, predictor_heads=4
)


@dataclass
class FakeTokens:
    tokens: torch.Tensor
    boxes: torch.Tensor
    modality: torch.Tensor
    valid: torch.Tensor
    n_entity_slots: int
    geometry: torch.Tensor | None = None


class FakeTokenizer(nn.Module):
    """Per-token linear map of a dict batch: stands in for TileTokenizer."""

    def __init__(self, d: int = D, d_in: int = 12) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d)
        self.register_buffer("frozen_table", torch.randn(5, 3))  # like the tag table
        self.modes: list[bool] = []  # self.training at each call (teacher runs in eval mode)

    def layout(self, b: dict) -> FakeTokens:
        return FakeTokens(None, b["boxes"], b["modality"], b["valid"], b["x"].shape[1])

    def entity_index(self, b: dict) -> torch.Tensor:
        return b["valid"].reshape(-1).nonzero().squeeze(1)

    def image_features(self, b: dict) -> None:
        return None

    def forward(self, b: dict, entities=None, image_features=None, with_geometry=False):
        self.modes.append(self.training)
        x = self.lin(b["x"]) * b["valid"][..., None]
        return FakeTokens(x, b["boxes"], b["modality"], b["valid"], b["x"].shape[1])


def fake_batch(lengths: list[int], n_tok: int | None = None, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    n_tok = n_tok or max(lengths)
    b = len(lengths)
    valid = torch.arange(n_tok)[None] < torch.tensor(lengths)[:, None]
    x = torch.randn(b, n_tok, 12, generator=g) * valid[..., None]
    boxes = torch.rand(b, n_tok, 8, generator=g) * valid[..., None]
    modality = (torch.arange(n_tok)[None] >= torch.tensor(lengths)[:, None] // 2).long()
    return {"x": x, "boxes": boxes, "modality": modality * valid, "valid": valid}


def _model(seed: int = 0, **kw) -> GeoJEPA:
    torch.manual_seed(seed)
    return GeoJEPA(SMALL, FakeTokenizer(), **kw)


def test_tile_outputs_do_not_depend_on_the_batch() -> None:
    model = _model().eval()
    alone = fake_batch([7], seed=1)
    mixed = fake_batch([7, 40, 25], seed=2)
    for key in alone:  # put the same tile first, padded to 40 tokens
        mixed[key][0] = 0
        mixed[key][0, :7] = alone[key][0]
    h1, v1 = model.encode(alone)
    h2, v2 = model.encode(mixed)
    assert torch.equal(v1[0], v2[0, :7])
    torch.testing.assert_close(h1[0], h2[0, :7], atol=1e-5, rtol=1e-5)
    assert (h2[0, 7:] == 0).all()
    torch.testing.assert_close(
        model.tile_embedding(alone)[0], model.tile_embedding(mixed)[0], atol=1e-5, rtol=1e-5
    )


def test_fully_padded_rows_are_finite() -> None:
    enc = Transformer(D, 2, 4)
    x = torch.randn(3, 5, D)
    valid = torch.tensor([[True] * 5, [False] * 5, [True, False, False, False, False]])
    y = enc(x, valid)
    assert torch.isfinite(y).all()
    model = _model()
    batch = fake_batch([0, 1, 9])
    out = model(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    emb = model.tile_embedding(batch)
    assert torch.isfinite(emb).all() and (emb[0] == 0).all()


def test_batched_predictor_equals_one_call_per_target() -> None:
    """The real training step (`loss_from_tokens`) gives the loss of the published design, one
    predictor call per target, each fed *its own tile's* context."""
    import torch.nn.functional as F

    from geojepa.model.jepa import _gather

    model = _model(masking=MaskingConfig(num_targets=3)).eval()
    batch = fake_batch([18, 30, 24, 12], seed=3)
    tok = model.tokenizer(batch)
    plan = model.plan(batch, torch.Generator().manual_seed(5))
    masks = plan.masks
    with torch.no_grad():
        h, _ = model._target_outputs(batch)
        out = model.loss_from_tokens(tok, h, plan)
        k = masks.target_index.shape[1]
        assert k > 1 and tok.tokens.shape[0] > 1  # else a wrong pairing could not show
        prior = model.prior(tok.boxes, tok.modality)
        z = model.encoder(_gather(tok.tokens + prior, masks.context_index), masks.context_valid)
        ctx = z + _gather(prior, masks.context_index)
        total, count, preds = 0.0, 0.0, []
        for i in range(k):  # one call per target, each tile with its own context
            t_index, t_valid = masks.target_index[:, i], masks.target_valid[:, i]
            pred = model.predictor(ctx, masks.context_valid, _gather(prior, t_index), t_valid)
            per_token = F.smooth_l1_loss(pred, _gather(h, t_index), reduction="none").mean(-1)
            total += float((per_token * t_valid).sum())
            count += float(t_valid.sum())
            preds.append(pred)
    torch.testing.assert_close(out.pred_loss, torch.tensor(total / count), atol=1e-5, rtol=1e-5)
    stacked = torch.stack(preds, 1)  # [B,K,Lt,D], tile-major as in the batched call
    torch.testing.assert_close(out.reg_pred, masked_vicreg(stacked, masks.target_valid))


def test_vicreg_terms_match_a_direct_computation() -> None:
    """Variance hinge on the std of each dimension + squared off-diagonal covariance / D, over
    the real rows only, as written out with numpy."""
    import numpy as np

    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.2, 0.5, 1.0, 3.0, 0.1, 2.0])  # some dims under the hinge, some not
    x = torch.randn(3, 9, 6, generator=g) * scale
    x[..., 1] += 0.7 * x[..., 0]  # correlated dims: a real covariance term
    mask = torch.rand(3, 9, generator=g) < 0.7
    rows = x[mask].double().numpy()
    std = np.sqrt(rows.var(axis=0, ddof=1) + 1e-4)
    variance = np.maximum(0.0, 1.0 - std).mean()
    cov = np.cov(rows, rowvar=False)
    covariance = (np.sum(cov**2) - np.sum(np.diag(cov) ** 2)) / rows.shape[1]
    assert variance > 0.1 and covariance > 0.01  # both terms are really exercised
    got = masked_vicreg(x, mask).item()
    assert got == pytest.approx(variance + covariance, rel=1e-5)


def test_ema_update_maths_and_frozen_teacher() -> None:
    model = _model()
    online = dict(model.encoder.named_parameters())
    teacher = dict(model.target["encoder"].named_parameters())
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    before = {n: p.clone() for n, p in teacher.items()}
    tok_before = model.target["tokenizer"].lin.weight.clone()
    with torch.no_grad():
        model.tokenizer.lin.weight.mul_(-1.0)
    model.update_target(0.9)
    for n, p in teacher.items():
        torch.testing.assert_close(p, 0.9 * before[n] + 0.1 * online[n])
        assert not p.requires_grad
    # the tokenizer's learned parts are averaged too; frozen buffers are untouched
    torch.testing.assert_close(
        model.target["tokenizer"].lin.weight, 0.9 * tok_before + 0.1 * model.tokenizer.lin.weight
    )
    assert torch.equal(model.target["tokenizer"].frozen_table, model.tokenizer.frozen_table)
    model.train()
    assert not model.target.training and model.encoder.training
    assert ema_momentum(0, 100, 0.99, 0.99999) == pytest.approx(0.99)
    assert ema_momentum(50, 100, 0.99, 0.99999) == pytest.approx(0.994995)
    assert ema_momentum(500, 100, 0.99, 0.99999) == pytest.approx(0.99999)


def test_teacher_gets_no_gradient_and_loss_decreases() -> None:
    model = _model(masking=MaskingConfig(p_random=0.5, p_area=0.5, p_modality=0.0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    batch = fake_batch([20, 14, 30, 9, 25, 18])
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        out = model(batch, gen)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.update_target(0.99)
        losses.append(out.pred_loss.item())
    assert all(p.grad is None for p in model.target.parameters())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_padding_never_enters_the_loss() -> None:
    """Garbage in padded slots must not change the loss (same masks, same real tokens)."""
    model = _model()
    batch = fake_batch([10, 6], n_tok=12)
    dirty = {k: v.clone() for k, v in batch.items()}
    dirty["x"][~dirty["valid"]] = 1e3
    dirty["boxes"][~dirty["valid"]] = 0.5
    a = model(batch, torch.Generator().manual_seed(4))
    b = model(dirty, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a.loss, b.loss)


def test_masked_vicreg_and_pooling_ignore_padding() -> None:
    x = torch.randn(2, 5, 4)
    m = torch.tensor([[True, True, True, False, False], [True, True, False, False, False]])
    y = x.clone()
    y[~m] = 99.0
    torch.testing.assert_close(masked_vicreg(x, m), masked_vicreg(y, m))
    torch.testing.assert_close(pool_tiles(x * m[..., None], m), pool_tiles(y, m))
    pooled = pool_tiles(x, m)
    torch.testing.assert_close(pooled[1, :4], x[1, :2].amax(0))
    torch.testing.assert_close(pooled[1, 4:], x[1, :2].mean(0))


def test_bad_model_configs_are_rejected() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig.from_dict({"width": 30, "heads": 4})
    with pytest.raises(ConfigError, match="ema_momentum"):
        ModelConfig.from_dict({"ema_momentum": [0.999, 0.99]})


def real_model(config: ModelConfig = SMALL, **tokenizer) -> GeoJEPA:
    """A GeoJEPA over the real tile tokenizer (a random tag table), in eval mode."""
    from geojepa.tokenize.tokenizer import TileTokenizer, TokenizerConfig

    cfg = TokenizerConfig(width=D, geometry_points=4, geometry_hidden=16, **tokenizer)
    torch.manual_seed(0)
    table = torch.randn(10, 8)
    table[:2] = 0
    return GeoJEPA(config, TileTokenizer(cfg, table)).eval()


def real_batch(model: GeoJEPA, n_ent: list[int], e: int, seed: int):
    """A random `TileBatch` of tiles with ``n_ent`` entities, ``e`` entity slots."""
    from geojepa.tokenize.batch import TileBatch

    s = model.tokenizer.geometry_mlp[0].in_features - 8
    g = torch.Generator().manual_seed(seed)
    b = len(n_ent)
    valid = torch.arange(e)[None] < torch.tensor(n_ent)[:, None]
    return TileBatch(
        region_ids=[f"16/{i}/0" for i in range(b)],
        feature_ids=[[f"node/{j}" for j in range(n)] for n in n_ent],
        entity_valid=valid,
        tag_ids=torch.randint(2, 10, (b, e, 3), generator=g) * valid[..., None],
        geometry=torch.rand(b, e, 4, 2, generator=g) * valid[..., None, None],
        geometry_scalars=torch.rand(b, e, s, generator=g) * valid[..., None],
        entity_box=torch.rand(b, e, 8, generator=g) * valid[..., None],
        image=None,
        image_valid=torch.zeros(b, dtype=torch.bool),
    )


def test_real_tokenizer_padding_invariance() -> None:
    model = real_model()

    def batch(n_ent: list[int], e: int, seed: int):
        return real_batch(model, n_ent, e, seed)

    alone = batch([5], 5, 1)
    mixed = batch([5, 17], 17, 2)
    for f in ("tag_ids", "geometry", "geometry_scalars", "entity_box"):
        t = getattr(mixed, f)
        t[0] = 0
        t[0, :5] = getattr(alone, f)[0]
    torch.testing.assert_close(
        model.tile_embedding(alone)[0], model.tile_embedding(mixed)[0], atol=1e-5, rtol=1e-5
    )
    ent, valid = model.entity_embeddings(mixed)
    assert ent.shape[:2] == valid.shape == (2, 17)


def test_count_pooling_appends_log_token_count() -> None:
    x = torch.randn(3, 5, 4)
    m = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])
    pooled = pool_tiles(x, m, count=True)
    assert pooled.shape == (3, 9)
    torch.testing.assert_close(pooled[:, :8], pool_tiles(x, m))
    torch.testing.assert_close(pooled[:, 8], torch.log1p(torch.tensor([5.0, 2.0, 0.0])))
    model = GeoJEPA(SMALL.replace(tile_pooling="max_mean_count"), FakeTokenizer()).eval()
    assert model.tile_width == 2 * D + 1
    emb = model.tile_embedding(fake_batch([3, 7]))
    assert emb.shape == (2, 2 * D + 1)
    torch.testing.assert_close(emb[:, -1], torch.log1p(torch.tensor([3.0, 7.0])))


@pytest.mark.parametrize("packed", [True, False])
def test_target_layers_average_the_last_blocks_normed_outputs(packed: bool) -> None:
    torch.manual_seed(0)
    enc = Transformer(D, 3, 4, packed=packed).eval()
    x = torch.randn(2, 6, D)
    valid = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    outs, y, mask = [], x, key_mask(valid)
    enc.packed = False
    for block in enc.blocks:  # the padded reference, block by block
        y = block(y, mask)
        outs.append(enc.norm(y))
    enc.packed = packed
    got = enc(x, valid, layers=2)
    want = (outs[-1] + outs[-2]) / 2
    torch.testing.assert_close(got[valid], want[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc(x, valid)[valid], outs[-1][valid], atol=1e-5, rtol=1e-5)
    model = GeoJEPA(SMALL.replace(target_layers=2), FakeTokenizer())
    assert model(fake_batch([4, 9]), torch.Generator().manual_seed(0)).loss.isfinite()


def test_dropout_acts_on_the_student_in_training_only() -> None:
    torch.manual_seed(0)
    model = GeoJEPA(SMALL.replace(dropout=0.3), FakeTokenizer())
    batch = fake_batch([6, 9])
    x, valid = torch.randn(2, 9, D), batch["valid"]
    model.train()
    a, b = model.encoder(x, valid), model.encoder(x, valid)
    assert not torch.allclose(a[valid], b[valid])  # dropout draws differ
    model.eval()
    torch.testing.assert_close(model.encoder(x, valid), model.encoder(x, valid))
    model.train()  # the teacher stays deterministic while the student trains
    torch.testing.assert_close(model.encode(batch)[0], model.encode(batch)[0])


def test_teacher_outputs_are_layer_normed_whatever_its_last_norm_learned() -> None:
    """The targets (and the embeddings) are layer-normed without affine, as the paper's teacher
    outputs: a teacher whose own final norm learned a scale and shift still gives mean 0, var 1."""
    model = _model().eval()
    with torch.no_grad():
        model.target["encoder"].norm.weight.fill_(3.0)
        model.target["encoder"].norm.bias.fill_(0.5)
    h, valid = model.encode(fake_batch([9, 5], seed=1))
    rows = h[valid]
    torch.testing.assert_close(rows.mean(-1), torch.zeros(len(rows)), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        rows.var(-1, unbiased=False), torch.ones(len(rows)), atol=1e-3, rtol=0
    )


def _per_target_reference(model: GeoJEPA, batch: dict, plan) -> tuple[float, float]:
    """(Σ_k mean over target k's tokens, mean over all target tokens), one predictor call per
    target, written out."""
    import torch.nn.functional as F

    masks = plan.masks
    tok = model.tokenizer(batch)
    h, _ = model._target_outputs(batch)
    prior = model.prior(tok.boxes, tok.modality)
    z = model.encoder(_gather(tok.tokens + prior, masks.context_index), masks.context_valid)
    ctx = z + _gather(prior, masks.context_index)
    per_target, total, count = 0.0, 0.0, 0.0
    for i in range(masks.target_index.shape[1]):
        t_index, t_valid = masks.target_index[:, i], masks.target_valid[:, i]
        pred = model.predictor(ctx, masks.context_valid, _gather(prior, t_index), t_valid)
        err = F.smooth_l1_loss(pred, _gather(h, t_index), reduction="none").mean(-1)
        s, n = float((err * t_valid).sum()), float(t_valid.sum())
        per_target += s / max(n, 1.0)
        total, count = total + s, count + n
    return per_target, total / count


def test_per_target_sum_loss_sums_each_targets_mean() -> None:
    cfg = MaskingConfig(num_targets=3, p_random=1.0, p_area=0.0, p_modality=0.0,
                        random_targets="per_target")  # fmt: skip
    torch.manual_seed(0)
    model = GeoJEPA(
        SMALL.replace(pred_loss_reduction="per_target_sum"), FakeTokenizer(), cfg
    ).eval()
    batch = fake_batch([18, 30, 24, 12], seed=3)
    plan = model.plan(batch, torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(batch, plan=plan)
        want, token_mean = _per_target_reference(model, batch, plan)
    torch.testing.assert_close(out.pred_loss, torch.tensor(want), atol=1e-5, rtol=1e-5)
    assert want > 2.0 * token_mean  # K = 3 targets: the two reductions really differ
    model.config = SMALL  # the default reduction: the mean over every target token
    with torch.no_grad():
        out = model(batch, plan=plan)
    torch.testing.assert_close(out.pred_loss, torch.tensor(token_mean), atol=1e-5, rtol=1e-5)


def test_variance_and_covariance_weights_are_separate() -> None:
    batch = fake_batch([20, 14, 30, 9])

    def step(**weights):
        torch.manual_seed(0)
        model = GeoJEPA(SMALL.replace(**weights), FakeTokenizer())
        return model(batch, torch.Generator().manual_seed(1))

    var = step(var_weight=1.0, cov_weight=0.0)
    cov = step(var_weight=0.0, cov_weight=1.0)
    v, c = var.var_loss, cov.cov_loss  # the unweighted terms (predictions + context)
    assert v > 0.05 and c > 1e-4 and float(var.cov_loss) == 0.0 == float(cov.var_loss)
    torch.testing.assert_close(v + c, var.reg_pred + var.reg_context)
    paper = step(var_weight=0.25, cov_weight=0.01)
    torch.testing.assert_close(paper.var_loss, 0.25 * v)
    torch.testing.assert_close(paper.cov_loss, 0.01 * c)
    torch.testing.assert_close(paper.loss, paper.pred_loss + 0.25 * v + 0.01 * c)


def test_older_configs_with_reg_weight_load_with_the_same_loss() -> None:
    """``reg_weight`` (configs written before the split) weighted both terms: it still does."""
    old = SMALL.model_dump()
    del old["var_weight"], old["cov_weight"]
    cfg = ModelConfig.from_dict({**old, "reg_weight": 0.3})
    assert cfg.var_weight == cfg.cov_weight == 0.3 and "reg_weight" not in cfg.model_dump()
    torch.manual_seed(0)
    out = GeoJEPA(cfg, FakeTokenizer())(fake_batch([12, 7]), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.loss, out.pred_loss + 0.3 * (out.reg_pred + out.reg_context))
    with pytest.raises(ConfigError, match="not both"):
        ModelConfig.from_dict({"reg_weight": 0.3, "var_weight": 0.25})
    with pytest.raises(ConfigError, match="unknown config key 'var_weigth'"):
        ModelConfig.from_dict({"var_weigth": 0.25})
    with pytest.raises(ConfigError, match="pred_loss_reduction"):
        ModelConfig.from_dict({"pred_loss_reduction": "mean"})


def test_vicreg_terms_are_the_two_parts_of_masked_vicreg() -> None:
    x = torch.randn(2, 7, 5) * torch.tensor([0.1, 0.3, 1.0, 2.0, 0.5])
    m = torch.rand(2, 7) < 0.8
    var, cov = vicreg_terms(x, m)
    assert var > 0 and cov > 0
    torch.testing.assert_close(var + cov, masked_vicreg(x, m))


def test_ema_scope_encoder_averages_the_encoder_and_shares_tokenizer_and_prior() -> None:
    torch.manual_seed(0)
    model = GeoJEPA(SMALL.replace(ema_scope="encoder"), FakeTokenizer())
    assert set(model.target) == {"encoder"}
    assert not any(k.startswith(("target.tokenizer", "target.prior")) for k in model.state_dict())
    teacher = dict(model.target["encoder"].named_parameters())
    before = {n: p.clone() for n, p in teacher.items()}
    tok_before = model.tokenizer.lin.weight.clone()
    prior_before = {n: p.clone() for n, p in model.prior.named_parameters()}
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    model.update_target(0.9)
    online = dict(model.encoder.named_parameters())
    for n, p in teacher.items():
        torch.testing.assert_close(p, 0.9 * before[n] + 0.1 * online[n])
    # the EMA touches nothing else: the tokenizer and prior are the student's own
    assert torch.equal(model.tokenizer.lin.weight, tok_before)
    for n, p in model.prior.named_parameters():
        assert torch.equal(p, prior_before[n])
    # the teacher reads the student's tokenizer (in eval mode) ...
    batch = fake_batch([8, 5])
    h1 = model.encode(batch)[0]
    with torch.no_grad():
        model.tokenizer.lin.weight.mul_(-1.0)
    assert not torch.allclose(model.encode(batch)[0], h1)
    model.train()
    model.tokenizer.modes.clear()
    model(batch, torch.Generator().manual_seed(0))
    assert model.tokenizer.modes == [True, False] and model.tokenizer.training
    # ... while with ema_scope "all" it holds its own (EMA) copy
    model = _model()
    h1 = model.encode(batch)[0]
    with torch.no_grad():
        model.tokenizer.lin.weight.mul_(-1.0)
    torch.testing.assert_close(model.encode(batch)[0], h1)


def test_predictor_embed_mlp() -> None:
    torch.manual_seed(0)
    model = GeoJEPA(SMALL.replace(predictor_embed="mlp"), FakeTokenizer())
    embed = model.predictor.embed
    assert isinstance(embed, nn.Sequential)
    assert [type(m) for m in embed] == [nn.Linear, nn.GELU, nn.Linear]
    assert (embed[0].in_features, embed[2].out_features) == (D, SMALL.predictor_width)
    out = model(fake_batch([10, 6]), torch.Generator().manual_seed(0))
    out.loss.backward()
    assert embed[0].weight.grad is not None and embed[0].weight.grad.abs().sum() > 0
    assert isinstance(_model().predictor.embed, nn.Linear)  # the default


def test_batch_standardised_targets_are_about_what_tells_tokens_apart() -> None:
    """target_norm="token_batch": every dimension of the targets has mean 0 and std 1 over the
    batch's real tokens, so predicting one constant vector scores ~0.4 (smooth-L1 of N(0, 1)),
    while layer-normed targets that share most of their vector let a constant score near 0.
    pred_skill's parts: the predictor's token-mean loss against the batch mean's."""
    from geojepa.model.jepa import standardise

    h = torch.randn(3, 7, 16) * 0.1 + torch.randn(16)  # a shared vector + a little per token
    valid = torch.arange(7)[None] < torch.tensor([7, 4, 2])[:, None]
    z = standardise(h, valid)
    real = z[valid]
    torch.testing.assert_close(real.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(real.std(0, unbiased=False), torch.ones(16), atol=5e-3, rtol=0)
    assert float(z[~valid].abs().max()) == 0.0

    batch = fake_batch([20, 14, 30, 9])
    n_tok = batch["valid"].shape[1]
    torch.manual_seed(2)  # teacher outputs that share most of their vector, as trained ones do
    shared = (
        torch.nn.functional.layer_norm(
            torch.randn(SMALL.width) + 0.1 * torch.randn(4, n_tok, SMALL.width), (SMALL.width,)
        )
        * batch["valid"][..., None]
    )

    def step(norm: str):
        torch.manual_seed(0)
        model = GeoJEPA(SMALL.replace(target_norm=norm), FakeTokenizer())
        plan = model.plan(batch, torch.Generator().manual_seed(1))
        tok = model.tokenizer(batch, plan.entities, None)
        return model.loss_from_tokens(tok, shared, plan)

    token, standardised = step("token"), step("token_batch")
    assert float(standardised.mean_loss) > 0.3 > 10 * float(token.mean_loss)
    torch.testing.assert_close(token.token_loss, token.pred_loss)  # "tokens" reduction
    for out in (token, standardised):  # the monitor's parts are the losses they name
        assert float(out.token_loss) > 0.0 and float(out.mean_loss) > 0.0


def test_predictor_query_box_geometry_tells_the_predictor_each_targets_shape() -> None:
    """predictor_query="box_geometry": the tokens carry each entity's geometry part alone, and
    it changes what the predictor is asked (with "box" it is never read)."""
    import dataclasses

    batch = real_batch(real_model(), [9, 6, 12], 12, seed=3)

    def losses(query: str) -> tuple[float, float]:
        model = real_model(SMALL.replace(predictor_query=query))
        plan = model.plan(batch, torch.Generator().manual_seed(1))
        with torch.no_grad():
            tok = model.tokenizer(batch, plan.entities, None, with_geometry=True)
            h, _ = model._target_outputs(batch, plan)
            geom = model.tokenizer.geometry_embedding(batch.geometry, batch.geometry_scalars)
            valid = batch.entity_valid
            torch.testing.assert_close(tok.geometry[valid], geom[valid])
            assert not tok.geometry[~valid].any()
            assert model.tokenizer(batch).geometry is None  # made only when asked for
            if query == "box_geometry":  # a training step asks for it
                assert torch.isfinite(model(batch, torch.Generator().manual_seed(1)).loss)
            blank = dataclasses.replace(tok, geometry=torch.zeros_like(tok.geometry))
            return (
                float(model.loss_from_tokens(tok, h, plan).pred_loss),
                float(model.loss_from_tokens(blank, h, plan).pred_loss),
            )

    told, blanked = losses("box_geometry")
    assert abs(told - blanked) > 1e-4
    told, blanked = losses("box")
    assert told == blanked
    with pytest.raises(ConfigError, match="use_geometry"):
        from geojepa.model import ModelSpec

        ModelSpec.from_dict(
            {"model": {"predictor_query": "box_geometry"}, "tokenizer": {"use_geometry": False}}
        )
