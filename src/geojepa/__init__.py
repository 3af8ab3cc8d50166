"""geojepa: self-supervised embeddings of places and map entities (GeoJEPA, arXiv 2503.05774).

The top-level names are loaded on first use (PEP 562 module ``__getattr__``), so
``import geojepa`` stays fast and does not import torch or Lightning until a model is needed::

    import geojepa

    ds = geojepa.prepare_tiles("city.osm.pbf", "tiles", zoom=17)
    run = geojepa.pretrain(ds.path, "run", preset="cpu-small")
    tiles = geojepa.embed_tiles(run, ds)  # a GeoDataFrame indexed by region_id
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it (imported lazily)
_EXPORTS: dict[str, str] = {
    "prepare_tiles": "geojepa.api",
    "pretrain": "geojepa.api",
    "embed_tiles": "geojepa.api",
    "embed_entities": "geojepa.api",
    "nearest": "geojepa.api",
    "load_embeddings": "geojepa.api",
    "run_demo": "geojepa.api",
    "GeoJEPA": "geojepa.api",
    "open_dataset": "geojepa.api",
    "TileDataset": "geojepa.api",
    "PrepareConfig": "geojepa.api",
    "PretrainConfig": "geojepa.api",
    "preset_config": "geojepa.api",
    "GeoJEPAEmbedder": "geojepa.integrations.srai",
}

__all__ = [
    "GeoJEPA",
    "GeoJEPAEmbedder",
    "PrepareConfig",
    "PretrainConfig",
    "TileDataset",
    "__version__",
    "embed_entities",
    "embed_tiles",
    "load_embeddings",
    "nearest",
    "open_dataset",
    "prepare_tiles",
    "preset_config",
    "pretrain",
    "run_demo",
]

if TYPE_CHECKING:  # for type checkers and IDEs only; nothing is imported at run time
    from geojepa.api import (
        GeoJEPA,
        PrepareConfig,
        PretrainConfig,
        TileDataset,
        embed_entities,
        embed_tiles,
        load_embeddings,
        nearest,
        open_dataset,
        prepare_tiles,
        preset_config,
        pretrain,
        run_demo,
    )
    from geojepa.integrations.srai import GeoJEPAEmbedder


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'geojepa' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
