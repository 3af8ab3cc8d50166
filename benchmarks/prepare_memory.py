"""Peak memory of `geojepa prepare` against input size: bounded by the shard, not the input.

    .venv/bin/python benchmarks/prepare_memory.py [--copies 5 20] [--out FILE.json]

5 and 20 copies by default, both with ``--workers 2``: a process pool with buckets on disk,
the mode of every big input (inputs under ~250,000 elements are built in-process with their
buckets in memory by design, so they are not compared here).
Writes PBFs holding N copies of Neubrandenburg side by side (each shifted 0.5° east, ids
offset, written with pyosmium in type order: every node, then every way, then every relation),
then runs `geojepa prepare --zoom 16 --location-index sparse_file_array,PATH` on each in a
fresh process and samples the process tree's summed PSS (main process + pool workers) every
10 ms, twice: all pages (PSS), and anonymous pages only (``Pss_Anon``: the node-location index
is an mmap'd file whose pages count in PSS but are file-backed, reclaimable by the kernel).
Prints JSON and saves it with the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from prepare import DEFAULT_PBF, _machine, _run  # noqa: E402  (the PSS sampler of prepare.py)

SHIFT_DEG = 0.5


def write_copies(src: Path, dst: Path, copies: int) -> Path:
    """A PBF with ``copies`` shifted copies of ``src`` (ids offset so none collide)."""
    import osmium

    offset = 10 ** len(str(_max_id(src)))
    writer = osmium.SimpleWriter(str(dst), overwrite=True)
    try:
        for kind in (osmium.osm.NODE, osmium.osm.WAY, osmium.osm.RELATION):
            for k in range(copies):
                for o in osmium.FileProcessor(str(src), kind):
                    new_id = o.id + k * offset
                    if o.is_node():
                        loc = o.location
                        moved = osmium.osm.Location(loc.lon + SHIFT_DEG * k, loc.lat)
                        writer.add_node(o.replace(id=new_id, location=moved))
                    elif o.is_way():
                        refs = [n.ref + k * offset for n in o.nodes]
                        writer.add_way(o.replace(id=new_id, nodes=refs))
                    else:
                        members = [(m.type, m.ref + k * offset, m.role) for m in o.members]
                        writer.add_relation(o.replace(id=new_id, members=members))
    finally:
        writer.close()
    return dst


def _max_id(src: Path) -> int:
    import osmium

    return max(o.id for o in osmium.FileProcessor(str(src)))


def measure(pbf: Path, work: Path) -> dict:
    """Peak tree PSS and wall time of one `geojepa prepare` of ``pbf`` (fresh process)."""
    out = work / f"ds-{pbf.stem}"
    index = work / f"nodes-{pbf.stem}.idx"
    code = (
        "import sys, json, time; from geojepa.cli import main; t = time.perf_counter(); "
        "rc = main(sys.argv[1:]); print(json.dumps({'rc': rc, 's': time.perf_counter() - t}))"
    )
    cmd = [sys.executable, "-c", code, "prepare", str(pbf), "-o", str(out), "--zoom", "16", "-q",
           "--workers", "2", "--location-index", f"sparse_file_array,{index}"]  # fmt: skip
    result, wall, peak = _run(cmd)
    shutil.rmtree(out)
    index.unlink(missing_ok=True)
    _, _, peak_anon = _run(cmd, field="Pss_Anon:")
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "input_bytes": pbf.stat().st_size,
        "tiles": manifest["n_tiles"],
        "entities": manifest["n_entities"],
        "shards": manifest["n_shards"],
        "wall_s": round(wall, 2),
        "peak_pss_mib": round(peak, 1),
        "peak_anon_pss_mib": round(peak_anon, 1),
        "rc": (result or {}).get("rc"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--pbf", type=Path, default=DEFAULT_PBF)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/prepare_memory.json")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for n in args.copies:
            pbf = write_copies(args.pbf, work / f"copies-{n}.osm.pbf", n)
            rows[str(n)] = measure(pbf, work)
            print(f"{n:>3} copies: {rows[str(n)]}", file=sys.stderr)
    small, big = rows[str(min(args.copies))], rows[str(max(args.copies))]
    report = {
        "benchmark": "prepare_memory",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "python": platform.python_version(),
        "source": str(args.pbf),
        "runs": rows,
        "input_ratio": round(big["input_bytes"] / small["input_bytes"], 1),
        "peak_ratio": round(big["peak_pss_mib"] / small["peak_pss_mib"], 2),
        "peak_anon_ratio": round(big["peak_anon_pss_mib"] / small["peak_anon_pss_mib"], 2),
    }
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
