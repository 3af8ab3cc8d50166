"""The typed configs a model is built from: `ModelConfig` (the networks, the loss, the EMA) and
`ModelSpec`, the three sections a GeoJEPA needs (tokenizer, model, masking).

A run's config (`train.config.PretrainConfig`) is a ModelSpec plus the run's own sections
(optimiser, data, trainer); a model directory's ``config.json`` holds that whole run config, and
the model layer reads only its spec from it (`ModelSpec.from_run_config`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from geojepa.config import Config
from geojepa.model.masking import MaskingConfig
from geojepa.tokenize.tokenizer import TokenizerConfig

#: The sections of a run config that make the model (`ModelSpec`'s fields).
SPEC_SECTIONS = ("tokenizer", "model", "masking")


class ModelConfig(Config):
    """Encoder/predictor sizes, EMA schedule and loss weights.

    Defaults: the paper's sizes (DESIGN.md §1.5); the loss, EMA and predictor options default
    to this project's earlier behaviour, which the ``paper-*`` and ``cpu-paper`` presets change
    to the paper's. docs/method.md lists every difference.
    """

    width: int = Field(384, ge=8)
    depth: int = Field(12, ge=1)
    heads: int = Field(8, ge=1)
    mlp_ratio: float = Field(4.0, gt=0.0)
    predictor_width: int = Field(256, ge=8)
    predictor_depth: int = Field(4, ge=1)
    predictor_heads: int = Field(8, ge=1)
    predictor_embed: Literal["linear", "mlp"] = Field(
        "linear",
        description="predictor input projection: linear, or a 2-layer GELU MLP (the paper)",
    )
    ema_momentum: tuple[float, float] = (0.99, 0.99999)
    ema_steps: int | None = Field(
        None,
        ge=1,
        description="optimiser steps of the linear momentum ramp from ema_momentum[0] to [1] "
        "(then held); None = the whole run",
    )
    ema_scope: Literal["all", "encoder"] = Field(
        "all",
        description="what the teacher holds as an EMA copy: all = tokenizer, prior and encoder; "
        "encoder = the encoder only, the teacher reading the student's tokenizer and prior "
        "(the paper)",
    )
    var_weight: float = Field(
        0.01, ge=0.0, description="weight of the variance hinge (VICReg/paper: 25 x reg)"
    )
    cov_weight: float = Field(
        0.01, ge=0.0, description="weight of the covariance term (VICReg/paper: 1 x reg)"
    )
    pred_loss_reduction: Literal["tokens", "per_target_sum"] = Field(
        "tokens",
        description="prediction loss: tokens = mean over every target token of the batch; "
        "per_target_sum = for each of the K targets the mean over its tokens, summed over "
        "the K targets (the paper)",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="encoder/predictor (student only)")
    target_norm: Literal["token", "token_batch"] = Field(
        "token",
        description="prediction targets: token = each teacher output layer-normed (embeddings "
        "always are); token_batch = then each dimension standardised over the batch's real "
        "tokens, so that the loss is about what tells tokens apart, not the vector they share "
        "(with 'token', predicting the batch mean scored ~90% of the trained predictor's loss)",
    )
    predictor_query: Literal["box", "box_geometry"] = Field(
        "box",
        description="what the predictor is told of each target token: box = its box and "
        "modality (the paper); box_geometry = also the entity's geometry embedding, so that "
        "it predicts what the entity is (its tags, in context) from where and what shape it is",
    )
    target_layers: int = Field(
        1, ge=1, description="teacher targets and embeddings: average of the last N blocks"
    )
    tile_pooling: Literal["max_mean", "max_mean_count"] = Field(
        "max_mean",
        description="tile vector: [max ‖ mean] of token outputs; max_mean_count appends "
        "log(1 + tokens), so that counts are reachable by a probe",
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_reg_weight(cls, data: Any) -> Any:
        """Configs written before the split hold ``reg_weight``, which weighted the variance
        and the covariance term alike: it maps to ``var_weight = cov_weight = reg_weight``."""
        if isinstance(data, dict) and "reg_weight" in data:
            data = dict(data)
            weight = data.pop("reg_weight")
            if "var_weight" in data or "cov_weight" in data:
                raise ValueError(
                    "reg_weight (older configs) sets both var_weight and cov_weight: "
                    "give reg_weight or var_weight/cov_weight, not both"
                )
            data["var_weight"] = data["cov_weight"] = weight
        return data

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.predictor_width % self.predictor_heads:
            raise ValueError(
                f"predictor_width {self.predictor_width} must be divisible by "
                f"predictor_heads {self.predictor_heads}"
            )
        lo, hi = self.ema_momentum
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"ema_momentum must satisfy 0 <= start <= end <= 1, got {lo}, {hi}")
        return self


class ModelSpec(Config):
    """What a GeoJEPA is built from: tokenizer, networks and masking. ``model.width`` must
    equal ``tokenizer.width``."""

    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    masking: MaskingConfig = MaskingConfig()

    @model_validator(mode="after")
    def _check_width(self) -> ModelSpec:
        if self.model.width != self.tokenizer.width:
            raise ValueError(
                f"model.width ({self.model.width}) must equal tokenizer.width "
                f"({self.tokenizer.width})"
            )
        if self.model.predictor_query == "box_geometry" and not self.tokenizer.use_geometry:
            raise ValueError(
                "model.predictor_query = 'box_geometry' needs tokenizer.use_geometry = true"
            )
        return self

    @classmethod
    def from_run_config(cls, data: dict[str, Any]) -> ModelSpec:
        """The spec inside a run config's dict (``config.json``): its model sections only, the
        run's own (optimiser, data, trainer…) left to the training layer."""
        return cls.from_dict({k: data[k] for k in SPEC_SECTIONS if k in data})

    def spec(self) -> ModelSpec:
        """This spec alone (a run config's model sections, without the run's own)."""
        return ModelSpec(tokenizer=self.tokenizer, model=self.model, masking=self.masking)
