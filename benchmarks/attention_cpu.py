"""Packed attention on CPU: dense SDPA on the padded layout vs a block-diagonal mask over N×N.

Why `geojepa.model.transformer` scatters packed q/k/v into the padded ``[B, L]`` layout for
attention on CPU. One thread (the machine is shared)::

    python benchmarks/attention_cpu.py --out benchmarks/results/attention-cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from geojepa.model.transformer import Packing

try:
    from train_step import machine_info
except ImportError:  # run as a module
    from benchmarks.train_step import machine_info

HEADS, HEAD_DIM = 4, 16
CASES = {
    "small-tiles(256x2)": [2] * 256,
    "sorted-mid(20x25)": [25] * 20,
    "mixed(1..120)": list(range(1, 121, 4)),
}


def dense(p: Packing, qkv: torch.Tensor) -> torch.Tensor:
    d = p.unpack(qkv).view(p.batch, p.length, 3, HEADS, HEAD_DIM)
    q, k, v = d.permute(2, 0, 3, 1, 4).unbind(0)
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=p.mask)
    return p.pack(a.transpose(1, 2)).reshape(qkv.shape[0], -1)


def block_diagonal(p: Packing, qkv: torch.Tensor) -> torch.Tensor:
    n = qkv.shape[0]
    mask = (p.seq[:, None] == p.seq[None, :])[None, None]
    q, k, v = qkv.view(1, n, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4).unbind(0)
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return a.transpose(1, 2).reshape(n, -1)


def timed(fn, *args, reps: int = 20) -> float:
    for _ in range(3):
        fn(*args)
    t = time.perf_counter()
    for _ in range(reps):
        fn(*args)
    return (time.perf_counter() - t) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    res: dict = {"machine": machine_info(torch.device("cpu")), "cases": {}}
    for name, lens in CASES.items():
        valid = torch.arange(max(lens))[None] < torch.tensor(lens)[:, None]
        p = Packing.from_valid(valid)
        qkv = torch.randn(int(valid.sum()), 3 * HEADS * HEAD_DIM)
        res["cases"][name] = {
            "dense_ms": timed(dense, p, qkv),
            "block_diagonal_ms": timed(block_diagonal, p, qkv),
            "max_abs_diff": float((dense(p, qkv) - block_diagonal(p, qkv)).abs().max()),
        }
    print(json.dumps(res, indent=2))
    if args.out:
        args.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
