"""`pretrain()`: a Lightning run from a tile dataset to a model directory.

The run directory holds ``checkpoints/`` (periodic + ``last.ckpt``, with ``config.json`` beside
them), ``logs/`` (CSV; TensorBoard too with the ``tensorboard`` extra), ``vocab.json``,
``train-data/`` when trained on a subset of tiles (``pretrain --split``), and, at the end, the
model directory files (see `geojepa.train.export`). Re-running on the same directory resumes
from its newest complete checkpoint, normally ``last.ckpt`` (model, EMA teacher, optimiser,
schedules, data position and RNG; see `geojepa.train.plan.newest_checkpoint`). The run reads
top to bottom in `_pretrain`: plan → data and vocabulary → tag table → model → loader →
trainer → fit → export.
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import warnings
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import torch

from geojepa import interrupt
from geojepa.constants import REGIONS_INDEX
from geojepa.data.combine import subset_dataset
from geojepa.data.reader import TileDataset, open_dataset
from geojepa.data.schema import MANIFEST_FILE
from geojepa.errors import ConfigError, InputError, OutputError
from geojepa.io.atomic import OutputLock
from geojepa.model.directory import VOCAB_FILE
from geojepa.progress import StageClock, quiet_dependencies
from geojepa.tokenize.loader import make_dataloader
from geojepa.tokenize.tags import TagVocabulary, build_tag_table
from geojepa.train.config import PretrainConfig
from geojepa.train.export import build_model, export_model, training_sources
from geojepa.train.plan import (
    CKPT_DIR,
    RUN_CONFIG_FILE,
    TRAIN_DATA_DIR,
    RunPlan,
    RunStart,
    check_devices,
    newest_checkpoint,
    resolve_config,
)
from geojepa.train.threads import CoreSample, choose_threads

LAST_CKPT = "last.ckpt"

__all__ = ["CKPT_DIR", "TRAIN_DATA_DIR", "newest_checkpoint", "pretrain", "resolve_config"]


def _on_gpu(accelerator: str) -> bool:
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def _precision(cfg: PretrainConfig, accelerator: str) -> str:
    if cfg.trainer.precision != "auto":
        return cfg.trainer.precision
    gpu = _on_gpu(accelerator)
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


def _total_steps(
    cfg: PretrainConfig, n_tiles: int, world: int, batches_per_epoch: int | None = None
) -> int:
    """Optimiser steps the lr, weight-decay and EMA schedules run over: ``schedule_steps``
    where set, else the whole run.

    ``batches_per_epoch`` (per rank) comes from the loader's plan under a token budget, where
    the number of tiles per batch varies; otherwise it follows from ``batch_size``.
    """
    t = cfg.trainer
    if t.schedule_steps is not None:
        return t.schedule_steps
    per_epoch = batches_per_epoch or math.ceil(max(n_tiles, 1) / (cfg.data.batch_size * world))
    per_epoch = max(per_epoch // t.accumulate_grad_batches, 1)
    by_epochs = per_epoch * t.max_epochs if t.max_epochs else None
    if t.max_steps > 0:
        return t.max_steps if by_epochs is None else min(t.max_steps, by_epochs)
    assert by_epochs is not None
    return by_epochs


def pretrain(
    dataset: str | Path | TileDataset,
    output: str | Path,
    config: PretrainConfig | str | Path | None = None,
    preset: str = "cpu-base",
    devices: int | str = 1,
    max_steps: int | None = None,
    max_epochs: int | None = None,
    batch_size: int | None = None,
    tokens_per_batch: int | Literal["auto"] | None = None,
    resume: bool = True,
    strategy: str | None = None,
    progress: bool | None = None,
    tiles: Iterable[str] | None = None,
    keep_checkpoints: int = 3,
    compiled: bool | None = None,
    verbose: bool = False,
    clock: StageClock | None = None,
) -> Path:
    """Pretrain GeoJEPA on ``dataset``; write checkpoints and the model directory to ``output``.

    ``config`` (a ``PretrainConfig`` or a JSON file) replaces ``preset``; ``max_steps``,
    ``max_epochs``, ``batch_size`` and ``tokens_per_batch`` override it. ``devices > 1`` (or
    ``trainer.num_nodes > 1`` in the config) trains with DDP (gloo on CPU, NCCL on GPUs).
    Re-running on the same ``output`` resumes from its last checkpoint. Returns ``output``,
    which ``GeoJEPA.from_pretrained`` and ``embed_tiles`` accept. Also ``geojepa.pretrain``.

    ``tiles``: train on these tiles of ``dataset`` only (e.g. the train blocks of a split, so
    that the model never sees a val/test tile); they are copied to ``output/train-data`` (a
    complete dataset, vocabulary included, so no tag string of another tile is learnt), which
    the model directory's ``training_data.json`` then names.
    ``progress``: False prints nothing; otherwise a bar on a terminal, else a plain line every
    few steps (see `geojepa.train.progress`); either way the real tokens/s and tiles/s go to
    the CSV log (``speed/…``) and the model card. ``keep_checkpoints``: how many periodic
    checkpoints to keep besides ``last.ckpt`` (the newest ones; -1 keeps all). ``compiled``:
    overrides ``trainer.compile`` (``torch.compile`` of the transformer blocks; also on resume).
    On one CPU process the run uses the cores that other processes leave idle (see
    `geojepa.train.threads`; ``OMP_NUM_THREADS`` overrides), and restores torch's thread count.
    ``verbose``: print the time of each start-up stage up to the first step (stderr);
    ``clock``: the clock that times them, when started earlier (the command line's starts with
    the process).
    """
    load = CoreSample.now()  # how busy the cores are while we start: see `train.threads`
    clock = clock or StageClock("pretrain", show=verbose)
    clock.show = clock.show and _rank() == 0
    out = Path(output)
    devices = check_devices(devices)
    if keep_checkpoints < -1:
        raise ConfigError(f"keep_checkpoints must be -1 (all), 0 or more, got {keep_checkpoints}")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory: give a run directory to write")
    ds = dataset if isinstance(dataset, TileDataset) else open_dataset(dataset)
    clock.lap("open the dataset")
    plan = RunPlan(
        dataset=ds, out=out, config=config, preset=preset, devices=devices,
        max_steps=max_steps, max_epochs=max_epochs, batch_size=batch_size,
        tokens_per_batch=tokens_per_batch, compiled=compiled, resume=resume, strategy=strategy,
        progress=progress, tiles=tiles, keep_checkpoints=keep_checkpoints,
    )  # fmt: skip
    threads = torch.get_num_threads()  # a CPU run may use fewer; the caller's count comes back
    try:
        # A second run into the same directory would mix checkpoints. DDP's extra ranks are
        # re-launched copies of this process: only rank 0 takes the lock.
        with OutputLock(out) if _rank() == 0 else nullcontext():
            return _pretrain(plan, clock, load)
    finally:
        torch.set_num_threads(threads)


def _pretrain(plan: RunPlan, clock: StageClock, load: CoreSample | None) -> Path:
    """The run's stages in order; Lightning is imported only once the run can start (a wrong
    option or directory is reported before its seconds of import)."""
    start = plan.start()
    cfg = start.config
    ds = _training_data(plan, start)
    vocab = _vocabulary(plan.out, ds, cfg, start.resuming)
    clock.lap("config and vocabulary")
    with quiet_dependencies():  # no "Loading weights" bar from the text model
        tag_table = build_tag_table(vocab, cfg.tokenizer.text_model, cache_dir=ds.path)
    clock.lap("tag table (text model, or its cache in the dataset)")

    import lightning as L

    from geojepa.train.module import EpochLoader, PretrainModule
    from geojepa.train.progress import report_entity_cap

    clock.lap("import Lightning")
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    model = build_model(cfg, tag_table)
    if cfg.trainer.compile:
        from geojepa.model import compile as model_compile

        model_compile.compile_blocks(model)  # in place: checkpoint keys stay the same
    module = PretrainModule(cfg, model, 1)  # total_steps is set once the world size is known
    clock.lap("model")
    loader, workers = _loader(plan, cfg, ds, vocab)
    batches = _batches_note(cfg, loader.dataset.batcher.tokens_per_batch)
    if cfg.data.tokens_per_batch == "auto" and plan.progress is not False and _rank() == 0:
        print(f"pretrain: batches {batches}", file=sys.stderr, flush=True)
    epoch_loader = EpochLoader(loader)
    epoch_loader.module = module
    clock.lap("data loader")
    strategy = _strategy(plan, cfg)
    if not _on_gpu(cfg.trainer.accelerator) and strategy == "auto":
        choice = choose_threads(load)  # one process on CPUs: the cores others leave idle
        clock.lap(f"torch threads {choice.threads} of {choice.before} ({choice.reason})")
    n_tiles = int(ds.manifest.get("n_tiles") or 0) or sum(
        ds.read_tiles(s, columns=[REGIONS_INDEX]).num_rows for s in ds.shards
    )
    capped = report_entity_cap(
        ds, cfg.tokenizer.max_entities, plan.progress is not False and _rank() == 0
    )
    with quiet_dependencies():  # Lightning talks from Trainer() on
        trainer, report = _trainer(plan, cfg, strategy, clock)
        planned = None
        if cfg.data.tokens_per_batch is not None:
            planned = loader.dataset.planned_batches(trainer.world_size, max(workers, 1))
        module.total_steps = _total_steps(cfg, n_tiles, trainer.world_size, planned)
        _fit(trainer, module, epoch_loader, start.checkpoint, plan.ckpt_dir / LAST_CKPT)
    if interrupt.requested():
        raise interrupt.Interrupted(
            f"interrupted at step {trainer.global_step}: the checkpoint "
            f"{plan.ckpt_dir / LAST_CKPT} is kept; run the same command again to resume (no "
            "model files were exported)"
        )
    if trainer.global_rank == 0:
        _export(plan, cfg, module, vocab, ds, trainer, report, n_tiles, capped, batches)
    return plan.out


def _training_data(plan: RunPlan, start: RunStart) -> TileDataset:
    """The run directory, and the dataset trained on: the whole one, or with ``plan.tiles``
    the run's own copy of those tiles (written by rank 0, reused on resume)."""
    try:
        plan.out.mkdir(parents=True, exist_ok=True)
        plan.ckpt_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {plan.out}: {exc}") from None
    if plan.tiles is None:
        return plan.dataset
    subset = plan.out / TRAIN_DATA_DIR
    # resuming, or a DDP worker started after rank 0 wrote it: the run's own subset
    if (subset / MANIFEST_FILE).is_file() and (start.resuming or _rank() != 0):
        return open_dataset(subset)
    if _rank() == 0:
        return subset_dataset(plan.dataset, plan.tiles, subset, overwrite=True)
    raise ConfigError(f"{subset} is missing: rank 0 writes it before training starts")


def _vocabulary(out: Path, ds: TileDataset, cfg: PretrainConfig, resuming: bool) -> TagVocabulary:
    """The vocabulary is fixed at the start of a run (resume reuses it); rank 0 saves it and
    the config beside every checkpoint."""
    vocab_path = out / VOCAB_FILE
    vocab = TagVocabulary.load(vocab_path) if resuming else TagVocabulary.from_dataset(ds)
    if _rank() == 0:
        if not resuming:
            vocab.save(vocab_path)
        cfg.save(out / CKPT_DIR / RUN_CONFIG_FILE)
    return vocab


def _loader(
    plan: RunPlan, cfg: PretrainConfig, ds: TileDataset, vocab: TagVocabulary
) -> tuple[Any, int]:
    """The tile loader and its number of worker processes."""
    gpu = _on_gpu(cfg.trainer.accelerator)
    all_gpus = not isinstance(plan.devices, int) or plan.devices < 1  # "auto" or -1
    per_node = max(torch.cuda.device_count(), 1) if all_gpus else plan.devices
    workers = cfg.data.workers(gpu=gpu, processes=per_node if gpu else 1)
    loader = make_dataloader(
        ds,
        vocab,
        cfg.tokenizer,
        batch_size=cfg.data.batch_size,
        shuffle=True,
        seed=cfg.trainer.seed,
        num_workers=workers,
        shuffle_buffer=cfg.data.shuffle_buffer,
        pin_memory=torch.cuda.is_available(),
        tokens_per_batch=cfg.data.tokens_per_batch,
    )
    return loader, workers


def _strategy(plan: RunPlan, cfg: PretrainConfig) -> str:
    """The plan's strategy, else DDP for several devices or nodes, else Lightning's "auto"."""
    if plan.strategy is not None:
        return plan.strategy
    devices = plan.devices
    multi = (str(devices).isdigit() and int(devices) > 1) or cfg.trainer.num_nodes > 1
    # Batches without imagery leave the image encoder unused: DDP must allow that.
    unused = "_find_unused_parameters_true" if cfg.tokenizer.use_image else ""
    return f"ddp{unused}" if multi else "auto"


def _trainer(
    plan: RunPlan, cfg: PretrainConfig, strategy: str, clock: StageClock
) -> tuple[Any, Any]:
    """Lightning's trainer with our checkpoints, interrupt handling and progress display;
    returns (trainer, progress report)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from geojepa.train.progress import ProgressReport

    t, keep = cfg.trainer, plan.keep_checkpoints
    checkpoints = ModelCheckpoint(
        dirpath=plan.ckpt_dir,
        filename="step={step}",
        auto_insert_metric_name=False,
        every_n_train_steps=t.checkpoint_every_n_steps,
        save_top_k=keep,
        monitor="step" if keep >= 0 else None,  # newest = highest step
        mode="max",
        save_last=True,
        # the run's own last.ckpt is overwritten, never set beside a Lightning-versioned
        # last-v1.ckpt (which a resumed run wrote when it had been stopped before its first
        # periodic checkpoint, or its directory moved); resume reads the newest complete file
        enable_version_counter=False,
    )
    report = ProgressReport(show=plan.progress is not False, clock=clock)  # speeds logged anyway
    trainer = L.Trainer(
        default_root_dir=plan.out,
        accelerator=t.accelerator,
        devices=plan.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        precision=_precision(cfg, t.accelerator),
        max_steps=t.max_steps,
        max_epochs=t.max_epochs if t.max_epochs is not None else -1,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=cfg.optim.grad_clip or None,
        log_every_n_steps=t.log_every_n_steps,
        logger=_loggers(plan.out),
        callbacks=[checkpoints, _stop_on_interrupt_callback(), report],
        enable_progress_bar=False,  # ProgressReport instead
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the tile stream splits shards across ranks itself
    )
    return trainer, report


def _fit(trainer: Any, module: Any, epoch_loader: Any, checkpoint: Path | None, last: Path) -> None:
    """Train (from ``checkpoint`` when resuming), then save ``last``: the final state, also
    when the run ended mid-interval or was interrupted."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    with warnings.catch_warnings():
        # The EMA teacher is in eval mode on purpose; the run directory holds config.json.
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
        warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
        try:
            with interrupt.deferred():  # Ctrl-C stops at a step boundary, with a checkpoint
                # weights_only: a checkpoint is never unpickled (a planted one cannot run code)
                trainer.fit(module, epoch_loader, ckpt_path=str(checkpoint) if checkpoint else None,
                            weights_only=True)  # fmt: skip
        except SIGTERMException:
            # Lightning's own SIGTERM handler ends the fit at the step boundary where ours
            # would: save the checkpoint below and report it as an interrupt
            if not interrupt.requested():
                raise
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[0][:160]
            raise InputError(
                f"{checkpoint} is not a plain geojepa checkpoint (refusing to unpickle it: "
                f"{first}); delete it, or train into a new directory"
            ) from None
        finally:
            epoch_loader.loader.close()  # persistent workers: not left idling after the run
    trainer.save_checkpoint(last)


def _export(
    plan: RunPlan,
    cfg: PretrainConfig,
    module: Any,
    vocab: TagVocabulary,
    ds: TileDataset,
    trainer: Any,
    report: Any,
    n_tiles: int,
    capped: dict[str, int],
    batches: str,
) -> None:
    """The model directory files, with a card that names the data (never a local path)."""
    metrics = {
        k.split("/", 1)[1]: float(v)
        for k, v in trainer.callback_metrics.items()
        if k.startswith("train/") and "n_targets" not in k
    }
    info = {
        "dataset_name": ds.path.name,
        "sources": training_sources(ds.manifest.get("source") or {}),
        "name": plan.out.name,
        "n_tiles": n_tiles,
        "steps": trainer.global_step,
        "epochs": report.epochs(trainer.global_step, n_tiles),
        "entity_cap": capped,
        "batches": batches,
        "devices": f"{trainer.world_size} × {trainer.accelerator.__class__.__name__}",
        "final_losses": metrics,
        "throughput": report.summary(),
    }
    training_data = {"dataset": str(ds.path.resolve()), "n_tiles": n_tiles}
    if ds is not plan.dataset:
        training_data["subset_of"] = str(plan.dataset.path.resolve())
    export_model(
        module.model, cfg, vocab, plan.out, info,
        dataset_config=ds.config, training_data=training_data,
    )  # fmt: skip


def _batches_note(cfg: PretrainConfig, budget: int | None) -> str:
    """What a step holds, for the card and (when ``auto`` chose the budget) the console."""
    if budget is None:
        return f"of {cfg.data.batch_size} tiles"
    note = f"of up to {budget} real tokens per device, length-bucketed"
    if cfg.data.tokens_per_batch == "auto":
        note += f" ({cfg.data.batch_size} tiles a step on average: data.tokens_per_batch = auto)"
    return note


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def _loggers(out: Path) -> list[Any]:
    """CSV logs always; TensorBoard logs too when the optional `tensorboard` is installed
    (pip install 'geojepa[tensorboard]')."""
    import importlib.util

    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers: list[Any] = [CSVLogger(out, name="logs", version=_fresh_csv_version(out / "logs"))]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(out, name="logs", version="tensorboard"))
    return loggers


def _fresh_csv_version(logs: Path) -> str:
    """`csv` for the first attempt, `csv-2`, `csv-3`… after resumes: no attempt's log is lost.

    Lightning's CSV logger rewrites ``metrics.csv`` when a run resumes into the same version;
    `geojepa plot --curves` merges every ``metrics.csv`` under the run by step.
    """
    version, n = "csv", 1
    while (logs / version / "metrics.csv").exists():
        n += 1
        version = f"csv-{n}"
    return version


def _stop_on_interrupt_callback() -> Any:
    from lightning.pytorch.callbacks import Callback

    class StopOnInterrupt(Callback):
        """Ends the fit loop at the next step boundary once SIGINT was requested."""

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if interrupt.requested():
                trainer.should_stop = True

    return StopOnInterrupt()
