"""Outputs look like files the user wrote and never destroy what is not ours (issue 19;
docs/reliability.md, "Outputs"): the mode open() would give, device nodes and FIFOs never renamed
over, symlinks followed, stale temporaries of killed runs cleaned, SIGTERM handled as Ctrl-C."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely

from geojepa.errors import OutputError
from geojepa.io import atomic
from geojepa.io.atomic import OutputLock, write_atomic, write_text_atomic
from geojepa.io.geoparquet import GeoParquetWriter


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _write_parquet(path: Path) -> None:
    """A small tile-embedding file (what `embed` writes)."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(6, 4)).astype(np.float32),
                         columns=[f"emb_{i}" for i in range(4)],
                         index=[f"16/{x}/0" for x in range(6)])  # fmt: skip
    boxes = np.array([shapely.box(x * 0.01, 0, x * 0.01 + 0.01, 0.01) for x in range(6)])
    with GeoParquetWriter(path, "region_id", ["Polygon"]) as w:
        w.write(frame, boxes)


def test_a_new_output_gets_the_mode_open_would_give(tmp_path, umask_022):
    write_text_atomic(tmp_path / "f.json", "{}")
    _write_parquet(tmp_path / "t.parquet")
    assert _mode(tmp_path / "f.json") == 0o644
    assert _mode(tmp_path / "t.parquet") == 0o644
    # safetensors replaces the file it writes with a 0600 one: the model files too
    import torch
    from safetensors.torch import save_file

    write_atomic(tmp_path / "m.safetensors", lambda p: save_file({"w": torch.zeros(2)}, str(p)))
    assert _mode(tmp_path / "m.safetensors") == 0o644


def test_an_overwritten_output_keeps_its_mode(tmp_path, umask_022):
    for name, write in (("f.json", lambda p: write_text_atomic(p, "{}")),
                        ("t.parquet", _write_parquet)):  # fmt: skip
        path = tmp_path / name
        path.write_text("old")
        path.chmod(0o664)
        write(path)
        assert _mode(path) == 0o664, name


def test_a_fifo_at_the_output_path_is_refused_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="not a regular file"):
        write_text_atomic(fifo, "x")
    with pytest.raises(OutputError, match="not a regular file"):
        GeoParquetWriter(fifo, "region_id")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_a_device_node_at_the_output_path_is_refused(tmp_path, monkeypatch):
    """The decision only: a path whose stat says "character device" (never a real device)."""
    target = tmp_path / "full"
    target.write_text("stand-in")
    real_stat = os.stat

    def as_char_device(path, *args, **kwargs):
        st = real_stat(path, *args, **kwargs)
        if Path(path) == target:
            fields = list(st)
            fields[0] = stat.S_IFCHR | 0o666
            return os.stat_result(fields)
        return st

    monkeypatch.setattr(atomic.os, "stat", as_char_device)
    with pytest.raises(OutputError, match="not a regular file"):
        write_text_atomic(target, "x")
    monkeypatch.undo()
    assert target.read_text() == "stand-in"


def test_the_cli_refuses_a_fifo_output_with_one_line(tmp_path, capsys):
    from geojepa.cli import main

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    emb = tmp_path / "t.parquet"
    _write_parquet(emb)
    assert main(["map", str(emb), "-o", str(fifo)]) == 1
    err = capsys.readouterr().err
    assert "not a regular file" in err and "Traceback" not in err
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_symlink_at_the_output_path_is_followed(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_text_atomic(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    _write_parquet(tmp_path / "real.parquet")
    (tmp_path / "link.parquet").symlink_to(tmp_path / "real.parquet")
    _write_parquet(tmp_path / "link.parquet")
    assert (tmp_path / "link.parquet").is_symlink()


def test_two_runs_writing_one_file_through_a_symlink_conflict(tmp_path):
    real = tmp_path / "real.parquet"
    link = tmp_path / "alias.parquet"
    link.symlink_to(real)
    with OutputLock(real), pytest.raises(OutputError, match="another geojepa run"):
        GeoParquetWriter(link, "region_id")


def test_stale_temporaries_of_a_killed_run_are_cleaned(tmp_path):
    out = tmp_path / "f.json"
    # a temporary left by a run killed with SIGKILL (nobody holds it any more)
    code = (
        "import os, sys; from geojepa.io.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('half'); print(tmp, flush=True); os.kill(os.getpid(), 9)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(atomic.__file__).parents[2])}
    done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True,
                          env=env, timeout=60)  # fmt: skip
    stale = Path(done.stdout.strip())
    assert stale.exists()
    with atomic.atomic_path(out) as live:  # a temporary in use is never taken
        live.write_text("x")
        write_text_atomic(out, "done")
        assert live.exists()
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_sigterm_is_handled_as_ctrl_c(tmp_path):
    """`kill PID` (systemd, Slurm, Kubernetes): exit 143, the one line, no temporary left."""
    emb = tmp_path / "t.parquet"
    _write_parquet(emb)
    out = tmp_path / "m.html"
    code = (
        "import sys, time\n"
        "import geojepa.explore.webmap as w\n"
        "from geojepa.cli import main\n"
        "def slow(*a, **k):\n"
        "    print('ready', flush=True); time.sleep(60)\n"
        "real = w.write_atomic\n"
        "def held(final, write, suffix=''):\n"
        "    return real(final, lambda p: (p.write_text('half'), slow()), suffix)\n"
        "w.write_atomic = held\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(atomic.__file__).parents[2])}
    cmd = [sys.executable, "-c", code, "map", str(emb), "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


@pytest.mark.slow
def test_sigterm_to_a_prepare_process_group_exits_143_and_resumes(neubrandenburg_pbf, tmp_path):
    """systemd's `KillMode=control-group`, `kill -- -PGID`: the pool's workers get it too and
    end quietly; the parent says what was kept, as after Ctrl-C."""
    from geojepa.cli import main

    out = tmp_path / "d"
    opts = ["--shard-levels", "0", "--min-shard-elements", "1", "--workers", "2", "-q"]
    cmd = [sys.executable, "-m", "geojepa.cli", "prepare", str(neubrandenburg_pbf), "-o", str(out),
           *opts]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(atomic.__file__).parents[2])}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=env)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if list((out / "shards").glob("tiles-*.parquet")):
            os.killpg(proc.pid, signal.SIGTERM)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted" in err and "Traceback" not in err
    assert main(["prepare", str(neubrandenburg_pbf), "-o", str(out), *opts]) == 0
