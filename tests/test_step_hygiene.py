"""GPU hygiene checked on CPU: host syncs in a step, no multinomial, non-blocking copies,
and a teacher that shares the frozen tensors instead of copying them."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from geojepa.data.reader import open_dataset
from geojepa.model.masking import MaskGenerator, MaskingConfig
from geojepa.tokenize.loader import make_dataloader
from geojepa.tokenize.synthetic import write_synthetic_dataset
from geojepa.tokenize.tags import TagVocabulary
from geojepa.train.config import preset_config
from geojepa.train.export import build_model


@pytest.fixture(scope="module")
def model_and_batch(tmp_path_factory):
    path = write_synthetic_dataset(tmp_path_factory.mktemp("h") / "ds", n_shards=1, seed=2)
    ds = open_dataset(path)
    vocab = TagVocabulary.from_dataset(ds)
    cfg = preset_config("cpu-small")
    batch = next(iter(make_dataloader(ds, vocab, cfg.tokenizer, 8, shuffle=False, seed=0)))
    torch.manual_seed(0)
    return build_model(cfg, torch.randn(len(vocab), 16)), batch


def test_strategy_draw_without_multinomial(monkeypatch) -> None:
    def forbidden(*a, **k):
        raise AssertionError("torch.multinomial called")

    monkeypatch.setattr(torch, "multinomial", forbidden)
    cfg = MaskingConfig(p_random=0.25, p_contiguous=0.0, p_area=0.75, p_modality=0.0)
    b, n = 4000, 12
    valid = torch.ones(b, n, dtype=torch.bool)
    boxes = torch.rand(b, n, 1, 2).expand(b, n, 4, 2).reshape(b, n, 8)
    masks = MaskGenerator(cfg)(valid, torch.zeros(b, n, dtype=torch.long), boxes,
                               torch.Generator().manual_seed(0))  # fmt: skip
    freq = torch.bincount(masks.strategy, minlength=4).float() / b
    assert freq[1] == 0 and freq[3] == 0  # zero-probability strategies are never drawn
    assert abs(float(freq[0]) - 0.25) < 0.03 and abs(float(freq[2]) - 0.75) < 0.03


def test_training_step_host_syncs_are_only_the_mask_sizes(model_and_batch, monkeypatch) -> None:
    """No .item()/.cpu() and one .tolist() (the two mask widths) in forward + backward."""
    model, batch = model_and_batch
    model.train()
    calls: Counter[str] = Counter()
    for name in ("item", "cpu", "tolist"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _name=name, _orig=original, **k):
            calls[_name] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    monkeypatch.setattr(torch, "multinomial", lambda *a, **k: 1 / 0)
    out = model(batch, torch.Generator().manual_seed(0))
    out.loss.backward()
    model.update_target(0.99)
    assert calls == Counter({"tolist": 1}), calls


def test_batch_copies_to_cuda_are_non_blocking(model_and_batch, monkeypatch) -> None:
    _, batch = model_and_batch
    seen = []
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: seen.append(k) or self)
    batch.to("cuda")
    assert seen and all(k.get("non_blocking") is True for k in seen)
    seen.clear()
    batch.to("cpu")
    assert all(k.get("non_blocking") is False for k in seen)


def test_teacher_shares_frozen_tensors(model_and_batch) -> None:
    model, _ = model_and_batch
    student, teacher = model.tokenizer, model.target["tokenizer"]
    assert teacher.tag_table is student.tag_table  # one table, not a deep copy
    model.to(torch.float64)
    assert teacher.tag_table is student.tag_table and student.tag_table.dtype == torch.float64
    model.float()
    assert teacher.tag_table is student.tag_table
    # learned tensors are still the teacher's own (EMA copies)
    assert teacher.tag_proj.weight is not student.tag_proj.weight
    torch.testing.assert_close(teacher.tag_proj.weight, student.tag_proj.weight)
