"""TileTokenizer: shapes, masks, padding invariance, modality dropout, image tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geojepa.data.reader import open_dataset
from geojepa.errors import ConfigError
from geojepa.tokenize.collate import collate
from geojepa.tokenize.image import TILE_BOX, patch_boxes
from geojepa.tokenize.shards import TileArrays, tokenize_shard
from geojepa.tokenize.tags import UNKNOWN, TagVocabulary, build_tag_table
from geojepa.tokenize.tokenizer import (
    ENTITY,
    IMAGE_PATCH,
    IMAGE_WHOLE,
    TileTokenizer,
    TokenizerConfig,
)
from helpers.synthetic import write_synthetic_dataset

BASE = dict(width=24, geometry_points=8, geometry_hidden=32, image_size=16, patch_size=8)


def fake_embed(texts: list[str]) -> np.ndarray:
    return np.random.default_rng(len(texts)).normal(size=(len(texts), 10))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(vocab, tag table, all tiles of a small dataset with images as TileArrays)."""
    path = write_synthetic_dataset(
        tmp_path_factory.mktemp("tok") / "ds", n_shards=2, image_size=16, seed=7
    )
    ds = open_dataset(path)
    vocab = TagVocabulary.from_dataset(ds)
    table = build_tag_table(vocab, "fake", None, embed_fn=fake_embed)
    cfg = TokenizerConfig(**BASE)
    arrays = [tokenize_shard(t, e, vocab, cfg, seed=0) for _, t, e in ds.iter_shards()]
    return vocab, table, TileArrays.concat(arrays)


def make(table, seed=0, **kw) -> TileTokenizer:
    torch.manual_seed(seed)
    return TileTokenizer(TokenizerConfig(**{**BASE, **kw}), table).eval()


@pytest.mark.parametrize(
    "switches",
    [
        dict(use_tags=True, use_geometry=False, use_image=False),
        dict(use_tags=True, use_geometry=True, use_image=False),
        dict(use_tags=True, use_geometry=True, use_image=True),
        dict(use_tags=False, use_geometry=False, use_image=True),
    ],
)
def test_shapes_masks_and_boxes(data, switches) -> None:
    _, table, arrays = data
    tok = make(table, **switches)
    batch = collate(arrays.take(np.arange(6)), 16)
    out = tok(batch)
    b, e = batch.entity_valid.shape
    n_img = 1 + 4 if switches["use_image"] else 0
    n_ent = e if (switches["use_tags"] or switches["use_geometry"]) else 0
    assert out.n_entity_slots == n_ent
    assert out.tokens.shape == (b, n_ent + n_img, 24)
    assert out.boxes.shape == (b, n_ent + n_img, 8) and out.valid.shape == out.modality.shape
    if n_ent:
        assert torch.equal(out.valid[:, :n_ent], batch.entity_valid)
        assert (out.modality[:, :n_ent] == ENTITY).all()
        assert torch.equal(
            out.boxes[:, :n_ent][batch.entity_valid], batch.entity_box[batch.entity_valid]
        )
    if n_img:
        img = slice(n_ent, None)
        assert (out.modality[:, n_ent] == IMAGE_WHOLE).all()
        assert (out.modality[:, n_ent + 1 :] == IMAGE_PATCH).all()
        assert torch.equal(out.valid[:, img], batch.image_valid[:, None].expand(b, n_img))
        assert torch.allclose(out.boxes[0, n_ent], torch.tensor(TILE_BOX))
        assert torch.allclose(out.boxes[0, n_ent + 1 :], patch_boxes(16, 8))
    # padding is zero and invalid; real tokens are not zero
    assert (out.tokens[~out.valid] == 0).all()
    assert (out.tokens[out.valid].abs().sum(-1) > 0).all()
    assert torch.isfinite(out.tokens).all()


def test_padding_invariance(data) -> None:
    """A tile's tokens do not depend on the other tiles of its batch (eval mode)."""
    _, table, arrays = data
    tok = make(table, use_image=True)
    counts = arrays.ent_count
    small = int(np.argmin(np.where(counts > 0, counts, 99)))
    others = [i for i in np.argsort(-counts)[:5] if i != small]
    alone = tok(collate(arrays.take([small]), 16))
    mixed = tok(collate(arrays.take([*others, small]), 16))
    n = int(counts[small])
    e_alone, e_mixed = alone.n_entity_slots, mixed.n_entity_slots
    assert e_mixed > e_alone  # really padded differently
    k = len(others)
    torch.testing.assert_close(mixed.tokens[k, :n], alone.tokens[0, :n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        mixed.tokens[k, e_mixed:], alone.tokens[0, e_alone:], atol=1e-5, rtol=1e-5
    )
    assert not mixed.valid[k, n:e_mixed].any()


def test_modality_dropout_never_both(data) -> None:
    _, table, arrays = data
    p = 0.3
    tok = make(table, modality_dropout=p, fusion="sum")
    batch = collate(arrays, 16)
    with torch.no_grad():
        tags = tok.tag_embedding(batch.tag_ids)
        geom = tok.geometry_embedding(batch.geometry, batch.geometry_scalars)
        tok.missing_tags.fill_(50.0)
        tok.missing_geometry.fill_(-20.0)
    valid = batch.entity_valid
    kinds = []
    tok.train()
    for _ in range(20):
        with torch.no_grad():
            out, _ = tok.entity_tokens(batch)
        both = torch.isclose(out, tags + geom, atol=1e-5).all(-1)
        no_tag = torch.isclose(out, 50.0 + geom, atol=1e-4).all(-1)
        no_geom = torch.isclose(out, tags - 20.0, atol=1e-4).all(-1)
        assert ((both.int() + no_tag.int() + no_geom.int()) == 1)[valid].all()
        kinds.append(torch.stack([both[valid], no_tag[valid], no_geom[valid]]).float().mean(1))
    frac = torch.stack(kinds).mean(0)
    assert abs(frac[1] - p) < 0.05 and abs(frac[2] - p) < 0.05
    tok.eval()
    with torch.no_grad():
        out, _ = tok.entity_tokens(batch)
        assert torch.allclose(out[valid], (tags + geom)[valid], atol=1e-5)
        assert not out[~valid].any()  # computed on real entities only: padding stays zero


def test_gradients_and_frozen_table(data) -> None:
    _, table, arrays = data
    tok = make(table, use_image=True, fusion="concat").train()
    batch = collate(arrays.take(np.arange(8)), 16)
    b0, e0 = batch.entity_valid.nonzero()[0].tolist()
    batch.tag_ids[b0, e0, 0] = UNKNOWN  # one unknown tag: its vector is learned
    out = tok(batch)
    (out.tokens * out.valid[..., None]).square().sum().backward()
    names = {n for n, _ in tok.named_parameters()}
    assert "tag_table" not in names and "tag_table" in dict(tok.named_buffers())
    for name in ("unknown_tag", "tag_proj.weight", "geometry_mlp.0.weight", "fuse.weight",
                 "image_encoder.proj.weight"):  # fmt: skip
        grad = dict(tok.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        TokenizerConfig.from_dict({"use_tags": False, "use_geometry": False})
    with pytest.raises(ConfigError, match="multiple"):
        TokenizerConfig.from_dict({"image_size": 100, "patch_size": 16})
    with pytest.raises(ConfigError, match="did you mean 'width'"):
        TokenizerConfig.from_dict({"widht": 3})
    with pytest.raises(ConfigError, match="modality_dropout"):
        TokenizerConfig.from_dict({"modality_dropout": 0.7})
    cfg = TokenizerConfig()
    assert cfg.text_model == "all-MiniLM-L6-v2" and cfg.n_image_tokens == 197


def test_patch_boxes_order() -> None:
    boxes = patch_boxes(224, 16)
    assert boxes.shape == (196, 8)
    g = 1 / 14
    torch.testing.assert_close(boxes[0], torch.tensor([0, 0, g, 0, g, g, 0, g]))
    torch.testing.assert_close(boxes[1], torch.tensor([g, 0, 2 * g, 0, 2 * g, g, g, g]))
    torch.testing.assert_close(boxes[14, :2], torch.tensor([0.0, g]))  # second row, south
    with pytest.raises(ConfigError):
        patch_boxes(100, 16)


def test_timm_backbone(tmp_path, data) -> None:
    timm = pytest.importorskip("timm")
    _, table, arrays = data
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32)
    ckpt = tmp_path / "vit.pth"
    torch.save(model.state_dict(), ckpt)
    tok = make(table, use_image=True, image_size=32, patch_size=16,
               image_backbone="vit_tiny_patch16_224", image_checkpoint=str(ckpt))  # fmt: skip
    tok.train()
    assert not tok.image_encoder.backbone.training
    out = tok(collate(arrays.take(np.arange(3)), 16))
    assert out.tokens.shape[1] == out.n_entity_slots + 1 + 4


def test_layout_is_made_on_the_host_for_a_model_elsewhere(data) -> None:
    """The layout (boxes, modality, validity) of a host batch is made on the host even when
    the tokenizer's buffers live on another device (a model on a GPU; here the meta device),
    and it is the layout that the tokens carry."""
    _, table, arrays = data
    tok = make(table, use_image=True)
    batch = collate(arrays.take(np.arange(4)), 16)
    tokens = tok(batch)
    layout = tok.to("meta").layout(batch)
    assert layout.boxes.device.type == "cpu"
    assert layout.n_entity_slots == tokens.n_entity_slots
    for name in ("boxes", "modality", "valid"):
        assert torch.equal(getattr(layout, name), getattr(tokens, name)), name
