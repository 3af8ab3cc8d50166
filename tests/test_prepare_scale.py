"""Country-scale paths of `prepare`: the documented parallel-regions-then-merge recipe, the
node-location index option, and memory bounded by the shard rather than the input (slow)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from geojepa.cli import main
from geojepa.data.config import PrepareConfig
from geojepa.data.reader import open_dataset
from geojepa.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _doc_block(marker: str) -> str:
    text = (ROOT / "docs" / "dataset.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return next(b for b in blocks if marker in b)


def test_documented_parallel_regions_then_merge(helsinki_pbf, finland_test_pbf, tmp_path):
    script = _doc_block("geojepa merge")
    script = script.replace("Helsinki.osm.pbf", str(helsinki_pbf))
    script = script.replace("test.osm.pbf", str(finland_test_pbf))
    script = script.replace("geojepa ", f"{sys.executable} -m geojepa.cli ")
    done = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    merged = open_dataset(tmp_path / "data" / "finland")
    parts = [open_dataset(tmp_path / "data" / n) for n in ("helsinki", "town")]
    assert merged.manifest["n_tiles"] == sum(p.manifest["n_tiles"] for p in parts)
    assert merged.manifest["n_entities"] == sum(p.manifest["n_entities"] for p in parts)


def test_location_index_option(finland_test_pbf, tmp_path):
    out = tmp_path / "d"
    idx = tmp_path / "nodes.idx"
    opts = ["--zoom", "14", "-q", "--location-index", f"sparse_file_array,{idx}"]
    assert main(["prepare", str(finland_test_pbf), "-o", str(out), *opts]) == 0
    assert idx.is_file() and idx.stat().st_size > 0  # the index really went to the file
    ref = tmp_path / "ref"
    assert main(["prepare", str(finland_test_pbf), "-o", str(ref), "--zoom", "14", "-q"]) == 0
    assert open_dataset(out).manifest["n_entities"] == open_dataset(ref).manifest["n_entities"]


@pytest.mark.parametrize("bad", ["flexmem", "dense_file_array"])
def test_a_bad_location_index_is_refused_up_front(bad):
    with pytest.raises(ConfigError, match="location_index"):
        PrepareConfig(location_index=bad)


@pytest.mark.slow
def test_memory_is_bounded_by_the_shard_not_the_input(tmp_path):
    """Peak anonymous memory of a 20× Neubrandenburg build stays near that of a 5× build
    (benchmarks/prepare_memory.py records the figures; ~5 minutes)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from prepare_memory import DEFAULT_PBF, measure, write_copies

    peaks = {}
    for n in (5, 20):
        pbf = write_copies(DEFAULT_PBF, tmp_path / f"copies-{n}.osm.pbf", n)
        peaks[n] = measure(pbf, tmp_path)
    assert peaks[20]["entities"] > 3.9 * peaks[5]["entities"]
    # memory that grew with the input would be ~4x here; caches and allocator high-water
    # marks account for the rest (measured 1.25x, benchmarks/results/prepare_memory.json)
    assert peaks[20]["peak_anon_pss_mib"] < 1.5 * peaks[5]["peak_anon_pss_mib"], peaks
