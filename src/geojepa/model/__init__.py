"""The GeoJEPA model: masking, position prior, transformers and the JEPA itself."""

from geojepa.model.jepa import GeoJEPA, ModelConfig, StepOutput, ema_momentum, pool_tiles
from geojepa.model.masking import STRATEGIES, MaskGenerator, MaskingConfig, Masks
from geojepa.model.prior import PositionPrior
from geojepa.model.transformer import Predictor, Transformer

__all__ = [
    "STRATEGIES",
    "GeoJEPA",
    "MaskGenerator",
    "MaskingConfig",
    "Masks",
    "ModelConfig",
    "PositionPrior",
    "Predictor",
    "StepOutput",
    "Transformer",
    "ema_momentum",
    "pool_tiles",
]
