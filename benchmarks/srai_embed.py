"""Where GeoJEPAEmbedder's time goes, beside SRAI's CountEmbedder, on the README's SRAI example.

    python benchmarks/srai_embed.py      # in an environment with geojepa[srai,demo]

The README's example: pyrosm's ``test_pbf`` buildings, H3 resolution-9 cells over their bounds,
the shipped ``default`` model. Three situations, each in its own process (imports included):

- ``cold``: a new machine's first call, with an empty open-vocabulary cache: the text model
  embeds the tags the model never saw;
- ``again``: the same embedder called a second time (the model and the new tags are in memory);
- ``warm``: a new process, with the cache that ``cold`` filled.

Each stage is timed by wrapping the function the embedder calls (model load, tiling, open
vocabulary, text model load, tile encoding, region means). The default model's own tag table is
copied from the user's cache into a temporary one first (it is built once per machine: see
``benchmarks/default_model.py``). Prints and saves ``benchmarks/results/srai_embed-cpu.json``;
``--label NAME`` stores the figures under NAME (e.g. ``before`` for a run of an older checkout),
keeping the other labels of that file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "srai_embed-cpu.json"
STAGES = {  # module → functions timed (cumulative seconds, calls)
    "geojepa.embed": ["model_on_device", "embed_frames", "encode_tiles"],
    "geojepa.data.prepare": ["prepare_tiles"],
    "geojepa.model.open_vocab": ["open_vocabulary"],
    "geojepa.tokenize.tags": ["sentence_transformer_embed"],
    "geojepa.integrations.srai": ["region_means"],
}


def example() -> tuple[Any, Any]:
    """The README's regions (H3 resolution 9) and features (test_pbf buildings)."""
    import geopandas as gpd
    import pyrosm
    from shapely import box
    from srai.regionalizers import H3Regionalizer

    osm = pyrosm.OSM(pyrosm.get_data("test_pbf"))
    buildings = osm.get_buildings()
    features = buildings.set_index(
        buildings["osm_type"] + "/" + buildings["id"].astype(str)
    ).rename_axis("feature_id")[["building", "building:levels", "shop", "geometry"]]
    area = gpd.GeoDataFrame(geometry=[box(*features.total_bounds)], crs=4326)
    return H3Regionalizer(resolution=9).transform(area), features


def timed_stages() -> dict[str, list[float]]:
    """Wrap the stage functions where they are looked up; returns the live totals."""
    import importlib

    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])

    def wrap(name: str, fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
                if name == "embed_frames":  # the tiles embedded
                    totals["tiles"][1] += len(out[0])
                return out
            finally:
                totals[name][0] += time.perf_counter() - started
                totals[name][1] += 1

        return run

    for module_name, names in STAGES.items():
        module = importlib.import_module(module_name)
        for name in names:
            setattr(module, name, wrap(name, getattr(module, name)))
    # the embedder imports these inside its methods, from their modules: patched above
    return totals


def child(situation: str) -> dict[str, Any]:
    """One process: the example's calls for ``situation``; seconds per stage."""
    started = time.perf_counter()
    regions, features = example()
    setup = time.perf_counter() - started
    from srai.embedders import CountEmbedder
    from srai.joiners import IntersectionJoiner

    started = time.perf_counter()
    joint = IntersectionJoiner().transform(regions, features)
    counts = CountEmbedder().transform(regions, features, joint)
    count_s = time.perf_counter() - started

    totals = timed_stages()
    from geojepa.integrations.srai import GeoJEPAEmbedder

    calls = []
    embedder = GeoJEPAEmbedder("default")
    for _ in range(2 if situation == "again" else 1):
        totals.clear()
        started = time.perf_counter()
        out = embedder.fit_transform(regions, features, None)
        calls.append({
            "total_s": round(time.perf_counter() - started, 2),
            "stages_s": {k: round(v[0], 2) for k, v in totals.items() if k != "tiles"},
            "tiles": int(totals["tiles"][1]),
            "text_model_loads": int(totals["sentence_transformer_embed"][1]),
        })  # fmt: skip
    return {
        "regions": len(regions),
        "features": len(features),
        "embedding_shape": list(out.shape),
        "count_embedder_shape": list(counts.shape),
        "example_setup_s": round(setup, 2),
        "count_embedder_s": round(count_s, 2),
        "geojepa_embedder": calls[-1],
        "isinstance_srai_embedder": _is_srai_embedder(embedder),
    }


def _is_srai_embedder(obj: Any) -> bool:
    from srai.embedders import Embedder

    return isinstance(obj, Embedder)


def seeded_cache() -> Path:
    """A temporary GEOJEPA_CACHE holding only the default model's tag table (if built)."""
    from geojepa.model.directory import tag_table_cache_dir
    from geojepa.model.hub import default_model_path
    from geojepa.tokenize.tags import TagVocabulary, _cache_name

    model = default_model_path()
    text_model = json.loads((model / "config.json").read_text())["tokenizer"]["text_model"]
    name = _cache_name(text_model, TagVocabulary.load(model / "vocab.json"))
    cache = Path(tempfile.mkdtemp(prefix="geojepa-srai-bench-"))
    if (tag_table_cache_dir() / name).is_file():
        shutil.copy2(tag_table_cache_dir() / name, cache / name)
    return cache


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--label", default="after")
    parser.add_argument("--child", choices=["cold", "again", "warm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    cache = seeded_cache()
    env = {**os.environ, "GEOJEPA_CACHE": str(cache)}
    results: dict[str, Any] = {}
    try:
        for situation in ("cold", "again", "warm"):
            run = subprocess.run(
                [sys.executable, __file__, "--child", situation],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if run.returncode != 0:
                print(run.stderr[-3000:], file=sys.stderr)
                return run.returncode
            results[situation] = json.loads(run.stdout.strip().splitlines()[-1])
            print(situation, json.dumps(results[situation]["geojepa_embedder"]))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    record = json.loads(OUT.read_text()) if OUT.exists() else {}
    record[args.label] = {
        "situations": results,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_average_at_end": round(os.getloadavg()[0], 1),
        },
        "python": sys.version.split()[0],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=2) + "\n")
    cold = results["cold"]
    print(f"count embedder {cold['count_embedder_s']} s; geojepa cold "
          f"{cold['geojepa_embedder']['total_s']} s, again "
          f"{results['again']['geojepa_embedder']['total_s']} s, warm "
          f"{results['warm']['geojepa_embedder']['total_s']} s -> {OUT}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
