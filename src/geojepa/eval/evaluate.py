"""`geojepa evaluate`: tasks × models × baselines × probes over seeds on a spatial split.

For every task (``geojepa.eval.tasks``):

1. labels from the **original** entities; the input every model sees is ``task.remove``'d;
2. the masked tiles are tokenized once (the run's tokenizer settings and vocabulary), and that
   one token set feeds the pretrained GeoJEPA's frozen target encoder, the *same network with
   random weights* (what pretraining adds) and the supervised transformer (the upper line);
3. frozen features (tile: [max ‖ mean] of the token outputs; entity: its output token) and the
   tag baselines (dummy, tag counts, pooled tag text vectors, SRAI counts if installed) go
   through the same probes on the same split, over the seeds: squared-error ones (ridge,
   MLP) and, for regression/count tasks, ones fit for the MAE they are scored on (L1 linear and
   MLP, a Poisson GLM predicting its median count);
4. 95% intervals that include the data: a paired bootstrap over the test split's blocks for
   every model and for its difference to GeoJEPA, and a per-area (per-dataset) breakdown
   (``geojepa.eval.uncertainty``);
5. ``write_report`` writes results.csv/.md/.png, results_by_area.csv and provenance.json
   (config, split hash, data sources, git commit, machine, date, wall time).

The embedding loop is that of `geojepa.embed.embed_shard` (target encoder, `pool_tiles`), run
on token arrays shared by the three networks, and batched by similar entity counts: padding is
masked out, so a tile's embedding does not depend on its batch (tested against `embed_shard`),
and sorted batches avoid spending most of the CPU time on padding.

Every model and baseline sees the same input: the entities the tokenizer keeps (at most
``max_entities`` per tile, a seeded choice; at most ``max_tags`` tags each), so tag counts,
pooled text and SRAI counts are computed on exactly what the networks embed. Entity tasks are
scored on those kept entities (the others cannot have an embedding); the number left out is in
the provenance.
"""

from __future__ import annotations

import contextlib
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import Field

from geojepa.config import Config
from geojepa.data.combine import MERGE_FIELDS
from geojepa.data.config import PrepareConfig
from geojepa.data.reader import TileDataset, open_dataset
from geojepa.embed import EMBED_TOKENS_PER_BATCH, embedding_columns, encode_tiles
from geojepa.errors import ConfigError, InputError, OutputError
from geojepa.eval.baselines import (
    sentence_transformer_embedder,
    srai_available,
    tag_count_features,
)
from geojepa.eval.probes import PROBES, ProbeConfig, ResultRow, evaluate_embeddings
from geojepa.eval.report import make_provenance, summarize, write_report
from geojepa.eval.split import (
    SPLITS,
    UNUSED,
    SplitConfig,
    assign_split,
    drop_shared_entities,
    file_sha256,
    load_split,
    make_split,
    save_split,
)
from geojepa.eval.suite import BASELINES, baseline_features
from geojepa.eval.supervised import SupervisedConfig, train_supervised
from geojepa.eval.tasks import TASKS, Task, get_task
from geojepa.eval.uncertainty import bootstrap_intervals
from geojepa.io.atomic import write_text_atomic
from geojepa.model.jepa import GeoJEPA, build_model
from geojepa.tokenize.shards import TileArrays, TokenizedShards
from geojepa.tokenize.tags import TagVocabulary, build_tag_table
from geojepa.tokenize.tokenizer import TokenizerConfig

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


# ---------------------------------------------------------------------------------- inputs


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[evaluate {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _training_data(model: GeoJEPA) -> tuple[PrepareConfig | None, str | None]:
    """The PrepareConfig of the data the model was pretrained on, and that data's path.

    Both come from the model directory (``model.directory``): ``dataset.json``
    (``dataset_config``) and ``training_data.json`` (``training_data``); either is None for
    runs that lack it. Without a saved config, the training dataset's own config is used if it
    still exists.
    """
    directory = model.require_directory()
    cfg = directory.dataset_config
    path = (directory.training_data or {}).get("dataset")
    if cfg is None and path is not None:
        try:
            cfg = open_dataset(path).config
        except InputError:
            cfg = None
    return cfg, path


def _check_datasets(datasets: Sequence[TileDataset], trained: PrepareConfig | None) -> None:
    """Same zoom / tag filter / image size everywhere (and as the model's training data)."""
    ref = trained or datasets[0].config
    what = "the model's training data" if trained is not None else str(datasets[0].path)
    for ds in datasets:
        for name in MERGE_FIELDS:
            if name == "image_size" and trained is not None:
                continue  # the tokenizer's image size is checked separately
            a, b = getattr(ds.config, name), getattr(ref, name)
            if a != b:
                hint = (
                    f"re-run `geojepa prepare --zoom {b}`"
                    if name == "zoom"
                    else "re-run `geojepa prepare` with the same settings"
                )
                raise InputError(f"{ds.path} has {name}={a!r} but {what} has {name}={b!r}: {hint}")


def _vocab_coverage(vocab: TagVocabulary, datasets: Sequence[TileDataset]) -> float:
    """Share of tag entries (by count) whose key the vocabulary knows (not UNKNOWN)."""
    known = total = 0
    for ds in datasets:
        table = ds.vocab()
        keys = table.column("key")
        ids = vocab.encode(keys, pa.nulls(len(keys), pa.string()))
        counts = table.column("count").to_numpy()
        known += int(counts[ids > 1].sum())
        total += int(counts.sum())
    return known / total if total else 1.0


def _read_all(datasets: Sequence[TileDataset], use_image: bool) -> tuple[pa.Table, pa.Table]:
    columns = ["region_id"] + (["image"] if use_image else [])
    tiles = pa.concat_tables([ds.read_tiles(columns=columns) for ds in datasets])
    entities = pa.concat_tables([ds.read_entities() for ds in datasets])
    ids = tiles.column("region_id").to_pandas()
    if ids.duplicated().any():
        raise InputError(
            f"tile {ids[ids.duplicated()].iloc[0]} appears in more than one dataset "
            "(overlapping areas): evaluate each area separately or prepare them as one"
        )
    return tiles, entities


def _split(
    split: str | Path | None, region_ids: list[str], config: SplitConfig, output: Path
) -> tuple[pd.DataFrame, Path, dict[str, Any]]:
    """Load or make the split, check it covers every tile, save a copy in the report dir."""
    info: dict[str, Any] = {}
    if split is not None:
        frame = load_split(split)
        info = {"given_split": str(split), "given_split_sha256": file_sha256(split)}
    else:
        frame = make_split(region_ids, config)
        info = {"split_config": config.model_dump(mode="json")}
    assign_split(pd.Index(region_ids, name="region_id"), frame)  # every tile must be in it
    path = save_split(frame, output / SPLIT_FILE)
    info["split_counts"] = frame["split"].value_counts().reindex(SPLITS).fillna(0).astype(int)
    info["split_counts"] = info["split_counts"].to_dict()
    return frame, path, info


def _label_problem(task: Task, labels: pd.Series, split: pd.DataFrame) -> str | None:
    """Why a task cannot be scored on this split (no rows / single class in train), or None."""
    if labels.empty:
        return "no labelled rows"
    names = assign_split(labels.index, split)
    if task.level == "entity":
        names = drop_shared_entities(names)
    for name in SPLITS:
        if not (names == name).any():
            return f"the {name} split has no labelled rows"
    if task.kind == "binary":
        train = labels.loc[names.index][names == "train"]
        if not (train == 1).any():
            return "no positive label in the train split"
        if not (train == 0).any():
            return "no negative label in the train split"
    return None


# ------------------------------------------------------------------------------- embedding


def tokenize_masked(
    datasets: Sequence[TileDataset],
    task: Task | None,
    vocab: TagVocabulary,
    config: TokenizerConfig,
    seed: int = 0,
) -> TileArrays:
    """Every tile of ``datasets`` tokenized with ``task.remove`` applied to its entities.

    The loader's dataset of tokenised shards with the removal as its entity transform (same cap
    of entities per tile, same seed; not cached), so the arrays are what `embed`/`pretrain`
    would feed the model.
    """
    remove = None if task is None else task.remove
    parts = [TokenizedShards(ds, vocab, config, seed, remove, cache=False) for ds in datasets]
    return TileArrays.concat([p.load_all() for p in parts])


def token_entities(arrays: TileArrays) -> pd.MultiIndex:
    """(``region_id``, ``feature_id``) of every entity the tokenizer kept, in token order."""
    return pd.MultiIndex.from_arrays(
        [
            np.repeat(np.asarray(arrays.region_ids, dtype=object), arrays.ent_count),
            np.asarray(arrays.feature_ids, dtype=object),
        ],
        names=["region_id", "feature_id"],
    )


def same_input(entities: pa.Table, arrays: TileArrays, max_tags: int) -> pa.Table:
    """``entities`` cut to what the networks see in ``arrays``: the tokenizer's capped, seeded
    subset of entities per tile, each with its first ``max_tags`` tags.

    Baselines built from the result face exactly the input of the networks (else tag counts and
    pooled text would see entities that the networks never do).
    """
    keys = pd.MultiIndex.from_arrays(
        [
            entities.column("region_id").to_numpy(zero_copy_only=False),
            entities.column("feature_id").to_numpy(zero_copy_only=False),
        ]
    )
    entities = entities.filter(pa.array(keys.isin(token_entities(arrays))))
    column = entities.column("tags")
    tags = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if isinstance(tags, pa.ChunkedArray):  # no chunks: an empty table
        return entities
    off = np.asarray(tags.offsets, dtype=np.int64)
    n_tags = np.diff(off)
    if not (n_tags > max_tags).any():
        return entities
    pos = np.arange(int(off[-1] - off[0])) - np.repeat(off[:-1] - off[0], n_tags)
    sel = pa.array(pos < max_tags)
    span = (int(off[0]), int(off[-1] - off[0]))
    offsets = np.concatenate([[0], np.cumsum(np.minimum(n_tags, max_tags))]).astype(np.int32)
    field = entities.schema.field("tags")
    cut = pa.MapArray.from_arrays(
        pa.array(offsets), tags.keys.slice(*span).filter(sel), tags.items.slice(*span).filter(sel)
    ).cast(field.type)
    return entities.set_column(entities.column_names.index("tags"), field, cut)


def encode_arrays(
    model: GeoJEPA,
    arrays: TileArrays,
    entities: bool = False,
    batch_tokens: int = EMBED_TOKENS_PER_BATCH,
    image_size: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Frozen target-encoder embeddings of tokenized tiles (as `embed_shard` computes them).

    Tiles: index ``region_id``, [max ‖ mean] columns ``emb_*``. Entities (if asked): index
    (``region_id``, ``feature_id``), the entity's output token.
    """
    width = model.config.width
    tile_out, ent_out = encode_tiles(
        model, arrays, entities=entities, tokens_per_batch=batch_tokens, image_size=image_size
    )
    tiles = pd.DataFrame(
        tile_out,
        index=pd.Index(np.asarray(arrays.region_ids, dtype=object), name="region_id"),
        columns=embedding_columns(tile_out.shape[1]),
    )
    if ent_out is None:
        return tiles, None
    region = np.repeat(np.asarray(arrays.region_ids, dtype=object), arrays.ent_count)
    index = pd.MultiIndex.from_arrays(
        [region, np.asarray(arrays.feature_ids, dtype=object)], names=["region_id", "feature_id"]
    )
    return tiles, pd.DataFrame(ent_out, index=index, columns=embedding_columns(width))


# ---------------------------------------------------------------------------------- models


def _load_networks(
    run: Path | None, datasets: Sequence[TileDataset], config: EvaluateConfig, want_random: bool
) -> tuple[GeoJEPA | None, GeoJEPA | None, Any, TagVocabulary, torch.Tensor]:
    """(pretrained or None, random-weights twin or None, PretrainConfig, vocab, tag table, the
    run's own vocabulary). With ``open_vocabulary`` the data's unseen tags are appended to the
    pretrained model's vocabulary and table first, so the random twin reads them too."""
    from geojepa.train.config import PretrainConfig, preset_config

    pretrained = None
    if run is not None:
        pretrained = GeoJEPA.from_pretrained(run)
        base_vocab = pretrained.require_directory().vocab
        if config.open_vocabulary:
            from geojepa.model.open_vocab import open_vocabulary

            for ds in datasets:
                open_vocabulary(pretrained, ds)
        directory = pretrained.require_directory()
        pcfg, vocab = PretrainConfig.from_dict(directory.config), directory.vocab
        table = pretrained.tokenizer.tag_table.detach().clone()
    else:
        pcfg = preset_config(config.preset)
        tags = []
        for ds in datasets:
            v = ds.vocab()
            keys, values = v.column("key").to_pylist(), v.column("value").to_pylist()
            tags += list(zip(keys, values, strict=True))
        vocab = base_vocab = TagVocabulary.from_tags(tags)
        table = build_tag_table(vocab, pcfg.tokenizer.text_model, cache_dir=datasets[0].path)
    random_net = None
    if want_random:
        state = torch.random.get_rng_state()
        torch.manual_seed(config.random_init_seed)
        random_net = build_model(pcfg, table).eval()
        torch.random.set_rng_state(state)
    for net in (pretrained, random_net):
        if net is not None:
            net.to(config.device)
    return pretrained, random_net, pcfg, vocab, table, base_vocab


def _git_commit() -> dict[str, Any] | None:
    root = Path(__file__).resolve().parents[3]
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def _machine(device: str) -> dict[str, Any]:
    import os

    info = {
        "host": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# -------------------------------------------------------------------------------- evaluate


def evaluate(
    run: str | Path | None,
    datasets: Sequence[str | Path | TileDataset],
    output: str | Path,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    baselines: Sequence[str] | None = None,
    split: str | Path | None = None,
    config: EvaluateConfig | None = None,
    progress: bool = True,
) -> EvaluateResult:
    """Evaluate a pretrained run (or, with ``run=None``, only the baselines) on ``datasets``.

    ``tasks``: names from ``geojepa.eval.TASKS`` (default all; then tasks that cannot be scored
    on this split — no positive train label, an empty split — are skipped and listed in the
    report; named tasks raise InputError instead). ``split``: a saved split file covering every
    tile, else a new spatial block split (``config.split``) saved as ``OUTPUT/split.parquet``.
    """
    report = Path(output)
    created = not report.exists()
    try:
        return _evaluate(run, datasets, output, tasks, seeds, baselines, split, config, progress)
    except BaseException:
        if created:  # a report directory this run made and wrote nothing into goes again
            with contextlib.suppress(OSError):
                report.rmdir()
        raise


def _evaluate(
    run: str | Path | None,
    datasets: Sequence[str | Path | TileDataset],
    output: str | Path,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    baselines: Sequence[str] | None = None,
    split: str | Path | None = None,
    config: EvaluateConfig | None = None,
    progress: bool = True,
) -> EvaluateResult:
    started = time.perf_counter()
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
        raise InputError(f"unknown baseline(s) {bad} (known: {', '.join(ALL_BASELINES)})")
    explicit = tasks is not None
    task_list = [get_task(t) for t in (tasks if tasks is not None else TASKS)]
    if not task_list:
        raise InputError("no tasks to evaluate")
    if not datasets:
        raise InputError("no dataset given")
    run_path = None if run is None else Path(run)
    if run_path is not None and not run_path.is_dir():
        raise InputError(f"run / model directory not found: {run_path}")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise OutputError(f"report location {output} exists and is not a directory")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create report directory {output}: {exc}") from None
    opened = [d if isinstance(d, TileDataset) else open_dataset(d) for d in datasets]

    # --- networks and compatibility -------------------------------------------------------
    want_random = RANDOM in baselines
    pretrained, random_net, pcfg, vocab, table, base_vocab = _load_networks(
        run_path, opened, config, want_random
    )
    trained_cfg, trained_path = (
        _training_data(pretrained) if pretrained is not None else (None, None)
    )
    _check_datasets(opened, trained_cfg)
    tok_cfg: TokenizerConfig = pcfg.tokenizer
    if config.max_entities is not None:
        tok_cfg = tok_cfg.replace(max_entities=config.max_entities)
    image_size = None
    if tok_cfg.use_image:
        for ds in opened:
            if ds.config.image_size != tok_cfg.image_size:
                raise InputError(
                    f"{ds.path} has {ds.config.image_size}px images, the model expects "
                    f"{tok_cfg.image_size}px"
                )
        image_size = tok_cfg.image_size
    coverage = _vocab_coverage(base_vocab, opened)
    if pretrained is not None and coverage < config.min_vocab_coverage:
        raise InputError(
            f"the run's tag vocabulary knows the keys of only {coverage:.0%} of the data's tags "
            "(built with another tag filter or a very different area?)"
        )

    # --- data, split, labels --------------------------------------------------------------
    _log(progress, f"reading {len(opened)} dataset(s)")
    tiles, entities = _read_all(opened, use_image=False)
    region_ids = tiles.column("region_id").to_pylist()
    split_frame, split_path, split_info = _split(split, region_ids, config.split, output)
    unused = split_frame["split"] == UNUSED
    if unused.any():  # e.g. a search split's test blocks: never labelled, embedded or scored
        keep = pa.array(split_frame.loc[~unused, "region_id"].tolist(), pa.string())
        tiles = tiles.filter(pc.is_in(tiles.column("region_id"), value_set=keep))
        entities = entities.filter(pc.is_in(entities.column("region_id"), value_set=keep))
        region_ids = tiles.column("region_id").to_pylist()
        split_frame = split_frame[~unused].reset_index(drop=True)
    split_info["evaluated_tiles"] = len(region_ids)
    if trained_path is not None:
        split_info["pretraining_overlap"] = _pretraining_overlap(trained_path, split_frame)
    labels: dict[str, pd.Series] = {}
    skipped: dict[str, str] = {}
    for task in task_list:
        y = task.labels(tiles, entities)
        problem = _label_problem(task, y, split_frame)
        if problem is not None:
            if explicit:
                raise InputError(f"task {task.name}: {problem}; cannot evaluate it on this split")
            skipped[task.name] = problem
            _log(progress, f"skipping task {task.name}: {problem}")
            continue
        labels[task.name] = y
    if not labels:
        raise InputError(f"no task can be evaluated on this split ({skipped})")

    # --- per task -------------------------------------------------------------------------
    embed_texts = _memoized(sentence_transformer_embedder()) if "pooled_text" in baselines else None
    sup_seeds = seeds[: config.supervised_seeds] if config.supervised_seeds else seeds
    rows: list[ResultRow] = []
    entity_coverage: dict[str, dict[str, int]] = {}
    timings: dict[str, float] = {}
    token_cache: dict[Any, tuple[TileArrays, dict]] = {}
    # tasks sharing a removal rule share one tokenization and one embedding pass per network
    groups: dict[Any, list[Task]] = {}
    for task in task_list:
        if task.name in labels:
            groups.setdefault(task.remove, []).append(task)
    with_entities = {rm: any(t.level == "entity" for t in g) for rm, g in groups.items()}
    for task in [t for g in groups.values() for t in g]:
        t_task = time.perf_counter()
        y = labels[task.name]
        masked = task.remove(entities)
        # tokenized masked input, shared by tasks with the same removal rule
        arrays, embedded = token_cache.get(task.remove, (None, {}))
        if arrays is None:
            _log(progress, f"{task.name}: tokenizing the masked input")
            arrays = tokenize_masked(opened, task, vocab, tok_cfg, seed=0)  # as `embed`
            token_cache.clear()  # one group at a time bounds memory
            token_cache[task.remove] = (arrays, embedded)
        # the baselines see the entities (and tags) the networks see, no more
        masked = same_input(masked, arrays, tok_cfg.max_tags)
        if task.level == "entity":
            kept = token_entities(arrays)
            n_all = len(y)
            y = y[y.index.isin(kept)]
            entity_coverage[task.name] = {"labelled": n_all, "kept_by_tokenizer": len(y)}
            problem = _label_problem(task, y, split_frame)
            if problem is not None:
                raise InputError(f"task {task.name}: {problem} among the entities kept")
        for name, net in ((GEOJEPA, pretrained), (RANDOM, random_net)):
            if net is None:
                continue
            if name not in embedded:
                _log(progress, f"{task.name}: embedding with {name}")
                embedded[name] = encode_arrays(
                    net, arrays, with_entities[task.remove], config.batch_tokens, image_size
                )
            X = embedded[name][0] if task.level == "tile" else embedded[name][1]
            _log(progress, f"{task.name}: probes on {name}")
            rows += evaluate_embeddings(
                X, y, split_frame, task, seeds, config.probes, name, config.probe
            )
        for name in baselines:
            if name in (RANDOM, SUPERVISED):
                continue
            if name == "srai_counts" and (task.level != "tile" or not srai_available()):
                if name not in skipped and not srai_available():
                    skipped[name] = "srai is not installed (pip install 'geojepa[srai]')"
                continue
            _log(progress, f"{task.name}: baseline {name}")
            if name == "tag_counts":
                X = tag_count_features(
                    masked, y.index, level=task.level, context=task.level == "entity",
                    max_features=config.tag_count_max_features,
                )  # fmt: skip
            else:
                X = baseline_features(name, task, masked, y.index, embed_texts)
            rows += evaluate_embeddings(
                X, y, split_frame, task, seeds, config.probes, name, config.probe
            )
        if SUPERVISED in baselines:
            _log(progress, f"{task.name}: supervised transformer, seeds {sup_seeds}")
            rows += train_supervised(
                arrays, y, split_frame, task, tok_cfg, table, sup_seeds,
                config.supervised, image_size,
            )  # fmt: skip
        timings[task.name] = round(time.perf_counter() - t_task, 1)
        _log(progress, f"{task.name}: done in {timings[task.name]} s")

    intervals = by_area = None
    if config.bootstrap:
        _log(progress, f"95% intervals: {config.bootstrap} block resamples of the test data")
        intervals, by_area = bootstrap_intervals(
            rows, split_frame, config.bootstrap, areas=_areas(opened)
        )
    wall = time.perf_counter() - started
    provenance = make_provenance(
        config={
            "evaluate": config.model_dump(mode="json"),
            "pretrain": pcfg.model_dump(mode="json"),
            "tokenizer_used": tok_cfg.model_dump(mode="json"),
        },
        split_path=split_path,
        data_source=[_data_source(ds) for ds in opened],
        run=str(run_path.resolve()) if run_path is not None else None,
        run_training_data=trained_path,
        tasks=[t.name for t in task_list if t.name in labels],
        seeds=seeds,
        supervised_seeds=list(sup_seeds) if SUPERVISED in baselines else None,
        baselines=list(baselines),
        skipped=skipped,
        entity_labels=entity_coverage,
        vocab_coverage=round(coverage, 4),
        split=split_info,
        git=_git_commit(),
        machine=_machine(config.device),
        task_seconds=timings,
        wall_seconds=round(wall, 1),
    )
    paths = write_report(
        rows, output, provenance, title=config.title, intervals=intervals, by_area=by_area
    )
    overlap = split_info.get("pretraining_overlap") or {}
    shown_sup_seeds = sup_seeds if SUPERVISED in baselines else None
    _append_notes(
        paths["markdown"], config, skipped, shown_sup_seeds, seeds, entity_coverage, overlap
    )
    _log(progress, f"report written to {output} ({wall:.0f} s)")
    return EvaluateResult(summarize(rows), rows, paths, skipped, wall)


def _memoized(embed: Any) -> Any:
    """Embed each distinct text once over all tasks (their masked inputs share most tags)."""
    cache: dict[str, np.ndarray] = {}

    def embed_texts(texts: list[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in cache]
        if new:
            cache.update(zip(new, np.asarray(embed(new), dtype=np.float32), strict=True))
        return np.stack([cache[t] for t in texts]) if texts else np.zeros((0, 0), np.float32)

    return embed_texts


def _areas(datasets: Sequence[TileDataset]) -> dict[str, str]:
    """region_id -> the name of its dataset (directory), for the per-area breakdown."""
    names = [ds.path.name for ds in datasets]
    if len(set(names)) < len(names):  # same directory names: tell them apart by position
        names = [f"{i}:{name}" for i, name in enumerate(names)]
    return {
        rid: name
        for ds, name in zip(datasets, names, strict=True)
        for rid in ds.read_tiles(columns=["region_id"]).column("region_id").to_pylist()
    }


def _data_source(ds: TileDataset) -> dict[str, Any]:
    m = ds.manifest
    keys = ("source", "n_tiles", "n_entities", "vocab_size")
    return {"dataset": str(ds.path.resolve()), **{k: m.get(k) for k in keys}}


def _pretraining_overlap(training_data: str, split: pd.DataFrame) -> dict[str, int] | None:
    """How many val/test tiles the pretraining dataset held (0 = honest pretraining)."""
    try:
        ds = open_dataset(training_data)
    except InputError:
        return None
    ids = set(ds.read_tiles(columns=["region_id"]).column("region_id").to_pylist())
    seen = split[split["region_id"].isin(ids)]
    return {name: int((seen["split"] == name).sum()) for name in SPLITS}


def _append_notes(
    path: Path,
    config: EvaluateConfig,
    skipped: dict[str, str],
    sup_seeds: Sequence[int] | None,
    seeds: Sequence[int],
    entity_coverage: dict[str, dict[str, int]],
    overlap: dict[str, int],
) -> None:
    """Notes a reader needs next to the table (inserted before the provenance block)."""
    lines = list(config.notes)
    lines.append(
        "Models: `geojepa` = the pretrained network's frozen target encoder; `random_init` = "
        "the same network with random weights; `supervised` = a small transformer trained end "
        "to end on the same masked tokens (probe `end2end`); the others are tag baselines on "
        "the same masked input. Probes choose every setting on val; test is scored once."
    )
    if sup_seeds is not None:
        sup = config.supervised
        lines.append(
            f"The supervised transformer trains until its val score has not improved for "
            f"{sup.patience} epoch(s) (at most {sup.max_epochs} epochs"
            + (f" of {sup.tiles_per_epoch} random train tiles" if sup.tiles_per_epoch else "")
            + "); `params` in results_per_seed.csv record the best epoch and whether it "
            "stopped early (`converged`) or at the cap."
        )
    if sup_seeds is not None and list(sup_seeds) != list(seeds):
        lines.append(f"The supervised transformer ran on seeds {list(sup_seeds)} only (cost).")
    if overlap.get("val", 0) or overlap.get("test", 0):
        lines.append(
            f"**Warning**: the run was pretrained on data holding {overlap.get('val', 0)} val "
            f"and {overlap.get('test', 0)} test tiles of this split; its scores are not "
            "those of a model that never saw the test area."
        )
    elif overlap:
        lines.append("The run's pretraining data holds no val or test tile of this split.")
    for name, why in skipped.items():
        lines.append(f"Skipped `{name}`: {why}.")
    for name, cov in entity_coverage.items():
        if cov["kept_by_tokenizer"] < cov["labelled"]:
            lines.append(
                f"`{name}`: {cov['kept_by_tokenizer']} of {cov['labelled']} labelled entity "
                "clips are kept by the tokenizer's per-tile entity cap; all models are scored "
                "on those."
            )
    text = path.read_text()
    notes = "## Notes\n\n" + "\n".join(f"- {line}" for line in lines) + "\n\n"
    marker = "## Provenance"
    text = text.replace(marker, notes + marker, 1) if marker in text else text + "\n" + notes
    write_text_atomic(path, text)


def format_summary(result: EvaluateResult) -> str:
    """A short text summary for the CLI: headline metric (mean ± std) per task and model.

    Only the (model, probe) pairs that were run get a row; a task a model could not be scored on
    shows "–", never NaN.
    """
    s = result.summary
    head = s[s["metric"].isin(["mae", "auroc"])]
    if head.empty:
        return f"no scores\n\nreport: {result.paths['markdown']}"
    arrow = {"mae": "↓", "auroc": "↑"}
    cells = head.assign(
        column=[f"{t} {m} {arrow[m]}" for t, m in zip(head["task"], head["metric"], strict=True)],
        value=[
            f"{m:.3f}" if pd.isna(sd) or n < 2 else f"{m:.3f} ± {sd:.3f}"
            for m, sd, n in zip(head["mean"], head["std"], head["n_seeds"], strict=True)
        ],
    )
    table = cells.pivot(index=["model", "probe"], columns="column", values="value")
    rows = list(dict.fromkeys(zip(cells["model"], cells["probe"], strict=True)))
    table = table.reindex(index=rows, columns=list(dict.fromkeys(cells["column"]))).fillna("–")
    table.index.names = ["model", "probe"]
    table.columns.name = None
    seeds = int(head["n_seeds"].max())
    return (
        f"test split, mean ± std over {seeds} seed(s); ↓ lower / ↑ higher is better\n"
        f"{table.to_string()}\n\nreport: {result.paths['markdown']}"
    )


def load_config(path: str | Path | None) -> EvaluateConfig:
    """An EvaluateConfig from a JSON file (or the defaults)."""
    return EvaluateConfig() if path is None else EvaluateConfig.load(path)


__all__ = [
    "ALL_BASELINES",
    "DEFAULT_BASELINES",
    "EVALUATE_PRESETS",
    "EvaluateConfig",
    "EvaluateResult",
    "encode_arrays",
    "evaluate",
    "evaluate_preset",
    "format_summary",
    "load_config",
    "tokenize_masked",
]
