"""Pretraining: typed config, Lightning module, `pretrain()` and the model directory."""

from geojepa.train.config import PRESETS, PretrainConfig, preset_config
from geojepa.train.export import export_model, load_model
from geojepa.train.pretrain import pretrain

__all__ = ["PRESETS", "PretrainConfig", "export_model", "load_model", "preset_config", "pretrain"]
