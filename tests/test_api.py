"""The top-level Python API: fast lazy import, in-memory embeddings equal the written files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import torch

import geojepa
from geojepa.errors import ConfigError, InputError
from geojepa.tokenize.tags import TagVocabulary, build_tag_table
from geojepa.train.config import PretrainConfig, preset_config
from geojepa.train.export import build_model, export_model
from helpers.synthetic import write_synthetic_dataset


def test_import_does_not_load_torch_or_lightning() -> None:
    code = (
        "import sys, json, geojepa; geojepa.prepare_tiles; geojepa.embed_tiles; "
        "print(json.dumps([m for m in ('torch', 'lightning', 'folium', 'sklearn') "
        "if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_lazy_names() -> None:
    for name in geojepa.__all__:
        assert getattr(geojepa, name) is not None
    assert geojepa.GeoJEPA.__name__ == "GeoJEPA"
    assert "embed_tiles" in dir(geojepa)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        geojepa.nope  # noqa: B018


def fake_embed(texts: list[str]) -> np.ndarray:
    return np.random.default_rng(len(texts)).normal(size=(len(texts), 16)).astype(np.float32)


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    """A synthetic dataset and a (random-weight) model directory for it."""
    tmp = tmp_path_factory.mktemp("api")
    path = write_synthetic_dataset(tmp / "ds", n_shards=2, tiles_per_shard=(4, 7), seed=3)
    ds = geojepa.open_dataset(path)
    data = preset_config("cpu-small").model_dump()
    data["model"].update(depth=1, predictor_depth=1)
    cfg = PretrainConfig.from_dict(data)
    vocab = TagVocabulary.from_dataset(ds)
    torch.manual_seed(0)
    model = build_model(cfg, build_tag_table(vocab, "fake", None, embed_fn=fake_embed))
    run = export_model(model, cfg, vocab, tmp / "model", {"dataset": str(path)}, ds.config)
    return run, ds


def test_embed_tiles_frame_equals_file(model_and_data, tmp_path: Path) -> None:
    run, ds = model_and_data
    frame = geojepa.embed_tiles(run, ds, progress=False)
    assert isinstance(frame, gpd.GeoDataFrame)
    assert frame.index.name == "region_id" and frame.crs.to_epsg() == 4326
    assert len(frame) == ds.manifest["n_tiles"]
    ents_path = tmp_path / "ents.parquet"
    path = geojepa.embed_tiles(
        run, ds.path, tmp_path / "tiles.parquet", entities_output=ents_path, progress=False
    )
    assert path == tmp_path / "tiles.parquet"
    written = gpd.read_parquet(path)
    pd.testing.assert_frame_equal(
        pd.DataFrame(frame.drop(columns="geometry")), pd.DataFrame(written.drop(columns="geometry"))
    )
    assert shapely.equals(frame.geometry.values, written.geometry.values).all()

    model = geojepa.GeoJEPA.from_pretrained(run)  # a loaded model works as well as a path
    ents = geojepa.embed_entities(model, ds, progress=False)
    ents_file = gpd.read_parquet(ents_path)
    assert ents.index.name == "feature_id" and len(ents) == len(ents_file) > 0
    cols = [c for c in ents.columns if c.startswith("emb_")]
    np.testing.assert_allclose(ents[cols].to_numpy(), ents_file[cols].to_numpy(), atol=1e-6)

    # nearest() on the in-memory frame: a tile is never its own neighbour
    first = frame.index[0]
    near = geojepa.nearest(frame, first, k=3)
    assert len(near) == 3 and first not in set(near["id"])


def test_bad_api_inputs(model_and_data, tmp_path: Path) -> None:
    run, ds = model_and_data
    with pytest.raises(ConfigError, match="entities_output needs output"):
        geojepa.embed_tiles(run, ds, entities_output=tmp_path / "e.parquet")
    with pytest.raises(InputError, match="model directory not found"):
        geojepa.embed_tiles(tmp_path / "no-model", ds)
    with pytest.raises(InputError, match="dataset not found"):
        geojepa.embed_tiles(run, tmp_path / "no-data")
    with pytest.raises(ConfigError, match="zoom"):
        geojepa.prepare_tiles("x.osm.pbf", tmp_path / "out", {"zoom": 99})


def test_a_loaded_model_carries_its_directory(model_and_data, tmp_path: Path) -> None:
    """`load_model` gives the network and what its directory says, typed; `from_pretrained`
    keeps that record on the network, so `embed_tiles` still refuses data of another zoom."""
    from geojepa.model import GeoJEPA, LoadedModel, ModelSpec, load_model

    run, ds = model_and_data
    loaded = load_model(run)
    assert isinstance(loaded, LoadedModel) and isinstance(loaded.model, GeoJEPA)
    assert loaded.path == run and not loaded.model.training
    assert loaded.config == json.loads((run / "config.json").read_text())  # the whole run config
    assert type(loaded.spec) is ModelSpec
    assert loaded.spec == PretrainConfig.from_dict(loaded.config).spec()
    assert loaded.dataset_config == ds.config and loaded.training_data is None
    assert len(loaded.vocab) == loaded.model.tokenizer.tag_table.shape[0]
    assert loaded.model.directory is not None and loaded.model.directory.vocab is loaded.vocab

    model = geojepa.GeoJEPA.from_pretrained(run)
    assert model.require_directory().dataset_config == ds.config
    other = write_synthetic_dataset(tmp_path / "z15", n_shards=1, zoom=15, seed=1)
    with pytest.raises(InputError, match=r"zoom 15.*trained on zoom 16"):
        geojepa.embed_tiles(model, other, progress=False)
    bare = build_model(loaded.spec, loaded.model.tokenizer.tag_table)  # no directory
    assert bare.directory is None
    with pytest.raises(InputError, match="no tag vocabulary"):
        geojepa.embed_tiles(bare, ds, progress=False)


def test_prepare_tiles_from_a_geodataframe(tmp_path: Path) -> None:
    lon, lat = 24.94, 60.17
    gdf = gpd.GeoDataFrame(
        {"tags": [json.dumps({"building": "yes"}), {"amenity": "bench"}]},
        geometry=[shapely.box(lon, lat, lon + 1e-4, lat + 1e-4), shapely.Point(lon + 2e-3, lat)],
        index=pd.Index(["way/1", "node/2"], name="feature_id"),
        crs="EPSG:4326",
    )
    ds = geojepa.prepare_tiles(gdf, tmp_path / "ds", {"workers": 1}, zoom=15, progress=False)
    assert ds.config.zoom == 15 and ds.manifest["n_entities"] == 2


def test_model_directory_records_the_resolved_versions(model_and_data) -> None:
    """A model directory names the library versions that made it (datasets: test_prepare)."""
    run, _ = model_and_data
    model_env = json.loads((run / "environment.json").read_text())
    assert model_env["torch"] == torch.__version__ and model_env["geojepa"] == geojepa.__version__
