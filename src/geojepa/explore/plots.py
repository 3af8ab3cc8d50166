"""PNG figures: a 2-D projection of tile embeddings, and training curves from a run's logs.

The projection is coloured by what separates tiles unless asked otherwise: k-means clusters of
the embeddings, each named in the legend by the top tags that are over-represented among its
tiles (so a reader sees what the model groups together). ``color_by="n_entities"`` colours by
the entity count; any other ``color_by`` is a tag key, and each tile is coloured by that key's
value among its top tags (``building`` → yes / apartments / … / none). PCA axes carry their
share of the variance. Matplotlib's Agg backend is used explicitly (headless machines).
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
    pca,
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


#: Colouring modes of `plot_embeddings` besides a tag key.
CLUSTER, N_ENTITIES = "cluster", "n_entities"
#: Most categories (clusters or tag values) a legend shows; rarer values are grouped as "other".
MAX_CATEGORIES = 8
#: Colour of tiles without the tag key among their top tags.
NONE_COLOUR = "0.8"


def split_tags(top_tags: pd.Series) -> list[list[str]]:
    """Each tile's `; `-separated top tags (most frequent first), as lists."""
    return [[t.strip() for t in str(v).split(";") if t.strip()] for v in top_tags.fillna("")]


def tag_key_values(top_tags: pd.Series, key: str) -> list[str | None]:
    """Per tile, the value of the first (most frequent) top tag with key ``key``, else None.

    A top tag without a value (a key kept alone, e.g. ``start_date``) gives the key itself.
    """
    out: list[str | None] = []
    for tags in split_tags(top_tags):
        hit = next((t for t in tags if t.split("=", 1)[0] == key), None)
        out.append(None if hit is None else (hit.split("=", 1)[1] if "=" in hit else key))
    return out


def kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 100) -> np.ndarray:
    """Seeded k-means (k-means++ start, Lloyd steps) on the rows of ``x``: labels 0..k-1,
    0 the largest cluster. NumPy only: plotting needs no scikit-learn."""
    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    k = max(1, min(k, len(x)))

    def sq_dist(centres: np.ndarray) -> np.ndarray:
        return np.maximum(
            (x**2).sum(1)[:, None] - 2 * x @ centres.T + (centres**2).sum(1)[None, :], 0.0
        )

    centres = x[[rng.integers(len(x))]]
    while len(centres) < k:
        d = sq_dist(centres).min(1)
        pick = rng.choice(len(x), p=d / d.sum()) if d.sum() > 0 else rng.integers(len(x))
        centres = np.vstack([centres, x[pick]])
    labels = np.zeros(len(x), dtype=int)
    for _ in range(iterations):
        labels = sq_dist(centres).argmin(1)
        moved = np.array([x[labels == j].mean(0) if (labels == j).any() else centres[j]
                          for j in range(k)])  # fmt: skip
        if np.allclose(moved, centres):
            break
        centres = moved
    by_size = np.argsort(-np.bincount(labels, minlength=k), kind="stable")
    return np.argsort(by_size)[labels]


def default_clusters(n: int) -> int:
    """Clusters for ``n`` tiles: about sqrt(n/2), between 2 and MAX_CATEGORIES."""
    return int(min(MAX_CATEGORIES, max(2, round(math.sqrt(n / 2))))) if n >= 4 else 1


def describe_clusters(labels: np.ndarray, top_tags: pd.Series, n_tags: int = 2) -> list[str]:
    """A legend entry per cluster: its top tags most over-represented against all tiles
    (share of the cluster's tiles with the tag minus the share of all tiles), and its size."""
    tags = [set(t) for t in split_tags(top_tags)]
    everywhere: dict[str, float] = {}
    for tile in tags:
        for t in tile:
            everywhere[t] = everywhere.get(t, 0) + 1 / len(tags)
    names = []
    for j in range(int(labels.max()) + 1 if len(labels) else 0):
        members = [tags[i] for i in np.flatnonzero(labels == j)]
        share: dict[str, float] = {}
        for tile in members:
            for t in tile:
                share[t] = share.get(t, 0) + 1 / len(members)
        lift = sorted(share, key=lambda t: (everywhere[t] - share[t], t))
        best = [t for t in lift if share[t] > everywhere[t]][:n_tags] or lift[:n_tags]
        size = f"{len(members)} tile" + ("s" if len(members) != 1 else "")
        names.append(f"{j + 1}: {', '.join(best) or 'no tags'} ({size})")
    return names


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
    color_by: str = CLUSTER,
    method: str = "pca",
    clusters: int | None = None,
) -> Path:
    """Scatter of a 2-D ``method`` (``pca``/``umap``) projection of tile embeddings.

    ``color_by``: ``cluster`` (k-means clusters of the embeddings, ``clusters`` of them or
    about sqrt(n/2), each named in the legend by its over-represented top tags),
    ``n_entities``, or a tag key: each tile's value of that key among its top tags (a key in no
    tile's top tags is an InputError listing the frequent keys: the plot would say nothing).
    """
    _check_output(Path(output))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = str(tiles) if isinstance(tiles, str | Path) else "the tile embeddings"
    frame = load_embeddings(tiles, name=label)
    require_kind(frame, "tiles", label, "plots colour tiles by tile statistics")
    if color_by != N_ENTITIES and "top_tags" not in frame:
        raise InputError(f"{label} has no top_tags column to colour by {color_by!r}")
    if color_by == N_ENTITIES and "n_entities" not in frame:
        raise InputError(f"{label} has no n_entities column")
    matrix = embedding_matrix(frame, normalize=True)
    if method == "pca":
        xy, ratio = pca(matrix, 2)
        axis_names = [f"PC{i + 1} ({r:.0%} of the variance)" for i, r in enumerate(ratio)]
    else:
        xy = project(matrix, 2, method)
        axis_names = [f"{method.upper()} {i}" for i in (1, 2)]

    fig, ax = plt.subplots(figsize=(7, 6) if color_by == N_ENTITIES else (10, 6))
    (x0, x1), (y0, y1) = robust_limits(xy[:, 0]), robust_limits(xy[:, 1])
    outside = (xy[:, 0] < x0) | (xy[:, 0] > x1) | (xy[:, 1] < y0) | (xy[:, 1] > y1)
    pos = np.column_stack([np.clip(xy[:, 0], x0, x1), np.clip(xy[:, 1], y0, y1)])
    if color_by == N_ENTITIES:
        values = frame["n_entities"].to_numpy(dtype=np.float64)
        notes = _draw_counts(fig, ax, pos, outside, values, "entities in tile")
        meaning = "colour: entities in the tile"
    else:
        codes, names, title = _categories(frame, matrix, color_by, clusters)
        _draw_categories(ax, pos, outside, codes, names, title)
        notes = []
        meaning = "colour: " + ("k-means clusters of the embeddings" if color_by == CLUSTER
                                else f"the tile's {color_by}=* top tag")  # fmt: skip
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    if outside.any():
        lo_pct, hi_pct = AXIS_PERCENTILES
        notes.append(f"axes limited to the {lo_pct:g}–{hi_pct:g} percentiles: "
                     f"{int(outside.sum())} tiles outside, drawn on the border as X")  # fmt: skip
    if notes:
        ax.text(0.0, 1.01, "\n".join(notes), transform=ax.transAxes, fontsize=7, color="0.3",
                va="bottom")  # fmt: skip
    n_lines = sum(n.count("\n") + 1 for n in notes)
    ax.set_title(f"{len(frame)} tile embeddings, {method.upper()}; {meaning}",
                 pad=6 + 10 * n_lines)  # fmt: skip
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    fig.text(0.01, 0.01, OSM_FOOTER, fontsize=8, color="0.3")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    try:
        return _save(fig, Path(output))
    finally:
        plt.close(fig)


def _categories(
    frame: pd.DataFrame, matrix: np.ndarray, color_by: str, clusters: int | None
) -> tuple[np.ndarray, list[str], str]:
    """(category code per tile, -1 = none; the categories' names; the legend's title)."""
    if color_by == CLUSTER:
        k = clusters or default_clusters(len(frame))
        codes = kmeans(matrix, k)
        names = describe_clusters(codes, frame["top_tags"])
        return codes, names, f"k-means cluster of the embeddings (k={len(names)}):\n" \
            "its most over-represented top tags"  # fmt: skip
    values = tag_key_values(frame["top_tags"], color_by)
    present = pd.Series([v for v in values if v is not None], dtype=object)
    if present.empty:
        keys = frame["top_tags"].fillna("").str.findall(r"(?:^|;\s*)([^=;]+)=").explode()
        common = ", ".join(keys.dropna().str.strip().value_counts().index[:8])
        raise InputError(f"tag key {color_by!r} is in no tile's top_tags; frequent keys: {common}")
    counts = present.value_counts()
    kept = list(counts.index[: MAX_CATEGORIES - 1]) if len(counts) > MAX_CATEGORIES else list(
        counts.index)  # fmt: skip
    names = [f"{color_by}={v} ({counts[v]} tiles)" for v in kept]
    other = int(counts.drop(kept).sum())
    if other:
        names.append(f"{color_by}=other ({other} tiles)")
    code_of = {v: i for i, v in enumerate(kept)}
    codes = np.array([-1 if v is None else code_of.get(v, len(kept)) for v in values])
    n_none = int((codes == -1).sum())
    title = f"{color_by} value among the tile's top tags"
    if n_none:
        title += f"\n(grey: {n_none} tiles without it)"
    return codes, names, title


def _draw_categories(
    ax, pos: np.ndarray, outside: np.ndarray, codes: np.ndarray, names: list[str], title: str
) -> None:
    """One colour per category (grey for none), a legend beside the axes that names them."""
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab10")
    for code in [-1, *range(len(names))]:
        colour = NONE_COLOUR if code < 0 else palette(code % 10)
        label = names[code] if code >= 0 else None  # once per category, on its first points
        for mask, marker, size in ((~outside, "o", 14), (outside, "X", 30)):
            idx = np.flatnonzero((codes == code) & mask)
            if len(idx):
                ax.scatter(pos[idx, 0], pos[idx, 1], color=colour, s=size, marker=marker,
                           linewidths=0, zorder=1 if code < 0 else 2, label=label)  # fmt: skip
                label = None
    ax.legend(title=title, fontsize=7, title_fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False,
              alignment="left")  # fmt: skip


def _draw_counts(fig, ax, pos: np.ndarray, outside: np.ndarray, values: np.ndarray,
                 label: str) -> list[str]:  # fmt: skip
    """A count colour scale (discrete, log or linear; outliers clipped); the notes to show."""
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt
    import matplotlib.ticker as mticker

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
    order = np.argsort(values, kind="stable")  # high values drawn last, on top
    shown = np.clip(values, scale.lo, scale.hi)
    for mask, marker, size in ((~outside[order], "o", 12), (outside[order], "X", 30)):
        idx = order[mask]
        points = ax.scatter(pos[idx, 0], pos[idx, 1], c=shown[idx], cmap=cmap, norm=norm,
                            s=size, marker=marker, linewidths=0, clip_on=marker == "o",
                            zorder=3 if marker == "X" else 2)  # fmt: skip
    bar = fig.colorbar(points, ax=ax, label=label, extend=extend, ticks=ticks)
    if scale.kind == "log":
        bar.ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
        bar.ax.yaxis.set_minor_locator(mticker.NullLocator())
    return [scale.note] if scale.note else []


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
