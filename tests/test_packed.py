"""Packed layout == padded layout, on real OSM tiles with skewed sizes; tiles never mix.

The batch is real Neubrandenburg zoom-16 tiles holding 1 to 511 entities (the data's whole
range), so the padded layout is mostly padding while the packed one holds only real tokens.
Everything runs on CPU in float32; tolerances are 1e-5 relative.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geojepa.data.config import PrepareConfig
from geojepa.model.transformer import Block, Packing, document_mask, flex_attention
from geojepa.tokenize.collate import collate
from geojepa.tokenize.shards import TokenizedShards
from geojepa.tokenize.tags import PAD, UNKNOWN, TagVocabulary
from geojepa.train.config import preset_config
from geojepa.train.export import build_model

RTOL = 1e-5


@pytest.fixture(scope="module")
def real_batch(neubrandenburg_pbf, tmp_path_factory):
    from geojepa.data.prepare import prepare_tiles

    out = tmp_path_factory.mktemp("nb") / "nb16"
    ds = prepare_tiles(neubrandenburg_pbf, out, PrepareConfig(zoom=16), progress=False)
    cfg = preset_config("cpu-small")
    vocab = TagVocabulary.from_dataset(ds)
    arrays = TokenizedShards(ds, vocab, cfg.tokenizer, seed=0, cache=False).load_all()
    counts = arrays.ent_count
    # skewed sizes: the biggest tile, some mid-sized ones and several tiny ones
    picks = [int(np.argmax(counts))]
    for want in (1, 1, 2, 3, 7, 18, 60, 150):
        picks.append(int(np.flatnonzero(counts >= want)[0]))
    batch = collate(arrays.take(np.array(picks)), None)
    torch.manual_seed(0)
    table = torch.randn(len(vocab), 24)
    table[[PAD, UNKNOWN]] = 0.0
    model = build_model(cfg, table)
    return model, batch, ds


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def _step(model, batch, packed: bool):
    model.set_packed(packed).train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # modality dropout draws
    out = model(batch, torch.Generator().manual_seed(2))
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def test_batch_is_skewed(real_batch) -> None:
    _, batch, _ = real_batch
    n = batch.entity_valid.sum(1)
    assert int(n.max()) == 511 and int(n.min()) == 1  # the data's full range
    assert batch.entity_valid.float().mean() < 0.35  # the padded layout is mostly padding


def test_packed_and_padded_give_the_same_loss_and_gradients(real_batch) -> None:
    model, batch, _ = real_batch
    packed, g_packed = _step(model, batch, packed=True)
    padded, g_padded = _step(model, batch, packed=False)
    for name in ("loss", "pred_loss", "reg_pred", "reg_context", "n_targets"):
        a, b = getattr(packed, name), getattr(padded, name)
        assert abs(float(a) - float(b)) <= RTOL * abs(float(b)), name
    assert g_packed.keys() == g_padded.keys() and len(g_padded) > 20
    for name, g in g_padded.items():
        assert _rel(g_packed[name], g) <= RTOL, name


def test_packed_and_padded_give_the_same_embeddings(real_batch) -> None:
    model, batch, _ = real_batch
    model.eval()
    tiles = {p: model.set_packed(p).tile_embedding(batch) for p in (True, False)}
    ents = {p: model.set_packed(p).entity_embeddings(batch) for p in (True, False)}
    assert _rel(tiles[True], tiles[False]) <= RTOL
    for b in range(len(batch)):  # per tile, so that the small tiles count as much as the big one
        assert _rel(tiles[True][b], tiles[False][b]) <= RTOL
        v = ents[False][1][b]
        assert torch.equal(ents[True][1][b], v)
        assert _rel(ents[True][0][b][v], ents[False][0][b][v]) <= RTOL
    model.set_packed(True)


def test_skewed_batches_attend_in_length_groups_with_the_same_outputs(real_batch) -> None:
    """On CPU a skewed batch is attended per group of similar lengths (one padded layout would
    make every tile pay the longest tile's L²), with the single layout's outputs and gradients;
    a batch of similar lengths keeps its one layout."""
    _, batch, _ = real_batch
    valid = batch.entity_valid
    p = Packing.from_valid(valid)
    assert p.groups is not None and len(p.groups.shape) > 1
    assert 4 * sum(b * n * n for b, n in p.groups.shape) < valid.shape[0] * valid.shape[1] ** 2
    torch.manual_seed(0)
    block = Block(32, 4)
    x = torch.randn(int(valid.sum()), 32, requires_grad=True)
    single = Packing(p.index, p.seq, p.batch, p.length, p.mask)  # no groups: one [B,L] layout
    results = []
    for packing in (p, single):
        y = block(x, packing)
        (grad,) = torch.autograd.grad(y.square().sum(), x)
        results.append((y, grad))
    (y, grad), (y_one, grad_one) = results
    assert _rel(y, y_one) <= RTOL and _rel(grad, grad_one) <= RTOL
    assert Packing.from_valid(torch.ones(5, 7, dtype=torch.bool)).groups is None


def test_a_tile_never_attends_to_another_tile(real_batch) -> None:
    """Changing one tile's input changes its own outputs and no other tile's, packed."""
    model, batch, _ = real_batch
    model.set_packed(True).eval()
    h, valid = model.encode(batch)
    changed = batch.to("cpu")
    changed.geometry = batch.geometry.clone()
    changed.geometry[0] += 0.5  # tile 0, the biggest one
    h2, _ = model.encode(changed)
    assert (h2[0] - h[0]).abs().max() > 1e-3
    others = valid[1:]
    torch.testing.assert_close(h2[1:][others], h[1:][others], rtol=0, atol=1e-6)
    # also within the predictor (context and mask tokens share one packed sequence)
    pred = model.predictor.eval()
    ctx, tgt = torch.randn(3, 5, 64), torch.randn(3, 4, 64)
    cv = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    tv = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    y = pred(ctx, cv, tgt, tv)
    ctx2 = ctx.clone()
    ctx2[1] += 1.0
    y2 = pred(ctx2, cv, tgt, tv)
    assert (y2[1] - y[1]).abs().max() > 1e-3
    torch.testing.assert_close(y2[[0, 2]][tv[[0, 2]]], y[[0, 2]][tv[[0, 2]]], rtol=0, atol=1e-6)
    model.train()


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.skipif(flex_attention is None, reason="this PyTorch has no FlexAttention")
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=GPU)])
def test_flex_document_mask_path_matches_dense(device) -> None:
    """The CUDA path (FlexAttention with a document mask) against the dense one: on CPU the
    values (FlexAttention runs eagerly there, forward only), on a GPU the compiled kernel's
    values and gradients."""
    torch.manual_seed(0)
    block = Block(32, 4).to(device)
    # tiles 0 and 4 span blocks of 128; the last block is ragged. (On CPU FlexAttention runs
    # eagerly and applies the mask to every pair; which blocks the compiled CUDA kernel may
    # skip the mask for is checked against create_block_mask in the next test.)
    valid = torch.arange(300)[None] < torch.tensor([300, 3, 9, 1, 290])[:, None]
    dense = Packing.from_valid(valid.to(device))
    flex = Packing.from_valid(valid.to(device))
    flex.block_mask = document_mask(flex.seq)
    x = torch.randn(int(valid.sum()), 32, device=device)
    tol = 1e-5 if device == "cpu" else 2e-4  # the GPU kernels may sum in another order
    with torch.no_grad():
        a = block(x, dense)
        b = block(x, flex)
        x2 = x.clone()
        x2[flex.seq == 0] += 1.0  # change tile 0 only
        c = block(x2, flex)
    assert b.shape == a.shape == x.shape
    torch.testing.assert_close(b, a, rtol=tol, atol=tol)
    torch.testing.assert_close(c[flex.seq != 0], b[flex.seq != 0], rtol=0, atol=1e-6)
    if device == "cuda":  # training runs the compiled kernel's backward too
        grads = []
        for packing in (dense, flex):
            xg = x.clone().requires_grad_(True)
            (block(xg, packing) ** 2).sum().backward()
            grads.append(xg.grad)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(flex_attention is None, reason="this PyTorch has no FlexAttention")
def test_document_mask_has_the_blocks_of_the_token_mask() -> None:
    """The block mask built from tile ranges is the one the N × N token mask gives: the same
    partial and full blocks, for many small tiles, tiles spanning blocks and a ragged end."""
    from torch.nn.attention.flex_attention import create_block_mask

    g = torch.Generator().manual_seed(0)
    kinds = torch.zeros(2, dtype=torch.int64)
    for _ in range(12):
        lens = torch.cat([torch.randint(1, 40, (25,), generator=g),
                          torch.randint(100, 400, (3,), generator=g)])  # fmt: skip
        lens = lens[torch.randperm(len(lens), generator=g)]
        seq = torch.repeat_interleave(torch.arange(len(lens)), lens)
        n = seq.shape[0]
        ref = create_block_mask(lambda b, h, q, k, s=seq: s[q] == s[k], None, None, n, n, "cpu")
        ours = document_mask(seq)
        assert ours.shape == ref.shape
        for name in ("kv_num_blocks", "full_kv_num_blocks", "q_num_blocks", "full_q_num_blocks"):
            torch.testing.assert_close(getattr(ours, name), getattr(ref, name), msg=name)
        assert torch.equal(ours.to_dense(), ref.to_dense())
        kinds += torch.stack([ref.kv_num_blocks.sum(), ref.full_kv_num_blocks.sum()])
    assert (kinds > 0).all()  # partial and full blocks both occurred


def test_default_cap_keeps_every_entity_of_the_shared_data(real_batch) -> None:
    """No Neubrandenburg z16 tile (max 511) loses entities under any preset's default cap
    (Montevideo z16, max 960, fits too: the cap is 1024)."""
    from geojepa.train.config import PRESETS

    _, _, ds = real_batch
    most = max(int(ds.read_tiles(s, columns=["n_entities"]).column(0).to_numpy().max())
               for s in ds.shards)  # fmt: skip
    assert most == 511
    for name in PRESETS:
        assert preset_config(name).tokenizer.max_entities >= 960, name
