"""A CPU run uses the cores other processes leave idle (`geojepa.train.threads`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

import geojepa
from geojepa.progress import StageClock, process_age
from geojepa.train.threads import CoreSample, choose_threads, idle_threads
from helpers.synthetic import write_synthetic_dataset


def test_a_core_that_others_use_is_not_taken() -> None:
    """Two cores, one kept busy by another process: one thread (two spin-wait, 3-30x slower)."""
    assert idle_threads(cores=2, others_busy=1.0, current=2) == 1
    assert idle_threads(cores=2, others_busy=0.5, current=2) == 1
    assert idle_threads(cores=2, others_busy=0.1, current=2) == 2  # an idle machine keeps both
    assert idle_threads(cores=2, others_busy=4.0, current=2) == 1  # at least one
    assert idle_threads(cores=16, others_busy=3.0, current=4) == 4  # never more than asked


def _stat(tmp_path, busy: int, idle: int):
    path = tmp_path / "stat"
    path.write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    return path


def test_own_cpu_time_is_not_counted_as_others_load(tmp_path) -> None:
    """Between two samples all cores were busy; half of it was this process: the others
    kept one of two cores busy."""
    first = CoreSample.now(_stat(tmp_path, busy=0, idle=0))
    assert first is not None
    later = CoreSample(busy_ticks=200, total_ticks=200, own_cpu_s=first.own_cpu_s + 1.0,
                       wall_s=first.wall_s + 1.0)  # fmt: skip
    assert abs(first.others_busy(later, cores=2) - 1.0) < 1e-9
    assert first.others_busy(first, cores=2) is None  # no time passed: unknown
    assert CoreSample.now(tmp_path / "missing") is None


def test_a_start_too_short_to_tell_samples_the_load(monkeypatch) -> None:
    """Started just now (Lightning already imported): the load is sampled for a moment
    instead of leaving torch's threads as they are."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        choice = choose_threads(CoreSample.now())
        if CoreSample.now() is not None:  # Linux
            assert "kept busy by other processes" in choice.reason
    finally:
        torch.set_num_threads(before)


def test_omp_num_threads_is_kept(monkeypatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    choice = choose_threads(CoreSample.now())
    assert choice.threads == before == torch.get_num_threads()
    assert "OMP_NUM_THREADS" in choice.reason


def test_clock_from_process_start_counts_the_imports() -> None:
    """``pretrain -v`` starts its clock when the process started (Python, torch, geojepa)."""
    age = process_age()
    if age is None:  # not Linux
        return
    clock = StageClock.from_process_start("pretrain")
    assert list(clock.seconds) == ["start Python, import torch and geojepa"]
    assert clock.seconds["start Python, import torch and geojepa"] >= age - 0.5


def test_a_run_that_cannot_start_fails_before_lightning_is_imported(tmp_path) -> None:
    """Resolving the run (options, directory, resume) needs no Lightning: a directory that is
    not a run is refused in the time of the dataset's opening, not after Lightning's import
    (4-15 s on the shared 2-core machine)."""
    ds = write_synthetic_dataset(tmp_path / "tiles", n_shards=1, tiles_per_shard=(3, 5),
                                 entities_per_tile=(2, 5), seed=1)  # fmt: skip
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code = (
        "import sys\n"
        "from geojepa.errors import OutputError\n"
        "from geojepa.train.pretrain import pretrain\n"
        "try:\n"
        f"    pretrain({str(ds)!r}, {str(tmp_path / 'busy')!r}, preset='cpu-small')\n"
        "except OutputError as exc:\n"
        "    print('refused', 'lightning' in sys.modules, exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(geojepa.__file__).parents[1])}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.stdout.startswith("refused False"), run.stdout + run.stderr
    assert "is not a geojepa run directory" in run.stdout
