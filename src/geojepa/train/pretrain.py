"""`pretrain()`: a Lightning run from a tile dataset to a model directory.

The run directory holds ``checkpoints/`` (periodic + ``last.ckpt``, with ``config.json`` beside
them), ``logs/`` (CSV; TensorBoard too with the ``tensorboard`` extra), ``vocab.json``,
``train-data/`` when trained on a subset of tiles (``pretrain --split``), and, at the end, the
model directory files (see `geojepa.train.export`). Re-running on the same directory resumes
from its newest complete checkpoint, normally ``last.ckpt`` (model, EMA teacher, optimiser,
schedules, data position and RNG; see :func:`newest_checkpoint`).
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
import zipfile
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from geojepa import interrupt
from geojepa.data.combine import subset_dataset
from geojepa.data.reader import TileDataset, open_dataset
from geojepa.data.schema import MANIFEST_FILE
from geojepa.errors import ConfigError, InputError, OutputError
from geojepa.io.atomic import OutputLock
from geojepa.model.directory import VOCAB_FILE
from geojepa.progress import StageClock
from geojepa.tokenize.loader import make_dataloader
from geojepa.tokenize.tags import TagVocabulary, build_tag_table
from geojepa.train.config import PretrainConfig, preset_config
from geojepa.train.export import build_model, export_model, training_sources

CKPT_DIR = "checkpoints"
TRAIN_DATA_DIR = "train-data"  # pretrain(tiles=...): the subset of tiles trained on
RUN_CONFIG = "run_config.json"


def resolve_config(
    preset: str = "cpu-base",
    config: PretrainConfig | str | Path | None = None,
    batch_size: int | None = None,
    max_steps: int | None = None,
    max_epochs: int | None = None,
    tokens_per_batch: int | None = None,
    compiled: bool | None = None,
) -> PretrainConfig:
    """Preset, or a config object/file, then command-line overrides. A run length given here
    (``max_steps``/``max_epochs``) is the schedules' length too (``trainer.schedule_steps``
    cleared): asking cpu-base for 5,000 steps means a 5,000-step run, not 5,000 steps along
    its 2,400-step schedule."""
    if config is None:
        cfg = preset_config(preset)
    elif isinstance(config, PretrainConfig):
        cfg = config
    else:
        cfg = PretrainConfig.load(config)
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"--max-steps must be at least 1, got {max_steps}")
    if max_epochs is not None and max_epochs < 1:
        raise ConfigError(f"--max-epochs must be at least 1, got {max_epochs}")
    trainer: dict[str, Any] = {}
    if max_steps is not None:
        trainer["max_steps"] = max_steps
        if max_epochs is None:
            trainer["max_epochs"] = None if max_steps > 0 else cfg.trainer.max_epochs
    if max_epochs is not None:
        trainer["max_epochs"] = max_epochs
        if max_steps is None:
            trainer["max_steps"] = -1
    if max_steps is not None or max_epochs is not None:
        trainer["schedule_steps"] = None
    if compiled is not None:
        trainer["compile"] = compiled
    data = cfg.model_dump()
    data["trainer"].update(trainer)
    if batch_size is not None:
        data["data"]["batch_size"] = batch_size
    if tokens_per_batch is not None:
        data["data"]["tokens_per_batch"] = tokens_per_batch
    return PretrainConfig.from_dict(data)


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
    tokens_per_batch: int | None = None,
    resume: bool = True,
    strategy: str | None = None,
    progress: bool | None = None,
    tiles: Iterable[str] | None = None,
    keep_checkpoints: int = 3,
    compiled: bool | None = None,
    verbose: bool = False,
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
    ``verbose``: print the time of each start-up stage up to the first step (stderr).
    """
    # Lightning is imported in _pretrain, not at module level: `import geojepa` and loading a
    # model directory must stay fast.
    clock = StageClock("pretrain", show=verbose and _rank() == 0)
    out = Path(output)
    devices = _check_devices(devices)
    if keep_checkpoints < -1:
        raise ConfigError(f"keep_checkpoints must be -1 (all), 0 or more, got {keep_checkpoints}")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory: give a run directory to write")
    ds = dataset if isinstance(dataset, TileDataset) else open_dataset(dataset)
    clock.lap("open the dataset")
    # A second run into the same directory would mix checkpoints. DDP's extra ranks are
    # re-launched copies of this process: only rank 0 takes the lock.
    with OutputLock(out) if _rank() == 0 else nullcontext():
        return _pretrain(ds, out, config, preset, devices, max_steps, max_epochs, batch_size,
                         resume, strategy, progress, tiles, keep_checkpoints,
                         tokens_per_batch, compiled, clock)  # fmt: skip


def _check_devices(devices: int | str) -> int | str:
    """An int >= 1, "auto", or a digit string; anything else is a one-line ConfigError."""
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices >= 1:
        return devices
    if devices in ("auto", -1):
        return devices
    raise ConfigError(f"--devices must be a positive number or 'auto', got {devices!r}")


def _pretrain(
    ds: TileDataset,
    out: Path,
    config: PretrainConfig | str | Path | None,
    preset: str,
    devices: int | str,
    max_steps: int | None,
    max_epochs: int | None,
    batch_size: int | None,
    resume: bool,
    strategy: str | None,
    progress: bool | None,
    tiles: Iterable[str] | None = None,
    keep_checkpoints: int = 3,
    tokens_per_batch: int | None = None,
    compiled: bool | None = None,
    clock: StageClock | None = None,
) -> Path:
    clock = clock or StageClock("pretrain")
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from geojepa.train.module import EpochLoader, PretrainModule
    from geojepa.train.progress import ProgressReport, quiet_dependencies, report_entity_cap

    clock.lap("import Lightning")

    ckpt_dir = out / CKPT_DIR
    last = ckpt_dir / "last.ckpt"
    start = newest_checkpoint(ckpt_dir) if resume else None
    resuming = start is not None
    if resuming:
        saved = PretrainConfig.load(ckpt_dir / "config.json")
        cfg = resolve_config(
            config=saved, max_steps=max_steps, max_epochs=max_epochs, compiled=compiled
        )
        if config is not None or batch_size is not None or tokens_per_batch is not None:
            wanted = resolve_config(
                preset, config, batch_size, max_steps, max_epochs, tokens_per_batch
            )
            if wanted.model_dump(exclude={"trainer"}) != cfg.model_dump(exclude={"trainer"}):
                raise ConfigError(
                    f"{out} holds a run with a different config: use a new output directory "
                    "or --no-resume"
                )
    else:
        cfg = resolve_config(
            preset, config, batch_size, max_steps, max_epochs, tokens_per_batch, compiled
        )
        if out.exists() and any(out.iterdir()) and not ckpt_dir.exists():
            raise OutputError(f"{out} exists and is not a geojepa run directory")
        if resume and any(ckpt_dir.glob("*.ckpt")):
            raise InputError(
                f"{ckpt_dir} holds no complete checkpoint to resume from (its .ckpt files are "
                "damaged): train into a new directory"
            )
        if any(ckpt_dir.glob("*.ckpt")):
            raise OutputError(
                f"{out} already holds checkpoints: resume it, or train into a new directory"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc}") from None
    source = ds
    if tiles is not None:
        subset = out / TRAIN_DATA_DIR
        # resuming, or a DDP worker started after rank 0 wrote it: the run's own subset
        if (subset / MANIFEST_FILE).is_file() and (resuming or _rank() != 0):
            ds = open_dataset(subset)
        elif _rank() == 0:
            ds = subset_dataset(ds, tiles, subset, overwrite=True)
        else:
            raise ConfigError(f"{subset} is missing: rank 0 writes it before training starts")

    # The vocabulary is fixed at the start of a run (resume reuses it).
    vocab_path = out / VOCAB_FILE
    vocab = TagVocabulary.load(vocab_path) if resuming else TagVocabulary.from_dataset(ds)
    if _rank() == 0:
        if not resuming:
            vocab.save(vocab_path)
        cfg.save(ckpt_dir / "config.json")  # beside every checkpoint of the run
    clock.lap("config and vocabulary")
    with quiet_dependencies():  # no "Loading weights" bar from the text model
        tag_table = build_tag_table(vocab, cfg.tokenizer.text_model, cache_dir=ds.path)
    clock.lap("tag table (text model, or its cache in the dataset)")

    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    model = build_model(cfg, tag_table)
    if cfg.trainer.compile:
        from geojepa.model import compile as model_compile

        model_compile.compile_blocks(model)  # in place: checkpoint keys stay the same
    clock.lap("model")
    t = cfg.trainer
    n_tiles = int(ds.manifest.get("n_tiles") or 0) or sum(
        ds.read_tiles(s, columns=["region_id"]).num_rows for s in ds.shards
    )
    capped = report_entity_cap(
        ds, cfg.tokenizer.max_entities, progress is not False and _rank() == 0
    )
    module = PretrainModule(cfg, model, 1)  # total_steps is set once the world size is known
    gpu = _on_gpu(t.accelerator)
    all_gpus = not isinstance(devices, int) or devices < 1  # "auto" or -1
    per_node = max(torch.cuda.device_count(), 1) if all_gpus else devices
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
    epoch_loader = EpochLoader(loader)
    epoch_loader.module = module
    clock.lap("data loader")

    accelerator = t.accelerator
    checkpoints = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="step={step}",
        auto_insert_metric_name=False,
        every_n_train_steps=t.checkpoint_every_n_steps,
        save_top_k=keep_checkpoints,
        monitor="step" if keep_checkpoints >= 0 else None,  # newest = highest step
        mode="max",
        save_last=True,
    )
    if strategy is None:
        multi = (str(devices).isdigit() and int(devices) > 1) or t.num_nodes > 1
        # Batches without imagery leave the image encoder unused: DDP must allow that.
        unused = "_find_unused_parameters_true" if cfg.tokenizer.use_image else ""
        strategy = f"ddp{unused}" if multi else "auto"
    report = ProgressReport(show=progress is not False, clock=clock)  # speeds logged anyway
    callbacks: list[Any] = [checkpoints, _stop_on_interrupt_callback(), report]
    with quiet_dependencies():  # Lightning talks from Trainer() on
        trainer = L.Trainer(
            default_root_dir=out,
            accelerator=accelerator,
            devices=devices,
            num_nodes=t.num_nodes,
            strategy=strategy,
            precision=_precision(cfg, accelerator),
            max_steps=t.max_steps,
            max_epochs=t.max_epochs if t.max_epochs is not None else -1,
            accumulate_grad_batches=t.accumulate_grad_batches,
            gradient_clip_val=cfg.optim.grad_clip or None,
            log_every_n_steps=t.log_every_n_steps,
            logger=_loggers(out),
            callbacks=callbacks,
            enable_progress_bar=False,  # ProgressReport instead
            enable_model_summary=False,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,  # the tile stream splits shards across ranks itself
        )
        world = trainer.world_size
        planned = None
        if cfg.data.tokens_per_batch is not None:
            planned = loader.dataset.planned_batches(world, max(workers, 1))
        module.total_steps = _total_steps(cfg, n_tiles, world, planned)
        with warnings.catch_warnings():
            # The EMA teacher is in eval mode on purpose; the run directory holds config.json.
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
            warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
            try:
                with interrupt.deferred():  # Ctrl-C stops at a step boundary, with a checkpoint
                    # weights_only: a checkpoint is never unpickled (a planted one cannot run code)
                    trainer.fit(module, epoch_loader, ckpt_path=str(start) if start else None,
                                weights_only=True)  # fmt: skip
            except SIGTERMException:
                # Lightning's own SIGTERM handler ends the fit at the step boundary where ours
                # would: save the checkpoint below and report it as an interrupt
                if not interrupt.requested():
                    raise
            except pickle.UnpicklingError as exc:
                first = str(exc).strip().splitlines()[0][:160]
                raise InputError(
                    f"{start} is not a plain geojepa checkpoint (refusing to unpickle it: "
                    f"{first}); delete it, or train into a new directory"
                ) from None
            finally:
                loader.close()  # persistent workers: not left idling after the run
        trainer.save_checkpoint(last)  # the final state, also when the run ended mid-interval
    if interrupt.requested():
        raise interrupt.Interrupted(
            f"interrupted at step {trainer.global_step}: the checkpoint {last} is kept; run the "
            "same command again to resume (no model files were exported)"
        )
    if trainer.global_rank == 0:
        metrics = {
            k.split("/", 1)[1]: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("train/") and "n_targets" not in k
        }
        info = {
            "dataset_name": ds.path.name,  # the card names the data, never a local path
            "sources": training_sources(ds.manifest.get("source") or {}),
            "name": out.name,
            "n_tiles": n_tiles,
            "steps": trainer.global_step,
            "epochs": report.epochs(trainer.global_step, n_tiles),
            "entity_cap": capped,
            "devices": f"{world} × {trainer.accelerator.__class__.__name__}",
            "final_losses": metrics,
            "throughput": report.summary(),
        }
        training_data = {"dataset": str(ds.path.resolve()), "n_tiles": n_tiles}
        if ds is not source:
            training_data["subset_of"] = str(source.path.resolve())
        export_model(
            module.model, cfg, vocab, out, info,
            dataset_config=ds.config, training_data=training_data,
        )  # fmt: skip
    return out


def newest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint a run resumes from: the newest complete one, whatever its name.

    Lightning writes ``step=N.ckpt`` and then ``last.ckpt``: a run killed between the two must
    resume from the former. Complete = a whole zip archive (what ``torch.save`` writes; a cut
    file lacks the archive's end record).
    """
    found = [p for p in ckpt_dir.glob("*.ckpt") if p.is_file() and zipfile.is_zipfile(p)]
    return max(found, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"), default=None)


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
