"""`pretrain` talks: one progress display (bar on a TTY, plain lines without), --quiet, no
third-party noise; and it keeps only the newest checkpoints it is told to keep."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch

from geojepa.cli import main
from geojepa.train import PretrainConfig, preset_config, pretrain
from geojepa.train.progress import ProgressReport
from helpers.synthetic import write_synthetic_dataset

NOISE = ("GPU available", "TPU available", "Tip", "v_num", "Epoch", "LeafSpec", "Loading weights",
         "max_steps=", "Warning")  # fmt: skip
LINE = re.compile(
    r"^pretrain step (\d+)/(\d+) \(\d+%\) · loss \d+\.\d{4} · [\d.]+ tiles/s · "
    r"\d+ real tokens/s · elapsed \d+:\d\d · ETA \d+:\d\d$"
)


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("ds") / "tiles", n_shards=2, tiles_per_shard=(6, 9),
        entities_per_tile=(2, 20), seed=1,
    )  # fmt: skip


def _cfg(steps: int, every: int = 2) -> PretrainConfig:
    data = preset_config("cpu-small").model_dump()
    data["model"].update(depth=1, predictor_depth=1)
    data["data"]["batch_size"] = 4
    data["trainer"].update(max_steps=steps, checkpoint_every_n_steps=every, log_every_n_steps=1)
    return PretrainConfig.from_dict(data)


def test_plain_lines_without_a_tty_and_newest_checkpoints_kept(ds, tmp_path, capfd) -> None:
    run = pretrain(ds, tmp_path / "run", config=_cfg(10), keep_checkpoints=2)
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("pretrain step")]
    assert lines and all(LINE.match(line) for line in lines), lines
    assert LINE.match(lines[-1]).groups() == ("10", "10")
    for word in NOISE:
        assert word not in out + err, word
    kept = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert kept == ["last.ckpt", "step=10.ckpt", "step=8.ckpt"]


def test_speeds_reach_the_csv_log_and_the_model_card_also_when_silent(ds, tmp_path) -> None:
    import pandas as pd

    run = pretrain(ds, tmp_path / "run", config=_cfg(4), progress=False)
    log = pd.concat(pd.read_csv(p) for p in (run / "logs").glob("*/metrics.csv"))
    speeds = log[["speed/real_tokens_per_s", "speed/tiles_per_s"]].dropna()
    assert len(speeds) == 4 and (speeds > 0).all().all()  # one row per logging step
    tokens_per_tile = speeds["speed/real_tokens_per_s"] / speeds["speed/tiles_per_s"]
    assert tokens_per_tile.between(2, 20).all()  # the synthetic tiles hold 2-20 entities
    assert re.search(r"training speed \| [\d,]+ real tokens/s, [\d.]+ tiles/s",
                     (run / "README.md").read_text())  # fmt: skip


def test_real_tokens_of_a_planned_batch_are_its_entities(ds) -> None:
    from geojepa.data.reader import open_dataset
    from geojepa.model.jepa import PlannedBatch
    from geojepa.tokenize.loader import make_dataloader
    from geojepa.tokenize.tags import TagVocabulary
    from geojepa.train.export import build_model
    from geojepa.train.progress import real_tokens

    cfg = _cfg(1)
    vocab = TagVocabulary.from_dataset(open_dataset(ds))
    batch = next(iter(make_dataloader(ds, vocab, cfg.tokenizer, 4, True, 0)))
    model = build_model(cfg, torch.zeros(len(vocab), 384))
    planned = PlannedBatch(batch, model.plan(batch, torch.Generator().manual_seed(0)))
    assert real_tokens(planned) == real_tokens(batch) == int(batch.entity_valid.sum()) > 0


def test_keep_all_or_only_last(ds, tmp_path, capfd) -> None:
    run = pretrain(ds, tmp_path / "all", config=_cfg(6), keep_checkpoints=-1, progress=False)
    assert len(list((run / "checkpoints").glob("step=*.ckpt"))) == 3
    run = pretrain(ds, tmp_path / "last", config=_cfg(6), keep_checkpoints=0, progress=False)
    assert [p.name for p in (run / "checkpoints").glob("*.ckpt")] == ["last.ckpt"]
    assert capfd.readouterr() == ("", "")  # progress=False: silent
    assert main(["pretrain", str(ds), "-o", str(tmp_path / "x"), "--keep-checkpoints", "-2"]) == 2


def test_cli_quiet_is_silent(ds, tmp_path, capfd) -> None:
    cfg = tmp_path / "cfg.json"
    _cfg(3).save(cfg)
    assert main(["pretrain", str(ds), "-o", str(tmp_path / "run"), "--config", str(cfg), "-q"]) == 0
    assert capfd.readouterr() == ("", "")
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_one_bar_on_a_tty(ds, tmp_path, monkeypatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    pretrain(ds, tmp_path / "run", config=_cfg(4))
    text = term.getvalue()
    assert "pretrain" in text and "4/4" in text and "tiles/s" in text and "loss" in text
    assert "pretrain step" not in text  # the bar, not the plain lines
    assert re.search(
        r"pretrain done · step 4/4 · loss [\d.]+ · [\d.]+ tiles/s · \d+ real tokens/s · "
        r"elapsed",
        text,
    )  # a summary line once the bar is closed
    for word in NOISE:
        assert word not in text, word


def test_line_format_after_a_resume() -> None:
    report = ProgressReport(tty=False, stream=io.StringIO())
    report.total, report.first_step, report.tiles = 100, 40, 80
    report._loss = torch.tensor(0.5)
    report.start = 0.0
    import time

    report.start = time.perf_counter() - 20.0  # 20 s for 10 steps since the resume at 40
    line = report.line(50)
    assert line.startswith("pretrain step 50/100 (50%) · loss 0.5000 · 4.0 tiles/s")
    assert line.endswith("ETA 1:40")  # 50 steps left at 2 s a step


def test_the_loss_is_read_only_when_shown(monkeypatch) -> None:
    """Reading the loss makes the host wait for a GPU: once per printed line, not per step."""
    from types import SimpleNamespace

    stream = io.StringIO()
    report = ProgressReport(tty=False, every=5, stream=stream)
    trainer = SimpleNamespace(global_rank=0, max_steps=20, global_step=0, world_size=1)
    report.on_train_start(trainer, SimpleNamespace(total_steps=20))
    reads = []
    for name in ("__float__", "item", "tolist", "cpu"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _r=real: reads.append(1) or _r(self, *a))  # fmt: skip
    for step in range(1, 21):
        trainer.global_step = step
        report.on_train_batch_end(trainer, None, {"loss": torch.tensor(2.0)}, [0] * 4, step)
    assert stream.getvalue().count("pretrain step") == 4 and len(reads) == 4
    assert "loss 2.0000" in stream.getvalue()


def test_verbose_reports_each_start_up_stage(ds, tmp_path, capfd) -> None:
    """``pretrain -v``: one line per start-up stage up to the first step, with its seconds and
    the running total; nothing else changes (``-q`` still hides the progress lines)."""
    cfg = tmp_path / "cfg.json"
    _cfg(1).save(cfg)
    args = ["pretrain", str(ds), "-o", str(tmp_path / "run"), "--config", str(cfg), "-q", "-v"]
    assert main(args) == 0
    out, err = capfd.readouterr()
    assert out == ""
    stages = re.findall(r"^pretrain start-up · (.+): [\d.]+ s \(total [\d.]+ s\)$", err, re.M)
    assert re.fullmatch(r"torch threads \d+ of \d+ \(.+\)", stages[7])  # the cores left idle
    assert stages[:7] + stages[8:] == [
        "start Python, import torch and geojepa",  # from the process start
        "open the dataset", "config and vocabulary",
        "tag table (text model, or its cache in the dataset)",
        "import Lightning",  # once the run can start: a wrong option fails before it
        "model", "data loader",
        "Lightning set-up (trainer, loggers, checkpoint)", "first step",
    ]  # fmt: skip
    assert len(err.splitlines()) == len(stages)  # no progress line under -q


def test_epochs_count_tiles_not_lightning_epochs_after_a_resume() -> None:
    """600 steps of 16 tiles over 7,619 tiles are 1.26 epochs, also when the run resumed at
    step 300 (Lightning's counter said 3); the card prints that figure and a usable snippet."""
    from types import SimpleNamespace

    from geojepa.train.export import model_card

    report = ProgressReport(tty=False, show=False, stream=io.StringIO())
    trainer = SimpleNamespace(global_rank=0, max_steps=600, global_step=300, world_size=1)
    assert report.epochs(600, 7619) is None  # before any step
    report.on_train_start(trainer, SimpleNamespace(total_steps=600))
    for step in range(301, 601):
        trainer.global_step = step
        report.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0)}, [0] * 16, step)
    epochs = report.epochs(600, 7619)
    assert epochs == 1.26
    card = model_card(preset_config("cpu-small"), {"steps": 600, "epochs": epochs, "name": "A"})
    assert "| optimiser steps | 600 (epochs: 1.26) |" in card
    assert 'from_pretrained("A")' not in card and 'from_pretrained("PATH/TO/' in card


def test_pretrain_says_what_its_cap_cuts_and_its_checkpoints_take(ds, tmp_path, capfd) -> None:
    """Tiles over tokenizer.max_entities lose entities: pretrain says how many (stderr, card).
    A 600-step cpu-base run keeps ~250 MB of checkpoints: the last line says how much."""
    from geojepa.data.info import entities_over_cap
    from geojepa.data.reader import open_dataset

    cfg = tmp_path / "cfg.json"
    _cfg(4).with_overrides(tokenizer={"max_entities": 6}).save(cfg)
    cap = entities_over_cap(open_dataset(ds), 6)
    assert 0 < cap["tiles"] < cap["entities"] and cap["entities_dropped"] > 0
    run = tmp_path / "run"
    assert main(["pretrain", str(ds), "-o", str(run), "--config", str(cfg)]) == 0
    files = list((run / "checkpoints").glob("*.ckpt"))
    size = sum(p.stat().st_size for p in files) / 1e6
    out, err = capfd.readouterr()
    said = (f"tokenizer.max_entities 6 cuts {cap['tiles']:,} tile(s) (the largest holds "
            f"{cap['largest_tile']} entities): {cap['entities_dropped']:,} of "
            f"{cap['entities']:,} entities")  # fmt: skip
    assert f"pretrain: {said}" in err
    assert f"| entity cap | {said}" in (run / "README.md").read_text()
    line = next(x for x in out.splitlines() if x.startswith("checkpoints: "))
    assert line.startswith(f"checkpoints: {len(files)} files, {size:,.0f} MB in ")
    assert "--keep-checkpoints 0" in line
