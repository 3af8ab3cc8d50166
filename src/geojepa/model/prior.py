"""Conditional position/modality prior added to every token (DESIGN.md §1.3).

A token's position is the 8 numbers of its box corners in tile coordinates; its modality is
entity (0), image patch (1) or whole-image token (2). Both are embedded, fused by a small MLP
and *added* to the token content. The predictor's mask tokens get the prior of the target
positions from this same module, so "where to predict" is expressed in the same code as
"where the context is".
"""

from __future__ import annotations

import torch
from torch import nn

N_MODALITIES = 3


class PositionPrior(nn.Module):
    """``prior(boxes [.., 8], modality [..]) -> [.., width]``."""

    def __init__(self, width: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or width
        self.box = nn.Sequential(nn.Linear(8, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.modality = nn.Embedding(N_MODALITIES, width)
        self.fuse = nn.Sequential(nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, boxes: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        # Centre the [0,1] coordinates so the first layer sees zero-mean inputs.
        pos = self.box(boxes.to(self.box[0].weight.dtype) * 2.0 - 1.0)
        return self.fuse(torch.cat([pos, self.modality(modality)], dim=-1))
