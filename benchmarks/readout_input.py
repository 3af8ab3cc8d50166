"""A read-out hypothesis, on val: embeddings that keep the encoder's input beside its output.

    .venv/bin/python benchmarks/readout_input.py eval NAME --seeds 2 --at STEP

The same as ``benchmarks/scaling.py eval`` (same checkpoint, probes, rivals and search split),
with every GeoJEPA — the pretrained one and its random-weight twin alike — embedding a token as
[teacher output ‖ layer-normed teacher input] (the input: the tokenizer's token plus its box
prior), so tile vectors are [max ‖ mean] of both (4 × width) and entity vectors 2 × width. The
question: does keeping what an entity's own tags and shape say, beside what the encoder made of
its context, close the gap to pooled tag text? Reports go to
``reports/benchmark/scaling-readout/NAME/step-STEP``. Measured 2026-12-07 on the shipped
checkpoint (``predlead-corpus`` at 600): no (3 losses against 1 with the output alone;
``reports/benchmark/scaling/reading.md``, point 17), so it is not a model option.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scaling
from geojepa.model.jepa import GeoJEPA


@torch.no_grad()
def encode_with_input(self: GeoJEPA, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """[teacher output ‖ teacher input], both layer-normed; padding = 0."""
    if "tokenizer" not in self.target:
        raise SystemExit("readout_input: only models whose teacher holds the tokenizer (ema all)")
    tok = self.target["tokenizer"](batch, None, None)
    x = tok.tokens + self.target["prior"](tok.boxes, tok.modality).to(tok.tokens.dtype)
    h = self.target["encoder"](x, tok.valid, layers=self.config.target_layers)
    both = torch.cat(
        [F.layer_norm(h.float(), h.shape[-1:]), F.layer_norm(x.float(), x.shape[-1:])], -1
    )
    return both.masked_fill(~tok.valid[..., None], 0.0), tok.valid


def main(argv: list[str]) -> int:
    GeoJEPA.encode = encode_with_input  # type: ignore[method-assign]
    GeoJEPA.entity_width = property(lambda self: 2 * self.config.width)  # type: ignore[assignment]
    GeoJEPA.tile_width = property(lambda self: 4 * self.config.width)  # type: ignore[assignment]
    scaling.REPORTS = scaling.ROOT / "reports" / "benchmark" / "scaling-readout"
    return scaling.main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
