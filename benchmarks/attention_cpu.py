"""Packed attention on CPU: dense SDPA on the padded layout vs a block-diagonal mask over N×N.

Why `geojepa.model.transformer` scatters packed q/k/v into the padded layout for attention on
CPU. One thread (the machine is shared). ``python benchmarks/attention_cpu.py [--out JSON]``.
"""

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

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--out", type=Path, default=None)
args = ap.parse_args()
torch.set_num_threads(1)
torch.manual_seed(0)
res: dict = {"machine": machine_info(torch.device("cpu"))}
cases = {
    "small-tiles(256x2)": [2] * 256,
    "sorted-mid(20x25)": [25] * 20,
    "mixed(1..120)": list(range(1, 121, 4)),
}
for name, lens in cases.items():
    L = max(lens)
    b = len(lens)
    valid = torch.arange(L)[None] < torch.tensor(lens)[:, None]
    p = Packing.from_valid(valid)
    n = int(valid.sum())
    h, dh = 4, 16
    qkv = torch.randn(n, 3 * h * dh)

    def dense():
        d = p.unpack(qkv).view(b, L, 3, h, dh)
        q, k, v = d.permute(2, 0, 3, 1, 4).unbind(0)
        return p.pack(F.scaled_dot_product_attention(q, k, v, attn_mask=p.mask).transpose(1, 2))

    blk = (p.seq[:, None] == p.seq[None, :])[None, None]

    def block():
        q, k, v = qkv.view(1, n, 3, h, dh).permute(2, 0, 3, 1, 4).unbind(0)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=blk).transpose(1, 2).reshape(n, -1)

    out = {}
    for fn in (dense, block):
        for _ in range(3):
            fn()
        t = time.perf_counter()
        for _ in range(20):
            fn()
        out[fn.__name__ + "_ms"] = (time.perf_counter() - t) / 20 * 1e3
    out["max_abs_diff"] = float((dense().reshape(n, -1) - block()).abs().max())
    res[name] = out
print(json.dumps(res, indent=1))
if args.out:
    args.out.write_text(json.dumps(res, indent=2) + "\n")
