"""Resume is always possible, and never from a checkpoint that does not match the run (issue 19;
docs/reliability.md, "Ctrl-C and killed runs")."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from geojepa.cli import main
from geojepa.train import pretrain
from geojepa.train.module import PretrainModule
from helpers.configs import tiny_pretrain_config
from helpers.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    return write_synthetic_dataset(root / "ds", n_shards=2, tiles_per_shard=(5, 8),
                                   entities_per_tile=(0, 25), seed=3)  # fmt: skip


def test_a_run_killed_before_last_ckpt_resumes_from_the_newest_checkpoint(
    dataset, tmp_path, monkeypatch
):
    """SIGKILL right after `checkpoints/step=2.ckpt` was written, before `last.ckpt`."""
    run = tmp_path / "run"
    pretrain(dataset, run, config=tiny_pretrain_config(), max_steps=2, progress=False)
    ckpts = run / "checkpoints"
    assert (ckpts / "step=2.ckpt").is_file()
    (ckpts / "last.ckpt").unlink()  # the state a kill between the two saves leaves
    loaded: list[int] = []
    original = PretrainModule.on_load_checkpoint

    def spy(self, checkpoint):
        loaded.append(checkpoint["global_step"])
        return original(self, checkpoint)

    monkeypatch.setattr(PretrainModule, "on_load_checkpoint", spy)
    pretrain(dataset, run, config=tiny_pretrain_config(), max_steps=4, progress=False)
    assert loaded == [2]
    assert (ckpts / "last.ckpt").is_file() and (run / "model.safetensors").is_file()


def test_an_edited_run_config_is_one_line_not_a_state_dict_traceback(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    pretrain(dataset, run, config=tiny_pretrain_config(), max_steps=2, progress=False)
    config = run / "checkpoints" / "config.json"
    data = json.loads(config.read_text())
    data["model"]["depth"] = 3
    config.write_text(json.dumps(data))
    assert main(["pretrain", str(dataset), "-o", str(run), "--max-steps", "4", "-q"]) == 2
    err = capsys.readouterr().err
    assert "does not match" in err and "model.depth" in err
    assert "Traceback" not in err and "Missing key" not in err


def test_a_run_with_only_damaged_checkpoints_says_so(dataset, tmp_path, capsys):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    assert main(["pretrain", str(dataset), "-o", str(tmp_path / "run"), "--max-steps", "1"]) == 1
    err = capsys.readouterr().err
    assert "no complete checkpoint" in err and "Traceback" not in err


def test_sigterm_in_pretrain_saves_a_checkpoint_and_exits_143(dataset, tmp_path, monkeypatch,
                                                              capsys):  # fmt: skip
    """Slurm's or Kubernetes' SIGTERM: a clean stop at the step boundary, as after Ctrl-C.
    Stopped in the first step, before the first periodic checkpoint (every 2 steps), and the
    run directory moved before resuming: each once left a Lightning-versioned last-v1.ckpt
    beside a stale last.ckpt."""
    real_step = PretrainModule.training_step

    def step(self, batch, batch_idx):
        if self.global_step == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(PretrainModule, "training_step", step)
    cfg = tmp_path / "cfg.json"
    tiny_pretrain_config().save(cfg)
    out = tmp_path / "run"
    args = ["pretrain", str(dataset), "-o", str(out), "--config", str(cfg), "--max-steps", "6"]
    assert main(args) == 143
    err = capsys.readouterr().err
    assert "interrupted at step" in err and "Traceback" not in err
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert not (out / "model.safetensors").exists()
    monkeypatch.undo()
    moved = out.rename(tmp_path / "moved")
    assert main([*args[:3], str(moved), *args[4:]]) == 0
    assert torch.load(moved / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert sorted(p.name for p in (moved / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
