"""PNG figures: a 2-D projection of tile embeddings, and training curves from a run's logs.

Matplotlib's Agg backend is used explicitly, so the figures render on headless machines.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
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
#: (panel title, y-axis label, columns) of the training-curve figure, in panel order
_CURVE_GROUPS: list[tuple[str, str, re.Pattern[str]]] = [
    ("loss", "loss", re.compile(r"loss", re.I)),
    ("learning rate", "learning rate", re.compile(r"(^|[/_.])lr($|[/_.])|learning_rate", re.I)),
    ("EMA momentum", "teacher EMA momentum", re.compile(r"momentum", re.I)),
    ("embedding std (collapse monitor)", "std over batch", re.compile(r"std", re.I)),
    ("effective rank (collapse monitor)", "effective rank", re.compile(r"rank", re.I)),
]


def tag_key_counts(top_tags: pd.Series, key: str) -> np.ndarray:
    """How many of each tile's `; `-separated top tags have the tag key ``key``."""
    pattern = rf"(?:^|;\s*){re.escape(key)}="
    return top_tags.fillna("").astype(str).str.count(pattern).to_numpy()


#: Percentiles that bound the colour scale of count plots: one outlier must not flatten the rest.
CLIP_PERCENTILES = (2.0, 98.0)
#: Percentiles that bound the axes of the projection plot (outliers drawn on the border).
AXIS_PERCENTILES = (1.0, 99.0)
#: Up to this many distinct counts get one colour each; more use a log scale.
MAX_DISCRETE_LEVELS = 12


@dataclass(frozen=True)
class CountScale:
    """The colour scale of a count (``lo`` .. ``hi``, values outside drawn at the ends)."""

    lo: int
    hi: int
    kind: str  # "discrete" (one colour per count), "log" (long tail; 0 stays linear) or "linear"
    n_below: int
    n_above: int
    note: str  # what was clipped, in words ("" if nothing)


def count_scale(values: np.ndarray) -> CountScale:
    """Limits: the full range, unless outliers stretch it over 1.5× the
    :data:`CLIP_PERCENTILES` range, which is then used. One colour per count when there are few,
    a log scale when the upper limit is over 10× the median (a long tail), else linear."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = robust_limits(values, CLIP_PERCENTILES, margin=0.0)
    lo, hi = math.floor(lo), math.ceil(hi)
    hi = max(hi, lo + 1)
    below, above = int((values < lo).sum()), int((values > hi).sum())
    parts = []
    if below:
        parts.append(f"{below} tiles below {lo} (min {values.min():g}) shown as {lo}")
    if above:
        parts.append(f"{above} tiles above {hi} (max {values.max():g}) shown as {hi}")
    note = ""
    if parts:
        lo_pct, hi_pct = CLIP_PERCENTILES
        note = f"colours clipped to the {lo_pct:g}–{hi_pct:g} percentile range:\n" + "; ".join(
            parts
        )
    if hi - lo + 1 <= MAX_DISCRETE_LEVELS:
        kind = "discrete"
    elif hi > 10 * max(float(np.median(values)), 1.0):
        kind = "log"
    else:
        kind = "linear"
    return CountScale(lo, hi, kind, below, above, note)


def robust_limits(
    v: np.ndarray, percentiles: tuple[float, float] = AXIS_PERCENTILES, margin: float = 0.05
) -> tuple[float, float]:
    """Limits with a ``margin`` (share of the range): the full range, unless a few outliers
    stretch it over 1.5× the ``percentiles`` range, which is then used instead."""
    lo, hi = (float(p) for p in np.percentile(v, percentiles))
    if float(v.max() - v.min()) <= 1.5 * (hi - lo):
        lo, hi = float(v.min()), float(v.max())
    pad = margin * max(hi - lo, 1e-9)
    return lo - pad, hi + pad


def _log_ticks(lo: int, hi: int) -> list[int]:
    """1-2-5 ticks between ``lo`` and ``hi``, ends included, none crowding an end."""
    steps = [m * 10**e for e in range(int(math.log10(max(hi, 1))) + 1) for m in (1, 2, 5)]
    inner = [t for t in steps if (1 if lo <= 0 else 1.5 * lo) <= t <= hi / 1.5]
    return sorted({lo, hi, *inner})


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
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt
    import matplotlib.ticker as mticker

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
    scale = count_scale(values)
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max"}.get(
        (scale.n_below > 0, scale.n_above > 0), "both"
    )
    cmap, ticks = plt.get_cmap("viridis"), None
    if scale.kind == "discrete":  # one colour per count
        levels = scale.hi - scale.lo + 1
        cmap = plt.get_cmap("viridis", levels)
        norm = mcolors.BoundaryNorm(np.arange(scale.lo - 0.5, scale.hi + 1), levels)
        ticks = list(range(scale.lo, scale.hi + 1))
    elif scale.kind == "log":  # long tail: log above 1, linear around 0
        norm = mcolors.SymLogNorm(linthresh=1.0, vmin=scale.lo, vmax=scale.hi, base=10)
        ticks = _log_ticks(scale.lo, scale.hi)
    else:
        norm = mcolors.Normalize(vmin=scale.lo, vmax=scale.hi)

    fig, ax = plt.subplots(figsize=(7, 6))
    order = np.argsort(values, kind="stable")  # high values drawn last, on top
    shown = np.clip(values, scale.lo, scale.hi)
    (x0, x1), (y0, y1) = robust_limits(xy[:, 0]), robust_limits(xy[:, 1])
    outside = (xy[:, 0] < x0) | (xy[:, 0] > x1) | (xy[:, 1] < y0) | (xy[:, 1] > y1)
    pos = np.column_stack([np.clip(xy[:, 0], x0, x1), np.clip(xy[:, 1], y0, y1)])
    for mask, marker, size in ((~outside[order], "o", 12), (outside[order], "X", 30)):
        idx = order[mask]
        points = ax.scatter(pos[idx, 0], pos[idx, 1], c=shown[idx], cmap=cmap, norm=norm,
                            s=size, marker=marker, linewidths=0, clip_on=marker == "o",
                            zorder=3 if marker == "X" else 2)  # fmt: skip
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    bar = fig.colorbar(points, ax=ax, label=cbar, extend=extend, ticks=ticks)
    if scale.kind == "log":
        bar.ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
        bar.ax.yaxis.set_minor_locator(mticker.NullLocator())
    notes = [scale.note] if scale.note else []
    if outside.any():
        lo_pct, hi_pct = AXIS_PERCENTILES
        notes.append(f"axes limited to the {lo_pct:g}–{hi_pct:g} percentiles: "
                     f"{int(outside.sum())} tiles outside, drawn on the border as X")  # fmt: skip
    if notes:
        ax.text(0.0, 1.01, "\n".join(notes), transform=ax.transAxes, fontsize=7, color="0.3",
                va="bottom")  # fmt: skip
    n_lines = sum(n.count("\n") + 1 for n in notes)
    ax.set_title(f"{len(frame)} tile embeddings, {method.upper()}", pad=6 + 10 * n_lines)
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
    groups: list[tuple[str, str, list[str]]] = []
    used: set[str] = set()
    for title, ylabel, pattern in _CURVE_GROUPS:
        cols = [c for c in numeric if pattern.search(c) and c not in used]
        cols = [c for c in cols if pd.api.types.is_numeric_dtype(metrics[c])]
        if cols:
            groups.append((title, ylabel, cols))
            used.update(cols)
    if not groups:
        raise InputError(f"the training log under {run} has no loss, lr, momentum or monitor")

    ncols = min(2, len(groups))
    nrows = int(np.ceil(len(groups) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.5 * ncols, 3.4 * nrows), squeeze=False)
    for ax, (title, ylabel, cols) in zip(axes.flat, groups, strict=False):
        for col in cols:
            series = metrics[["step", col]].dropna()
            ax.plot(series["step"], series[col], label=col, marker="." if len(series) < 30 else "")
        ax.set_title(title)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        # beside the panel, never over the curves
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
                  frameon=False)  # fmt: skip
    for ax in list(axes.flat)[len(groups) :]:
        ax.set_visible(False)
    fig.tight_layout()
    try:
        return _save(fig, Path(output))
    finally:
        plt.close(fig)
