"""PNG figures: a 2-D projection of tile embeddings, and training curves from a run's logs.

Matplotlib's Agg backend is used explicitly, so the figures render on headless machines.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from geojepa.errors import ConfigError, InputError, OutputError
from geojepa.explore.embeddings import (
    EmbeddingSource,
    embedding_matrix,
    load_embeddings,
    project,
    require_kind,
)
from geojepa.io.atomic import write_atomic

OSM_FOOTER = "Map data © OpenStreetMap contributors (ODbL)"
_CURVE_GROUPS: list[tuple[str, re.Pattern[str]]] = [
    ("loss", re.compile(r"loss", re.I)),
    ("learning rate", re.compile(r"(^|[/_.])lr($|[/_.])|learning_rate", re.I)),
    ("EMA momentum", re.compile(r"momentum", re.I)),
    ("embedding std (collapse monitor)", re.compile(r"std", re.I)),
    ("effective rank (collapse monitor)", re.compile(r"rank", re.I)),
]


def tag_key_counts(top_tags: pd.Series, key: str) -> np.ndarray:
    """How many of each tile's `; `-separated top tags have the tag key ``key``."""
    pattern = rf"(?:^|;\s*){re.escape(key)}="
    return top_tags.fillna("").astype(str).str.count(pattern).to_numpy()


def _check_output(output: Path) -> str:
    """The image format of ``output``; checked before any work, so a typo costs nothing."""
    from matplotlib.figure import Figure

    kinds = Figure().canvas.get_supported_filetypes()
    fmt = output.suffix.lstrip(".").lower()
    if fmt not in kinds:
        raise ConfigError(
            f"cannot write a figure as {output.name!r}: use one of "
            + ", ".join(f".{k}" for k in sorted(kinds))
        )
    if output.is_dir():
        raise OutputError(f"{output} is a directory: give a file name such as {output}/plot.png")
    return fmt


def _save(fig, output: Path) -> Path:
    """Save atomically (a full disk never leaves a truncated image under the final name)."""
    fmt = _check_output(output)
    return write_atomic(output, lambda tmp: fig.savefig(tmp, dpi=120, format=fmt))


def plot_embeddings(
    tiles: EmbeddingSource,
    output: str | Path,
    *,
    color_by: str = "n_entities",
    method: str = "pca",
) -> Path:
    """Scatter of a 2-D ``method`` (``pca``/``umap``) projection of tile embeddings.

    Points are coloured by ``n_entities`` or, for any other value, by how many of the tile's
    top tags have that tag key (e.g. ``building``). A key found in no tile's top tags is an
    InputError listing the frequent keys, because the plot would carry no information.
    """
    _check_output(Path(output))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = str(tiles) if isinstance(tiles, str | Path) else "the tile embeddings"
    frame = load_embeddings(tiles, name=label)
    require_kind(frame, "tiles", label, "plots colour tiles by tile statistics")
    if color_by == "n_entities":
        if "n_entities" not in frame:
            raise InputError(f"{label} has no n_entities column")
        values = frame["n_entities"].to_numpy(dtype=np.float64)
        cbar = "entities in tile"
    else:
        if "top_tags" not in frame:
            raise InputError(f"{label} has no top_tags column to count {color_by!r} in")
        values = tag_key_counts(frame["top_tags"], color_by).astype(np.float64)
        if not values.any():
            keys = frame["top_tags"].fillna("").str.findall(r"(?:^|;\s*)([^=;]+)=").explode()
            common = ", ".join(keys.dropna().str.strip().value_counts().index[:8])
            raise InputError(
                f"tag key {color_by!r} is in no tile's top_tags; frequent keys: {common}"
            )
        cbar = f"top tags with key {color_by}"
    xy = project(embedding_matrix(frame, normalize=True), 2, method)

    fig, ax = plt.subplots(figsize=(7, 6))
    order = np.argsort(values, kind="stable")  # high values drawn last, on top
    points = ax.scatter(
        xy[order, 0], xy[order, 1], c=values[order], cmap="viridis", s=12, linewidths=0
    )
    fig.colorbar(points, ax=ax, label=cbar)
    ax.set_title(f"{len(frame)} tile embeddings, {method.upper()}")
    ax.set_xlabel(f"{method.upper()} 1")
    ax.set_ylabel(f"{method.upper()} 2")
    fig.text(0.01, 0.01, OSM_FOOTER, fontsize=8, color="0.3")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    try:
        return _save(fig, Path(output))
    finally:
        plt.close(fig)


def read_metrics(run: str | Path) -> pd.DataFrame:
    """All Lightning CSV logs (``RUN/**/metrics.csv``) of a run, one row per logged step.

    A resumed run may log into several files; they are concatenated and rows of the same step
    merged (first non-missing value per column).
    """
    run = Path(run)
    if not run.exists():
        raise InputError(f"run directory {run} does not exist")
    files = sorted(run.rglob("metrics.csv")) if run.is_dir() else [run]
    if not files:
        raise InputError(f"no Lightning CSV log (metrics.csv) under {run}")
    parts = []
    for f in files:
        try:
            parts.append(pd.read_csv(f))
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read training log {f}: {exc}") from None
    metrics = pd.concat(parts, ignore_index=True)
    if "step" not in metrics or metrics.empty:
        raise InputError(f"training log under {run} has no 'step' column or no rows")
    return metrics.groupby("step", sort=True).first().reset_index()


def plot_curves(run: str | Path, output: str | Path) -> Path:
    """Training curves against ``step``: every ``*loss*`` column, learning rate, EMA momentum
    and the collapse monitors (``*std*``, ``*rank*``) that the run logged, one panel per group.
    """
    _check_output(Path(output))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = read_metrics(run)
    numeric = [
        c for c in metrics.columns if c not in ("step", "epoch") and metrics[c].notna().any()
    ]
    groups: list[tuple[str, list[str]]] = []
    used: set[str] = set()
    for title, pattern in _CURVE_GROUPS:
        cols = [c for c in numeric if pattern.search(c) and c not in used]
        cols = [c for c in cols if pd.api.types.is_numeric_dtype(metrics[c])]
        if cols:
            groups.append((title, cols))
            used.update(cols)
    if not groups:
        raise InputError(f"the training log under {run} has no loss, lr, momentum or monitor")

    ncols = min(2, len(groups))
    nrows = int(np.ceil(len(groups) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 3.4 * nrows), squeeze=False)
    for ax, (title, cols) in zip(axes.flat, groups, strict=False):
        for col in cols:
            series = metrics[["step", col]].dropna()
            ax.plot(series["step"], series[col], label=col, marker="." if len(series) < 30 else "")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right", framealpha=0.7)  # "best" is slow
    for ax in list(axes.flat)[len(groups) :]:
        ax.set_visible(False)
    fig.tight_layout()
    try:
        return _save(fig, Path(output))
    finally:
        plt.close(fig)
