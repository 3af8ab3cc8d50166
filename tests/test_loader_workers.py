"""Loader worker processes: persistent across epochs, still reshuffling; the ``auto`` default."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest

from geojepa.data.reader import open_dataset
from geojepa.errors import ConfigError
from geojepa.tokenize.loader import make_dataloader
from geojepa.tokenize.tags import TagVocabulary
from geojepa.tokenize.tokenizer import TokenizerConfig
from geojepa.train import PretrainConfig, preset_config
from geojepa.train.config import DataConfig
from helpers.synthetic import write_synthetic_dataset

CFG = TokenizerConfig(width=16, geometry_points=8)


@pytest.fixture(scope="module")
def ds_path(tmp_path_factory):
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("ds") / "tiles", n_shards=5, tiles_per_shard=(2, 10), seed=3
    )


def _ids(loader) -> list[str]:
    return [r for b in loader for r in b.region_ids]


def test_persistent_workers_reshuffle_every_epoch(ds_path) -> None:
    vocab = TagVocabulary.from_dataset(open_dataset(ds_path))

    def loader():
        return make_dataloader(ds_path, vocab, CFG, batch_size=3, shuffle=True, seed=0,
                               num_workers=2)  # fmt: skip

    run = loader()
    assert run.persistent_workers
    epoch0 = _ids(run)
    workers = run._iterator  # the worker processes of the first epoch
    epoch1 = _ids(run)
    assert run._iterator is workers  # the same processes served epoch 1
    assert Counter(epoch1) == Counter(epoch0) and epoch1 != epoch0
    fresh = loader()  # new workers, told epoch 1 before they start: the same order
    fresh.set_epoch(1)
    assert _ids(fresh) == epoch1
    run.set_epoch(0)  # resume: back to epoch 0 with the same workers
    assert _ids(run) == epoch0
    procs = list(run._iterator._workers)
    assert all(p.is_alive() for p in procs)
    it = iter(run)  # the terminal's Ctrl-C reaches the workers too: they leave it to the main
    first = next(it).region_ids
    for p in procs:
        os.kill(p.pid, signal.SIGINT)
    time.sleep(0.5)
    assert first + _ids(it) == epoch1 and all(p.is_alive() for p in procs)
    run.close()  # pretrain closes its loader: no worker is left idling after the run
    for p in procs:
        p.join(timeout=10)
    assert not any(p.is_alive() for p in procs)


def test_num_workers_auto_and_explicit(monkeypatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    auto = DataConfig()
    assert auto.num_workers == "auto"
    assert auto.workers(gpu=False) == 0 and auto.workers(gpu=True) == 4
    assert auto.workers(gpu=True, processes=8) == 1  # 8 GPUs share the 15 spare cores
    assert auto.workers(gpu=True, processes=32) == 0
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert auto.workers(gpu=True) == 1
    assert DataConfig(num_workers=3).workers(gpu=False) == 3
    data = preset_config("cpu-small").model_dump()
    for bad in (-1, "many"):
        data["data"]["num_workers"] = bad
        with pytest.raises(ConfigError, match="num_workers"):
            PretrainConfig.from_dict(data)
    data["data"]["num_workers"] = 2
    assert PretrainConfig.from_dict(data).data.workers(gpu=True) == 2


def test_pretrain_leaves_no_worker_running(ds_path, tmp_path) -> None:
    import multiprocessing

    from geojepa.train import pretrain

    data = preset_config("cpu-small").model_dump()
    data["model"].update(depth=1, predictor_depth=1)
    data["data"].update(batch_size=4, num_workers=1)
    data["trainer"].update(max_steps=2, max_epochs=None)
    pretrain(ds_path, tmp_path / "run", config=PretrainConfig.from_dict(data), progress=False)
    assert not multiprocessing.active_children()
