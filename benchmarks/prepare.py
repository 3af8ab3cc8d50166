"""Benchmark `geojepa prepare` against the floor of one pyosmium pass, in the same run.

    .venv/bin/python benchmarks/prepare.py [PBF] [--repeats 3] [--out FILE.json]

* floor: one pyosmium pass (node locations + multipolygon assembly, untagged objects filtered in
  C++) that builds the WKB geometry of every tagged node, way and multipolygon relation — the
  least any OSM → geometry tool on pyosmium must do. ``floor_shapely_s`` adds decoding all of
  it into shapely geometries.
* prepare: ``prepare_tiles`` at zoom 16 with ``workers=0`` (automatic: in-process for an input
  this small, a pool on all cores for big ones), timed inside its process (no interpreter
  start-up); ``cli_s`` is the whole ``geojepa prepare`` command, start-up included.
* cpu_s: user + system CPU seconds of each process tree (interpreter start-up included), a
  figure less sensitive than wall time to other load on the machine.
* peak memory: the process tree's summed PSS (main process + pool workers), sampled from
  /proc every 10 ms.

Each measurement runs in a fresh process; the medians over ``--repeats`` alternated runs are
reported. Prints JSON and saves it with machine information and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PBF = ROOT.parent / "shared" / "data" / "neubrandenburg.osm.pbf"

FLOOR_CODE = """
import json, resource, sys, time
import osmium, shapely
from osmium.filter import EmptyTagFilter
t = time.perf_counter()
fab = osmium.geom.WKBFactory()
wkb = []
fp = (osmium.FileProcessor(sys.argv[1]).with_locations().with_areas()
      .with_filter(EmptyTagFilter()))
for o in fp:
    try:
        if o.is_node():
            wkb.append(fab.create_point(o))
        elif o.is_way():
            wkb.append(fab.create_linestring(o))
        elif o.is_area() and not o.from_way():
            wkb.append(fab.create_multipolygon(o))
    except (osmium.InvalidLocationError, RuntimeError):
        pass
t1 = time.perf_counter()
geoms = shapely.from_wkb([bytes.fromhex(h) for h in wkb])  # faster than GEOS's hex parser
t2 = time.perf_counter()
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": t1 - t, "shapely_seconds": t2 - t, "elements": len(wkb),
                  "cpu_seconds": ru.ru_utime + ru.ru_stime}))
"""

PREPARE_CODE = """
import json, resource, sys, time
from geojepa.data.config import PrepareConfig
from geojepa.data.prepare import prepare_tiles
t = time.perf_counter()
ds = prepare_tiles(sys.argv[1], sys.argv[2], PrepareConfig(zoom=16, workers=0), progress=False)
s = time.perf_counter() - t
m = ds.manifest
cpu = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                            resource.getrusage(resource.RUSAGE_CHILDREN)))
print(json.dumps({"seconds": s, "cpu_seconds": cpu, "n_tiles": m["n_tiles"],
                  "n_entities": m["n_entities"], "n_shards": m["n_shards"],
                  "phase_seconds": m["phase_seconds"]}))
"""


def _tree_pss_kib(pid: int, field: str = "Pss:") -> int:
    """Summed PSS of ``pid`` and all its descendants (Linux /proc); ``field="Pss_Anon:"``
    leaves out file-backed pages (e.g. an mmap'd node-location index), which the kernel can
    reclaim.

    PSS splits pages shared after fork() between the processes, so the sum is the tree's real
    footprint (summing RSS would count the pool workers' inherited pages several times).
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith(field):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def _run(cmd: list[str], field: str = "Pss:") -> tuple[dict | None, float, float]:
    """Run ``cmd``; return (its JSON output or None, wall seconds, peak tree PSS in MiB)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_pss_kib(proc.pid, field))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    line = out.strip().splitlines()[-1] if out.strip() else ""
    data = json.loads(line) if line.startswith("{") else None
    return data, wall, peak / 1024.0


def _machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pbf", nargs="?", default=str(DEFAULT_PBF))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prepare.json"))
    args = parser.parse_args()
    pbf = Path(args.pbf)
    if not pbf.is_file():
        raise SystemExit(f"benchmark input not found: {pbf} (see shared/DATA.md)")
    machine = _machine()
    py = sys.executable
    geojepa = str(Path(py).with_name("geojepa"))
    floor, floor_shapely, prep, cli, rss_floor, rss_prep = [], [], [], [], [], []
    cpu_floor, cpu_prep = [], []
    info: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            data, _, rss = _run([py, "-c", FLOOR_CODE, str(pbf)])
            floor.append(data["seconds"])
            floor_shapely.append(data["shapely_seconds"])
            cpu_floor.append(data["cpu_seconds"])
            rss_floor.append(rss)
            data, _, rss = _run([py, "-c", PREPARE_CODE, str(pbf), f"{tmp}/api{i}"])
            prep.append(data["seconds"])
            cpu_prep.append(data["cpu_seconds"])
            rss_prep.append(rss)
            info = data
            _, wall, _ = _run([geojepa, "prepare", str(pbf), "-o", f"{tmp}/cli{i}", "-q"])
            cli.append(wall)
    med = statistics.median
    result = {
        "benchmark": "prepare",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "input": {"path": str(pbf), "bytes": pbf.stat().st_size},
        "zoom": 16,
        "repeats": args.repeats,
        "floor_s": round(med(floor), 3),
        "floor_shapely_s": round(med(floor_shapely), 3),
        "prepare_s": round(med(prep), 3),
        "prepare_min_s": round(min(prep), 3),
        "cli_s": round(med(cli), 3),
        "ratio_to_floor": round(med(prep) / med(floor), 2),
        "target_ratio": 3.0,
        "target_met": med(prep) <= 3.0 * med(floor),
        "cpu_s": {"floor": round(med(cpu_floor), 3), "prepare": round(med(cpu_prep), 3)},
        "peak_pss_mib": {"prepare": round(max(rss_prep), 1), "floor": round(max(rss_floor), 1)},
        "phase_seconds_last_run": info.get("phase_seconds"),
        "dataset": {k: info.get(k) for k in ("n_tiles", "n_entities", "n_shards")},
        "runs": {
            "floor_s": [round(v, 3) for v in floor],
            "prepare_s": [round(v, 3) for v in prep],
            "cli_s": [round(v, 3) for v in cli],
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
