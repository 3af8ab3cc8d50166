"""An interactive Leaflet (folium) map of tile embeddings, coloured by a 3-D projection → RGB.

Tiles whose embeddings are similar get similar colours, so the map shows at a glance which
places the model considers alike. Each tile's popup lists its top tags and its nearest tiles.

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

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from geojepa.errors import OutputError
from geojepa.explore.embeddings import (
    EmbeddingSource,
    embedding_matrix,
    load_embeddings,
    project,
    require_geometry,
    require_kind,
    robust_unit,
)
from geojepa.explore.knn import topk_inner
from geojepa.io.atomic import write_atomic

OSM_ATTRIBUTION = (
    '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors'
)
OSM_TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"


def embedding_colors(matrix: np.ndarray, method: str = "pca") -> np.ndarray:
    """Hex colours (``#rrggbb``), one per row: 3-D projection, robustly scaled to RGB."""
    rgb = np.rint(robust_unit(project(matrix, 3, method)) * 255).astype(np.uint8)
    return np.array([f"#{r:02x}{g:02x}{b:02x}" for r, g, b in rgb])


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
    colors = embedding_colors(matrix, method)
    ids = gdf.index
    columns: dict[str, list] = {"region_id": _escape(ids.to_series())}
    if "n_entities" in gdf:
        columns["n_entities"] = [int(v) for v in gdf["n_entities"].fillna(0)]
    if "top_tags" in gdf:
        columns["top_tags"] = _escape(gdf["top_tags"])
    columns["neighbours"] = _neighbour_text(ids, matrix, neighbours)
    tile_layer = _layer_frame(gdf, columns, colors)

    bounds = [gdf.total_bounds]
    fmap = folium.Map(tiles=None, control_scale=True, prefer_canvas=len(gdf) > 5000)
    inline = _leaflet_inline()
    if inline is not None:  # no CDN: Leaflet core is all these layers need
        fmap.default_js = []
        fmap.default_css = []
        fmap.get_root().header.add_child(folium.Element(inline), name="leaflet_inline")
    folium.TileLayer(
        OSM_TILES, attr=OSM_ATTRIBUTION, name="OpenStreetMap (online)", max_zoom=19
    ).add_to(fmap)
    folium.GeoJson(
        tile_layer,
        name=f"tiles ({method.upper()} of embeddings → RGB)",
        style_function=_style,
        tooltip=folium.GeoJsonTooltip(fields=["region_id"], labels=False),
        popup=folium.GeoJsonPopup(fields=list(columns)),
    ).add_to(fmap)

    if entities is not None:
        e_label = str(entities) if isinstance(entities, str | Path) else "the entity embeddings"
        eframe = load_embeddings(entities, name=e_label)
        require_kind(eframe, "entities", e_label, "give tile embeddings as EMB")
        egdf = require_geometry(eframe, e_label)
        if len(egdf) > max_entities:
            warnings.warn(
                f"{e_label}: drawing a random {max_entities} of {len(egdf)} entity clips",
                stacklevel=2,
            )
            keep = np.sort(np.random.default_rng(0).choice(len(egdf), max_entities, False))
            egdf = egdf.iloc[keep]
        bounds.append(egdf.total_bounds)
        ematrix = embedding_matrix(egdf, normalize=True)
        ecols: dict[str, list] = {"feature_id": _escape(egdf.index.to_series())}
        if "region_id" in egdf:
            ecols["region_id"] = _escape(egdf["region_id"])
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
    if output.is_dir():
        raise OutputError(f"{output} is a directory: give a file name such as {output}/map.html")
    return write_atomic(output, lambda tmp: fmap.save(str(tmp)))
