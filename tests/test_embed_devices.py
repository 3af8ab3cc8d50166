"""`embed --devices N`: shards embedded in N processes give the files of one device."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from geojepa.cli import main
from geojepa.embed import embed_tiles
from geojepa.errors import ConfigError
from geojepa.model.jepa import GeoJEPA
from geojepa.train import PretrainConfig, preset_config, pretrain
from helpers.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("devices")
    ds = write_synthetic_dataset(root / "ds", n_shards=4, tiles_per_shard=(4, 7),
                                 entities_per_tile=(0, 20), seed=5)  # fmt: skip
    data = preset_config("cpu-small").model_dump()
    data["model"].update(depth=1, predictor_depth=1)
    data["data"]["batch_size"] = 4
    run = pretrain(ds, root / "run", config=PretrainConfig.from_dict(data), max_steps=2,
                   progress=False)  # fmt: skip
    return ds, Path(run)


def test_two_processes_write_what_one_writes(trained, tmp_path):
    ds, run = trained
    one, two = tmp_path / "one", tmp_path / "two"
    for out, n in ((one, "1"), (two, "2")):
        args = ["embed", str(run), str(ds), "-o", str(out / "t.parquet"), "--entities",
                str(out / "e.parquet"), "--devices", n, "-q"]  # fmt: skip
        assert main(args) == 0
    for name in ("t.parquet", "e.parquet"):
        a, b = gpd.read_parquet(one / name), gpd.read_parquet(two / name)
        assert list(a.index) == list(b.index)  # same rows, same order
        emb = [c for c in a.columns if c.startswith("emb_")]
        np.testing.assert_array_equal(a[emb].to_numpy(), b[emb].to_numpy())
        rest = [c for c in a.columns if c not in emb]
        pd.testing.assert_frame_equal(a[rest].drop(columns="geometry"),
                                      b[rest].drop(columns="geometry"))  # fmt: skip
        assert a.geometry.geom_equals(b.geometry).all()


def test_several_devices_need_a_model_directory(trained, tmp_path):
    ds, run = trained
    with pytest.raises(ConfigError, match="model directory"):
        embed_tiles(GeoJEPA.from_pretrained(run), ds, tmp_path / "t.parquet", devices=2,
                    progress=False)  # fmt: skip
    assert not (tmp_path / "t.parquet").exists()
