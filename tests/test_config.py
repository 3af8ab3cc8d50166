"""The typed config base: typos caught with a suggestion, values validated, JSON round-trip."""

from __future__ import annotations

import pytest
from pydantic import Field

from geojepa.config import Config
from geojepa.errors import ConfigError


class Inner(Config):
    learning_rate: float = Field(1e-3, gt=0)


class Outer(Config):
    inner: Inner = Inner()
    steps: int = 10


def test_unknown_top_level_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'stpes' \(did you mean 'steps'\?\)"):
        Outer.from_dict({"stpes": 3})


def test_unknown_nested_key_suggests_from_the_nested_section():
    with pytest.raises(ConfigError, match=r"'inner.learning_rat' \(did you mean 'learning_rate'"):
        Outer.from_dict({"inner": {"learning_rat": 0.1}})


def test_invalid_value_names_the_field():
    with pytest.raises(ConfigError, match=r"invalid config value for 'inner.learning_rate'"):
        Outer.from_dict({"inner": {"learning_rate": -1}})


def test_save_load_round_trip_and_bad_files(tmp_path):
    cfg = Outer.from_dict({"steps": 7, "inner": {"learning_rate": 0.5}})
    cfg.save(tmp_path / "c.json")
    assert Outer.load(tmp_path / "c.json") == cfg
    assert cfg.replace(steps=8).steps == 8
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Outer.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="config file not found"):
        Outer.load(tmp_path / "missing.json")
