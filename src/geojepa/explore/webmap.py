"""An interactive Leaflet (folium) map of tile embeddings, coloured by a 3-D projection → RGB.

Tiles whose embeddings are similar get similar colours, so the map shows at a glance which
places the model considers alike. Each tile's popup lists its top tags and its nearest tiles. A
key says what the colours are: which projection axis drives red, green and blue (with its share
of the variance for PCA), and the tile statistic that axis follows most closely (the Pearson
correlation with the tile's entity count and with each top tag's presence).

Offline by design: the page inlines Leaflet's JS and CSS (from the `django-js-lib-leaflet`
package, which ships Leaflet 1.9.4 as plain files and has no dependencies) instead of loading
folium's CDN assets, so the embedding layers draw with no network. The OpenStreetMap base layer
is the only remote resource; without network its tiles simply do not load. If that package is
missing, folium's CDN links are kept (the page then needs network).
"""

from __future__ import annotations

import base64
import html
import re
import warnings
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from geojepa.constants import REGIONS_INDEX
from geojepa.errors import OutputError
from geojepa.explore.embeddings import (
    EmbeddingSource,
    embedding_matrix,
    load_embeddings,
    pca,
    project,
    require_geometry,
    require_kind,
    robust_unit,
)
from geojepa.explore.knn import topk_inner
from geojepa.io.atomic import write_atomic

if TYPE_CHECKING:
    import folium

OSM_ATTRIBUTION = (
    '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors'
)
OSM_TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"


CHANNELS = ("red", "green", "blue")


def embedding_colors(matrix: np.ndarray, method: str = "pca") -> np.ndarray:
    """Hex colours (``#rrggbb``), one per row: 3-D projection, robustly scaled to RGB."""
    return _hex(project(matrix, 3, method))


def _hex(coords: np.ndarray) -> np.ndarray:
    rgb = np.rint(robust_unit(coords) * 255).astype(np.uint8)
    return np.array([f"#{r:02x}{g:02x}{b:02x}" for r, g, b in rgb])


def tile_statistics(frame: pd.DataFrame, min_tiles: int = 3) -> pd.DataFrame:
    """Per tile: ``n_entities`` and, for every top tag on at least ``min_tiles`` tiles (and
    not on all), whether the tile has it among its top tags (0/1)."""
    stats = pd.DataFrame(index=frame.index)
    if "n_entities" in frame:
        stats["n_entities"] = frame["n_entities"].fillna(0).astype(float)
    if "top_tags" in frame:
        tags = frame["top_tags"].fillna("").astype(str).str.split(";")
        flags = pd.get_dummies(tags.explode().str.strip()).groupby(level=0).max()
        flags = flags.drop(columns=[""], errors="ignore").reindex(frame.index, fill_value=False)
        seen = flags.sum()
        keep = seen[(seen >= min_tiles) & (seen < len(frame))].index
        stats = stats.join(flags[keep].astype(float))
    return stats


def color_key(coords: np.ndarray, stats: pd.DataFrame, variance: np.ndarray | None = None,
              method: str = "pca") -> list[dict]:  # fmt: skip
    """Per colour channel: the axis behind it, its share of the variance (PCA), and the tile
    statistic it correlates with most (Pearson r; None when there is none to compare)."""
    key = []
    for i, channel in enumerate(CHANNELS):
        axis = coords[:, i]
        best, best_r = None, 0.0
        for name in stats.columns:
            v = stats[name].to_numpy()
            if axis.std() > 0 and v.std() > 0:
                r = float(np.corrcoef(axis, v)[0, 1])
                if abs(r) > abs(best_r):
                    best, best_r = name, r
        key.append({
            "channel": channel,
            "axis": f"PC{i + 1}" if method == "pca" else f"{method.upper()} {i + 1}",
            "variance": None if variance is None else float(variance[i]),
            "statistic": best,
            "r": best_r,
        })  # fmt: skip
    return key


def _key_html(key: list[dict]) -> str:
    """The map's legend: what each colour channel shows."""
    lines = []
    for k in key:
        share = "" if k["variance"] is None else f" ({k['variance']:.0%} of the variance)"
        if k["statistic"] is None:
            closest = "no tile statistic to compare"
        elif k["statistic"] == "n_entities":
            closest = f"{'more' if k['r'] > 0 else 'fewer'} entities (r = {k['r']:+.2f})"
        else:
            tag = html.escape(k["statistic"])
            closest = f"{'' if k['r'] > 0 else 'no '}{tag} among the top tags (r = {k['r']:+.2f})"
        swatch = {"red": "#d62728", "green": "#2ca02c", "blue": "#1f77b4"}[k["channel"]]
        lines.append(f'<span style="color:{swatch}">&#9632;</span> more {k["channel"]} = '
                     f"higher {k['axis']}{share}; closest tile statistic: {closest}")  # fmt: skip
    return (
        '<div id="geojepa-key" style="position:fixed;bottom:22px;left:8px;z-index:1000;'
        "max-width:420px;background:rgba(255,255,255,0.9);font:11px sans-serif;padding:4px 6px;"
        'border-radius:3px"><b>Tile colours</b>: similar embeddings, similar colours.<br>'
        + "<br>".join(lines)
        + "</div>"
    )


def _leaflet_inline() -> str | None:
    """`<style>` + `<script>` with Leaflet's CSS (images as data URIs) and JS, or None."""
    try:
        root = resources.files("js_lib_leaflet") / "static" / "js_lib_leaflet"
        css = (root / "leaflet.css").read_text(encoding="utf-8")
        js = (root / "leaflet.js").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        return None

    def data_uri(match: re.Match[str]) -> str:
        data = (root / "images" / match.group(1)).read_bytes()
        return f"url(data:image/png;base64,{base64.b64encode(data).decode()})"

    css = re.sub(r"url\(images/([\w.-]+\.png)\)", data_uri, css)
    return f"<style>{css}</style>\n<script>{js}</script>"


def _neighbour_text(ids: pd.Index, matrix: np.ndarray, k: int) -> list[str]:
    """Per row, its ``k`` most similar other rows as escaped HTML lines ``id (similarity)``."""
    if k <= 0 or len(ids) < 2:
        return [""] * len(ids)
    idx, sc = topk_inner(matrix, matrix, min(k + 1, len(ids)))
    out = []
    for row, (cand, sims) in enumerate(zip(idx, sc, strict=True)):
        keep = [(c, s) for c, s in zip(cand, sims, strict=True) if c != row][:k]
        out.append("<br>".join(f"{html.escape(ids[c])} ({s:.3f})" for c, s in keep))
    return out


def _escape(values: pd.Series) -> list[str]:
    return [html.escape(str(v)) for v in values.fillna("")]


def _layer_frame(frame: gpd.GeoDataFrame, columns: dict[str, list], colors: np.ndarray):
    """A small GeoDataFrame for a GeoJSON layer: popup columns, colour, rounded geometry."""
    geom = shapely.set_precision(frame.geometry.to_numpy(), 1e-6)
    data = {name: values for name, values in columns.items()}
    data["color"] = list(colors)
    return gpd.GeoDataFrame(data, geometry=geom, crs=4326)


def _style(feature: dict) -> dict:
    color = feature["properties"]["color"]
    return {"fillColor": color, "color": color, "weight": 0.6, "fillOpacity": 0.75}


def make_map(
    tiles: EmbeddingSource,
    output: str | Path,
    *,
    entities: EmbeddingSource | None = None,
    method: str = "pca",
    neighbours: int = 5,
    max_entities: int = 20_000,
) -> Path:
    """Write an HTML map of tile embeddings (and optionally entity embeddings) to ``output``.

    Layers: an OpenStreetMap base layer (remote, optional for the page to work), the tiles
    coloured by a 3-D ``method`` projection (``pca`` or ``umap``) of their embeddings with
    popups (region_id, n_entities, top tags, the ``neighbours`` most similar tiles), an entity
    layer coloured the same way (at most ``max_entities`` clips, a seeded random sample above
    that), and a layer control. Files in a CRS other than EPSG:4326 are reprojected (warned).
    """
    import folium

    output = Path(output)
    t_label = str(tiles) if isinstance(tiles, str | Path) else "the tile embeddings"
    frame = load_embeddings(tiles, name=t_label)
    require_kind(frame, "tiles", t_label, "give entity embeddings with --entities")
    gdf = require_geometry(frame, t_label)
    matrix = embedding_matrix(gdf, normalize=True)
    coords, variance = pca(matrix, 3) if method == "pca" else (project(matrix, 3, method), None)
    key = color_key(coords, tile_statistics(gdf), variance, method)
    columns = _tile_columns(gdf, matrix, neighbours)
    tile_layer = _layer_frame(gdf, columns, _hex(coords))

    bounds = [gdf.total_bounds]
    fmap = _base_map(len(gdf))
    folium.GeoJson(
        tile_layer,
        name=f"tiles ({method.upper()} of embeddings → RGB)",
        style_function=_style,
        tooltip=folium.GeoJsonTooltip(fields=[REGIONS_INDEX], labels=False),
        popup=folium.GeoJsonPopup(fields=list(columns)),
    ).add_to(fmap)
    if entities is not None:
        bounds.append(_add_entities(fmap, entities, method, max_entities))

    folium.LayerControl(collapsed=False).add_to(fmap)
    west, south = np.min(bounds, axis=0)[:2]
    east, north = np.max(bounds, axis=0)[2:]
    fmap.fit_bounds([[float(south), float(west)], [float(north), float(east)]])
    footer = (
        '<div id="geojepa-attribution" style="position:fixed;bottom:22px;right:4px;'
        "z-index:1000;background:rgba(255,255,255,0.85);font:11px sans-serif;padding:2px 5px;"
        f'">Map data {OSM_ATTRIBUTION} (ODbL) · colours: {method.upper()} of GeoJEPA embeddings'
        "</div>"
    )
    fmap.get_root().html.add_child(folium.Element(footer))
    fmap.get_root().html.add_child(folium.Element(_key_html(key)))
    if output.is_dir():
        raise OutputError(f"{output} is a directory: give a file name such as {output}/map.html")
    return write_atomic(output, lambda tmp: fmap.save(str(tmp)))


def _tile_columns(gdf: gpd.GeoDataFrame, matrix: np.ndarray, neighbours: int) -> dict[str, list]:
    """The tiles' popup fields: id, entity count and top tags where known, nearest tiles."""
    ids = gdf.index
    columns: dict[str, list] = {REGIONS_INDEX: _escape(ids.to_series())}
    if "n_entities" in gdf:
        columns["n_entities"] = [int(v) for v in gdf["n_entities"].fillna(0)]
    if "top_tags" in gdf:
        columns["top_tags"] = _escape(gdf["top_tags"])
    columns["neighbours"] = _neighbour_text(ids, matrix, neighbours)
    return columns


def _base_map(n_tiles: int) -> folium.Map:
    """An empty folium map with Leaflet inlined where possible and the OSM base layer."""
    import folium

    fmap = folium.Map(tiles=None, control_scale=True, prefer_canvas=n_tiles > 5000)
    inline = _leaflet_inline()
    if inline is not None:  # no CDN: Leaflet core is all these layers need
        fmap.default_js = []
        fmap.default_css = []
        fmap.get_root().header.add_child(folium.Element(inline), name="leaflet_inline")
    folium.TileLayer(
        OSM_TILES, attr=OSM_ATTRIBUTION, name="OpenStreetMap (online)", max_zoom=19
    ).add_to(fmap)
    return fmap


def _add_entities(
    fmap: folium.Map, entities: EmbeddingSource, method: str, max_entities: int
) -> np.ndarray:
    """Add the entity layer (a seeded sample of ``max_entities`` at most); returns its bounds."""
    import folium

    e_label = str(entities) if isinstance(entities, str | Path) else "the entity embeddings"
    eframe = load_embeddings(entities, name=e_label)
    require_kind(eframe, "entities", e_label, "give tile embeddings as EMB")
    egdf = require_geometry(eframe, e_label)
    if len(egdf) > max_entities:
        warnings.warn(
            f"{e_label}: drawing a random {max_entities} of {len(egdf)} entity clips",
            stacklevel=3,  # make_map's caller
        )
        keep = np.sort(np.random.default_rng(0).choice(len(egdf), max_entities, False))
        egdf = egdf.iloc[keep]
    ematrix = embedding_matrix(egdf, normalize=True)
    ecols: dict[str, list] = {"feature_id": _escape(egdf.index.to_series())}
    if REGIONS_INDEX in egdf:
        ecols[REGIONS_INDEX] = _escape(egdf[REGIONS_INDEX])
    if "tags" in egdf:
        ecols["tags"] = _escape(egdf["tags"])
    folium.GeoJson(
        _layer_frame(egdf, ecols, embedding_colors(ematrix, method)),
        name="entities (embedding → RGB)",
        style_function=_style,
        marker=folium.CircleMarker(radius=4),
        tooltip=folium.GeoJsonTooltip(fields=["feature_id"], labels=False),
        popup=folium.GeoJsonPopup(fields=list(ecols)),
    ).add_to(fmap)
    return egdf.total_bounds
