"""benchmarks/evaluate.py checks every option before any long work (one `error:` line)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_evaluate", ROOT / "benchmarks" / "evaluate.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--supervised-seeds", "0"], "--supervised-seeds must be at least 1, got 0"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--seeds", "2", "--supervised-seeds", "3"], "more than --seeds 2"),
        (["--tasks", "max_speed,nope"], "unknown task 'nope'"),
        (["--baselines", "tag_counts,nope"], "unknown baseline(s) ['nope']"),
        (["--config", "missing.json"], "--config missing.json not found"),
    ],
)
def test_bad_options_fail_up_front(bench, tmp_path: Path, capsys, args, message) -> None:
    """Exit 2 for a usage mistake, 1 for a missing input (the --config file)."""
    work = tmp_path / "work"
    # without data the script would end at once with "skipped" (status 0): the options must
    # be refused before that, like before minutes of preparing and pretraining
    paths = ["--work", str(work), "--report", str(tmp_path / "r"), "--data", str(tmp_path)]
    assert bench.main([*paths, *args]) == (1 if "not found" in message else 2)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not work.exists()  # nothing was prepared or trained


def test_every_ablation_hypothesis_is_valid_and_cpu_base_is_the_shipped_recipe() -> None:
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(
            "ablation", ROOT / "benchmarks" / "ablation.py"
        )
        ablation = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ablation)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from geojepa.train import PretrainConfig, preset_config

    configs = {name: ablation.hypothesis_config(name) for name in ablation.HYPOTHESES}
    for name, base in ablation.READOUT_ONLY.items():  # same weights: only the read-out differs
        a, b = configs[name].model, configs[base].model
        assert a != b and a.replace(tile_pooling=b.tile_pooling) == b
    # cpu-base's size is a searched hypothesis; its loss, teacher and length were chosen later
    # on val (benchmarks/scaling.py) and are the shipped default model's recipe
    chosen = preset_config("cpu-base")
    size = ("width", "depth", "heads", "predictor_width", "predictor_depth", "predictor_heads")
    assert any(
        all(getattr(c.model, f) == getattr(chosen.model, f) for f in size)
        and c.tokenizer == chosen.tokenizer
        for c in configs.values()
    ), "cpu-base's size is not one of the hypotheses searched on val"
    shipped = json.loads((ROOT / "src/geojepa/models/default/config.json").read_text())
    read = PretrainConfig.from_dict(shipped)  # fields added since take their defaults
    for section in ("tokenizer", "model", "masking", "optim"):
        assert getattr(chosen, section) == getattr(read, section), section
    # batching alone differs: the shipped model trained on 16-tile batches; cpu-base batches by
    # the token budget of 16 tiles a step on average, as good on val at ~1.3x less time
    # (reports/benchmark/scaling/reading.md, point 14, run tbudget-corpus)
    assert read.data.tokens_per_batch is None and chosen.data.tokens_per_batch == "auto"
    assert chosen.data.replace(tokens_per_batch=None) == read.data
    # the shipped checkpoint is step 600 of a 2,400-step schedule (its run was 2,400 steps long)
    assert chosen.trainer.schedule_steps == shipped["trainer"]["max_steps"]
    card = (ROOT / "src/geojepa/models/default/README.md").read_text()
    assert f"| optimiser steps | {chosen.trainer.max_steps} " in card


def test_evaluation_docs_state_the_benchmarks_run_and_the_cli_merge(bench) -> None:
    """docs/evaluation.md says what `make benchmark` pretrains (its preset, its step count) and
    points to the `geojepa merge` command, not a private function, for merging areas."""
    text = (ROOT / "docs" / "evaluation.md").read_text()
    assert f"`{bench.PRESET}` preset to step {bench.STEPS} " in text
    assert "`geojepa merge " in text and "merge_datasets" not in text


def test_make_benchmark_keeps_every_rival_of_the_verdicts() -> None:
    """`make benchmark` leaves out only the supervised upper line (benchmark-full has it): the
    three rivals the target counts and the dummy stay, and the names are valid options."""
    import re

    makefile = (ROOT / "Makefile").read_text()
    rivals = re.search(r"^BENCHMARK_RIVALS = (\S+)$", makefile, re.M).group(1)
    assert set(rivals.split(",")) == {"dummy", "tag_counts", "pooled_text", "random_init"}
    assert "evaluate.py --baselines $(BENCHMARK_RIVALS)" in makefile
    assert re.search(r"^benchmark-full: .*\n\t\$\(BIN\)/python benchmarks/evaluate.py$", makefile,
                     re.M)  # fmt: skip
    from geojepa.eval.evaluate import ALL_BASELINES

    assert set(rivals.split(",")) <= set(ALL_BASELINES)  # names evaluate.py accepts
