"""An embedder with SRAI's interface, so SRAI users can drop GeoJEPA into their pipelines.

SRAI (https://github.com/kraina-ai/srai) embeds *regions* (H3 cells, administrative areas, any
polygons) from *features* (OSM objects loaded e.g. with quackosm). GeoJEPA embeds XYZ tiles.
``GeoJEPAEmbedder.transform`` bridges the two:

1. the features inside the tiles that cover the regions are cut into tiles at the model's zoom
   (``prepare_tiles`` on the GeoDataFrame, in a temporary folder);
2. each tile is embedded by the pretrained model ([max ‖ mean] of the target encoder);
3. each region gets the **intersection-area-weighted mean** of the embeddings of the tiles it
   overlaps (areas in Web Mercator, where tiles are exact squares). A region that *is* an XYZ
   tile of the model's zoom gets exactly that tile's embedding; a region overlapping no tile
   with features gets zeros (as a tile with no entity does).

Features may come in either SRAI layout: a ``tags`` column (dict or JSON text per feature), or
one column per tag key (SRAI's exploded form; null = tag absent). ``joint_gdf`` is accepted for
interface compatibility and not needed. With srai installed the class is an
``srai.embedders.Embedder`` (``isinstance`` holds); without it, the same duck-typed class
(``fit``, ``transform``, ``fit_transform``).

What costs time, and what is kept: the model is loaded once per embedder (reuse one for many
calls), and the text vectors of tags the model never saw (open vocabulary) are cached in the
user's cache (``tag_table_cache_dir``), not in the temporary tile folder, so the text model is
loaded once per machine and set of new tags, not on every call (``benchmarks/srai_embed.py``).
An embedder also keeps the embedding of every tile it encoded, with a digest of the tile's
content: a later call over the same features encodes only the tiles that are new or changed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from geojepa.constants import EMBED_BATCH_SIZE, FEATURES_INDEX, REGIONS_INDEX
from geojepa.data.features import tags_from_key_columns
from geojepa.errors import ConfigError, InputError

if TYPE_CHECKING:
    import geopandas as gpd

    from geojepa.model.jepa import GeoJEPA

try:  # an srai.embedders.Embedder when srai is installed; the same interface without it
    from srai.embedders import Embedder as _SraiEmbedder
except ImportError:
    _SraiEmbedder = object  # type: ignore[assignment,misc]

#: intersections smaller than this share of a region's area are edge-touching slivers
SLIVER = 1e-9


class GeoJEPAEmbedder(_SraiEmbedder):  # type: ignore[misc,valid-type]
    """SRAI-style embedder of arbitrary regions by a pretrained GeoJEPA.

    ``model``: a model directory written by ``geojepa pretrain`` or a loaded ``GeoJEPA``.
    ``zoom``: the tile zoom to cut features at; default: the zoom the model was trained on
    (recorded in the model directory's ``dataset.json``).
    ``workers``: processes for tiling (1 = in this process, right for region sets of a city).
    """

    def __init__(
        self,
        model: GeoJEPA | str | Path,
        zoom: int | None = None,
        batch_size: int = EMBED_BATCH_SIZE,
        device: str = "cpu",
        workers: int = 1,
        progress: bool = False,
    ) -> None:
        if model is None:
            raise InputError("GeoJEPAEmbedder needs a pretrained model (a model directory path)")
        if zoom is not None and not 1 <= zoom <= 22:
            raise ConfigError(f"zoom must be between 1 and 22, got {zoom}")
        self.model = model
        self.zoom = zoom
        self.batch_size = batch_size
        self.device = device
        self.workers = workers
        self.progress = progress
        self._net: GeoJEPA | None = None
        self._zoom: int | None = zoom
        self._tag_config: dict[str, Any] = {}
        #: region_id -> (content digest, embedding row, tile geometry) of tiles embedded before
        self._memo: dict[str, tuple[str, np.ndarray, Any]] = {}
        self._columns: list[str] = []

    # ----------------------------------------------------------------------- SRAI interface
    def fit(
        self,
        regions_gdf: gpd.GeoDataFrame | None = None,
        features_gdf: gpd.GeoDataFrame | None = None,
        joint_gdf: gpd.GeoDataFrame | None = None,
    ) -> GeoJEPAEmbedder:
        """Load the pretrained model (GeoJEPA is self-supervised: nothing is fitted here)."""
        self._load()
        return self

    def transform(
        self,
        regions_gdf: gpd.GeoDataFrame,
        features_gdf: gpd.GeoDataFrame,
        joint_gdf: gpd.GeoDataFrame | None = None,
    ) -> pd.DataFrame:
        """One embedding row per region (index = ``regions_gdf.index``), columns ``emb_*``."""
        tiles = self.tile_embeddings(regions_gdf, features_gdf)
        return region_means(_regions(regions_gdf), tiles)

    def fit_transform(
        self,
        regions_gdf: gpd.GeoDataFrame,
        features_gdf: gpd.GeoDataFrame,
        joint_gdf: gpd.GeoDataFrame | None = None,
    ) -> pd.DataFrame:
        """``fit`` then ``transform``."""
        return self.fit(regions_gdf, features_gdf, joint_gdf).transform(
            regions_gdf, features_gdf, joint_gdf
        )

    # ----------------------------------------------------------------------- the tile step
    def tile_embeddings(
        self, regions_gdf: gpd.GeoDataFrame, features_gdf: gpd.GeoDataFrame
    ) -> gpd.GeoDataFrame:
        """Embeddings of the XYZ tiles (with features) that cover ``regions_gdf``.

        Indexed by ``region_id`` ``z/x/y`` like ``geojepa embed``'s tile files.
        """
        import shapely

        from geojepa.data.config import PrepareConfig
        from geojepa.data.prepare import prepare_tiles
        from geojepa.model.directory import tag_table_cache_dir
        from geojepa.model.open_vocab import open_vocabulary

        net = self._load()
        regions = _regions(regions_gdf)
        features = features_with_tags(features_gdf)
        zoom = self._zoom
        assert zoom is not None
        squares = covering_tiles(regions, zoom)
        hits = features.sindex.query(squares, predicate="intersects")[1]
        if len(hits) == 0:
            fb = ", ".join(f"{v:.4f}" for v in features.total_bounds)
            rb = ", ".join(f"{v:.4f}" for v in regions.total_bounds)
            raise InputError(
                f"no feature lies in the tiles covering the regions (regions {rb}; features {fb})"
            )
        inside = features.iloc[np.unique(hits)]
        # The area filter keeps every feature meeting a covering tile, so those tiles are
        # complete (the same content as in a dataset of the whole area).
        area = shapely.union_all(squares)
        config = PrepareConfig.from_dict(
            {"zoom": zoom, "polygon_wkt": area.wkt, "workers": self.workers, **self._tag_config}
        )
        with tempfile.TemporaryDirectory(prefix="geojepa-srai-") as tmp:
            try:
                ds = prepare_tiles(inside, Path(tmp) / "tiles", config, progress=self.progress)
            except InputError as exc:
                raise InputError(f"nothing to embed inside the regions: {exc}") from None
            # the vectors of unseen tags outlive the temporary folder (see the module docstring)
            open_vocabulary(net, ds, cache_dir=tag_table_cache_dir())
            return self._embed_new_tiles(net, ds, Path(tmp))

    def _embed_new_tiles(self, net: GeoJEPA, ds: Any, tmp: Path) -> gpd.GeoDataFrame:
        """Tile embeddings of ``ds``, encoding only the tiles this embedder has not embedded
        before with the same content (a second transform over the same features, e.g. other
        regions of the same area, reuses them); the tile encoder is the cost that remains."""
        import geopandas as gpd

        from geojepa.data.combine import subset_dataset
        from geojepa.embed import embed_frames

        digests = tile_digests(ds)
        todo = [r for r, d in digests.items() if r not in self._memo or self._memo[r][0] != d]
        fresh = None
        if todo:
            part = ds if len(todo) == len(digests) else subset_dataset(ds, todo, tmp / "new")
            fresh, _ = embed_frames(
                net, part, entities=False, batch_size=self.batch_size, device=self.device,
                progress=self.progress, open_vocabulary=False,
            )  # fmt: skip
            self._columns = [c for c in fresh.columns if c != fresh.geometry.name]
            values = fresh[self._columns].to_numpy()
            for rid, row, geom in zip(fresh.index, values, fresh.geometry.array, strict=True):
                self._memo[rid] = (digests[rid], row, geom)
            if len(todo) == len(digests):
                return fresh  # all new: embed_frames' own frame and row order
        ids = list(digests)
        frame = pd.DataFrame(np.stack([self._memo[r][1] for r in ids]), columns=self._columns,
                             index=pd.Index(ids, name=REGIONS_INDEX))  # fmt: skip
        return gpd.GeoDataFrame(frame, geometry=[self._memo[r][2] for r in ids], crs="EPSG:4326")

    # ----------------------------------------------------------------------- model
    def _load(self) -> GeoJEPA:
        if self._net is not None:
            return self._net
        from geojepa.embed import model_on_device

        self._net = model_on_device(self.model, self.device)
        trained = self._net.require_directory().dataset_config  # from dataset.json
        if trained is not None:
            self._tag_config = {
                "tag_filter": trained.tag_filter,
                "drop_keys": list(trained.drop_keys),
                "key_only": list(trained.key_only),
            }
            if self._zoom is None:
                self._zoom = trained.zoom
            elif self._zoom != trained.zoom:
                self._net = None
                raise ConfigError(
                    f"the model was trained on zoom {trained.zoom} tiles, not zoom {self._zoom}: "
                    "leave zoom=None"
                )
        if self._zoom is None:
            raise ConfigError(
                "this model does not record the tile zoom it was trained on: pass zoom=..."
            )
        return self._net


# --------------------------------------------------------------------------- inputs


def _regions(regions_gdf: Any) -> gpd.GeoDataFrame:
    """Regions as polygons in EPSG:4326 (InputError for anything else)."""
    import geopandas as gpd

    if not isinstance(regions_gdf, gpd.GeoDataFrame):
        raise InputError("regions_gdf must be a GeoDataFrame of polygons")
    if regions_gdf.empty:
        raise InputError("regions_gdf is empty: no region to embed")
    if regions_gdf.crs is None:
        raise InputError("regions_gdf has no CRS (SRAI regions are in EPSG:4326)")
    kinds = set(regions_gdf.geom_type.dropna())
    if not kinds <= {"Polygon", "MultiPolygon"} or regions_gdf.geometry.isna().any():
        raise InputError(f"regions must be polygons, got {sorted(kinds) or 'no geometry'}")
    if regions_gdf.index.has_duplicates:
        raise InputError("regions_gdf has duplicate index values (region ids must be unique)")
    out = regions_gdf.to_crs(4326)
    if out.index.name is None:
        out.index.name = REGIONS_INDEX
    return out


def features_with_tags(features_gdf: Any) -> gpd.GeoDataFrame:
    """Features with a ``feature_id`` index and a ``tags`` column, in EPSG:4326.

    Accepts SRAI's two layouts: a ``tags`` column (dict or JSON text), or one column per tag
    key whose non-null cells are the values (the exploded form).
    """
    import geopandas as gpd

    if not isinstance(features_gdf, gpd.GeoDataFrame):
        raise InputError("features_gdf must be a GeoDataFrame")
    if features_gdf.empty:
        raise InputError("features_gdf is empty: no feature to embed")
    if features_gdf.crs is None:
        raise InputError("features_gdf has no CRS (SRAI features are in EPSG:4326)")
    gdf = features_gdf
    if gdf.index.name != FEATURES_INDEX:
        if FEATURES_INDEX not in gdf.columns:
            raise InputError("features_gdf needs a 'feature_id' index (like 'way/123')")
        gdf = gdf.set_index(FEATURES_INDEX)
    geom = gdf.geometry.name
    if "tags" in gdf.columns:
        tags = gdf["tags"]
    else:
        keys = [c for c in gdf.columns if c != geom]
        if not keys:
            raise InputError("features_gdf has neither a 'tags' column nor tag-key columns")
        columns = [gdf[k].tolist() for k in keys]
        tags = pd.Series(tags_from_key_columns(keys, columns), index=gdf.index)
    out = gpd.GeoDataFrame({"tags": tags.to_numpy()}, geometry=gdf.geometry.to_numpy(),
                           index=gdf.index, crs=gdf.crs)  # fmt: skip
    out = out[out.geometry.notna() & ~out.geometry.is_empty]
    return out.to_crs(4326)


def covering_tiles(regions: gpd.GeoDataFrame, zoom: int) -> np.ndarray:
    """EPSG:4326 squares of the XYZ tiles at ``zoom`` that meet at least one region."""
    import mercantile
    import shapely

    found: set[tuple[int, int]] = set()
    for west, south, east, north in regions.geometry.bounds.to_numpy():
        found.update((t.x, t.y) for t in mercantile.tiles(west, south, east, north, zooms=zoom))
    xy = np.array(sorted(found), dtype=np.int64).reshape(-1, 2)
    b = [mercantile.bounds(int(x), int(y), zoom) for x, y in xy]
    squares = shapely.box([v.west for v in b], [v.south for v in b],
                          [v.east for v in b], [v.north for v in b])  # fmt: skip
    meets = shapely.STRtree(regions.geometry.to_numpy()).query(squares, predicate="intersects")[0]
    return squares[np.unique(meets)]


def tile_digests(ds: Any) -> dict[str, str]:
    """``region_id`` -> SHA-256 of what the model reads of the tile (its entities' ids, tags and
    clipped geometries), in the files' tile order: equal digests, equal embeddings."""
    import hashlib

    ids = ds.read_tiles(columns=[REGIONS_INDEX]).column(REGIONS_INDEX).to_pylist()
    found = {r: hashlib.sha256() for r in ids}
    names = [REGIONS_INDEX, FEATURES_INDEX, "tags", "geometry"]
    entities = ds.read_entities(columns=names)
    rows = zip(*(entities.column(n).to_pylist() for n in names), strict=True)
    for region, feature, tags, geometry in rows:
        found[region].update(f"{feature}\0{tags!r}\0".encode() + geometry + b"\1")
    return {r: h.hexdigest() for r, h in found.items()}


# --------------------------------------------------------------------------- tiles → regions


def _tile_squares(region_ids: pd.Index) -> np.ndarray:
    """Exact Web-Mercator squares of ``z/x/y`` tile ids."""
    import mercantile
    import shapely

    parts = np.array([r.split("/") for r in region_ids], dtype=np.int64).reshape(-1, 3)
    b = [mercantile.xy_bounds(int(x), int(y), int(z)) for z, x, y in parts]
    return shapely.box([v.left for v in b], [v.bottom for v in b],
                       [v.right for v in b], [v.top for v in b])  # fmt: skip


def region_means(regions: gpd.GeoDataFrame, tiles: gpd.GeoDataFrame) -> pd.DataFrame:
    """Per region, the intersection-area-weighted mean of the tile embeddings it overlaps.

    Weights are areas in Web Mercator (exact for tile squares); intersections thinner than
    ``SLIVER`` of the region's area (shared edges) are ignored, so a region that is a tile gets
    that tile's embedding exactly. Regions overlapping no tile get zeros.
    """
    import shapely
    from scipy import sparse

    from geojepa.explore.embeddings import embedding_columns

    cols = embedding_columns(tiles)
    matrix = tiles[cols].to_numpy(np.float64)
    squares = _tile_squares(tiles.index)
    shapes = regions.to_crs(3857).geometry.to_numpy()
    ri, ti = shapely.STRtree(squares).query(shapes, predicate="intersects")
    area = shapely.area(shapely.intersection(shapes[ri], squares[ti]))
    keep = area > SLIVER * shapely.area(shapes[ri])
    w = sparse.csr_matrix((area[keep], (ri[keep], ti[keep])), shape=(len(shapes), len(squares)))
    total = np.asarray(w.sum(axis=1)).ravel()
    if not (total > 0).any():
        raise InputError("no region overlaps a tile with features: nothing to embed")
    means = (w @ matrix) / np.where(total > 0, total, 1.0)[:, None]
    return pd.DataFrame(means.astype(np.float32), index=regions.index, columns=cols)
