"""Loading a model directory: `load_model` → `LoadedModel`, the network and what its directory
says about it, typed (no attributes added to the network).

The files, their checks and the format version are in `model/directory.py`; the network is
built by `model.jepa.build_model`. `train/export.py` writes the directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from geojepa.model.directory import ModelDirectory
from geojepa.model.jepa import GeoJEPA

__all__ = ["LoadedModel", "load_model"]


@dataclass(frozen=True, kw_only=True)
class LoadedModel(ModelDirectory):
    """A loaded model directory: ``model`` (a GeoJEPA in eval mode) and, as in
    `ModelDirectory`, ``spec``, ``config`` (the saved run config as a dict), ``vocab``,
    ``dataset_config``, ``training_data`` and ``path``."""

    model: GeoJEPA


def load_model(path: str | Path, map_location: str = "cpu") -> LoadedModel:
    """Rebuild a GeoJEPA from a model directory (InputError if incomplete, too new or damaged)."""
    model = GeoJEPA.from_pretrained(path, map_location=map_location)
    assert model.directory is not None  # from_pretrained sets it
    return LoadedModel(model=model, **vars(model.directory))
