"""Exploring embedding files: nearest neighbours, an interactive map, and figures.

Everything here reads the GeoParquet files written by `geojepa embed` (tile embeddings indexed
by `region_id`, entity embeddings indexed by `feature_id`) and never needs the model.
"""

from geojepa.explore.embeddings import (
    embedding_columns,
    embedding_kind,
    embedding_matrix,
    load_embeddings,
)
from geojepa.explore.knn import nearest

__all__ = [
    "embedding_columns",
    "embedding_kind",
    "embedding_matrix",
    "load_embeddings",
    "make_map",
    "nearest",
    "plot_curves",
    "plot_embeddings",
]


def __getattr__(name: str):
    """folium and matplotlib load only when the map or a plot is asked for."""
    if name == "make_map":
        from geojepa.explore.webmap import make_map

        return make_map
    if name in ("plot_curves", "plot_embeddings"):
        from geojepa.explore import plots

        return getattr(plots, name)
    raise AttributeError(name)
