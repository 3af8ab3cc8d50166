"""Stage 1 of `evaluate`: the inputs — the networks (pretrained, its random-weights twin),
the tokenizer settings they read with, checks that the data suits them, and the data itself:
tiles, entities, the split and every task's labels.

Two functions a test can call: `load_models(request) -> ModelSetup` and
`load_labels(request, models) -> LabelledData`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from geojepa.constants import REGIONS_INDEX
from geojepa.data.combine import MERGE_FIELDS
from geojepa.data.config import PrepareConfig
from geojepa.data.reader import TileDataset, open_dataset
from geojepa.errors import InputError
from geojepa.eval.request import RANDOM, SPLIT_FILE, EvaluateConfig, EvaluateRequest
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
from geojepa.eval.tasks import Task
from geojepa.model.jepa import GeoJEPA, build_model
from geojepa.tokenize.tags import TagVocabulary, build_tag_table
from geojepa.tokenize.tokenizer import TokenizerConfig

if TYPE_CHECKING:
    from geojepa.train.config import PretrainConfig


@dataclass
class Networks:
    """What `load_networks` gives: the networks and the vocabulary and tag table they read."""

    pretrained: GeoJEPA | None  # None: baselines only
    random_init: GeoJEPA | None  # the same network with random weights, if asked
    pretrain_config: PretrainConfig  # the run's, or the preset's without a run
    vocab: TagVocabulary  # what the networks read (the run's, plus unseen tags if opened)
    table: torch.Tensor  # the tag table of ``vocab``
    base_vocab: TagVocabulary  # the run's own vocabulary (for the coverage check)


@dataclass
class ModelSetup:
    """The networks and how they read the data (`load_models`)."""

    networks: Networks
    tokenizer: TokenizerConfig  # the run's, with the evaluation's ``max_entities``
    image_size: int | None  # pixels per tile side when the tokenizer reads images
    vocab_coverage: float  # share of the data's tag entries the run's vocabulary knows
    training_data: str | None  # the pretraining dataset's path, if recorded


@dataclass
class LabelledData:
    """The evaluated tiles and entities, the split and the labels of every scorable task."""

    tiles: pa.Table
    entities: pa.Table
    split: pd.DataFrame  # region_id → split, without the unused tiles
    split_path: Path  # the copy saved in the report directory
    split_info: dict[str, Any]  # for the provenance
    labels: dict[str, pd.Series]  # task name → labels
    skipped: dict[str, str]  # task (or baseline) name → why it was not scored

    @property
    def tasks(self) -> list[str]:
        return list(self.labels)


def load_models(request: EvaluateRequest) -> ModelSetup:
    """The networks, checked against the data: same zoom, tag filter and image size as the
    model's training data, and a vocabulary that knows enough of the data's tags."""
    config, opened = request.config, request.datasets
    want_random = RANDOM in request.baselines
    networks = load_networks(request.run, opened, config, want_random)
    pretrained = networks.pretrained
    trained_cfg, trained_path = (
        _training_data(pretrained) if pretrained is not None else (None, None)
    )
    _check_datasets(opened, trained_cfg)
    tok_cfg: TokenizerConfig = networks.pretrain_config.tokenizer
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
    coverage = _vocab_coverage(networks.base_vocab, opened)
    if pretrained is not None and coverage < config.min_vocab_coverage:
        raise InputError(
            f"the run's tag vocabulary knows the keys of only {coverage:.0%} of the data's tags "
            "(built with another tag filter or a very different area?)"
        )
    return ModelSetup(networks, tok_cfg, image_size, coverage, trained_path)


def load_labels(request: EvaluateRequest, models: ModelSetup) -> LabelledData:
    """Tiles and entities of every dataset, the split (given or made; saved in the report
    directory) without its unused tiles, and the labels of every task that can be scored."""
    opened = request.datasets
    request.log(f"reading {len(opened)} dataset(s)")
    tiles, entities = _read_all(opened, use_image=False)
    region_ids = tiles.column(REGIONS_INDEX).to_pylist()
    split_frame, split_path, split_info = _split(
        request.split, region_ids, request.config.split, request.output
    )
    unused = split_frame["split"] == UNUSED
    if unused.any():  # e.g. a search split's test blocks: never labelled, embedded or scored
        keep = pa.array(split_frame.loc[~unused, REGIONS_INDEX].tolist(), pa.string())
        tiles = tiles.filter(pc.is_in(tiles.column(REGIONS_INDEX), value_set=keep))
        entities = entities.filter(pc.is_in(entities.column(REGIONS_INDEX), value_set=keep))
        region_ids = tiles.column(REGIONS_INDEX).to_pylist()
        split_frame = split_frame[~unused].reset_index(drop=True)
    split_info["evaluated_tiles"] = len(region_ids)
    if models.training_data is not None:
        split_info["pretraining_overlap"] = _pretraining_overlap(models.training_data, split_frame)
    labels: dict[str, pd.Series] = {}
    skipped: dict[str, str] = {}
    for task in request.tasks:
        y = task.labels(tiles, entities)
        problem = label_problem(task, y, split_frame)
        if problem is not None:
            if request.explicit_tasks:
                raise InputError(f"task {task.name}: {problem}; cannot evaluate it on this split")
            skipped[task.name] = problem
            request.log(f"skipping task {task.name}: {problem}")
            continue
        labels[task.name] = y
    if not labels:
        raise InputError(f"no task can be evaluated on this split ({skipped})")
    return LabelledData(tiles, entities, split_frame, split_path, split_info, labels, skipped)


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
    columns = [REGIONS_INDEX] + (["image"] if use_image else [])
    tiles = pa.concat_tables([ds.read_tiles(columns=columns) for ds in datasets])
    entities = pa.concat_tables([ds.read_entities() for ds in datasets])
    ids = tiles.column(REGIONS_INDEX).to_pandas()
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
    assign_split(pd.Index(region_ids, name=REGIONS_INDEX), frame)  # every tile must be in it
    path = save_split(frame, output / SPLIT_FILE)
    info["split_counts"] = frame["split"].value_counts().reindex(SPLITS).fillna(0).astype(int)
    info["split_counts"] = info["split_counts"].to_dict()
    return frame, path, info


def label_problem(task: Task, labels: pd.Series, split: pd.DataFrame) -> str | None:
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


def _pretraining_overlap(training_data: str, split: pd.DataFrame) -> dict[str, int] | None:
    """How many val/test tiles the pretraining dataset held (0 = honest pretraining)."""
    try:
        ds = open_dataset(training_data)
    except InputError:
        return None
    ids = set(ds.read_tiles(columns=[REGIONS_INDEX]).column(REGIONS_INDEX).to_pylist())
    seen = split[split[REGIONS_INDEX].isin(ids)]
    return {name: int((seen["split"] == name).sum()) for name in SPLITS}


def load_networks(
    run: Path | None, datasets: Sequence[TileDataset], config: EvaluateConfig, want_random: bool
) -> Networks:
    """The run's network (None without a run), its random-weights twin (if ``want_random``),
    their config, vocabulary and tag table, and the run's own vocabulary. With
    ``open_vocabulary`` the data's unseen tags are appended to the pretrained model's
    vocabulary and table first, so the random twin reads them too."""
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
    return Networks(pretrained, random_net, pcfg, vocab, table, base_vocab)
