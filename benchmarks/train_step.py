"""Training-step throughput of GeoJEPA on synthetic tokens, against a naive baseline.

Measures full training steps (tokenizer stand-in, masking, target encoder, context encoder,
predictor, loss, backward, AdamW step, EMA update) in tiles/s, tokens/s and peak memory:

- ``ours``: `GeoJEPA` as trained by `geojepa pretrain` — key-padding masks, all K targets in one
  predictor call, masks and packings made on the host before the step (no host sync in it);
- ``naive``: the published design on the same modules and the same data — the predictor called
  once per target in a Python loop, no key-padding masks (padding is attended), and a ``.item()``
  host sync per loss term per step (as the published logging does).

Both run in the same process on the same batches, so the speed-up is a ratio from one run.

Settings: ``gti`` = the paper's GTI setting (batch 48, width 384, 12 layers, 8 heads, predictor
256×4, 4 targets, 10–300 entity tokens + 197 image tokens per tile); ``gti-b4`` = the same with
batch 4 (for CPUs); ``cpu-small`` = the cpu-small preset's model (batch 16, 10–128 entities, no
image). Examples::

    python benchmarks/train_step.py --device cpu --settings cpu-small gti-b4
    python benchmarks/train_step.py --device cuda --settings gti cpu-small

Real data (``--data DATASET``, a directory written by ``geojepa prepare``): full training steps
of the real tokenizer + model on the dataset's tiles, in real tokens/s and tiles/s, comparing

- ``padded``: random batches of ``--batch-size`` tiles (48), padded to their longest tile, the
  padded layout (the design before token budgets and packing);
- ``packed``: length-bucketed batches of ``--tokens-per-batch`` real tokens (default: batch
  size × the dataset's mean tokens per tile, i.e. the same real tokens per step on average),
  the packed layout.

Both run in the same process, their steps alternating (so load from other processes hits both
alike); each times ``--steps`` batches spread evenly over one shuffled epoch of its loader
(heavy-tailed data: the first batches of an epoch are not typical), so the ratio is from one
run. ``--threads 1`` makes timings on a CPU shared with other processes far
less noisy (two oversubscribed OpenMP threads were 5-10× slower per op here)::

    python benchmarks/train_step.py --data DATASET --preset cpu-small --out results.json

``--compile`` adds a side with every transformer block compiled (``geojepa.model.compile``,
``dynamic=True``), on the same batches: ``ours_compiled`` beside ``ours`` in the synthetic
settings, ``packed_compiled`` beside ``packed`` on real data, with the warm-up time (which
holds the compile time) and the number of distinct graphs Dynamo compiled. On real data the
compiled side first makes one untimed pass over the timed batches (``first_pass_s``: every
shape class — grad/no-grad, width, 0/1-sized dimensions — is compiled there), so its timed
steps are the steady state; ``compile_s_estimate`` is the extra time of that first pass.
``--dtype bf16`` runs the steps under bf16 autocast (the default on CUDA, as ``pretrain`` does
there).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from geojepa.model import GeoJEPA, MaskingConfig, ModelConfig
from geojepa.model.compile import compile_blocks
from geojepa.model.jepa import StepOutput, StepPlan, _gather, masked_vicreg
from geojepa.train.config import preset_config

SETTINGS = {
    "gti": dict(batch=48, width=384, depth=12, heads=8, pred=256, pred_depth=4, ent=(10, 300),
                image_tokens=197),
    "gti-b4": dict(batch=4, width=384, depth=12, heads=8, pred=256, pred_depth=4, ent=(10, 300),
                   image_tokens=197),
    "cpu-small": dict(batch=16, width=64, depth=2, heads=4, pred=32, pred_depth=2, ent=(10, 128),
                      image_tokens=0),
}  # fmt: skip


@dataclass
class SynthTokens:
    tokens: torch.Tensor
    boxes: torch.Tensor
    modality: torch.Tensor
    valid: torch.Tensor
    n_entity_slots: int


class SynthTokenizer(nn.Module):
    """Stand-in tokenizer: a learned linear map of precomputed content vectors."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, width)

    def layout(self, b: dict) -> SynthTokens:
        return SynthTokens(None, b["boxes"], b["modality"], b["valid"], b["n_entity_slots"])

    def entity_index(self, b: dict) -> torch.Tensor:
        return b["valid"].reshape(-1).nonzero().squeeze(1)

    def image_features(self, b: dict) -> None:
        return None

    def forward(self, b: dict, entities=None, image_features=None) -> SynthTokens:
        x = self.proj(b["content"]) * b["valid"][..., None]
        return SynthTokens(x, b["boxes"], b["modality"], b["valid"], b["n_entity_slots"])


def make_batch(s: dict, seed: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(seed)
    b, d = s["batch"], s["width"]
    n_ent = torch.randint(s["ent"][0], s["ent"][1] + 1, (b,), generator=g)
    e = int(n_ent.max())
    n_img = s["image_tokens"]
    length = e + n_img
    ent_valid = torch.arange(e)[None] < n_ent[:, None]
    valid = torch.cat([ent_valid, torch.ones(b, n_img, dtype=torch.bool)], 1)
    centre = torch.rand(b, length, 1, 2, generator=g)
    half = torch.rand(b, length, 1, 2, generator=g) * 0.05
    corners = torch.tensor([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=torch.float32)
    boxes = (centre + half * corners).clamp(0, 1).reshape(b, length, 8) * valid[..., None]
    modality = torch.zeros(b, length, dtype=torch.long)
    if n_img:
        modality[:, e] = 2
        modality[:, e + 1 :] = 1
    batch = {
        "content": torch.randn(b, length, d, generator=g) * valid[..., None],
        "boxes": boxes,
        "modality": modality,
        "valid": valid,
    }
    out = {k: v.to(device) for k, v in batch.items()}
    out["n_entity_slots"] = e
    return out


class NaiveGeoJEPA(GeoJEPA):
    """The published design on our modules: per-target predictor loop, no padding masks."""

    def loss_from_tokens(self, tok, h: torch.Tensor, plan: StepPlan) -> StepOutput:
        masks = plan.masks
        k = masks.target_index.shape[1]
        prior = self.prior(tok.boxes, tok.modality).to(tok.tokens.dtype)
        x = tok.tokens + prior
        ctx_x = _gather(x, masks.context_index)
        everything = torch.ones_like(masks.context_valid)  # no key-padding mask
        z = self.encoder(ctx_x, everything)
        ctx_in = z + _gather(prior, masks.context_index)
        losses, regs = [], []
        for i in range(k):  # one predictor call per target
            idx = masks.target_index[:, i]
            t_valid = torch.ones_like(masks.target_valid[:, i])
            pred = self.predictor(ctx_in, everything, _gather(prior, idx), t_valid)
            target = _gather(h, idx)
            with torch.autocast(device_type=pred.device.type, enabled=False):
                losses.append(F.smooth_l1_loss(pred.float(), target, beta=1.0))
                regs.append(masked_vicreg(pred, t_valid))
        with torch.autocast(device_type=z.device.type, enabled=False):
            pred_loss = torch.stack(losses).mean()
            reg_pred = torch.stack(regs).mean()
            reg_ctx = masked_vicreg(z, everything)
            # the published code weights both terms alike (config var_weight = cov_weight)
            loss = pred_loss + self.config.var_weight * (reg_pred + reg_ctx)
        for t in (pred_loss, reg_pred, reg_ctx):  # per-step logging with host syncs
            t.item()
        zero = torch.zeros((), device=loss.device)
        return StepOutput(loss, pred_loss.detach(), reg_pred.detach(), reg_ctx.detach(), zero,
                          zero, masks.target_valid.sum(), h, tok.valid)  # fmt: skip


def build(s: dict, naive: bool, device: torch.device) -> GeoJEPA:
    cfg = ModelConfig(
        width=s["width"], depth=s["depth"], heads=s["heads"], predictor_width=s["pred"],
        predictor_depth=s["pred_depth"], predictor_heads=s["heads"],
    )  # fmt: skip
    masking = MaskingConfig() if s["image_tokens"] else preset_config("cpu-small").masking
    torch.manual_seed(0)
    cls = NaiveGeoJEPA if naive else GeoJEPA
    return cls(cfg, SynthTokenizer(s["width"]), masking).to(device).train()


def _graphs() -> int:
    """Distinct graphs Dynamo has compiled so far in this process."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def run(
    s: dict, naive: bool, device: torch.device, steps: int, warmup: int, amp: bool,
    compiled: bool = False,
) -> dict:  # fmt: skip
    model = build(s, naive, device)
    if compiled:
        compile_blocks(model)
    graphs0 = _graphs()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    batches = [make_batch(s, seed, torch.device("cpu")) for seed in range(4)]
    gen = torch.Generator().manual_seed(0)
    n_tokens = sum(int(b["valid"].sum()) for b in batches) / len(batches)

    def step(host_batch: dict) -> None:
        # As in `geojepa pretrain`: masks and packings made on the host, copied with the batch.
        plan = model.plan(host_batch, gen).to(device)
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                 for k, v in host_batch.items()}  # fmt: skip
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(batch, plan=plan)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0, foreach=True)
        opt.step()
        model.update_target(0.996)

    t_warm = time.perf_counter()
    for i in range(warmup):
        step(batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warmup_s = time.perf_counter() - t_warm
    t0 = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt_s = (time.perf_counter() - t0) / steps
    result = {
        "s_per_step": dt_s,
        "tiles_per_s": s["batch"] / dt_s,
        "tokens_per_s": n_tokens / dt_s,
        "mean_real_tokens_per_batch": n_tokens,
        "warmup_s": warmup_s,
        "compiled": compiled,
    }
    if compiled:
        result["graphs_compiled"] = _graphs() - graphs0
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:  # process-wide high-water mark (includes earlier settings)
        result["process_max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def _real_step(
    model: GeoJEPA, opt, params: list, gen: torch.Generator, batch, device, amp: bool = False
) -> None:
    """One step as `geojepa pretrain` runs it: plan on the host, then copy and train."""
    plan = model.plan(batch, gen).to(device)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        loss = model(batch.to(device), plan=plan).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 10.0, foreach=True)
    opt.step()
    model.update_target(0.996)


def run_real(
    ds_path: Path, preset: str, batch_size: int, tokens_per_batch: int | None, steps: int,
    warmup: int, device: torch.device, amp: bool = False, compiled: bool = False,
) -> dict:  # fmt: skip
    """Padded random batches vs packed token-budget batches on one prepared dataset."""
    import numpy as np

    from geojepa.data.reader import open_dataset
    from geojepa.tokenize.loader import make_dataloader
    from geojepa.tokenize.tags import PAD, UNKNOWN, TagVocabulary
    from geojepa.train.export import build_model

    ds = open_dataset(ds_path)
    cfg = preset_config(preset)
    vocab = TagVocabulary.from_dataset(ds)
    counts = np.concatenate([
        np.minimum(ds.read_tiles(s, columns=["n_entities"]).column(0).to_numpy(),
                   cfg.tokenizer.max_entities)
        for s in ds.shards
    ])  # fmt: skip
    mean_tokens = float(np.maximum(counts, 1).mean())
    budget = tokens_per_batch or round(batch_size * mean_tokens)
    torch.manual_seed(0)
    table = torch.randn(len(vocab), 384)  # a random stand-in of the frozen text table
    table[[PAD, UNKNOWN]] = 0.0
    out: dict = {
        "dataset": str(ds_path), "n_tiles": len(counts), "preset": preset,
        "max_entities": cfg.tokenizer.max_entities, "tiles_losing_entities":
        int(sum((ds.read_tiles(s, columns=["n_entities"]).column(0).to_numpy()
                 > cfg.tokenizer.max_entities).sum() for s in ds.shards)),
        "mean_tokens_per_tile": mean_tokens, "batch_size": batch_size,
        "tokens_per_batch": budget, "amp_bf16": amp,
    }  # fmt: skip
    padded_kw = {"batch_size": batch_size}
    packed_kw = {"batch_size": batch_size, "tokens_per_batch": budget}
    runs = [("padded", False, padded_kw, False), ("packed", True, packed_kw, False)]
    if compiled:  # the same packed batches, every transformer block compiled
        runs.append(("packed_compiled", True, packed_kw, True))
    sides, warm, graphs, epochs = {}, {}, {}, {}
    for name, packed, kw, comp in runs:
        key = "packed" if packed else "padded"
        if key not in epochs:
            loader = make_dataloader(ds, vocab, cfg.tokenizer, shuffle=True, seed=0, **kw)
            epoch = list(loader)  # one shuffled epoch; time batches spread evenly over it
            pick = np.linspace(0, len(epoch) - 1, min(steps + warmup, len(epoch))).round()
            epochs[key] = [epoch[int(i)] for i in pick]  # on the host, as the loader gives them
            del epoch
        batches = epochs[key]
        model = build_model(cfg, table).to(device).set_packed(packed).train()
        if comp:
            compile_blocks(model)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
        gen = torch.Generator().manual_seed(0)
        graphs0, t0 = _graphs(), time.perf_counter()
        for b in batches[:warmup]:
            _real_step(model, opt, params, gen, b, device, amp)
        if device.type == "cuda":
            torch.cuda.synchronize()
        warm[name] = time.perf_counter() - t0
        if comp:  # one untimed pass: every shape class is compiled before the timed steps
            t0 = time.perf_counter()
            for b in batches[warmup:]:
                _real_step(model, opt, params, gen, b, device, amp)
            if device.type == "cuda":
                torch.cuda.synchronize()
            warm[name + "_first_pass"] = time.perf_counter() - t0
        graphs[name] = _graphs() - graphs0
        sides[name] = (model, opt, params, gen, batches[warmup:], [0.0])
    # Alternate the two sides step by step: load from other processes hits both alike.
    for i in range(max(len(s[4]) for s in sides.values())):
        for model, opt, params, gen, timed, clock in sides.values():
            if i < len(timed):
                t0 = time.perf_counter()
                _real_step(model, opt, params, gen, timed[i], device, amp)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                clock[0] += time.perf_counter() - t0
    for name, (_, _, _, _, timed, clock) in sides.items():
        elapsed = clock[0]
        real = sum(int(b.entity_valid.sum()) for b in timed)
        slots = sum(b.entity_valid.numel() for b in timed)
        n_tiles = sum(len(b) for b in timed)
        out[name] = {
            "steps": len(timed), "seconds": elapsed, "real_tokens": real,
            "padded_slots": slots, "tiles": n_tiles,
            "real_tokens_per_s": real / elapsed, "tiles_per_s": n_tiles / elapsed,
            "s_per_step": elapsed / len(timed), "fill": real / slots,
            "warmup_steps": warmup, "warmup_s": warm[name],
        }  # fmt: skip
        if name.endswith("_compiled"):
            out[name]["first_pass_s"] = warm[name + "_first_pass"]  # compiles every shape class
            out[name]["graphs_compiled"] = graphs[name]
        print(json.dumps({name: out[name]}), flush=True)
    out["ratio_real_tokens_per_s"] = (
        out["packed"]["real_tokens_per_s"] / out["padded"]["real_tokens_per_s"]
    )
    out["ratio_tiles_per_s"] = out["packed"]["tiles_per_s"] / out["padded"]["tiles_per_s"]
    if compiled:
        c, p = out["packed_compiled"], out["packed"]
        out["graphs_compiled_total"] = _graphs()
        out["ratio_compiled_real_tokens_per_s"] = c["real_tokens_per_s"] / p["real_tokens_per_s"]
        # compile time ≈ the compiled side's warm-up and first pass over the timed batches
        # minus the eager side's warm-up and timed steps (the same batches)
        out["compile_s_estimate"] = c["warmup_s"] + c["first_pass_s"] - p["warmup_s"] - p["seconds"]
    return out


def machine_info(device: torch.device) -> dict:
    info = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        # other processes share the CPU: the 1-minute load average before the run tells how much
        "loadavg_1min_before": os.getloadavg()[0],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--settings", nargs="+", default=["cpu-small", "gti-b4"], choices=SETTINGS)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: per device)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    ap.add_argument("--data", type=Path, default=None, help="prepared dataset: real-data mode")
    ap.add_argument("--preset", default="cpu-small", help="model preset (real-data mode)")
    ap.add_argument("--batch-size", type=int, default=48, help="padded baseline's batch")
    ap.add_argument("--tokens-per-batch", type=int, default=None, help="packed side's budget")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--compile", action="store_true", help="also time compiled blocks")
    ap.add_argument(
        "--dtype",
        choices=["fp32", "bf16"],
        default=None,
        help="bf16 = bf16 autocast (default on cuda), fp32 (default on cpu)",
    )
    args = ap.parse_args()
    amp = (args.dtype or ("bf16" if args.device == "cuda" else "fp32")) == "bf16"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    steps = args.steps or (30 if device.type == "cuda" else 5)
    warmup = args.warmup if args.warmup is not None else (5 if device.type == "cuda" else 1)
    report = {
        "machine": machine_info(device), "steps": steps, "warmup": warmup,
        "dtype": "bf16" if amp else "fp32", "compile": args.compile, "results": {},
    }  # fmt: skip
    if args.data is not None:
        steps = args.steps or 40
        report["steps"] = steps
        report["real_data"] = run_real(
            args.data,
            args.preset,
            args.batch_size,
            args.tokens_per_batch,
            steps,
            warmup,
            device,
            amp,
            args.compile,
        )
        print(json.dumps(report["real_data"], indent=2), flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
        return
    for name in args.settings:
        s = SETTINGS[name]
        entry: dict = {"setting": s}
        entry["ours"] = run(s, False, device, steps, warmup, amp)
        if args.compile:
            entry["ours_compiled"] = run(s, False, device, steps, warmup, amp, compiled=True)
            entry["compile_speedup"] = (
                entry["ours"]["s_per_step"] / entry["ours_compiled"]["s_per_step"]
            )
        if not args.no_naive:
            entry["naive"] = run(s, True, device, steps, warmup, amp)
            entry["speedup"] = entry["naive"]["s_per_step"] / entry["ours"]["s_per_step"]
        report["results"][name] = entry
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(json.dumps({name: entry}, indent=2), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
