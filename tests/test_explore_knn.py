"""Nearest neighbours over embedding files (`geojepa.explore.knn`).

Also home of the synthetic embedding files the other `test_explore_*` modules use: tiles on a
zoom-16 grid whose embeddings come from three spatial clusters (so the right neighbours and the
map's colour pattern are known), and entities with features clipped into several tiles.
"""

from __future__ import annotations

import json
from pathlib import Path

import mercantile
import numpy as np
import pandas as pd
import pytest
import shapely

from geojepa.errors import ConfigError, InputError
from geojepa.explore.embeddings import embedding_columns, embedding_matrix, load_embeddings
from geojepa.explore.knn import haversine_km, nearest, suggest_ids, to_json, topk_ann, topk_inner
from geojepa.io.geoparquet import GeoParquetWriter

ZOOM = 16
X0, Y0 = 37308, 18963  # central Helsinki
CLUSTER_TAGS = [
    "building=apartments; highway=residential; amenity=parking",
    "landuse=grass; leisure=park; natural=tree",
    "highway=primary; amenity=restaurant; shop=clothes; building=retail",
]


def tile_cluster(dx: int, dy: int) -> int:
    """Three spatial blocks: left, top right, bottom right."""
    return 0 if dx < 4 else (1 if dy < 4 else 2)


def write_tiles(path: Path, side: int = 8, dim: int = 16, seed: int = 0, noise: float = 0.15):
    """A side x side tile file; returns (path, cluster label per region_id)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim))
    ids, labels, geoms, rows = [], {}, [], []
    for dx in range(side):
        for dy in range(side):
            tile = mercantile.Tile(X0 + dx, Y0 + dy, ZOOM)
            rid = f"{ZOOM}/{tile.x}/{tile.y}"
            c = tile_cluster(dx, dy)
            labels[rid] = c
            ids.append(rid)
            geoms.append(shapely.box(*mercantile.bounds(tile)))
            rows.append(centres[c] + noise * rng.normal(size=dim))
    emb = np.asarray(rows, dtype=np.float32)
    frame = pd.DataFrame(
        {
            "n_entities": rng.integers(1, 200, len(ids)).astype(np.int32),
            "top_tags": [CLUSTER_TAGS[labels[r]] for r in ids],
        },
        index=pd.Index(ids, name="region_id"),
    )
    emb_frame = pd.DataFrame(emb, columns=[f"emb_{i}" for i in range(dim)], index=frame.index)
    frame = pd.concat([frame, emb_frame], axis=1)
    with GeoParquetWriter(path, "region_id", ["Polygon"]) as writer:
        writer.write(frame, np.asarray(geoms))
    return path, labels


def write_entities(path: Path, dim: int = 8, seed: int = 1):
    """Entities: way/1..way/12, each clipped into 1-3 tiles (near-identical clip embeddings).

    Features 1-6 share one direction, 7-12 another; returns (path, clips per feature).
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, dim))
    ids, regions, tags, geoms, rows = [], [], [], [], []
    clips = {}
    for f in range(1, 13):
        fid = f"way/{f}"
        base = centres[0 if f <= 6 else 1] + 0.3 * rng.normal(size=dim)
        clips[fid] = 1 + f % 3
        for c in range(clips[fid]):
            tile = mercantile.Tile(X0 + f, Y0 + c, ZOOM)
            w, s, e, n = mercantile.bounds(tile)
            ids.append(fid)
            regions.append(f"{ZOOM}/{tile.x}/{tile.y}")
            tags.append(json.dumps({"building": "yes" if f <= 6 else "no", "name": f"<b>{f}"}))
            geoms.append(shapely.box(w, s, (w + e) / 2, (s + n) / 2))
            rows.append(base + 0.01 * rng.normal(size=dim))
    frame = pd.DataFrame(
        {"region_id": regions, "tags": tags}, index=pd.Index(ids, name="feature_id")
    )
    emb = pd.DataFrame(
        np.asarray(rows, dtype=np.float32),
        columns=[f"emb_{i}" for i in range(dim)],
        index=frame.index,
    )
    with GeoParquetWriter(path, "feature_id", []) as writer:
        writer.write(pd.concat([frame, emb], axis=1), np.asarray(geoms))
    return path, clips


@pytest.fixture
def tiles_file(tmp_path: Path):
    return write_tiles(tmp_path / "tiles.parquet")


@pytest.fixture
def entities_file(tmp_path: Path):
    return write_entities(tmp_path / "entities.parquet")


# --------------------------------------------------------------------------- tests


def test_embedding_columns_are_ordered_by_their_number():
    frame = pd.DataFrame({"emb_10": [1.0], "x": [0], "emb_2": [2.0], "emb_0": [3.0], "emb_x": [9]})
    assert embedding_columns(frame) == ["emb_0", "emb_2", "emb_10"]
    assert embedding_matrix(frame).tolist() == [[3.0, 2.0, 1.0]]


def test_tile_neighbours_come_from_the_same_cluster(tiles_file):
    path, labels = tiles_file
    for query in ["16/37308/18963", "16/37315/18963", "16/37315/18970"]:
        result = nearest(path, query, k=10)
        assert len(result) == 10
        assert query not in set(result["id"])
        assert {labels[r] for r in result["id"]} == {labels[query]}
        assert result["similarity"].is_monotonic_decreasing
        assert result["rank"].tolist() == list(range(1, 11))
        assert result["tags"].iloc[0] == CLUSTER_TAGS[labels[query]]
        assert result.attrs["kind"] == "tiles" and result.attrs["search"] == "exact"


def test_nearest_accepts_a_geodataframe(tiles_file):
    import geopandas as gpd

    path, _ = tiles_file
    gdf = gpd.read_parquet(path)
    before = gdf.copy()
    from_frame = nearest(gdf, "16/37308/18963", k=5)
    pd.testing.assert_frame_equal(from_frame, nearest(path, "16/37308/18963", k=5))
    pd.testing.assert_frame_equal(gdf, before)  # the caller's frame is untouched
    # an id column instead of the index is accepted too
    assert (
        nearest(gdf.reset_index(), "16/37308/18963", k=5)["id"].tolist()
        == from_frame["id"].tolist()
    )


def test_distance_km_matches_tile_geometry(tiles_file):
    path, _ = tiles_file
    result = nearest(path, "16/37308/18963", k=63)
    row = result.set_index("id").loc["16/37309/18963"]
    # neighbouring zoom-16 tiles at 60°N are ~0.6 km * cos(lat) apart east-west
    w, s, e, n = mercantile.bounds(mercantile.Tile(37308, 18963, 16))
    expected = haversine_km(w, (s + n) / 2, e, (s + n) / 2)
    assert row["distance_km"] == pytest.approx(expected, rel=0.01)
    assert 0.2 < expected < 0.4


def test_entity_query_uses_mean_of_clips_and_dedups(entities_file):
    path, clips = entities_file
    assert clips["way/2"] == 3
    result = nearest(path, "way/2", k=20)
    assert result["id"].is_unique
    assert "way/2" not in set(result["id"])
    assert len(result) == 11  # all other features, each once
    top5 = {int(i.split("/")[1]) for i in result["id"][:5]}
    assert top5 == {1, 3, 4, 5, 6}
    # the query vector is the normalised mean of the clips
    frame = load_embeddings(path)
    m = embedding_matrix(frame, normalize=True)
    q = m[frame.index == "way/2"].mean(0)
    q /= np.linalg.norm(q)
    best = (m[frame.index == result["id"][0]] @ q).max()
    assert result["similarity"][0] == pytest.approx(best, abs=1e-5)
    assert set(result.columns) >= {"region_id", "tags", "distance_km"}


def test_json_output_is_parseable(tiles_file):
    path, _ = tiles_file
    data = json.loads(to_json(nearest(path, "16/37308/18963", k=3)))
    assert data["query"] == "16/37308/18963" and data["kind"] == "tiles"
    assert [n["rank"] for n in data["neighbours"]] == [1, 2, 3]
    assert all(isinstance(n["distance_km"], float) for n in data["neighbours"])


@pytest.mark.parametrize("chunk_elems", [1, 7, 64, 1 << 24])
def test_chunked_topk_equals_brute_force(chunk_elems):
    rng = np.random.default_rng(3)
    db = rng.normal(size=(257, 12)).astype(np.float32)
    qs = rng.normal(size=(19, 12)).astype(np.float32)
    idx, sc = topk_inner(db, qs, 9, chunk_elems=chunk_elems)
    full = qs @ db.T
    expect = np.argsort(-full, axis=1, kind="stable")[:, :9]
    np.testing.assert_array_equal(idx, expect)
    np.testing.assert_allclose(sc, np.take_along_axis(full, expect, axis=1), rtol=1e-5)


def test_ann_index_agrees_with_exact_when_installed():
    if not any(_has(m) for m in ("usearch", "faiss")):
        pytest.skip("neither usearch nor faiss-cpu is installed (optional fast index)")
    rng = np.random.default_rng(4)
    db = rng.normal(size=(2000, 16)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    exact, exact_sc = topk_inner(db, db[:50], 10)
    approx, approx_sc = topk_ann(db, db[:50], 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall > 0.9
    # scores are similarities (not distances), consistent with the exact ones
    np.testing.assert_allclose(approx_sc[:, 0], exact_sc[:, 0], atol=1e-4)
    np.testing.assert_allclose(approx_sc, (db[:50, None, :] * db[approx]).sum(-1), atol=1e-4)


def test_nearest_through_ann_index(tiles_file):
    if not any(_has(m) for m in ("usearch", "faiss")):
        pytest.skip("neither usearch nor faiss-cpu is installed (optional fast index)")
    path, labels = tiles_file
    result = nearest(path, "16/37308/18963", k=5, search="ann")
    assert result.attrs["search"] == "ann"
    assert {labels[r] for r in result["id"]} == {0}
    assert "16/37308/18963" not in set(result["id"])


def test_ann_without_a_backend_is_a_clear_error(tiles_file, monkeypatch):
    import geojepa.explore.knn as knn

    monkeypatch.setattr(knn, "_ann_backend", lambda: None)
    with pytest.raises(ConfigError, match="usearch"):
        nearest(tiles_file[0], "16/37308/18963", search="ann")
    # auto stays exact without a backend, whatever the size
    monkeypatch.setattr(knn, "ANN_THRESHOLD", 1)
    assert nearest(tiles_file[0], "16/37308/18963", k=2).attrs["search"] == "exact"


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def test_missing_id_suggests_close_ids(tiles_file, entities_file):
    path, _ = tiles_file
    with pytest.raises(InputError, match=r"16/37308/18963"):
        nearest(path, "16/37307/18963")  # one tile west of the grid
    assert suggest_ids("16/37307/18963", load_embeddings(path).index, n=1) == ["16/37308/18963"]
    epath, _ = entities_file
    with pytest.raises(InputError, match=r"feature_id 'way/40'.*way/12"):
        nearest(epath, "way/40")


def test_bad_arguments(tiles_file):
    path, _ = tiles_file
    with pytest.raises(ConfigError):
        nearest(path, "16/37308/18963", metric="l2")
    with pytest.raises(ConfigError):
        nearest(path, "16/37308/18963", k=0)
