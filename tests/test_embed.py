"""`embed_tiles`: GeoParquet output, batch independence, entity rows, compatibility checks."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pytest
import shapely

from geojepa.cli import main
from geojepa.data.reader import open_dataset
from geojepa.embed import embed_tiles, top_tags
from geojepa.errors import InputError
from geojepa.model import GeoJEPA
from geojepa.train import PretrainConfig, preset_config, pretrain
from helpers.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("embed")
    ds = write_synthetic_dataset(
        root / "ds", n_shards=2, tiles_per_shard=(5, 8), entities_per_tile=(0, 25), seed=3
    )
    data = preset_config("cpu-small").model_dump()
    data["model"].update(depth=1, predictor_depth=1)
    data["data"]["batch_size"] = 4
    run = pretrain(ds, root / "run", config=PretrainConfig.from_dict(data), max_steps=2)
    return ds, Path(run)


def _emb(frame: gpd.GeoDataFrame) -> np.ndarray:
    return frame[[c for c in frame.columns if c.startswith("emb_")]].to_numpy()


def test_tile_and_entity_files(trained, tmp_path):
    ds_path, run = trained
    tiles_out, ents_out = tmp_path / "tiles.parquet", tmp_path / "entities.parquet"
    opts = {"batch_size": 3, "progress": False, "entity_rows": "clip"}  # rows = dataset rows
    embed_tiles(run, ds_path, tiles_out, entities_output=ents_out, **opts)
    tiles = gpd.read_parquet(tiles_out)
    ds = open_dataset(ds_path)
    truth = ds.read_tiles().to_pandas().set_index("region_id")
    width = GeoJEPA.from_pretrained(run).config.width

    assert tiles.crs.to_epsg() == 4326 and tiles.index.name == "region_id"
    assert sorted(tiles.index) == sorted(truth.index)  # every tile exactly once
    assert _emb(tiles).shape == (len(truth), 2 * width)
    assert np.isfinite(_emb(tiles)).all()
    assert (tiles["n_entities"] == truth.loc[tiles.index, "n_entities"]).all()
    # the polygon is the tile's EPSG:4326 bounds
    b = tiles.geometry.bounds
    assert np.allclose(b["minx"], truth.loc[tiles.index, "west"])
    assert np.allclose(b["maxy"], truth.loc[tiles.index, "north"])

    ents = gpd.read_parquet(ents_out)
    assert ents.index.name == "feature_id" and ents.crs.to_epsg() == 4326
    assert _emb(ents).shape[1] == width
    table = ds.read_entities()
    assert len(ents) == table.num_rows  # no tile exceeds max_entities here
    row = ents.iloc[0]
    assert isinstance(json.loads(row["tags"]), dict)
    # every entity's clip lies inside its tile
    tile_poly = shapely.buffer(tiles.loc[ents["region_id"]].geometry.to_numpy(), 1e-9)
    assert shapely.covers(tile_poly, ents.geometry.to_numpy()).all()


def test_tile_embedding_does_not_depend_on_batch(trained, tmp_path):
    ds_path, run = trained
    embed_tiles(run, ds_path, tmp_path / "a.parquet", batch_size=1, tokens_per_batch=None,
                progress=False)  # fmt: skip
    embed_tiles(run, ds_path, tmp_path / "b.parquet", progress=False)  # length-sorted budget
    a = gpd.read_parquet(tmp_path / "a.parquet")
    b = gpd.read_parquet(tmp_path / "b.parquet").loc[a.index]
    assert np.abs(_emb(a) - _emb(b)).max() < 1e-4


def test_entity_transform_changes_only_the_input(trained, tmp_path):
    ds_path, run = trained
    embed_tiles(run, ds_path, tmp_path / "a.parquet", progress=False)
    embed_tiles(run, ds_path, tmp_path / "b.parquet", entity_transform=_drop_all_tags,
                progress=False)  # fmt: skip
    a, b = gpd.read_parquet(tmp_path / "a.parquet"), gpd.read_parquet(tmp_path / "b.parquet")
    b = b.loc[a.index]
    has = a["n_entities"] > 0
    assert not np.allclose(_emb(a)[has], _emb(b)[has])
    assert (b["top_tags"] == "").all()


def _drop_all_tags(entities: pa.Table) -> pa.Table:
    tags_type = entities.schema.field("tags").type
    empty = pa.array([[] for _ in range(entities.num_rows)], type=tags_type)
    return entities.set_column(entities.schema.get_field_index("tags"), "tags", empty)


def test_top_tags_most_frequent_first():
    tags_type = pa.map_(pa.string(), pa.string())
    table = pa.table(
        {
            "region_id": ["1/0/0", "1/0/0", "1/0/0", "1/1/0"],
            "tags": pa.array(
                [
                    [("building", "yes")],
                    [("building", "yes"), ("name", None)],
                    [("amenity", "cafe")],
                    [("highway", "primary")],
                ],
                type=tags_type,
            ),
        }
    )
    top = top_tags(table, k=2)
    assert top["1/0/0"] == "building=yes; amenity=cafe"
    assert top["1/1/0"] == "highway=primary"


def test_top_tags_matches_a_plain_count_on_random_tiles():
    from collections import Counter

    rng = np.random.default_rng(3)
    keys, values = ["building", "name", "amenity", "highway", "shop"], ["yes", "a", "b", None]
    regions = [f"17/{rng.integers(0, 9)}/{rng.integers(0, 9)}" for _ in range(400)]
    tags = [[(keys[i], values[j]) for i, j in zip(rng.integers(0, 5, m), rng.integers(0, 4, m),
                                                  strict=True)]
            for m in rng.integers(0, 4, len(regions))]  # fmt: skip
    table = pa.table({"region_id": regions,
                      "tags": pa.array(tags, type=pa.map_(pa.string(), pa.string()))})  # fmt: skip
    counts: dict[str, Counter] = {}
    for region, entry in zip(regions, tags, strict=True):
        texts = [k if v is None else f"{k}={v}" for k, v in entry]
        counts.setdefault(region, Counter()).update(texts)
    expected = {
        r: "; ".join(t for t, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:3])
        for r, c in sorted(counts.items())
        if c
    }
    top = top_tags(table, k=3)
    assert list(top.index) == list(expected)  # sorted, tiles without tags left out
    assert top.to_dict() == expected


def test_bad_inputs_are_clear_errors(trained, tmp_path, capsys):
    ds_path, run = trained
    with pytest.raises(InputError, match="model directory not found"):
        embed_tiles(tmp_path / "nope", ds_path, tmp_path / "x.parquet", progress=False)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    code = main(["embed", str(tmp_path / "half"), str(ds_path), "-o", str(tmp_path / "x.parquet")])
    assert code == 1 and "not a complete geojepa model directory" in capsys.readouterr().err
    code = main(["embed", str(run), str(tmp_path / "none"), "-o", str(tmp_path / "x.parquet")])
    assert code == 1 and "dataset not found" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_dataset_of_another_zoom_is_refused(trained, tmp_path):
    _, run = trained
    other = write_synthetic_dataset(tmp_path / "z15", n_shards=1, zoom=15, seed=1)
    with pytest.raises(InputError, match=r"zoom 15.*trained on zoom 16"):
        embed_tiles(run, other, tmp_path / "x.parquet", progress=False)
    assert not (tmp_path / "x.parquet").exists()


def test_cli_writes_both_files(trained, tmp_path):
    ds_path, run = trained
    out, ents = tmp_path / "t.parquet", tmp_path / "e.parquet"
    assert main(["embed", str(run), str(ds_path), "-o", str(out), "--entities", str(ents)]) == 0
    assert len(gpd.read_parquet(out)) > 0 and len(gpd.read_parquet(ents)) > 0


def test_token_budget_embedding_same_rows_same_order(trained, tmp_path):
    ds_path, run = trained
    a_t, a_e = tmp_path / "a.parquet", tmp_path / "ae.parquet"
    b_t, b_e = tmp_path / "b.parquet", tmp_path / "be.parquet"
    embed_tiles(run, ds_path, a_t, entities_output=a_e, batch_size=3, tokens_per_batch=None,
                progress=False)  # fmt: skip
    args = ["embed", str(run), str(ds_path), "-o", str(b_t), "--entities", str(b_e)]
    assert main([*args, "--tokens-per-batch", "20"]) == 0
    for x, y in ((a_t, b_t), (a_e, b_e)):
        a, b = gpd.read_parquet(x), gpd.read_parquet(y)
        assert list(a.index) == list(b.index)  # the dataset's order, not the length order
        assert (a.drop(columns=[c for c in a if c.startswith("emb_")]) ==
                b.drop(columns=[c for c in b if c.startswith("emb_")])).all().all()  # fmt: skip
        assert np.abs(_emb(a) - _emb(b)).max() < 1e-4


def test_cli_quiet_prints_nothing(trained, tmp_path, capsys):
    ds_path, run = trained
    out = tmp_path / "t.parquet"
    assert main(["embed", str(run), str(ds_path), "-o", str(out), "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")
    assert len(gpd.read_parquet(out)) > 0


def test_cli_embeds_with_the_library_default_budget(monkeypatch, tmp_path):
    """`geojepa embed` without --tokens-per-batch uses the library's measured default."""
    import geojepa.embed as embed_module

    seen = {}
    monkeypatch.setattr(embed_module, "embed_tiles", lambda *a, **k: seen.update(k))
    main(["embed", str(tmp_path / "run"), str(tmp_path / "ds"), "-o", str(tmp_path / "t.parquet")])
    assert seen["tokens_per_batch"] == embed_module.EMBED_TOKENS_PER_BATCH
