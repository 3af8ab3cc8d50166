"""The GeoJEPA model: masking, position prior, transformers, the JEPA itself, and reading a
model directory."""

from geojepa.model.config import ModelConfig, ModelSpec
from geojepa.model.directory import ModelDirectory
from geojepa.model.io import LoadedModel, load_model
from geojepa.model.jepa import GeoJEPA, StepOutput, build_model, ema_momentum, pool_tiles
from geojepa.model.masking import STRATEGIES, MaskGenerator, MaskingConfig, Masks
from geojepa.model.prior import PositionPrior
from geojepa.model.transformer import Predictor, Transformer

__all__ = [
    "STRATEGIES",
    "GeoJEPA",
    "LoadedModel",
    "MaskGenerator",
    "MaskingConfig",
    "Masks",
    "ModelConfig",
    "ModelDirectory",
    "ModelSpec",
    "PositionPrior",
    "Predictor",
    "StepOutput",
    "Transformer",
    "build_model",
    "ema_momentum",
    "load_model",
    "pool_tiles",
]
