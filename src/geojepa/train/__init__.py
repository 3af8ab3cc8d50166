"""Pretraining: typed config, Lightning module, `pretrain()` and the model directory.

Nothing here imports Lightning at import time (only `pretrain()` and `train.module` do), so
loading a model directory stays fast.
"""

from geojepa.train.config import PRESETS, PretrainConfig, preset_config
from geojepa.train.export import build_model, export_model, load_model
from geojepa.train.pretrain import pretrain

__all__ = [
    "PRESETS",
    "PretrainConfig",
    "build_model",
    "export_model",
    "load_model",
    "preset_config",
    "pretrain",
]
