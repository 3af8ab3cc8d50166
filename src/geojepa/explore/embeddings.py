"""Load and validate embedding files written by `geojepa embed`.

Two kinds share one layout (GeoParquet 1.1, EPSG:4326): tile embeddings indexed by `region_id`
(`z/x/y`, with `n_entities` and `top_tags`) and entity embeddings indexed by `feature_id`
(`way/123`; by default one row per feature with `n_clips`, `region_ids` and `tags`, or with
`--entity-rows clip` one row per (tile, feature) clip with `region_id`). The embedding columns
are exactly those named `emb_<int>`, ordered by the int: a file's own column order is not
trusted, so two files with the same columns always give the same matrix layout.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from geojepa.constants import REGIONS_INDEX
from geojepa.errors import ConfigError, InputError

EMB_COLUMN = re.compile(r"^emb_(\d+)$")
Kind = Literal["tiles", "entities"]
EmbeddingSource = gpd.GeoDataFrame | pd.DataFrame | str | Path


def embedding_columns(frame: pd.DataFrame) -> list[str]:
    """The `emb_<int>` columns, ordered by their int (so `emb_10` comes after `emb_9`)."""
    found = [(int(m.group(1)), c) for c in frame.columns if (m := EMB_COLUMN.match(str(c)))]
    return [c for _, c in sorted(found)]


def embedding_matrix(frame: pd.DataFrame, normalize: bool = False) -> np.ndarray:
    """The embeddings as a C-contiguous float32 matrix (rows follow the frame's rows).

    With ``normalize`` each row is scaled to unit length (zero rows stay zero), which turns
    inner products into cosine similarities.
    """
    cols = embedding_columns(frame)
    if not cols:
        raise InputError("not an embedding file: it has no emb_<int> columns")
    matrix = np.ascontiguousarray(frame[cols].to_numpy(dtype=np.float32, na_value=np.nan))
    if normalize:
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix = matrix / np.where(norms > 0, norms, 1.0).astype(np.float32)
    return matrix


def embedding_kind(frame: pd.DataFrame) -> Kind:
    """`tiles` or `entities`, from the index name (falling back to the id format)."""
    if frame.index.name == "feature_id":
        return "entities"
    if frame.index.name == REGIONS_INDEX:
        return "tiles"
    sample = str(frame.index[0]) if len(frame) else ""
    return "entities" if re.match(r"^(node|way|relation)/", sample) else "tiles"


def _read(path: Path) -> pd.DataFrame:
    """GeoParquet if it carries geo metadata, else a plain DataFrame (knn works without it)."""
    if not path.exists():
        raise InputError(f"embedding file {path} does not exist")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not an embedding .parquet file")
    try:
        has_geo = b"geo" in (pq.read_schema(path).metadata or {})
        return gpd.read_parquet(path) if has_geo else pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"{path} is not a readable Parquet file ({exc})") from None


def load_embeddings(source: EmbeddingSource, *, name: str | None = None) -> pd.DataFrame:
    """Read (or check) an embedding file; raise InputError with one clear line if unusable.

    Accepts a path or an in-memory (Geo)DataFrame. The result is indexed by `region_id` or
    `feature_id` (an id column of that name is moved into the index) and has at least one
    `emb_*` column and one row, with no missing values in the embeddings. It is a
    GeoDataFrame when the file has a geometry column.
    """
    label = name or (str(source) if isinstance(source, str | Path) else "the embeddings")
    frame = _read(Path(source)) if isinstance(source, str | Path) else source
    if frame.index.name not in (REGIONS_INDEX, "feature_id"):
        for col in ("feature_id", REGIONS_INDEX):
            if col in frame.columns:
                frame = frame.set_index(col)
                break
    if not embedding_columns(frame):
        raise InputError(f"{label} is not an embedding file: it has no emb_<int> columns")
    if len(frame) == 0:
        raise InputError(f"{label} is empty: it holds no embeddings")
    matrix = frame[embedding_columns(frame)]
    if matrix.isna().to_numpy().any():
        raise InputError(f"{label} has missing values in its emb_* columns")
    if frame.index.dtype != object:  # a new frame: never mutate the caller's
        frame = frame.set_axis(frame.index.astype(str))
    return frame


def require_geometry(frame: pd.DataFrame, label: str = "the embeddings") -> gpd.GeoDataFrame:
    """The frame as a GeoDataFrame in EPSG:4326; files in another CRS are reprojected (warned).

    A file with no geometry or no CRS cannot be placed on a map: InputError.
    """
    if not isinstance(frame, gpd.GeoDataFrame) or frame._geometry_column_name not in frame:
        raise InputError(f"{label} has no geometry column: it cannot be drawn on a map")
    if frame.crs is None:
        raise InputError(f"{label} has no CRS; embedding files are EPSG:4326 GeoParquet")
    if frame.crs.to_epsg() != 4326:
        warnings.warn(
            f"{label} is in {frame.crs.to_string()}, not EPSG:4326: reprojecting to EPSG:4326",
            stacklevel=2,
        )
        frame = frame.to_crs(4326)
    if frame.geometry.isna().all() or frame.geometry.is_empty.all():
        raise InputError(f"{label} has no non-empty geometries")
    return frame


def require_kind(frame: pd.DataFrame, kind: Kind, label: str, hint: str = "") -> None:
    """Raise InputError when a tile file is given where entities are expected, or vice versa."""
    actual = embedding_kind(frame)
    if actual != kind:
        extra = f"; {hint}" if hint else ""
        raise InputError(f"{label} holds {actual} embeddings, expected {kind}{extra}")


def project(
    matrix: np.ndarray, n_components: int, method: str = "pca", seed: int = 0
) -> np.ndarray:
    """Project embeddings to ``n_components`` dimensions with PCA or UMAP (float64 array).

    UMAP is an optional extra (`pip install geojepa[umap]`; its import alone takes seconds):
    when it is missing, or there are too few rows for it, PCA is used with a warning. Missing
    dimensions (fewer rows or features than components) are zero-filled, so callers always
    get ``n_components`` columns.
    """
    if method not in ("pca", "umap"):
        raise ConfigError(f"projection method must be 'pca' or 'umap', got {method!r}")
    n = matrix.shape[0]
    x = np.asarray(matrix, dtype=np.float64)
    if method == "umap":
        try:
            import umap
        except ImportError:
            warnings.warn("umap-learn is not installed (extra 'umap'): using PCA", stacklevel=2)
        else:
            if n > n_components + 2:
                reducer = umap.UMAP(
                    n_components=n_components,
                    n_neighbors=min(15, n - 1),
                    metric="cosine",
                    random_state=seed,
                    n_jobs=1,  # a seed forces one job anyway; saying so silences UMAP's warning
                )
                return np.asarray(reducer.fit_transform(x), dtype=np.float64)
            warnings.warn(f"only {n} rows: too few for UMAP, using PCA", stacklevel=2)
    return pca(x, n_components)[0]


def pca(matrix: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """(coordinates [N, n_components], share of the variance each axis explains [n_components]).

    Via the D x D covariance (cheap for many rows); each axis' sign is fixed so that colours
    and plots do not flip between runs; missing axes are zero-filled and explain 0.
    """
    x = np.asarray(matrix, dtype=np.float64)
    n = x.shape[0]
    out, ratio = np.zeros((n, n_components)), np.zeros(n_components)
    centred = x - x.mean(axis=0)
    if n < 2:
        return out, ratio
    evals, evecs = np.linalg.eigh(centred.T @ centred)
    order = np.argsort(evals)[::-1][: min(n_components, x.shape[1])]
    comps = centred @ evecs[:, order]
    m = comps.shape[1]
    signs = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(m)])
    out[:, :m] = comps * np.where(signs == 0, 1, signs)
    total = float(np.clip(evals, 0, None).sum())
    ratio[:m] = np.clip(evals[order], 0, None) / total if total > 0 else 0.0
    return out, ratio


def robust_unit(values: np.ndarray, lo: float = 1.0, hi: float = 99.0) -> np.ndarray:
    """Scale each column to [0, 1] between its ``lo`` and ``hi`` percentiles (clipped).

    Percentiles rather than min/max so that a few outliers do not wash out every other colour;
    a constant column maps to 0.5.
    """
    values = np.asarray(values, dtype=np.float64)
    p_lo, p_hi = np.percentile(values, [lo, hi], axis=0)
    span = p_hi - p_lo
    scaled = (values - p_lo) / np.where(span > 0, span, 1.0)
    return np.where(span > 0, np.clip(scaled, 0.0, 1.0), 0.5)
