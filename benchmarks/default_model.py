"""The shipped model against what was scored: load time and embedding differences.

    .venv/bin/python benchmarks/default_model.py

Loads ``GeoJEPA.from_pretrained("default")`` into an empty cache (the first load embeds the
tag table with the text model), then again (cached), and compares its Liechtenstein tile
embeddings with the float16-rounded copy the test read scored
(`benchmarks/test_read.py --fp16`) and with the float32 parent checkpoint. Prints and saves
``benchmarks/results/default_model-cpu.json``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "benchmark"
PARENT = WORK / "scaling-predlead-corpus-at-600"
SCORED = WORK / "test-read-predlead-corpus-600-fp16"
DATA = WORK / "data" / "liechtenstein"


def main() -> int:
    if not all(p.is_dir() for p in (PARENT, SCORED, DATA)):
        print("default-model check skipped: run benchmarks/scaling.py and test_read.py first")
        return 0
    os.environ["GEOJEPA_CACHE"] = tempfile.mkdtemp(prefix="geojepa-cache-")
    import geojepa

    started = time.perf_counter()
    shipped = geojepa.GeoJEPA.from_pretrained("default")
    first = time.perf_counter() - started
    started = time.perf_counter()
    geojepa.GeoJEPA.from_pretrained("default")
    cached = time.perf_counter() - started
    dataset = geojepa.open_dataset(DATA)

    def tiles(model):
        frame = geojepa.embed_tiles(model, dataset, progress=False, open_vocabulary=False)
        return frame[[c for c in frame.columns if c.startswith("emb_")]].to_numpy()

    ours = tiles(shipped)
    scored, parent = (tiles(geojepa.GeoJEPA.from_pretrained(p)) for p in (SCORED, PARENT))
    result = {
        "first_load_s": round(first, 1),
        "cached_load_s": round(cached, 1),
        "tiles": len(ours),
        "max_abs_diff_vs_scored_copy": float(abs(ours - scored).max()),
        "max_abs_diff_vs_float32_parent": float(abs(ours - parent).max()),
        "max_abs_value": float(abs(parent).max()),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_average": os.getloadavg()[0],
        },
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    text = json.dumps(result, indent=2)
    print(text)
    (ROOT / "benchmarks" / "results" / "default_model-cpu.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
