"""Optional torch.compile of the transformer blocks: same function, same state_dict keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch._dynamo.utils import counters

from geojepa.data.reader import open_dataset
from geojepa.model import compile as model_compile
from geojepa.model.transformer import Block
from geojepa.tokenize.loader import make_dataloader
from geojepa.tokenize.tags import TagVocabulary
from geojepa.train import PretrainConfig, preset_config, pretrain
from geojepa.train.export import build_model
from geojepa.train.pretrain import resolve_config
from helpers.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def synthetic_ds(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ds") / "tiles"
    return write_synthetic_dataset(
        path, n_shards=2, tiles_per_shard=(6, 9), entities_per_tile=(2, 30), seed=0
    )


def _tiny(**trainer) -> PretrainConfig:
    cfg = preset_config("cpu-small")
    data = cfg.model_dump()
    data["model"].update(depth=1, predictor_depth=1)
    data["data"]["batch_size"] = 4
    data["trainer"].update(trainer)
    return PretrainConfig.from_dict(data)


def test_compiled_blocks_keep_keys_and_function(synthetic_ds: Path) -> None:
    """Dynamo traces every block (eager backend: no C++ build), state_dict keys unchanged."""
    cfg = preset_config("cpu-small")
    ds = open_dataset(synthetic_ds)
    vocab = TagVocabulary.from_dataset(ds)
    table = torch.randn(len(vocab), 384)
    torch.manual_seed(0)
    plain = build_model(cfg, table).train()
    torch.manual_seed(0)
    compiled = build_model(cfg, table).train()
    n = model_compile.compile_blocks(compiled, backend="eager")
    # student encoder, predictor and EMA teacher encoder
    assert n == 2 * cfg.model.depth + cfg.model.predictor_depth
    assert sum(isinstance(m, Block) for m in compiled.modules()) == n
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert not any("_orig_mod" in k for k in compiled.state_dict())
    # all blocks share one code object: its graphs (grad mode × width × 0/1 sizes) fit the limit
    assert torch._dynamo.config.recompile_limit >= 12

    batch = next(iter(make_dataloader(ds, vocab, cfg.tokenizer, 6, False, 0)))
    frames = counters["frames"]["ok"]
    torch.manual_seed(1)  # the step also draws from the global generator
    out_plain = plain(batch, torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    out_comp = compiled(batch, torch.Generator().manual_seed(1))
    assert counters["frames"]["ok"] > frames  # the blocks really went through Dynamo
    torch.testing.assert_close(out_comp.loss, out_plain.loss)
    out_comp.loss.backward()
    assert compiled.encoder.blocks[0].qkv.weight.grad is not None


def test_pretrain_compile_option(synthetic_ds: Path, tmp_path: Path, monkeypatch) -> None:
    """``trainer.compile`` compiles the blocks; checkpoint and model files keep plain keys."""
    assert resolve_config("cpu-small").trainer.compile is False
    assert resolve_config("cpu-small", compiled=True).trainer.compile is True
    calls = []
    real = model_compile.compile_blocks

    def eager(model, **kw):  # the eager backend keeps the test fast (no C++ build)
        calls.append(model)
        return real(model, backend="eager")

    monkeypatch.setattr(model_compile, "compile_blocks", eager)
    run = pretrain(
        synthetic_ds, tmp_path / "run", config=_tiny(max_steps=2), compiled=True, progress=False
    )
    assert len(calls) == 1
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["geojepa"]["config"]["trainer"]["compile"] is True
    keys = [k[len("model.") :] for k in ckpt["state_dict"]]
    weights = load_file(str(run / "model.safetensors"))
    for names in (keys, list(weights)):
        assert names and not any("_orig_mod" in k for k in names)
    plain = build_model(_tiny(), torch.zeros(3, 384)).state_dict()
    assert set(keys) == set(plain)
