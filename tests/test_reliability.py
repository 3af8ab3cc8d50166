"""Never lose or corrupt a user's work (docs/reliability.md lists what each test guards).

Interrupts are real SIGINTs sent to this process at chosen points (the handler runs in the
main thread exactly as under a terminal's Ctrl-C); worker death uses real subprocesses.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import torch
from safetensors.torch import load_file, save_file

from geojepa.cli import main
from geojepa.data.config import PrepareConfig
from geojepa.data.prepare import prepare_tiles
from geojepa.data.reader import open_dataset
from geojepa.embed import embed_tiles
from geojepa.errors import ConfigError, InputError, OutputError
from geojepa.io.atomic import OutputLock, atomic_path
from geojepa.io.geoparquet import GeoParquetWriter
from geojepa.train import pretrain
from helpers.configs import tiny_pretrain_config
from helpers.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("reliability")
    ds = write_synthetic_dataset(root / "ds", n_shards=2, tiles_per_shard=(5, 8),
                                 entities_per_tile=(0, 25), seed=3)  # fmt: skip
    run = pretrain(ds, root / "run", config=tiny_pretrain_config(), max_steps=2, progress=False)
    return ds, Path(run)


def _copy_model(run: Path, dest: Path) -> Path:
    """The model files of ``run`` (those its checksums.json lists, and that record)."""
    dest.mkdir()
    listed = json.loads((run / "checksums.json").read_text())["files"]
    for name in [*listed, "checksums.json"]:
        (dest / name).write_bytes((run / name).read_bytes())
    return dest


def _rehash(model: Path) -> None:
    """Record the files' present hashes, as if the model had been exported this way (to reach
    the checks behind the checksums: shapes, non-finite weights)."""
    from geojepa.model.directory import sha256_of

    record = json.loads((model / "checksums.json").read_text())
    record["files"] = {name: sha256_of(model / name) for name in record["files"]}
    (model / "checksums.json").write_text(json.dumps(record))


# --------------------------------------------------------------------------- data loss


def test_overwrite_never_deletes_a_folder_that_is_not_a_dataset(finland_test_pbf, tmp_path):
    project = tmp_path / "p"
    project.mkdir()
    (project / "config.json").write_text("{}")
    (project / "notes.txt").write_text("keep")
    rc = main(["prepare", str(finland_test_pbf), "-o", str(project), "--overwrite", "-q"])
    assert rc == 1
    assert (project / "notes.txt").read_text() == "keep"
    assert (project / "config.json").read_text() == "{}"


def test_overwrite_never_deletes_a_model_directory(trained, finland_test_pbf, tmp_path, capsys):
    _, run = trained
    model = _copy_model(run, tmp_path / "model")
    before = sorted(p.name for p in model.iterdir())
    rc = main(["prepare", str(finland_test_pbf), "-o", str(model), "--overwrite", "-q"])
    assert rc == 1 and "model directory" in capsys.readouterr().err
    assert sorted(p.name for p in model.iterdir()) == before


def test_overwrite_replaces_only_the_datasets_own_files(finland_test_pbf, tmp_path):
    out = tmp_path / "d"
    assert main(["prepare", str(finland_test_pbf), "-o", str(out), "--zoom", "14", "-q"]) == 0
    (out / "notes.txt").write_text("mine")
    rc = main(["prepare", str(finland_test_pbf), "-o", str(out), "--zoom", "13",
               "--overwrite", "-q"])  # fmt: skip
    assert rc == 0 and open_dataset(out).config.zoom == 13
    assert (out / "notes.txt").read_text() == "mine"


def test_info_on_a_model_directory_says_so(trained, capsys):
    _, run = trained
    assert main(["info", str(run)]) == 1
    err = capsys.readouterr().err
    assert "model directory" in err and "re-run" not in err


# --------------------------------------------------------------------------- interrupts


def _sigint_self() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_while_reading_exits_130_and_keeps_nothing_half_done(
    finland_test_pbf, tmp_path, monkeypatch, capsys
):
    import geojepa.data.prepare as prep

    real = prep.bucket_batch

    def bucket_then_interrupt(*args, **kwargs):
        result = real(*args, **kwargs)
        _sigint_self()
        return result

    monkeypatch.setattr(prep, "bucket_batch", bucket_then_interrupt)
    out = tmp_path / "d"
    assert main(["prepare", str(finland_test_pbf), "-o", str(out), "-q"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(prep, "bucket_batch", real)
    assert main(["prepare", str(finland_test_pbf), "-o", str(out), "-q"]) == 0


def test_ctrl_c_between_shards_exits_130_and_resumes(finland_test_pbf, tmp_path, monkeypatch):
    import geojepa.data.prepare as prep

    real = prep.build_shard
    calls = []

    def shard_then_interrupt(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            _sigint_self()
        return result

    monkeypatch.setattr(prep, "build_shard", shard_then_interrupt)
    out = tmp_path / "d"
    opts = ["--shard-levels", "0", "--min-shard-elements", "1", "-q"]
    assert main(["prepare", str(finland_test_pbf), "-o", str(out), *opts]) == 130
    assert len(list((out / "shards").glob("tiles-*.parquet"))) >= 1  # finished shards kept
    monkeypatch.setattr(prep, "build_shard", real)
    assert main(["prepare", str(finland_test_pbf), "-o", str(out), *opts]) == 0
    open_dataset(out)


def test_a_swallowed_ctrl_c_is_still_reported(trained, tmp_path, monkeypatch, capsys):
    """A SIGINT that lands in code that eats KeyboardInterrupt must not become a success."""
    import geojepa.embed as embed_mod

    ds, run = trained
    real = embed_mod.embed_shard

    def eat_interrupt(*args, **kwargs):
        try:
            _sigint_self()
            time.sleep(0.05)
        except KeyboardInterrupt:
            pass  # e.g. a library's cleanup code
        return real(*args, **kwargs)

    monkeypatch.setattr(embed_mod, "embed_shard", eat_interrupt)
    out = tmp_path / "t.parquet"
    assert main(["embed", str(run), str(ds), "-o", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_ctrl_c_during_re_embed_keeps_the_old_file(trained, tmp_path, monkeypatch, capsys):
    import geojepa.io.geoparquet as gp

    ds, run = trained
    out = tmp_path / "t.parquet"
    assert main(["embed", str(run), str(ds), "-o", str(out)]) == 0
    old = out.read_bytes()
    real = gp.GeoParquetWriter.write

    def write_then_interrupt(self, *args, **kwargs):
        real(self, *args, **kwargs)
        _sigint_self()

    monkeypatch.setattr(gp.GeoParquetWriter, "write", write_then_interrupt)
    assert main(["embed", str(run), str(ds), "-o", str(out)]) == 130
    err = capsys.readouterr().err
    assert "unchanged" in err
    assert out.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("where", ["step", "after_checkpoint"])
def test_ctrl_c_in_pretrain_saves_a_checkpoint_and_resumes(trained, tmp_path, monkeypatch,
                                                           capsys, where):  # fmt: skip
    from lightning.pytorch.callbacks import ModelCheckpoint

    from geojepa.train.module import PretrainModule

    ds, _ = trained
    cfg = tmp_path / "cfg.json"
    tiny_pretrain_config().save(cfg)
    out = tmp_path / "run"
    if where == "step":
        real_step = PretrainModule.training_step

        def step(self, batch, batch_idx):
            if self.global_step == 1:
                _sigint_self()
            return real_step(self, batch, batch_idx)

        monkeypatch.setattr(PretrainModule, "training_step", step)
    else:
        real_save = ModelCheckpoint._save_checkpoint

        sent = []

        def save(self, trainer, filepath):
            real_save(self, trainer, filepath)
            if not sent:  # one Ctrl-C, just after the first checkpoint was written
                sent.append(1)
                _sigint_self()

        monkeypatch.setattr(ModelCheckpoint, "_save_checkpoint", save)
    args = ["pretrain", str(ds), "-o", str(out), "--config", str(cfg), "--max-steps", "6"]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted at step" in err and "last.ckpt" in err
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert not (out / "model.safetensors").exists()
    step_at_stop = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert step_at_stop < 6
    monkeypatch.undo()
    assert main(args) == 0
    assert (out / "model.safetensors").is_file()
    final = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert final == 6


@pytest.mark.slow
def test_a_real_ctrl_c_to_a_prepare_process_exits_130_and_resumes(neubrandenburg_pbf, tmp_path):
    """The terminal's Ctrl-C, as a separate process sees it (SIGINT to the process group)."""
    out = tmp_path / "d"
    opts = ["--shard-levels", "0", "--min-shard-elements", "1", "--workers", "2", "-q"]
    cmd = [sys.executable, "-m", "geojepa.cli", "prepare", str(neubrandenburg_pbf), "-o", str(out),
           *opts]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if list((out / "shards").glob("tiles-*.parquet")):
            os.killpg(proc.pid, signal.SIGINT)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not (out / "manifest.json").exists()
    assert main(["prepare", str(neubrandenburg_pbf), "-o", str(out), *opts]) == 0


def test_prepare_workers_die_with_a_killed_parent(neubrandenburg_pbf, tmp_path):
    out = tmp_path / "d"
    cmd = [sys.executable, "-m", "geojepa.cli", "prepare", str(neubrandenburg_pbf), "-o", str(out),
           "--workers", "2", "-q"]  # fmt: skip
    proc = subprocess.Popen(cmd)
    children: set[int] = set()
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and len(children) < 2:
        children = _children(proc.pid)
        time.sleep(0.02)
    assert len(children) >= 2, "the pool's workers never started"
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(pid) for pid in children):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children)


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --------------------------------------------------------------------------- atomic, locked


def test_a_second_writer_to_the_same_output_is_refused(tmp_path):
    out = tmp_path / "t.parquet"
    first = GeoParquetWriter(out, "region_id", ["Polygon"])
    with pytest.raises(OutputError, match=r"being written by another geojepa run \(pid"):
        GeoParquetWriter(out, "region_id", ["Polygon"])
    first.write(pd.DataFrame({"a": [1]}, index=["1/0/0"]), np.array([shapely.box(0, 0, 1, 1)]))
    first.close()
    assert len(gpd.read_parquet(out)) == 1
    second = GeoParquetWriter(out, "region_id", ["Polygon"])  # free again once closed
    second.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


def test_embed_into_a_locked_output_exits_1(trained, tmp_path, capsys):
    ds, run = trained
    out = tmp_path / "t.parquet"
    with OutputLock(out):
        assert main(["embed", str(run), str(ds), "-o", str(out)]) == 1
    assert "another geojepa run" in capsys.readouterr().err
    assert not out.exists()


def test_two_prepares_into_one_folder(finland_test_pbf, tmp_path, capsys):
    out = tmp_path / "d"
    with OutputLock(out):  # what a running `prepare` holds
        assert main(["prepare", str(finland_test_pbf), "-o", str(out), "-q"]) == 1
    assert "another geojepa run" in capsys.readouterr().err
    assert main(["prepare", str(finland_test_pbf), "-o", str(out), "-q"]) == 0


def test_two_pretrains_into_one_run_directory(trained, tmp_path, capsys):
    ds, _ = trained
    out = tmp_path / "run"
    with OutputLock(out):
        assert main(["pretrain", str(ds), "-o", str(out), "--max-steps", "1"]) == 1
    assert "another geojepa run" in capsys.readouterr().err
    assert not out.exists()


def test_entities_path_equal_to_tiles_path_is_refused(trained, tmp_path):
    ds, run = trained
    out = tmp_path / "same.parquet"
    with pytest.raises(ConfigError, match="--entities must differ"):
        embed_tiles(run, ds, out, entities_output=tmp_path / "." / "same.parquet", progress=False)
    assert not out.exists()


def test_atomic_path_leaves_the_old_file_on_error(tmp_path):
    out = tmp_path / "f.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk trouble")
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    import geojepa.io.atomic as atomic

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full)
    with pytest.raises(OutputError, match="no space left on the device while writing"):
        atomic.write_text_atomic(tmp_path / "f.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_map_and_plot_write_atomically(trained, tmp_path, monkeypatch):
    import geojepa.io.atomic as atomic

    ds, run = trained
    emb = tmp_path / "t.parquet"
    embed_tiles(run, ds, emb, progress=False)
    for args, name in ((["map", str(emb)], "m.html"), (["plot", str(emb)], "p.png")):
        target = tmp_path / name
        target.write_text("old")

        def boom(*a, **k):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(atomic.os, "replace", boom)
        assert main([*args, "-o", str(target)]) == 1
        assert target.read_text() == "old"
        monkeypatch.undo()
        assert main([*args, "-o", str(target)]) == 0
        assert target.stat().st_size > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_nan_weights_are_refused_before_anything_is_written(trained, tmp_path, capsys):
    ds, run = trained
    model = _copy_model(run, tmp_path / "nan-model")
    state = load_file(model / "model.safetensors")
    meta = _metadata(model / "model.safetensors")
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in state.items()}  # fmt: skip
    save_file(state, str(model / "model.safetensors"), metadata=meta)
    _rehash(model)  # a run that diverged exports NaN weights with their true hashes
    out = tmp_path / "t.parquet"
    assert main(["embed", str(model), str(ds), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "nan-model" in err
    assert not out.exists()


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


# --------------------------------------------------------------------------- no pickles


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_resume_never_unpickles_a_planted_checkpoint(trained, tmp_path, capsys):
    ds, run = trained
    out = tmp_path / "run"
    cfg = tmp_path / "cfg.json"
    tiny_pretrain_config().save(cfg)
    (out / "checkpoints").mkdir(parents=True)
    tiny_pretrain_config().save(out / "checkpoints" / "config.json")
    marker = tmp_path / "pwned.txt"
    torch.save({"state_dict": {}, "evil": _Payload(marker)}, out / "checkpoints" / "last.ckpt")
    (out / "vocab.json").write_text((run / "vocab.json").read_text())
    rc = main(["pretrain", str(ds), "-o", str(out), "--config", str(cfg), "--max-steps", "1"])
    assert not marker.exists(), "a planted checkpoint ran its payload"
    assert rc == 1 and "not a plain geojepa checkpoint" in capsys.readouterr().err


# --------------------------------------------------------------------------- broken data


def _features(tmp_path: Path, geoms: list, crs: str = "EPSG:4326", tags=None) -> Path:
    n = len(geoms)
    good = [shapely.Point(19.0 + i * 1e-3, 47.5) for i in range(20)]
    frame = gpd.GeoDataFrame(
        {"feature_id": [f"node/{i}" for i in range(n + 20)],
         "tags": (tags or [json.dumps({"amenity": "cafe"})] * n)
         + [json.dumps({"building": "yes"})] * 20},
        geometry=list(geoms) + good, crs="EPSG:4326",
    )  # fmt: skip
    if crs != "EPSG:4326":
        frame = frame.set_crs(crs, allow_override=True)
    path = tmp_path / "f.parquet"
    frame.to_parquet(path)
    return path


@pytest.mark.parametrize(
    "geom, counter",
    [
        (shapely.LineString([(19.0, 47.5), (np.inf, 47.5)]), "bad_coordinates"),
        (shapely.LineString([(19.0, 47.5), (np.nan, 47.5), (19.01, 47.51)]), "bad_coordinates"),
        (shapely.Point(1e300, 47.5), "bad_coordinates"),
        (shapely.Point(19.0, 89.0), "beyond_mercator_latitude"),
    ],
)
def test_unusable_coordinates_are_skipped_and_counted(tmp_path, geom, counter):
    src = _features(tmp_path, [geom])
    ds = prepare_tiles(src, tmp_path / "d", PrepareConfig(zoom=14), progress=False)
    assert ds.manifest["input"][counter] == 1
    assert ds.manifest["n_entities"] == 20


def test_a_projected_crs_holding_degrees_is_refused(tmp_path):
    src = _features(tmp_path, [], crs="EPSG:3857")
    with pytest.raises(InputError, match="look like degrees"):
        prepare_tiles(src, tmp_path / "d", PrepareConfig(zoom=14), progress=False)
    assert not (tmp_path / "d").exists()


def test_odd_tags_are_cleaned_and_counted(tmp_path):
    tags = [json.dumps({"name": "\ud800x", "": "empty key", "note": "v" * 3_000_000})]
    src = _features(tmp_path, [shapely.Point(19.0, 47.5)], tags=tags)
    ds = prepare_tiles(src, tmp_path / "d", PrepareConfig(zoom=14), progress=False)
    assert ds.manifest["input"]["tags_fixed"] == 3
    vocab = ds.vocab().to_pandas()
    assert "" not in set(vocab["key"])
    assert vocab["value"].dropna().str.len().max() <= 255


def _osm_xml(path: Path, nodes: list[str]) -> Path:
    path.write_text('<?xml version="1.0"?>\n<osm version="0.6">\n' + "\n".join(nodes)
                    + "\n</osm>\n")  # fmt: skip
    return path


@pytest.mark.parametrize("lat, lon", [("abc", "19.0"), ("47.5", "999")])
def test_osm_xml_with_an_unparsable_coordinate_is_one_clear_error(tmp_path, lat, lon):
    node = f'<node id="1" lat="{lat}" lon="{lon}"><tag k="amenity" v="cafe"/></node>'
    xml = _osm_xml(tmp_path / "bad.osm", [node])
    with pytest.raises(InputError, match=r"bad\.osm holds a malformed coordinate"):
        prepare_tiles(xml, tmp_path / "d", PrepareConfig(zoom=14), progress=False)
    assert not (tmp_path / "d").exists()


def test_osm_latitudes_beyond_web_mercator_are_skipped_and_counted(tmp_path):
    nodes = [
        '<node id="2" lat="-88" lon="19.0"><tag k="amenity" v="cafe"/></node>',
        '<node id="3" lat="89.5" lon="19.0"><tag k="amenity" v="cafe"/></node>',
    ] + [
        f'<node id="{10 + i}" lat="47.5" lon="{19.0 + i * 1e-3}"><tag k="shop" v="bakery"/></node>'
        for i in range(5)
    ]
    xml = _osm_xml(tmp_path / "bad.osm", nodes)
    ds = prepare_tiles(xml, tmp_path / "d", PrepareConfig(zoom=14), progress=False)
    assert ds.manifest["input"]["beyond_mercator_latitude"] == 2  # not clamped into edge tiles
    assert ds.manifest["n_entities"] == 5


@pytest.mark.parametrize(
    "damage, match",
    [
        ("truncate_weights", "model.safetensors is damaged"),
        ("empty_weights", "model.safetensors is damaged"),
        ("garbage_weights", "model.safetensors is damaged"),
        ("pickle_config", "config.json"),
        ("wrong_shape", "does not match"),
        ("wrong_table_key", "tag_table.safetensors is damaged"),
        ("truncated_vocab", "vocab.json"),
    ],
)
def test_damaged_model_files_are_one_clear_error(trained, tmp_path, damage, match):
    ds, run = trained
    model = _copy_model(run, tmp_path / "m")
    weights = model / "model.safetensors"
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "empty_weights":
        weights.write_bytes(b"")
    elif damage == "garbage_weights":
        weights.write_bytes(os.urandom(4096))
    elif damage == "pickle_config":
        (model / "config.json").write_bytes(pickle.dumps({"a": 1}))
    elif damage == "wrong_shape":
        state, meta = load_file(weights), _metadata(weights)
        key = next(k for k, v in state.items() if v.ndim == 2)
        state[key] = torch.zeros(3, 3)
        save_file(state, str(weights), metadata=meta)
        _rehash(model)  # mixed from two runs, then re-recorded: the shape check still holds
    elif damage == "wrong_table_key":
        table = model / "tag_table.safetensors"
        save_file({"table": load_file(table)["tag_table"]}, str(table))
    else:
        text = (model / "vocab.json").read_text()
        (model / "vocab.json").write_text(text[: len(text) // 2])
    with pytest.raises(InputError, match=match):
        embed_tiles(model, ds, tmp_path / "t.parquet", progress=False)
    assert not (tmp_path / "t.parquet").exists()


def test_a_truncated_shard_is_one_clear_error(trained, tmp_path, capsys):
    ds, run = trained
    copy = tmp_path / "ds"
    for p in Path(ds).rglob("*"):
        if p.is_file() and "cache" not in p.parts:
            (copy / p.relative_to(ds)).parent.mkdir(parents=True, exist_ok=True)
            (copy / p.relative_to(ds)).write_bytes(p.read_bytes())
    shard = sorted((copy / "shards").glob("entities-*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    assert main(["embed", str(run), str(copy), "-o", str(tmp_path / "t.parquet")]) == 1
    err = capsys.readouterr().err
    assert "is damaged" in err and shard.name in err and "Traceback" not in err


def test_error_text_is_never_read_as_markup(tmp_path, capsys):
    weird = tmp_path / "[bold]x[/x]"
    assert main(["info", str(weird)]) == 1
    err = capsys.readouterr().err
    assert "[bold]x[/x]" in err


@pytest.mark.parametrize(
    "args, match, code",  # 2: a usage mistake; 1: an output that cannot be used
    [
        (["pretrain", "{ds}", "-o", "{tmp}/r", "--max-steps", "0"], "--max-steps must be", 2),
        (["pretrain", "{ds}", "-o", "{tmp}/r", "--devices", "abc"], "--devices must be", 2),
        (["pretrain", "{ds}", "-o", "{tmp}/file.txt"], "is not a directory", 1),
        (["plot", "{emb}", "-o", "{tmp}/x.txt"], "cannot write a figure as 'x.txt'", 2),
        (["embed", "{run}", "{ds}", "-o", "{tmp}"], "is a directory", 1),
        (
            ["embed", "{run}", "{ds}", "-o", "{tmp}/t.parquet", "--device", "bogus"],
            "unknown device 'bogus'",
            2,
        ),
        (["demo", "-o", "{tmp}/demo", "--steps", "0"], "--steps must be at least 1", 2),
    ],
)
def test_bad_options_are_one_line(trained, tmp_path, capsys, args, match, code):
    ds, run = trained
    (tmp_path / "file.txt").write_text("x")
    emb = tmp_path / "emb.parquet"
    if "{emb}" in args:
        embed_tiles(run, ds, emb, progress=False)
    filled = [a.format(ds=ds, run=run, tmp=tmp_path, emb=emb) for a in args]
    assert main(filled) == code
    err = capsys.readouterr().err
    assert err.startswith("error:") and match in err and "Traceback" not in err
    assert not (tmp_path / "demo").exists()


def test_config_typos_raise_config_error_from_the_api():
    with pytest.raises(ConfigError, match="did you mean 'zoom'"):
        PrepareConfig(zooom=16)
