"""What `pretrain` says while it runs: one progress display, and no third-party noise.

On a terminal: one bar, ``step/total``, loss, tiles/s, real tokens/s and ETA. Without one
(nohup, SLURM, CI logs): a plain line every ``every`` steps with the same fields, so a log shows
the run is alive and how far it is. Lightning's own bar (per-epoch counts, ``v_num``), its tips
and its start-up/shut-down messages are switched off; only rank 0 reports. This is a Lightning
callback, not a second progress system: ``TQDMProgressBar`` was not subclassed because it counts
batches per epoch (a resumed or token-budget run has no fixed epoch length), has no plain-line
mode for logs, and every hook it has would be overridden to show steps, speeds and the ETA.
The same speeds go to the loggers (``speed/real_tokens_per_s``, ``speed/tiles_per_s``; also
when nothing is shown) and end the run's last line. Real tokens are those the packed model
computes on (entities and image tokens, no padding), counted from the host-made plan, so
counting never waits for a GPU.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import lightning as L
import torch

from geojepa.progress import StageClock, quiet_dependencies

if TYPE_CHECKING:
    from geojepa.data.reader import TileDataset


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def real_tokens(batch: Any) -> int:
    """Tokens a training step computes on (padding excluded), without waiting for a device:
    the size of the plan's packing of every token when the batch has a plan (`PlannedBatch`)."""
    plan = getattr(batch, "plan", None)
    if plan is not None:
        return int(plan.tokens.index.shape[0])
    valid = getattr(batch, "entity_valid", None)
    return int(valid.sum()) if valid is not None else 0


class ProgressReport(L.Callback):
    """Steps, loss (moving average), tiles/s, real tokens/s and ETA; a bar on a TTY, else a line
    every N steps; the speeds also go to the loggers on their logging steps.

    ``every``: steps between plain lines (default: about 20 lines per run, at least every 50
    steps). ``stream``: where to write (stderr). ``show=False`` prints nothing but still
    measures and logs the speeds (``pretrain(progress=False)``, ``--quiet``).
    """

    def __init__(
        self,
        tty: bool | None = None,
        every: int | None = None,
        stream: TextIO | None = None,
        show: bool = True,
        clock: StageClock | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.clock = clock  # start-up stages (``-v``): Lightning's set-up, the first step
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = every
        self.show = show
        self._bar: Any = None
        self.tiles = self.tokens = 0
        self.first_step = self.last_step = 0
        self.start = self.end = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.enabled = trainer.global_rank == 0
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.total = max_steps or getattr(pl_module, "total_steps", None)
        self.first_step = self.last_step = trainer.global_step  # > 0 after a resume
        if self.clock is not None and self.enabled:
            self.clock.lap("Lightning set-up (trainer, loggers, checkpoint)")
        self.last_printed = trainer.global_step
        self.start = self.end = time.perf_counter()
        self.tiles = self.tokens = 0
        self._loss: torch.Tensor | None = None  # moving average, kept where the loss is
        self._shown = 0.0
        self.world = trainer.world_size
        if self.every is None:
            self.every = max(1, min(50, (self.total or 1000) // 20))
        if self.enabled and self.show and self.tty:
            from tqdm.auto import tqdm

            # shutil falls back to $COLUMNS or 80 where a pseudo-terminal reports 0 columns
            width = shutil.get_terminal_size().columns
            self._bar = tqdm(total=self.total, initial=self.first_step, unit="step",
                             desc="pretrain", file=self.stream, ncols=width)  # fmt: skip

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        if not self.enabled:
            return
        if self.clock is not None and "first step" not in self.clock.seconds:
            self.clock.lap("first step")
        self.tiles += (len(batch) if hasattr(batch, "__len__") else 0) * self.world
        self.tokens += real_tokens(batch) * self.world  # rank 0's count × ranks, like the tiles
        self.last_step = trainer.global_step
        self.end = time.perf_counter()
        if pl_module is not None and _logging_step(trainer):
            speed = {"speed/real_tokens_per_s": self.tokens_per_s,
                     "speed/tiles_per_s": self.tiles_per_s}  # fmt: skip
            pl_module.log_dict(speed, batch_size=1, rank_zero_only=True)
        if not self.show:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:  # averaged on the device: reading it would wait for a GPU
            value = loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(loss)
            self._loss = value if self._loss is None else 0.9 * self._loss + 0.1 * value
        step = trainer.global_step
        if self._bar is not None:
            if step > self._bar.n:
                self._bar.update(step - self._bar.n)
                now = time.perf_counter()
                if now - self._shown >= 1.0:  # the loss is read once a second at most
                    self._shown = now
                    self._bar.set_postfix_str(self._fields(step, eta=False), refresh=False)
        elif step - self.last_printed >= (self.every or 1) or step == self.total:
            self.last_printed = step
            print(self.line(step), file=self.stream, flush=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or not self.show:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            print(self.line(trainer.global_step, done=True), file=self.stream, flush=True)
        elif trainer.global_step != self.last_printed:
            print(self.line(trainer.global_step), file=self.stream, flush=True)

    @property
    def seconds(self) -> float:
        """Training time so far: from the start of training to the end of the last step."""
        return max(self.end - self.start, 1e-9)

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds

    @property
    def tokens_per_s(self) -> float:
        """Real tokens per second (see `real_tokens`)."""
        return self.tokens / self.seconds

    def epochs(self, steps: int, n_tiles: int) -> float | None:
        """Passes over ``n_tiles`` tiles that ``steps`` optimiser steps make, at this attempt's
        tiles per step (exact for fixed batches, an estimate under a token budget); None before
        a step. Not Lightning's epoch counter: a resumed run starts a new epoch there, so one
        resume made 600 steps of 1.26 epochs read "epochs: 3"."""
        done = self.last_step - self.first_step
        if done <= 0 or n_tiles <= 0:
            return None
        return round(steps * self.tiles / done / n_tiles, 2)

    def summary(self) -> dict[str, float]:
        """The run's speeds, for the model card."""
        return {
            "seconds": self.seconds,
            "tiles": self.tiles,
            "real_tokens": self.tokens,
            "tiles_per_s": self.tiles_per_s,
            "real_tokens_per_s": self.tokens_per_s,
        }

    @property
    def loss(self) -> float | None:
        """The moving average of the loss (a host sync: read it only to show it)."""
        return None if self._loss is None else float(self._loss)

    def _fields(self, step: int, eta: bool = True, clock: bool | None = None) -> str:
        """Loss, speeds and (``clock``, default ``eta``) the elapsed time, then the ETA."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        done = step - self.first_step
        loss = self.loss
        parts = [f"loss {loss:.4f}" if loss is not None else "loss –",
                 f"{self.tiles / elapsed:.1f} tiles/s",
                 f"{self.tokens / elapsed:.0f} real tokens/s"]  # fmt: skip
        if eta if clock is None else clock:
            parts.append(f"elapsed {_clock(elapsed)}")
        if eta and self.total and done > 0:
            parts.append(f"ETA {_clock((self.total - step) * elapsed / done)}")
        return " · ".join(parts)

    def line(self, step: int, done: bool = False) -> str:
        """One plain progress line:
        ``step 120/484 (25%) · loss … · tiles/s · real tokens/s · elapsed · ETA``; ``done``:
        the summary after a bar, ``pretrain done · step 484/484 · … · elapsed``."""
        where = f"step {step}"
        if self.total:
            where += f"/{self.total}" + ("" if done else f" ({100 * step / self.total:.0f}%)")
        if done:
            return f"pretrain done · {where} · {self._fields(step, eta=False, clock=True)}"
        return f"pretrain {where} · {self._fields(step)}"


def _logging_step(trainer: Any) -> bool:
    """True on the steps Lightning writes to the loggers."""
    flag = getattr(getattr(trainer, "_logger_connector", None), "should_update_logs", None)
    return flag if isinstance(flag, bool) else False


def checkpoints_note(run: str | Path) -> str:
    """The line that ends `pretrain`: what its checkpoints hold on disk (a 600-step cpu-base run
    keeps ~250 MB: three periodic checkpoints and last.ckpt, each with the optimiser state)."""
    folder = Path(run) / "checkpoints"
    files = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    if not files:
        return f"checkpoints: none in {folder}"
    size = sum(p.stat().st_size for p in files) / 1e6
    periodic = len([p for p in files if p.name != "last.ckpt"])
    keep = (
        f" ({periodic} periodic; --keep-checkpoints 0 keeps only last.ckpt, which a resume reads)"
        if periodic
        else ""
    )
    return f"checkpoints: {len(files)} files, {size:,.0f} MB in {folder}{keep}"


def report_entity_cap(ds: TileDataset, max_entities: int, show: bool) -> dict[str, int]:
    """What ``tokenizer.max_entities`` cuts of the training data (`data.info.entities_over_cap`),
    said on stderr before training when it cuts anything (and ``show``); for the model card."""
    from geojepa.data.info import entities_over_cap, entity_cap_note

    cap = entities_over_cap(ds, max_entities)
    note = entity_cap_note(cap)
    if note and show:
        print(f"pretrain: {note}", file=sys.stderr, flush=True)
    return cap


__all__ = [
    "ProgressReport",
    "checkpoints_note",
    "quiet_dependencies",
    "real_tokens",
    "report_entity_cap",
]
