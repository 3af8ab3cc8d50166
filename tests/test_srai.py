"""The SRAI-style embedder: XYZ-tile regions, arbitrary polygons, both feature layouts, errors.

The model is a real GeoJEPA model directory with random weights and a fake tag-text table
(no text model, no training): what is tested is the tiling → embedding → region plumbing.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import torch

from geojepa.api import embed_tiles, prepare_tiles
from geojepa.data.config import PrepareConfig
from geojepa.errors import ConfigError, InputError
from geojepa.integrations.srai import GeoJEPAEmbedder, features_with_tags
from geojepa.tokenize.tags import TagVocabulary, build_tag_table
from geojepa.train.config import PretrainConfig, preset_config
from geojepa.train.export import build_model, export_model

ZOOM = 17
# A 3 × 3 block of z17 tiles in Helsinki; features are laid out in tile-relative coordinates.
X0, Y0 = 74632, 37900


def _lonlat(tx: float, ty: float) -> tuple[float, float]:
    """Tile-grid coordinates (fractional x, y at ZOOM) → lon, lat."""
    n = 2.0**ZOOM
    lon = tx / n * 360.0 - 180.0
    lat = float(np.degrees(np.arctan(np.sinh(np.pi * (1 - 2 * ty / n)))))
    return lon, lat


def synthetic_features(seed: int = 0) -> gpd.GeoDataFrame:
    """Buildings, roads and points over a 3 × 3 tile block (SRAI layout: tags column)."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, dict, shapely.Geometry]] = []
    kinds = [{"building": "yes"}, {"building": "house"}, {"building": "apartments"},
             {"amenity": "school", "building": "school"}]  # fmt: skip
    for i in range(90):
        tx, ty = X0 + rng.uniform(0.05, 2.9), Y0 + rng.uniform(0.05, 2.9)
        w = rng.uniform(0.02, 0.08)
        a, b = _lonlat(tx, ty), _lonlat(tx + w, ty + w)
        rows.append((f"way/{1000 + i}", kinds[i % 4], shapely.box(a[0], b[1], b[0], a[1])))
    for i in range(8):
        ty = Y0 + 0.2 + i * 0.35
        line = shapely.LineString([_lonlat(X0, ty), _lonlat(X0 + 3, ty + 0.1)])
        tags = {"highway": "residential", "maxspeed": str(30 + 10 * (i % 3))}
        rows.append((f"way/{2000 + i}", tags, line))
    for i in range(40):
        p = _lonlat(X0 + rng.uniform(0, 3), Y0 + rng.uniform(0, 3))
        tag = [{"natural": "tree"}, {"amenity": "bench"}][i % 2]
        rows.append((f"node/{3000 + i}", tag, shapely.Point(p)))
    ids, tags, geoms = zip(*rows, strict=True)
    return gpd.GeoDataFrame(
        {"tags": [json.dumps(t) for t in tags]},
        geometry=list(geoms),
        index=pd.Index(ids, name="feature_id"),
        crs="EPSG:4326",
    )


def exploded(features: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """SRAI's other layout: one column per tag key, null where the feature lacks the key."""
    records = [json.loads(t) for t in features["tags"]]
    frame = pd.DataFrame.from_records(records, index=features.index)
    return gpd.GeoDataFrame(frame, geometry=features.geometry.values, crs=features.crs)


def fake_embed(texts: list[str]) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32("\x1f".join(texts).encode()))
    return rng.normal(size=(len(texts), 16)).astype(np.float32)


def write_model(ds, out: Path, dataset_info: bool = True) -> Path:
    """A model directory for ``ds``: tiny cpu-small network, random weights, fake tag table."""
    data = preset_config("cpu-small").model_dump()
    data["model"].update(depth=1, predictor_depth=1)
    cfg = PretrainConfig.from_dict(data)
    vocab = TagVocabulary.from_dataset(ds)
    table = build_tag_table(vocab, "fake", None, embed_fn=fake_embed)
    torch.manual_seed(0)
    model = build_model(cfg, table)
    info = {"dataset": str(ds.path), "n_tiles": ds.manifest["n_tiles"]}
    return export_model(model, cfg, vocab, out, info, ds.config if dataset_info else None)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("srai")
    features = synthetic_features()
    ds = prepare_tiles(features, tmp / "tiles", PrepareConfig(zoom=ZOOM, workers=1), progress=False)
    model_dir = write_model(ds, tmp / "model")
    tiles = embed_tiles(model_dir, ds, progress=False)
    return features, model_dir, tiles, ds


def _emb(frame: pd.DataFrame) -> np.ndarray:
    cols = [c for c in frame.columns if str(c).startswith("emb_")]
    return frame[cols].to_numpy(np.float64)


def test_xyz_tile_regions_get_their_tile_embedding(setup) -> None:
    features, model_dir, tiles, _ = setup
    assert len(tiles) == 9
    regions = gpd.GeoDataFrame(geometry=tiles.geometry.values, index=tiles.index, crs=4326)
    regions.index.name = "region_id"
    got = GeoJEPAEmbedder(model_dir).fit_transform(regions, features)
    assert list(got.index) == list(regions.index) and got.index.name == "region_id"
    np.testing.assert_allclose(_emb(got), _emb(tiles), atol=1e-5)


def test_arbitrary_polygons_get_area_weighted_means(setup) -> None:
    features, model_dir, tiles, _ = setup
    # a box over parts of four tiles, a triangle, and a polygon far away (no tile → zeros)
    a, b = _lonlat(X0 + 0.6, Y0 + 0.7), _lonlat(X0 + 1.9, Y0 + 1.4)
    tri = shapely.Polygon([_lonlat(X0 + 1.1, Y0 + 0.2), _lonlat(X0 + 2.8, Y0 + 0.3),
                           _lonlat(X0 + 1.5, Y0 + 2.6)])  # fmt: skip
    far = shapely.box(10.0, 50.0, 10.01, 50.01)
    regions = gpd.GeoDataFrame(
        geometry=[shapely.box(a[0], b[1], b[0], a[1]), tri, far],
        index=pd.Index(["box", "tri", "far"], name="region_id"),
        crs=4326,
    )
    got = GeoJEPAEmbedder(model_dir, zoom=ZOOM).transform(regions, features, None)
    # independent check with geopandas overlay areas in EPSG:3857
    t3857 = tiles.to_crs(3857)
    for name in ("box", "tri"):
        shape = regions.to_crs(3857).geometry[name]
        areas = t3857.geometry.intersection(shape).area.to_numpy()
        assert (areas > 0).sum() >= 2  # really a mix of several tiles
        expected = (areas[:, None] * _emb(tiles)).sum(0) / areas.sum()
        np.testing.assert_allclose(_emb(got.loc[[name]])[0], expected, rtol=1e-4, atol=1e-5)
    assert np.all(_emb(got.loc[["far"]]) == 0)


def test_exploded_layout_equals_tags_column(setup) -> None:
    features, model_dir, tiles, _ = setup
    wide = exploded(features)
    assert "tags" not in wide.columns and wide["building"].isna().any()
    back = features_with_tags(wide)
    assert [json.loads(t) for t in back["tags"]] == [json.loads(t) for t in features["tags"]]
    regions = gpd.GeoDataFrame(geometry=tiles.geometry.values, index=tiles.index, crs=4326)
    got = GeoJEPAEmbedder(model_dir).transform(regions, wide, None)
    np.testing.assert_allclose(_emb(got), _emb(tiles), atol=1e-5)


def test_bad_inputs(setup, tmp_path: Path) -> None:
    features, model_dir, tiles, ds = setup
    regions = gpd.GeoDataFrame(geometry=tiles.geometry.values[:1], index=tiles.index[:1], crs=4326)
    with pytest.raises(InputError, match="needs a pretrained model"):
        GeoJEPAEmbedder(None)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="model directory not found"):
        GeoJEPAEmbedder(tmp_path / "nope").fit()
    emb = GeoJEPAEmbedder(model_dir)
    with pytest.raises(InputError, match="regions_gdf is empty"):
        emb.transform(regions.iloc[:0], features)
    with pytest.raises(InputError, match="no CRS"):
        emb.transform(gpd.GeoDataFrame(geometry=list(regions.geometry)), features)
    with pytest.raises(InputError, match="must be polygons"):
        emb.transform(gpd.GeoDataFrame(geometry=[shapely.Point(0, 0)], crs=4326), features)
    far = gpd.GeoDataFrame(geometry=[shapely.box(10.0, 50.0, 10.01, 50.01)], crs=4326)
    with pytest.raises(InputError, match="no feature lies in the tiles covering the regions"):
        emb.transform(far, features)
    with pytest.raises(InputError, match="feature_id"):
        emb.transform(regions, features.reset_index(drop=True))
    with pytest.raises(ConfigError, match="zoom"):
        GeoJEPAEmbedder(model_dir, zoom=40)
    with pytest.raises(ConfigError, match="trained on zoom 17 tiles, not zoom 16"):
        GeoJEPAEmbedder(model_dir, zoom=16).fit()
    # a model directory that does not say which zoom it was trained on
    bare = write_model(ds, tmp_path / "bare", dataset_info=False)
    with pytest.raises(ConfigError, match="pass zoom"):
        GeoJEPAEmbedder(bare).fit()
    assert GeoJEPAEmbedder(bare, zoom=ZOOM).fit()._zoom == ZOOM


def test_with_srai_regionalizer_and_joiner(setup) -> None:
    srai = pytest.importorskip("srai", reason="srai is not installed (pip install geojepa[srai])")
    from srai.joiners import IntersectionJoiner
    from srai.regionalizers import SlippyMapRegionalizer

    features, model_dir, tiles, _ = setup
    a, b = _lonlat(X0 + 0.1, Y0 + 0.1), _lonlat(X0 + 2.9, Y0 + 2.9)
    area = gpd.GeoDataFrame(geometry=[shapely.box(a[0], b[1], b[0], a[1])], crs=4326)
    regions = SlippyMapRegionalizer(zoom=ZOOM).transform(area)
    joint = IntersectionJoiner().transform(regions, features)
    got = GeoJEPAEmbedder(model_dir).fit_transform(regions, features, joint)
    assert got.index.equals(regions.index) and srai is not None
    # srai names tiles x_y_z; ours are z/x/y
    ours = [f"{z}/{x}/{y}" for x, y, z in (r.split("_") for r in regions.index)]
    np.testing.assert_allclose(_emb(got), _emb(tiles.loc[ours]), atol=1e-5)


def test_is_an_srai_embedder_when_srai_is_installed() -> None:
    pytest.importorskip("srai", reason="srai is not installed (pip install geojepa[srai])")
    from srai.embedders import Embedder

    assert issubclass(GeoJEPAEmbedder, Embedder)


def test_unseen_tags_load_the_text_model_once_per_machine(setup, tmp_path, monkeypatch) -> None:
    """The open-vocabulary vectors outlive the temporary tile folder: a second embedder (a new
    process, a new notebook kernel) reads them from the user's cache, without the text model."""
    import geojepa.tokenize.tags as tags

    features, model_dir, _tiles, _ = setup
    shops = features.copy()
    shops["tags"] = [t.replace('"school"', '"bakery"') for t in shops["tags"]]  # unseen values
    loads: list[str] = []

    def text_model(name: str, batch_size: int = 256):
        loads.append(name)
        return fake_embed

    monkeypatch.setattr(tags, "sentence_transformer_embed", text_model)
    monkeypatch.setenv("GEOJEPA_CACHE", str(tmp_path / "cache"))
    regions = gpd.GeoDataFrame(geometry=_tiles.geometry.values, index=_tiles.index, crs=4326)
    first = GeoJEPAEmbedder(model_dir).fit_transform(regions, shops)
    assert len(loads) == 1
    again = GeoJEPAEmbedder(model_dir).fit_transform(regions, shops)
    assert len(loads) == 1  # cached: no second load
    assert list((tmp_path / "cache").glob("tag_table-*.safetensors"))
    np.testing.assert_allclose(_emb(again), _emb(first), atol=1e-6)
    assert not np.allclose(_emb(first), _emb(_tiles), atol=1e-5)  # the new tags were read


def test_a_second_call_encodes_only_new_or_changed_tiles(setup, monkeypatch) -> None:
    """The embedder keeps each tile's embedding with a digest of its content: the same
    regions again encode nothing, a changed feature re-encodes its tile only, and the results
    equal a fresh embedder's."""
    import geojepa.embed as embed

    features, model_dir, tiles, _ = setup
    encoded: list[int] = []
    real = embed.embed_frames

    def counting(model, dataset, **kwargs):
        frame, ents = real(model, dataset, **kwargs)
        encoded.append(len(frame))
        return frame, ents

    monkeypatch.setattr(embed, "embed_frames", counting)
    regions = gpd.GeoDataFrame(geometry=tiles.geometry.values, index=tiles.index, crs=4326)
    regions.index.name = "region_id"
    emb = GeoJEPAEmbedder(model_dir)
    first = emb.transform(regions, features)
    again = emb.transform(regions, features)
    assert encoded == [9]  # nothing encoded the second time
    np.testing.assert_allclose(_emb(again), _emb(first), atol=1e-6)
    moved = features.copy()
    moved.loc["node/3000", "tags"] = json.dumps({"amenity": "bench"})  # was a tree
    changed = emb.transform(regions, moved)
    assert encoded == [9, 1]
    fresh = GeoJEPAEmbedder(model_dir).transform(regions, moved)
    np.testing.assert_allclose(_emb(changed), _emb(fresh), atol=1e-5)
    assert not np.allclose(_emb(changed), _emb(first), atol=1e-5)
