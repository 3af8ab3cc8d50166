"""Small pretraining configs that tests share."""

from __future__ import annotations

from geojepa.train import PretrainConfig, preset_config


def tiny_pretrain_config() -> PretrainConfig:
    """cpu-small cut to one layer, batches of 4 tiles, a checkpoint every 2 steps: the run the
    reliability tests interrupt, resume and damage."""
    data = preset_config("cpu-small").model_dump()
    data["model"].update(depth=1, predictor_depth=1)
    data["data"]["batch_size"] = 4
    data["trainer"]["checkpoint_every_n_steps"] = 2
    return PretrainConfig.from_dict(data)
