"""benchmarks/scaling.py: a resumed run's pretraining minutes leave out the time it stood
stopped; a recipe pooled over pretraining seeds gets an interval holding both noises; the
gap to the target is the shift that lifts every interval above zero."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _scaling():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        "bench_scaling", ROOT / "benchmarks" / "scaling.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_minutes_of_a_resumed_run_count_each_start_from_its_resume_step(tmp_path: Path) -> None:
    scaling = _scaling()
    run = tmp_path / "scaling-x"
    (run / "checkpoints").mkdir(parents=True)
    t0 = 1_000_000.0
    # started at t0, step 600 at +10 min, stopped; re-run 60 min later from 600: step 1200
    # 12 min after the re-run's start
    record = {
        "started_unix": t0,
        "attempts": [
            {"started_unix": t0, "from_step": 0},
            {"started_unix": t0 + 70 * 60, "from_step": 600},
        ],
    }
    (tmp_path / "scaling-x.json").write_text(json.dumps(record))
    for step, minutes in ((600, 10), (1200, 82)):
        ckpt = run / "checkpoints" / f"step={step}.ckpt"
        ckpt.write_bytes(b"")
        os.utime(ckpt, (t0 + minutes * 60, t0 + minutes * 60))
    assert scaling._pretrain_minutes(run, 600) == 10.0
    assert scaling._pretrain_minutes(run, 1200) == 22.0  # not 82: the 60 stopped minutes
    assert scaling._pretrain_minutes(run, 1800) is None
    # an older record (one start, no attempts) still reads from its start
    (tmp_path / "scaling-x.json").write_text(json.dumps({"started_unix": t0}))
    assert scaling._pretrain_minutes(run, 600) == 10.0


def test_minutes_of_a_run_stopped_between_checkpoints_count_up_to_its_stop(
    tmp_path: Path,
) -> None:
    import torch

    scaling = _scaling()
    run = tmp_path / "scaling-x"
    (run / "checkpoints").mkdir(parents=True)
    t0 = 1_000_000.0
    (tmp_path / "scaling-x.json").write_text(
        json.dumps({"attempts": [{"started_unix": t0, "from_step": 0}]})
    )
    # the first start wrote step 600 at +2 min and was stopped at step 716, +3 min
    step600 = run / "checkpoints" / "step=600.ckpt"
    step600.write_bytes(b"")
    os.utime(step600, (t0 + 120, t0 + 120))
    last = run / "checkpoints" / "last.ckpt"
    torch.save({"global_step": 716}, last)
    os.utime(last, (t0 + 180, t0 + 180))
    # the re-run records where the first start stopped, and resumes from 716
    attempts = scaling._next_attempts(json.loads((tmp_path / "scaling-x.json").read_text()), run)
    assert attempts[0]["stopped_unix"] == t0 + 180
    assert attempts[1]["from_step"] == 716
    attempts[1]["started_unix"] = t0 + 3600  # an hour later; step 2400 8 minutes after that
    (tmp_path / "scaling-x.json").write_text(json.dumps({"attempts": attempts}))
    step2400 = run / "checkpoints" / "step=2400.ckpt"
    step2400.write_bytes(b"")
    os.utime(step2400, (t0 + 3600 + 480, t0 + 3600 + 480))
    assert scaling._pretrain_minutes(run, 600) == 2.0
    assert scaling._pretrain_minutes(run, 2400) == 11.0  # 3 + 8, no step=716.ckpt needed
    # a start that crashed before writing anything adds no minutes
    attempts.insert(1, {"started_unix": t0 + 600, "from_step": 716, "stopped_unix": t0 + 180})
    (tmp_path / "scaling-x.json").write_text(json.dumps({"attempts": attempts}))
    assert scaling._pretrain_minutes(run, 2400) == 11.0


def test_pooled_margin_adds_the_seeds_spread_to_the_data_noise() -> None:
    scaling = _scaling()
    # three seeds that agree: the interval is the data's alone (normal quantile), not shrunk
    # by the number of runs, since every run is scored on the same val blocks
    same = scaling.pooled_margin([0.05, 0.05, 0.05], [0.01] * 3, [0.09] * 3)
    se = 0.08 / 3.92
    assert abs(same["low"] - (0.05 - 1.959964 * se)) < 1e-6
    assert abs(same["high"] - (0.05 + 1.959964 * se)) < 1e-6
    assert same["verdict"] == "win" and same["n"] == 3
    # the same mean margin from seeds that disagree: no longer a win
    spread = scaling.pooled_margin([0.0, 0.05, 0.10], [-0.04, 0.01, 0.06], [0.04, 0.09, 0.14])
    assert abs(spread["margin"] - 0.05) < 1e-12
    assert spread["low"] < 0 < spread["high"] and spread["verdict"] == "tie"
    assert scaling.pooled_margin([-0.2, -0.21, -0.19], [-0.25] * 3, [-0.15] * 3)["verdict"] == (
        "loss"
    )


def test_pooling_needs_two_seeds() -> None:
    import pytest

    with pytest.raises(ValueError, match="two pretraining seeds"):
        _scaling().pooled_margin([0.05], [0.01], [0.09])


def test_a_null_change_reaches_the_run_config() -> None:
    scaling = _scaling()
    changes = scaling._parse_sets(["data.tokens_per_batch=null", "model.var_weight=0.01"])
    config = scaling.run_config("cpu-base", changes)
    assert config.data.tokens_per_batch is None  # cpu-base's own is "auto": 16-tile batches now
    assert config.model.var_weight == 0.01


def test_target_gap_is_the_shift_that_lifts_every_interval_above_zero() -> None:
    import pandas as pd

    scaling = _scaling()
    pooled = pd.DataFrame(
        [
            # an MAE task: GeoJEPA 2.0; the text rival's interval reaches lowest (-0.3), though
            # tag counts' margin is lower (a narrower interval)
            ("count", "mae", "random_init", 2.0, 0.1, -0.1, 0.3),
            ("count", "mae", "pooled_text", 2.0, -0.1, -0.3, 0.1),
            ("count", "mae", "tag_counts", 2.0, -0.15, -0.25, -0.05),
            # an AUROC task won against every rival
            ("won", "auroc", "random_init", 0.9, 0.05, 0.01, 0.09),
            ("won", "auroc", "pooled_text", 0.9, 0.04, 0.02, 0.06),
            ("won", "auroc", "tag_counts", 0.9, 0.03, 0.001, 0.06),
            # an AUROC task whose needed score is beyond 1
            ("noisy", "auroc", "pooled_text", 0.95, 0.0, -0.01, 0.01),
            ("noisy", "auroc", "random_init", 0.95, 0.0, -0.08, 0.08),
            ("noisy", "auroc", "tag_counts", 0.95, 0.0, -0.02, 0.02),
        ],
        columns=["task", "metric", "rival", "geojepa", "margin", "low", "high"],
    )
    gap = scaling.target_gap(pooled).set_index("task")
    assert gap.loc["count", "binding"] == "pooled_text"
    assert gap.loc["count", "needed"] == 0.3
    assert abs(gap.loc["count", "value_needed"] - 1.7) < 1e-12  # MAE: lower is better
    assert gap.loc["count", "reachable"]
    assert gap.loc["won", "needed"] == 0.0
    assert gap.loc["won", "value_needed"] == 0.9
    assert gap.loc["noisy", "binding"] == "random_init"
    assert abs(gap.loc["noisy", "value_needed"] - 1.03) < 1e-12  # AUROC: higher is better
    assert not gap.loc["noisy", "reachable"]


def test_a_run_packed_on_one_machine_unpacks_on_another_as_a_point(tmp_path: Path, monkeypatch):
    """The GPU path (benchmarks/gpu.sh quality): train on a given dataset, time the steps,
    pack the checkpoint in parts, unpack it elsewhere as a model ``eval`` reads."""
    import pytest
    import torch
    from safetensors.torch import load_file

    from geojepa import GeoJEPA
    from helpers.synthetic import write_synthetic_dataset

    scaling = _scaling()
    data = write_synthetic_dataset(tmp_path / "tiles", n_shards=2, tiles_per_shard=(6, 9),
                                   entities_per_tile=(2, 20), seed=0)  # fmt: skip
    there, here = tmp_path / "there", tmp_path / "here"
    monkeypatch.setattr(scaling, "WORK", there)
    small = ["--preset", "cpu-small", "--data", str(data), "--set", "model.depth=1",
             "--set", "data.batch_size=4"]  # fmt: skip
    assert scaling.main(["train", "x", *small, "--steps", "4", "--every", "2"]) == 0
    config = scaling.run_config("cpu-small", {"model": {"depth": 1}, "data": {"batch_size": 4}})
    record = json.loads((there / "scaling-x.json").read_text())
    assert record["tiles_per_step"] == 4 and record["corpus"] == f"data: {data}"
    # 4 steps of 4 tiles over ~15 tiles: the preset's epochs cap nothing; a long budget does
    assert scaling.steps_for_budget(there / "scaling-x", 1.0, config, 15) >= 1
    capped = config.replace(trainer=config.trainer.model_copy(update={"max_epochs": 2}))
    assert scaling.steps_for_budget(there / "scaling-x", 1e9, capped, 15) == 8  # ceil(30 / 4)
    parts = scaling.pack("x", 4, tmp_path / "out", part_bytes=100_000)
    assert len(parts) > 1 and all(p.stat().st_size <= 100_000 for p in parts)
    monkeypatch.setattr(scaling, "WORK", here)
    model_dir = scaling.unpack("x", tmp_path / "out")
    assert model_dir == here / "scaling-x-at-4"
    unpacked = json.loads((here / "scaling-x.json").read_text())
    assert unpacked["pretrain_minutes_at"]["4"] is not None
    # what it stores is the teacher of step 4, rounded to float16, and it loads
    ckpt = there / "scaling-x" / "checkpoints" / "step=4.ckpt"
    exported = scaling.export_checkpoint(there / "scaling-x", ckpt, tmp_path / "full")
    full = GeoJEPA.from_pretrained(exported).state_dict()
    stored = load_file(str(model_dir / "model.safetensors"))
    assert any(k.startswith("target.encoder.") for k in stored)
    assert all(torch.equal(v.float(), full[k].half().float()) for k, v in stored.items())
    GeoJEPA.from_pretrained(model_dir)
    # a part lost on the way is said, and the point left as it was
    parts[-1].unlink()
    (here / "scaling-x.json").unlink()
    with pytest.raises(SystemExit, match="do not make a whole model"):
        scaling.unpack("x", tmp_path / "out")
    assert not (here / "scaling-x.json").exists() and len(list(here.iterdir())) == 1
