"""Pre-norm transformer with key-padding masks through ``scaled_dot_product_attention``.

Padding keys are never attended. A row with no valid key at all (an empty tile, an empty
context) would make softmax produce NaN, so such rows are allowed to attend to their first slot
only; their outputs are finite garbage that every consumer masks out with ``valid``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def key_mask(valid: torch.Tensor) -> torch.Tensor:
    """Boolean attention mask [B,1,1,L] (True = attend), NaN-safe for fully padded rows."""
    empty = ~valid.any(-1, keepdim=True)
    first = torch.zeros_like(valid)
    first[:, 0] = True
    return (valid | (empty & first))[:, None, None, :]


class Block(nn.Module):
    """x + Attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        drop = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of pre-norm blocks and a final LayerNorm."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x [B,L,D], valid bool [B,L] -> [B,L,D]; padded positions never influence others."""
        mask = key_mask(valid)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


class Predictor(nn.Module):
    """Narrow transformer: projects context outputs and mask tokens in, predictions out."""

    def __init__(self, width: int, pred_width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Linear(width, pred_width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.body = Transformer(pred_width, depth, heads)
        self.out = nn.Linear(pred_width, width)

    def forward(
        self,
        context: torch.Tensor,
        context_valid: torch.Tensor,
        target_prior: torch.Tensor,
        target_valid: torch.Tensor,
    ) -> torch.Tensor:
        """context [N,Lc,D] (with prior added), target_prior [N,Lt,D] -> predictions [N,Lt,D]."""
        queries = self.mask_token.to(target_prior.dtype) + target_prior
        x = self.embed(torch.cat([context, queries], dim=1))
        valid = torch.cat([context_valid, target_valid], dim=1)
        y = self.body(x, valid)
        return self.out(y[:, context.shape[1] :])
