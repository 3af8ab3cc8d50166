"""Lightning glue: optimiser and schedules, EMA after each optimiser step, logging, RNG state.

One training step, top to bottom (what I-JEPA's loop shows in one place, here across the hooks
Lightning calls in this order):

1. the loader yields a padded batch of tiles (`tokenize.loader.TileStream`);
2. `PretrainModule.on_before_batch_transfer`, on the host: `GeoJEPA.plan` draws the masks
   (context, K targets) and the packings, so the step never waits for the device;
3. `PretrainModule.training_step` → `GeoJEPA.forward`: the student's tokens; the teacher's
   targets without gradient (`_target_outputs`: EMA tokenizer/prior/encoder, layer-normed);
   `loss_from_tokens`: context encoder, one batched predictor call for all K targets,
   smooth-L1 + variance + covariance terms;
4. Lightning's backward and `optimizer_step` (here: weight decay of the step, then AdamW), then
   `GeoJEPA.update_target` with the step's EMA momentum;
5. on logging steps `_log_step`: each loss term and its share, the collapse monitors.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch import nn

from geojepa.errors import ConfigError
from geojepa.model.jepa import GeoJEPA, PlannedBatch, StepOutput, ema_momentum
from geojepa.train.config import OptimConfig, PretrainConfig


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warmup over ``warmup_fraction`` of the run, then cosine down to ``min_lr``."""
    warm = int(cfg.warmup_fraction * total)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = min((step - warm) / max(total - warm, 1), 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * t))


def weight_decay_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear ramp from ``weight_decay[0]`` to ``weight_decay[1]`` over the run."""
    lo, hi = cfg.weight_decay
    return lo + (hi - lo) * min(step / max(total, 1), 1.0)


def param_groups(model: GeoJEPA) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed) trainable parameters.

    Norm weights, biases, embeddings (nn.Embedding tables, position embeddings) and learned
    tokens (mask/unknown/missing tokens) are not decayed: decay would pull them towards zero
    without any regularising benefit.
    """
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding | nn.LayerNorm):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or name.startswith("target."):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if (
            p.ndim < 2
            or id(p) in no_decay_ids
            or "token" in leaf
            or "embed" in leaf  # e.g. position embeddings stored as parameters
            or leaf.startswith(("missing_", "unknown"))
        ):
            no_decay.append(p)
        else:
            decay.append(p)
    return decay, no_decay


def effective_rank(x: torch.Tensor) -> torch.Tensor:
    """exp(entropy of the normalised singular values) of centred rows: 1 = collapsed."""
    x = x.float() - x.float().mean(0)
    s = torch.linalg.svdvals(x)
    p = s / s.sum().clamp(min=1e-12)
    return torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum())


class EpochLoader:
    """Wraps the tile loader so each pass uses the trainer's current epoch (also after resume).

    Lightning only calls ``set_epoch`` on samplers; the tile stream is an IterableDataset, so
    the epoch is read lazily when iteration starts. After a mid-epoch resume the batches of that
    epoch that were already trained on are skipped, so a resumed run sees the same data as an
    uninterrupted one.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.module: PretrainModule | None = None

    def __iter__(self) -> Iterator[Any]:
        epoch, skip = 0, 0
        if self.module is not None and self.module._trainer is not None:
            epoch = self.module.trainer.current_epoch
            skip, self.module.resume_skip = self.module.resume_skip, 0
        self.loader.set_epoch(epoch)
        for i, batch in enumerate(self.loader):
            if i >= skip:
                yield batch


class PretrainModule(L.LightningModule):
    """Trains a GeoJEPA; ``total_steps`` (optimiser steps) drives every schedule."""

    def __init__(self, config: PretrainConfig, model: GeoJEPA, total_steps: int) -> None:
        super().__init__()
        self.config = config
        self.model = model
        self.total_steps = max(int(total_steps), 1)
        self.mask_generator: torch.Generator | None = None
        self.resume_skip = 0
        self._batches_in_epoch = 0

    # --- setup -----------------------------------------------------------------------------
    def _generator(self) -> torch.Generator:
        """The masks' generator: on the host, where the masks are drawn (see `plan`)."""
        if self.mask_generator is None:
            g = torch.Generator()
            g.manual_seed(self.config.trainer.seed * 1000 + self.global_rank)
            self.mask_generator = g
        return self.mask_generator

    def configure_optimizers(self) -> Any:
        cfg = self.config.optim
        decay, no_decay = param_groups(self.model)
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay[0], "decayed": True},
            {"params": no_decay, "weight_decay": 0.0, "decayed": False},
        ]
        fused = self.device.type == "cuda"
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_at(step, self.total_steps, cfg) / cfg.lr
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_epoch_start(self) -> None:
        self._batches_in_epoch = 0

    # --- step ------------------------------------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Draw the masks and make the packings here, on the host, before the batch goes to the
        device: the step then never waits for the device (`GeoJEPA.plan`)."""
        if self._trainer is None or not self.trainer.training or isinstance(batch, PlannedBatch):
            return batch
        plan = self.model.plan(batch, self._generator())
        if self.device.type == "cuda":
            plan = plan.pin_memory()  # its copy then overlaps with the previous step
        return PlannedBatch(batch, plan)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if isinstance(batch, PlannedBatch):
            out: StepOutput = self.model(batch.batch, plan=batch.plan)
        else:  # called without the trainer's transfer hook
            out = self.model(batch, self._generator())
        self._batches_in_epoch = batch_idx + 1
        bs = len(batch) if hasattr(batch, "__len__") else None
        if self._logging_step():
            self._log_step(out, bs)
        return out.loss

    def _logging_step(self) -> bool:
        """True on the steps Lightning writes to the loggers (monitors sync, so only then)."""
        connector = getattr(self.trainer, "_logger_connector", None)
        flag = getattr(connector, "should_update_logs", None)
        if isinstance(flag, bool):
            return flag
        return self.global_step % self.config.trainer.log_every_n_steps == 0

    def _log_step(self, out: StepOutput, batch_size: int | None) -> None:
        """Loss terms, schedules and collapse monitors (only on logging steps: they sync)."""
        opt = self.optimizers()
        lr = opt.param_groups[0]["lr"] if opt is not None else 0.0
        loss = out.loss.detach()
        terms = {
            "train/loss": loss,
            "train/pred_loss": out.pred_loss,
            "train/var_loss": out.var_loss,  # weighted: loss = pred + var + cov
            "train/cov_loss": out.cov_loss,
            "train/reg_pred": out.reg_pred,
            "train/reg_context": out.reg_context,
            "train/n_targets": out.n_targets,
            # 1 - predictor's loss / loss of predicting the batch's mean target: 0 = the
            # predictor knows nothing a constant would not
            "monitor/pred_skill": 1.0 - out.token_loss / out.mean_loss.clamp(min=1e-12),
        }
        # each term's share of the loss, so that a run's CSV shows the balance
        total = loss.clamp(min=1e-12)
        for name in ("pred", "var", "cov"):
            terms[f"train/share_{name}"] = terms[f"train/{name}_loss"] / total
        with torch.no_grad():
            h = out.target_outputs[out.target_valid].float()
            if h.shape[0] > 1:
                terms["monitor/target_std"] = h.std(0).mean()
                sample = h[torch.randperm(h.shape[0], device=h.device)[:2048]]
                terms["monitor/effective_rank"] = effective_rank(sample)
        self.log_dict(terms, batch_size=batch_size, sync_dist=False)
        self.log("sched/lr", lr, batch_size=batch_size)
        self.log("sched/ema_momentum", self._momentum(), batch_size=batch_size)
        wd = weight_decay_at(self.global_step, self.total_steps, self.config.optim)
        self.log("sched/weight_decay", wd, batch_size=batch_size)

    def _momentum(self) -> float:
        return self.momentum_at(self.global_step)

    def momentum_at(self, step: int) -> float:
        """EMA momentum: linear from start to end over ``model.ema_steps`` optimiser steps (default:
        the whole run), then held at the end value."""
        lo, hi = self.config.model.ema_momentum
        ramp = self.config.model.ema_steps or self.total_steps
        return ema_momentum(step, ramp, lo, hi)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure=None):
        wd = weight_decay_at(self.global_step, self.total_steps, self.config.optim)
        for group in optimizer.param_groups:
            if group.get("decayed"):
                group["weight_decay"] = wd
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.model.update_target(self._momentum())  # EMA after every optimiser step

    # --- state -----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["geojepa"] = {
            "config": self.config.model_dump(mode="json"),
            "total_steps": self.total_steps,
            "batches_in_epoch": self._batches_in_epoch,
            "mask_generator": self._generator().get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the data position and RNG state; refuse a checkpoint of another config (an
        edited ``config.json``), before Lightning loads its weights into the wrong model."""
        state = checkpoint.get("geojepa", {})
        current = self.config.model_dump(mode="json")
        differs = _first_difference(state.get("config") or {}, current, skip={"trainer"})
        if differs is not None:
            key, theirs, ours = differs
            raise ConfigError(
                f"the checkpoint does not match the run's config.json ({key} is {theirs!r} in "
                f"the checkpoint, {ours!r} in config.json): restore config.json, or train into "
                "a new directory"
            )
        self.resume_skip = int(state.get("batches_in_epoch", 0))
        self._batches_in_epoch = self.resume_skip
        self._pending_rng = state or None  # applied in on_train_start, right before training

    def on_train_start(self) -> None:
        state = getattr(self, "_pending_rng", None)
        if not state:
            return
        self._pending_rng = None
        if "mask_generator" in state:
            try:
                self._generator().set_state(state["mask_generator"].cpu())
            except (RuntimeError, ValueError):  # a GPU generator's state (older checkpoints)
                warnings.warn(
                    "the checkpoint's mask generator state is not a host generator's: the masks "
                    "of the resumed run are drawn from the configured seed again",
                    stacklevel=2,
                )
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"].cpu())
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def train(self, mode: bool = True) -> PretrainModule:
        super().train(mode)
        self.model.train(mode)  # keeps the teacher (and any frozen backbone) in eval mode
        return self


def _first_difference(
    saved: dict[str, Any], current: dict[str, Any], skip: set[str], prefix: str = ""
) -> tuple[str, Any, Any] | None:
    """The first setting (``model.depth``, its two values) that differs between two config
    dumps; keys only one side has are ignored (a config field added by a newer geojepa)."""
    for key, theirs in saved.items():
        if key in skip or key not in current:
            continue
        ours = current[key]
        if isinstance(theirs, dict) and isinstance(ours, dict):
            found = _first_difference(theirs, ours, set(), f"{prefix}{key}.")
            if found is not None:
                return found
        elif theirs != ours:
            return f"{prefix}{key}", theirs, ours
    return None
