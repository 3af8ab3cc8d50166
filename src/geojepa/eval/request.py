"""What an evaluation is asked to do: its settings (`EvaluateConfig`, the named presets), the
checked request (`EvaluateRequest`: run, datasets, report directory, tasks, seeds, baselines,
split) and what it returns (`EvaluateResult`).

`make_request` is the one place that turns `evaluate`'s arguments into a request, so the stages
(`geojepa.eval.inputs`, `geojepa.eval.scoring`, `geojepa.eval.provenance`) take one typed
object instead of a long argument list each.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pydantic import Field

from geojepa.config import Config
from geojepa.constants import EMBED_TOKENS_PER_BATCH
from geojepa.data.reader import TileDataset, check_shards, open_dataset
from geojepa.errors import ConfigError, InputError
from geojepa.eval.probes import PROBES, ProbeConfig, ResultRow
from geojepa.eval.report import report_dir
from geojepa.eval.split import SplitConfig
from geojepa.eval.suite import BASELINES
from geojepa.eval.supervised import SupervisedConfig
from geojepa.eval.tasks import TASKS, Task, get_task

#: Model names in the report besides the tag baselines of `geojepa.eval.suite`.
GEOJEPA, RANDOM, SUPERVISED = "geojepa", "random_init", "supervised"
ALL_BASELINES = (*BASELINES, RANDOM, SUPERVISED)
DEFAULT_BASELINES = ("dummy", "tag_counts", "pooled_text", "srai_counts", RANDOM, SUPERVISED)
SPLIT_FILE = "split.parquet"


class EvaluateConfig(Config):
    """Everything besides the inputs that decides an evaluation's numbers."""

    split: SplitConfig = SplitConfig()
    probes: tuple[str, ...] = Field(
        ("linear", "mlp", "linear_l1", "mlp_l1", "poisson"),
        description="probes for every model; the *_l1 and poisson ones (fit for MAE) run on "
        "regression/count tasks only",
    )
    probe: ProbeConfig = ProbeConfig()
    supervised: SupervisedConfig = SupervisedConfig()
    supervised_seeds: int | None = Field(
        None, ge=1, description="train the supervised model on the first N seeds only (cost)"
    )
    random_init_seed: int = Field(0, description="torch seed of the random-weights network")
    max_entities: int | None = Field(
        None, ge=1, description="entities kept per tile when embedding; None = the run's"
    )
    tag_count_max_features: int = Field(
        5000, ge=1, description="most frequent tag strings kept by the tag-count baseline"
    )
    batch_tokens: int = Field(
        EMBED_TOKENS_PER_BATCH, ge=16, description="real tokens per embedding batch (as embed)"
    )
    open_vocabulary: bool = Field(
        True, description="tags the run never saw get their own text vectors, as in `geojepa "
        "embed` (False: read through their key / as unknown)",
    )  # fmt: skip
    preset: str = Field("cpu-small", description="network config when no run is given")
    min_vocab_coverage: float = Field(
        0.5, ge=0.0, le=1.0, description="share of the data's tag entries the run's vocabulary "
        "must know by key (else the data was built with another tag filter)",
    )  # fmt: skip
    bootstrap: int = Field(
        1000, ge=0, description="block-bootstrap resamples of the test data for the 95% "
        "intervals and the paired differences to GeoJEPA (0 = none)",
    )  # fmt: skip
    device: str = "cpu"
    title: str = "GeoJEPA evaluation"
    notes: tuple[str, ...] = Field((), description="free-text lines added to results.md")


#: Named evaluation settings (`geojepa evaluate --preset NAME`). ``benchmark`` is what `make
#: benchmark` runs: the default split, a single MLP width and weight decay, fewer MLP epochs, the
#: 1000 most frequent tag strings, and the supervised transformer on one seed, trained until
#: its val score stops improving (patience 5, epochs of 512 random train tiles, at most 60), 64
#: wide whatever the evaluated network's width (a fixed upper line, and its cost stays bounded).
EVALUATE_PRESETS: dict[str, EvaluateConfig] = {
    "default": EvaluateConfig(),
    "benchmark": EvaluateConfig(
        split=SplitConfig(block_zoom=14, fractions=(0.6, 0.2, 0.2), seed=0),
        probe=ProbeConfig(
            mlp_hidden=(128,), mlp_weight_decays=(0.01,), mlp_max_epochs=60, mlp_patience=5
        ),
        supervised=SupervisedConfig(
            width=64, max_epochs=60, patience=5, tiles_per_epoch=512, max_val_tiles=1024
        ),
        tag_count_max_features=1000,
        supervised_seeds=1,
        # the committed report (2026-12-05) predates the open vocabulary: this reproduces it
        open_vocabulary=False,
    ),
}


def evaluate_preset(name: str) -> EvaluateConfig:
    """The named evaluation settings; ConfigError listing the known names otherwise."""
    try:
        return EVALUATE_PRESETS[name]
    except KeyError:
        known = ", ".join(EVALUATE_PRESETS)
        raise ConfigError(f"unknown evaluate preset {name!r} (known: {known})") from None


@dataclass
class EvaluateResult:
    """What `evaluate` produced: the summary table, per-seed rows, report files, notes."""

    summary: pd.DataFrame
    rows: list[ResultRow]
    paths: dict[str, Path]
    skipped: dict[str, str]
    wall_seconds: float


def load_config(path: str | Path | None) -> EvaluateConfig:
    """An EvaluateConfig from a JSON file (or the defaults)."""
    return EvaluateConfig() if path is None else EvaluateConfig.load(path)


@dataclass(frozen=True)
class EvaluateRequest:
    """One evaluation's inputs, checked and opened (see `make_request`)."""

    run: Path | None  # model directory, or None: the baselines only
    datasets: list[TileDataset]
    output: Path  # the report directory (exists)
    tasks: list[Task]
    explicit_tasks: bool  # named by the caller: a task that cannot be scored is an error
    seeds: list[int]
    baselines: tuple[str, ...]
    split: str | Path | None  # a saved split file, or None: make one
    config: EvaluateConfig
    progress: bool = True

    @property
    def supervised_seeds(self) -> list[int] | None:
        """Seeds the supervised transformer trains on (``config.supervised_seeds`` first ones),
        or None when it is not among the baselines."""
        if SUPERVISED not in self.baselines:
            return None
        n = self.config.supervised_seeds
        return self.seeds[:n] if n else self.seeds

    def log(self, message: str) -> None:
        """One timestamped progress line on stderr (when ``progress``)."""
        if self.progress:
            print(f"[evaluate {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_request(
    run: str | Path | None,
    datasets: Sequence[str | Path | TileDataset],
    output: str | Path,
    tasks: Sequence[str] | None,
    seeds: Sequence[int],
    baselines: Sequence[str] | None,
    split: str | Path | None,
    config: EvaluateConfig | None,
    progress: bool,
) -> EvaluateRequest:
    """`evaluate`'s arguments checked, the report directory created and the datasets opened, in
    that order. The defaults and their meaning live on `evaluate` only."""
    config = config or EvaluateConfig()
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise InputError("at least one seed is needed")
    unknown = [p for p in config.probes if p not in PROBES]
    if unknown:
        raise ConfigError(f"unknown probe(s) {unknown} (known: {', '.join(PROBES)})")
    baselines = tuple(DEFAULT_BASELINES if baselines is None else baselines)
    bad = [b for b in baselines if b not in ALL_BASELINES]
    if bad:
        raise ConfigError(f"unknown baseline(s) {bad} (known: {', '.join(ALL_BASELINES)})")
    task_list = [get_task(t) for t in (tasks if tasks is not None else TASKS)]
    if not task_list:
        raise InputError("no tasks to evaluate")
    if not datasets:
        raise InputError("no dataset given")
    run_path = None if run is None else Path(run)
    if run_path is not None and not run_path.is_dir():
        raise InputError(f"run / model directory not found: {run_path}")
    output = report_dir(output)
    opened = [d if isinstance(d, TileDataset) else open_dataset(d) for d in datasets]
    for ds in opened:  # a truncated or damaged shard is named here, never read as data
        check_shards(ds)
    return EvaluateRequest(
        run=run_path, datasets=opened, output=output, tasks=task_list,
        explicit_tasks=tasks is not None, seeds=seeds, baselines=baselines, split=split,
        config=config, progress=progress,
    )  # fmt: skip
