"""GPU hygiene checked on CPU: host syncs in a step, no multinomial, non-blocking copies,
and a teacher that shares the frozen tensors instead of copying them."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from geojepa.data.reader import open_dataset
from geojepa.model.masking import MaskGenerator, MaskingConfig
from geojepa.tokenize.loader import make_dataloader
from geojepa.tokenize.tags import TagVocabulary
from geojepa.train.config import preset_config
from geojepa.train.export import build_model
from helpers.synthetic import write_synthetic_dataset


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


def _count_host_syncs(monkeypatch) -> Counter[str]:
    """Counts the calls that make the host wait for a GPU: .item/.cpu/.tolist and nonzero."""
    calls: Counter[str] = Counter()
    for owner, name in [(torch.Tensor, n) for n in ("item", "cpu", "tolist", "nonzero")] + [
        (torch, "nonzero")
    ]:
        original = getattr(owner, name)

        def spy(*a, _name=name, _orig=original, **k):
            calls[_name] += 1
            return _orig(*a, **k)

        monkeypatch.setattr(owner, name, spy)
    monkeypatch.setattr(torch, "multinomial", lambda *a, **k: 1 / 0)
    return calls


def test_training_step_with_a_host_plan_never_waits(model_and_batch, monkeypatch) -> None:
    """Masks and packings made beforehand (on the host): forward + backward + EMA have no
    .item()/.cpu()/.tolist()/nonzero; without a plan the step makes them itself."""
    model, batch = model_and_batch
    model.train()
    plan = model.plan(batch, torch.Generator().manual_seed(0))
    calls = _count_host_syncs(monkeypatch)
    out = model(batch, plan=plan)
    out.loss.backward()
    model.update_target(0.99)
    assert calls == Counter(), calls
    model(batch, torch.Generator().manual_seed(0))  # the counter does see a plan being made
    assert calls["tolist"] >= 1 and calls["nonzero"] >= 3, calls  # CPU: + attention groups


def test_a_host_plan_gives_the_same_step(model_and_batch) -> None:
    model, batch = model_and_batch
    model.train()
    torch.manual_seed(1)  # modality dropout
    inline = model(batch, torch.Generator().manual_seed(3))
    plan = model.plan(batch, torch.Generator().manual_seed(3)).to("cpu")
    torch.manual_seed(1)
    planned = model(batch, plan=plan)
    assert planned.n_targets > 0
    for name in ("loss", "pred_loss", "reg_pred", "reg_context", "n_targets"):
        torch.testing.assert_close(getattr(planned, name), getattr(inline, name), msg=name)


def test_pretraining_makes_the_plan_before_the_copy(tmp_path, monkeypatch) -> None:
    """Every step of `geojepa pretrain` gets its plan from the transfer hook, on the host."""
    from geojepa.model import GeoJEPA
    from geojepa.train import pretrain

    path = write_synthetic_dataset(tmp_path / "ds", n_shards=1, seed=4)
    seen: list[bool] = []
    real = GeoJEPA.forward

    def forward(self, batch, generator=None, plan=None):
        seen.append(plan is not None and plan.tokens.index.device.type == "cpu")
        return real(self, batch, generator, plan)

    monkeypatch.setattr(GeoJEPA, "forward", forward)
    cfg = preset_config("cpu-small").with_overrides(
        model={"depth": 1, "predictor_depth": 1}, data={"batch_size": 4},
        trainer={"max_steps": 3},
    )  # fmt: skip
    pretrain(path, tmp_path / "run", config=cfg, progress=False)
    assert seen == [True] * 3


def test_a_frozen_image_encoder_runs_once_per_step(tmp_path, monkeypatch) -> None:
    """The student and the teacher share the frozen part of the image encoder: one call."""
    from geojepa.tokenize.image import PatchEmbedding

    path = tmp_path / "ds"
    write_synthetic_dataset(path, n_shards=1, seed=5, image_size=32, image_fraction=1.0)
    ds = open_dataset(path)
    vocab = TagVocabulary.from_dataset(ds)
    cfg = preset_config("cpu-small").with_overrides(
        tokenizer={"use_image": True, "image_size": 32, "patch_size": 16}
    )
    batch = next(iter(make_dataloader(ds, vocab, cfg.tokenizer, 4, shuffle=False, seed=0)))
    assert batch.image is not None
    model = build_model(cfg, torch.randn(len(vocab), 16)).train()
    calls = []
    real = PatchEmbedding.frozen_features
    monkeypatch.setattr(
        PatchEmbedding, "frozen_features", lambda self, img: calls.append(1) or real(self, img)
    )
    out = model(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and len(calls) == 1


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_step_with_a_host_plan_does_not_synchronise(model_and_batch) -> None:
    """On a GPU, forward + backward + EMA with a host-made plan raise under sync debug mode
    "error" if anything in them waits for the device (the first step compiles FlexAttention,
    so it runs outside the check)."""
    import copy

    model, batch = model_and_batch
    model = copy.deepcopy(model).cuda().train()
    gen = torch.Generator().manual_seed(0)
    for mode in ("default", "error"):
        plan = model.plan(batch, gen).pin_memory().to("cuda")
        on_gpu = batch.pin_memory().to("cuda")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode(mode)
        try:
            out = model(on_gpu, plan=plan)
            out.loss.backward()
            model.update_target(0.99)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(out.loss).item()
