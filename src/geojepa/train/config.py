"""`PretrainConfig`: everything a pretraining run depends on, saved beside every checkpoint.

Presets (``PRESETS``):

- ``cpu-small``: a tiny model that trains in minutes on two CPU cores (tests, demo);
- ``cpu-base``: the CPU recipe chosen on val (``benchmarks/ablation.py`` for its size,
  ``benchmarks/scaling.py`` for its loss, teacher and length; the default and the shipped
  model's recipe);
- ``cpu-paper``: ``cpu-base``'s size and run length with the paper's method (masking forms,
  loss reduction, regulariser weights, EMA scope, dropout, predictor MLP): the paper's method
  at a size a CPU trains, to compare against ``cpu-base``;
- ``paper-t`` / ``paper-gt`` / ``paper-gti``: the paper's settings (DESIGN.md §1) with tags
  only / tags + geometry / tags + geometry + imagery (224 px, 14×14 patches of 16 px, frozen
  timm ViT-B/16: ``paper-gti`` needs ``tokenizer.image_checkpoint``, a local checkpoint).

docs/method.md compares each setting with the paper.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from geojepa.config import Config
from geojepa.errors import ConfigError
from geojepa.model.config import ModelSpec


class OptimConfig(Config):
    """AdamW with warmup + cosine learning rate and a linear weight-decay ramp."""

    lr: float = Field(1e-3, gt=0.0)
    min_lr: float = Field(1e-6, ge=0.0)
    warmup_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    weight_decay: tuple[float, float] = (0.04, 0.4)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(10.0, ge=0.0, description="0 disables clipping")

    @model_validator(mode="after")
    def _check(self) -> OptimConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} is larger than lr {self.lr}")
        if min(self.weight_decay) < 0:
            raise ValueError("weight_decay values must be >= 0")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        return self


class DataConfig(Config):
    """Batching and loading."""

    batch_size: int = Field(48, ge=1, description="tiles per device per step")
    tokens_per_batch: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        None,
        description="real tokens per device per step (length-bucketed batches); replaces "
        "batch_size when an int; auto = batch_size x the mean tokens per tile of the training "
        "data (batch_size tiles a step on average); None = batch_size tiles a step",
    )
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto",
        description="loader worker processes (persistent); auto = 0 when training on CPUs "
        "(workers compete with the compute threads), min(4, CPUs - 1) on a GPU",
    )
    shuffle_buffer: int = Field(1024, ge=1)

    def workers(self, gpu: bool, processes: int = 1) -> int:
        """``num_workers`` resolved for a run on GPUs (``gpu``) or on CPUs only, for each of
        the ``processes`` training processes of this machine (one per GPU under DDP).

        Measured on a 2-core CPU (benchmarks/results/loader-workers-cpu.json): loading is a
        small part of a CPU step, and a worker process takes a core from the step. On GPUs the
        machine's cores but one are shared by the processes, at most 4 workers each.
        """
        if self.num_workers != "auto":
            return self.num_workers
        spare = max((os.cpu_count() or 1) - 1, 0) // max(processes, 1)
        return min(4, spare) if gpu else 0


class TrainerConfig(Config):
    """Run length, precision, checkpointing and logging."""

    max_steps: int = Field(-1, ge=-1, description="optimiser steps; -1 = use max_epochs")
    max_epochs: int | None = Field(100, ge=1)
    schedule_steps: int | None = Field(
        None,
        ge=1,
        description="optimiser steps the lr, weight-decay and EMA schedules run over; None = "
        "the run's own length. Longer than max_steps stops the run early along a longer "
        "schedule (cpu-base: step 600 of a 2,400-step schedule, the checkpoint chosen on val)",
    )
    accumulate_grad_batches: int = Field(1, ge=1)
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = Field(
        "auto", description="auto = bf16-mixed on CUDA GPUs with bf16, else 32-true"
    )
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    num_nodes: int = Field(1, ge=1)
    log_every_n_steps: int = Field(10, ge=1)
    checkpoint_every_n_steps: int = Field(500, ge=1)
    seed: int = 0
    compile: bool = Field(
        False,
        description="torch.compile every transformer block (dynamic shapes); no gain on CPUs "
        "(benchmarks/results/train_step-compile-cpu.json), not yet measured on GPUs",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainerConfig:
        if self.max_steps == -1 and self.max_epochs is None:
            raise ValueError("set max_steps or max_epochs (a run must end)")
        if self.schedule_steps is not None and self.schedule_steps < self.max_steps:
            raise ValueError(
                f"schedule_steps ({self.schedule_steps}) is shorter than max_steps "
                f"({self.max_steps}): the schedules would end before the run"
            )
        return self


class PretrainConfig(ModelSpec):
    """One pretraining run: the model's spec (``tokenizer``, ``model``, ``masking``; see
    `model.config.ModelSpec`, ``model.width`` must equal ``tokenizer.width``) and the run's own
    sections. Saved as a model directory's ``config.json``."""

    preset: str | None = None
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    trainer: TrainerConfig = TrainerConfig()

    def with_overrides(self, **sections: dict[str, Any]) -> PretrainConfig:
        """A validated copy with some fields of some sections changed (None values ignored)."""
        data = self.model_dump()
        for section, changes in sections.items():
            data[section].update({k: v for k, v in changes.items() if v is not None})
        return type(self).from_dict(data)


#: The paper's regulariser: VICReg's 25 : 1 variance : covariance ratio, scaled by its small
#: regulariser weight (0.01; DESIGN.md §1.5 gives 0.01–0.02).
PAPER_REG = 0.01
PAPER_LOSS: dict[str, Any] = {
    "var_weight": 25 * PAPER_REG,
    "cov_weight": 1 * PAPER_REG,
    "pred_loss_reduction": "per_target_sum",
    "ema_scope": "encoder",
    "dropout": 0.1,
    "predictor_embed": "mlp",
    "ema_momentum": (0.99, 0.99999),
}
#: The paper's masking forms (the mix is set per preset: modality masking needs images).
PAPER_MASKING: dict[str, Any] = {
    "random_target_fraction": 0.45,
    "random_targets": "per_target",
    "area_fraction": (0.35, 0.35),
    "area_aspect": (0.5, 2.0),
    "num_targets": 4,
    "min_context_fraction": 0.10,
    "strategy_per": "batch",
}


def _paper(name: str, use_geometry: bool, use_image: bool) -> dict[str, Any]:
    return {
        "preset": name,
        "tokenizer": {
            "width": 384,
            "use_tags": True,
            "use_geometry": use_geometry,
            "use_image": use_image,
            "image_size": 224,
            "patch_size": 16,
            # the paper's frozen ViT-B/16; its weights come from tokenizer.image_checkpoint
            "image_backbone": "vit_base_patch16_224" if use_image else None,
        },
        "model": {
            "width": 384,
            "depth": 12,
            "heads": 8,
            "predictor_width": 256,
            "predictor_depth": 4,
            **PAPER_LOSS,
        },
        "masking": {
            # without images modality masking cannot happen: its share goes to random
            "p_random": 0.2 if use_image else 0.4,
            "p_area": 0.6,
            "p_modality": 0.2 if use_image else 0.0,
            **PAPER_MASKING,
        },
        # effective batch 960 tiles, the paper's
        "data": {"batch_size": 48 if use_image else 96},
        "trainer": {"accumulate_grad_batches": 20 if use_image else 10, "max_epochs": 100},
    }


PRESETS: dict[str, dict[str, Any]] = {
    "cpu-small": {
        "preset": "cpu-small",
        "tokenizer": {
            "width": 64,
            "use_tags": True,
            "use_geometry": True,
            "use_image": False,
            "geometry_hidden": 64,
            "max_entities": 1024,
        },
        "model": {
            "width": 64,
            "depth": 2,
            "heads": 4,
            "predictor_width": 32,
            "predictor_depth": 2,
            "predictor_heads": 4,
            "var_weight": 0.02,
            "cov_weight": 0.02,
        },
        "masking": {"p_random": 0.4, "p_area": 0.6, "p_modality": 0.0},
        "optim": {"lr": 1e-3},
        "data": {"batch_size": 16},
        "trainer": {
            "max_steps": 200,
            "max_epochs": None,
            "log_every_n_steps": 5,
            "checkpoint_every_n_steps": 100,
        },
    },
    "paper-t": _paper("paper-t", use_geometry=False, use_image=False),
    "paper-gt": _paper("paper-gt", use_geometry=True, use_image=False),
    "paper-gti": _paper("paper-gti", use_geometry=True, use_image=True),
}


def _derived(base: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """A copy of preset ``base`` with some fields of some sections changed."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, changes in sections.items():
        if isinstance(changes, dict):
            out.setdefault(section, {}).update(changes)
        else:
            out[section] = changes
    return out


# The recipe chosen on val (reports/benchmark/scaling/, issue 21): cpu-small made 4x wider and 2x
# deeper (benchmarks/ablation.py chose the size), a loss whose prediction term leads (variance and
# covariance weights 0.05 each, where 1.0 made them ~95% of the loss) and a teacher that settles
# (EMA momentum 0.996 -> 1.0), stopped at step 600 of a 2,400-step schedule: the 600 checkpoint
# beat the 1,200, 2,400, 4,800 and 9,600 ones of the same schedule family on val. It is the shipped
# default model's recipe (src/geojepa/models/default, trained on train blocks + corpus), but for
# its batches: the shipped model had 16-tile batches; cpu-base batches by the token budget of 16
# tiles a step on average, as good on val at equal tile visits and ~1.3x cheaper (scaling run
# tbudget-corpus). About 2x cpu-small's cost per step on a 2-core CPU.
PRESETS["cpu-base"] = _derived(
    PRESETS["cpu-small"],
    preset="cpu-base",
    tokenizer={"width": 256},
    model={
        "width": 256,
        "depth": 4,
        "heads": 8,
        "predictor_width": 128,
        "predictor_depth": 2,
        "predictor_heads": 4,
        "var_weight": 0.05,
        "cov_weight": 0.05,
        "ema_momentum": (0.996, 1.0),
    },
    data={"batch_size": 16, "tokens_per_batch": "auto"},
    trainer={"max_steps": 600, "schedule_steps": 2400},
)

# cpu-base's size, batch and run length with the paper's method: what cpu-base is compared with.
# Tags + geometry (no images), so the paper-t/gt mix (random 0.4, area 0.6). The EMA (the paper's
# 0.99 -> 0.99999) ramps over the same 2,400-step schedule as cpu-base's.
PRESETS["cpu-paper"] = _derived(
    PRESETS["cpu-base"],
    preset="cpu-paper",
    model={**PRESETS["cpu-base"]["model"], **PAPER_LOSS},
    masking={"p_random": 0.4, "p_area": 0.6, "p_modality": 0.0, **PAPER_MASKING},
)

#: What each preset is for (written into the model card).
PRESET_NOTES: dict[str, str] = {
    "cpu-small": "cpu-small: a tiny model for tests and the demo (64 wide, 2 deep)",
    "cpu-base": "cpu-base: the CPU recipe chosen on val (reports/benchmark/scaling), 256 wide, "
    "4 deep, variance and covariance weights 0.05, EMA 0.996 -> 1.0, step 600 of a 2,400-step "
    "schedule, token-budget batches of 16 tiles on average; the shipped default model's recipe "
    "(with 16-tile batches), scored on test in reports/benchmark/",
    "cpu-paper": "cpu-paper: cpu-base's size and 600 steps with the paper's method (per-target "
    "random and fixed-area masking per batch, per-target loss sum, variance 0.25 / covariance "
    "0.01, EMA of the encoder only, dropout 0.1, predictor MLP); docs/method.md",
    "paper-t": "the paper's settings, tags only (docs/method.md)",
    "paper-gt": "the paper's settings, tags + geometry (docs/method.md)",
    "paper-gti": "the paper's settings, tags + geometry + imagery through a frozen ViT-B/16 "
    "(docs/method.md)",
}


def preset_config(name: str) -> PretrainConfig:
    """The PretrainConfig of a named preset (ConfigError for an unknown name)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    return PretrainConfig.from_dict(PRESETS[name])
