"""A pretraining run as asked for (`RunPlan`) and as it starts in its directory (`RunStart`).

`pretrain()` takes many options; they travel together in one typed plan instead of a long list
of positional parameters. Resolving the plan against the run directory (fresh run or resume,
which config, which checkpoint) needs no Lightning, so a wrong option or a directory that cannot
be resumed is reported before the seconds of Lightning's import.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from geojepa.data.reader import TileDataset
from geojepa.errors import ConfigError, InputError, OutputError
from geojepa.train.config import PretrainConfig, preset_config

CKPT_DIR = "checkpoints"
TRAIN_DATA_DIR = "train-data"  # pretrain(tiles=...): the subset of tiles trained on
RUN_CONFIG_FILE = "config.json"  # in CKPT_DIR, beside every checkpoint of the run


def resolve_config(
    preset: str = "cpu-base",
    config: PretrainConfig | str | Path | None = None,
    batch_size: int | None = None,
    max_steps: int | None = None,
    max_epochs: int | None = None,
    tokens_per_batch: int | Literal["auto"] | None = None,
    compiled: bool | None = None,
) -> PretrainConfig:
    """Preset, or a config object/file, then command-line overrides. A run length given here
    (``max_steps``/``max_epochs``) is the schedules' length too (``trainer.schedule_steps``
    cleared): asking cpu-base for 5,000 steps means a 5,000-step run, not 5,000 steps along
    its 2,400-step schedule. ``tokens_per_batch`` 0 turns the token budget off (fixed batches
    of ``batch_size`` tiles)."""
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
        data["data"]["tokens_per_batch"] = tokens_per_batch or None
    return PretrainConfig.from_dict(data)


def check_devices(devices: int | str) -> int | str:
    """An int >= 1, "auto", or a digit string; anything else is a one-line ConfigError."""
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices >= 1:
        return devices
    if devices in ("auto", -1):
        return devices
    raise ConfigError(f"--devices must be a positive number or 'auto', got {devices!r}")


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """What one `pretrain()` call asks for (see its docstring for each option); built by name
    only, so that no option can land in another's place."""

    dataset: TileDataset
    out: Path
    config: PretrainConfig | str | Path | None = None
    preset: str = "cpu-base"
    devices: int | str = 1
    max_steps: int | None = None
    max_epochs: int | None = None
    batch_size: int | None = None
    tokens_per_batch: int | Literal["auto"] | None = None
    compiled: bool | None = None
    resume: bool = True
    strategy: str | None = None
    progress: bool | None = None
    tiles: Iterable[str] | None = None
    keep_checkpoints: int = 3

    @property
    def ckpt_dir(self) -> Path:
        return self.out / CKPT_DIR

    def fresh_config(self) -> PretrainConfig:
        """The config of a new run: preset or config, then the overrides."""
        return resolve_config(self.preset, self.config, self.batch_size, self.max_steps,
                              self.max_epochs, self.tokens_per_batch, self.compiled)  # fmt: skip

    def start(self) -> RunStart:
        """Fresh run or resume, with its config; refuses a directory that is neither."""
        ckpt_dir = self.ckpt_dir
        checkpoint = newest_checkpoint(ckpt_dir) if self.resume else None
        if checkpoint is not None:
            return RunStart(self._resumed_config(), checkpoint)
        cfg = self.fresh_config()
        if self.out.exists() and any(self.out.iterdir()) and not ckpt_dir.exists():
            raise OutputError(f"{self.out} exists and is not a geojepa run directory")
        if any(ckpt_dir.glob("*.ckpt")):
            if self.resume:
                raise InputError(
                    f"{ckpt_dir} holds no complete checkpoint to resume from (its .ckpt files "
                    "are damaged): train into a new directory"
                )
            raise OutputError(
                f"{self.out} already holds checkpoints: resume it, or train into a new directory"
            )
        return RunStart(cfg, None)

    def _resumed_config(self) -> PretrainConfig:
        """The run's saved config with this call's run length; any other change is refused."""
        saved = PretrainConfig.load(self.ckpt_dir / RUN_CONFIG_FILE)
        cfg = resolve_config(config=saved, max_steps=self.max_steps, max_epochs=self.max_epochs,
                             compiled=self.compiled)  # fmt: skip
        asked = self.config is not None or self.batch_size is not None
        if asked or self.tokens_per_batch is not None:
            wanted = resolve_config(self.preset, self.config, self.batch_size, self.max_steps,
                                    self.max_epochs, self.tokens_per_batch)  # fmt: skip
            if wanted.model_dump(exclude={"trainer"}) != cfg.model_dump(exclude={"trainer"}):
                raise ConfigError(
                    f"{self.out} holds a run with a different config: use a new output "
                    "directory or --no-resume"
                )
        return cfg


@dataclass(frozen=True)
class RunStart:
    """How a run starts: its config, and the checkpoint it resumes from (None: a fresh run)."""

    config: PretrainConfig
    checkpoint: Path | None

    @property
    def resuming(self) -> bool:
        return self.checkpoint is not None


def newest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint a run resumes from: the newest complete one, whatever its name.

    Lightning writes ``step=N.ckpt`` and then ``last.ckpt``: a run killed between the two must
    resume from the former. Complete = a whole zip archive (what ``torch.save`` writes; a cut
    file lacks the archive's end record).
    """
    found = [p for p in ckpt_dir.glob("*.ckpt") if p.is_file() and zipfile.is_zipfile(p)]
    return max(found, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"), default=None)
