"""Pre-norm transformer over padded or packed tokens.

Padded layout: ``x [B,L,D]`` with a key-padding mask through ``scaled_dot_product_attention``.
A row with no valid key at all (an empty tile, an empty context) would make softmax produce
NaN, so such rows are allowed to attend to their first slot only; their outputs are finite
garbage that every consumer masks out with ``valid``.

Packed layout (the default, `Packing`): only the real tokens of a batch, ``[N,D]`` with
``N = valid.sum()``, go through every Linear, LayerNorm and MLP, so their cost follows real
tokens, not ``B × L``. Attention stays within a tile: on CPU the packed q/k/v are scattered
into padded layouts for dense SDPA with the key-padding mask (measured faster on CPU than a
block-diagonal mask over ``N × N``): one ``[B,L]`` layout for a batch of similar lengths (see
``tokens_per_batch``), else one per group of similar lengths (`attention_groups`), since one
long tile would make every tile of the batch pay ``L²`` (16 random Neubrandenburg tiles with
one of 511 entities: ~16× the attention work); on CUDA, when FlexAttention is available,
attention runs on the packed sequence itself with a document mask (tokens attend only to
tokens of the same tile).
Both layouts compute the same function; outputs at padding positions are zero when packed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:  # FlexAttention: PyTorch ≥ 2.5; used on CUDA only (on CPU it runs a slow eager path).
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
except ImportError:  # pragma: no cover - older torch
    BlockMask = flex_attention = None

#: FlexAttention's sparse block size (its default): the document mask is built per block pair.
FLEX_BLOCK = 128


def key_mask(valid: torch.Tensor) -> torch.Tensor:
    """Boolean attention mask [B,1,1,L] (True = attend), NaN-safe for fully padded rows."""
    empty = ~valid.any(-1, keepdim=True)
    first = torch.zeros_like(valid)
    first[:, 0] = True
    return (valid | (empty & first))[:, None, None, :]


@dataclass
class Packing:
    """Where the real tokens of a padded ``[B,L]`` batch sit, to pack and unpack them.

    ``index``: flat positions ``b·L + l`` of the real tokens, tile after tile; ``seq``: the tile
    of each packed token; ``mask``: the key-padding mask for the dense fallback; ``block_mask``:
    FlexAttention's document mask (set only when attention runs on the packed sequence).
    """

    index: torch.Tensor  # long [N]
    seq: torch.Tensor  # long [N]
    batch: int
    length: int
    mask: torch.Tensor  # bool [B,1,1,L]
    block_mask: Any = None
    groups: AttentionGroups | None = None  # dense attention per length group (None: one)

    @classmethod
    def from_valid(cls, valid: torch.Tensor) -> Packing:
        """The packing of ``valid``; its ``nonzero`` waits for the device when ``valid`` is on
        CUDA, so a training step gets its packings made on the host (`GeoJEPA.plan`)."""
        b, n = valid.shape
        index = valid.reshape(-1).nonzero().squeeze(1)
        seq = torch.div(index, max(n, 1), rounding_mode="floor")
        groups = attention_groups(valid) if valid.device.type == "cpu" else None
        return cls(index, seq, b, n, key_mask(valid), groups=groups)

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Packing:
        """A copy with ``fn`` applied to each tensor (``to``, ``pin_memory``); a FlexAttention
        mask is not copied but rebuilt where it is needed (`for_input`)."""
        groups = None if self.groups is None else self.groups.map_tensors(fn)
        return Packing(fn(self.index), fn(self.seq), self.batch, self.length, fn(self.mask),
                       groups=groups)  # fmt: skip

    def for_input(self, x: torch.Tensor) -> Packing:
        """Self, with the document mask built once when attention will run on FlexAttention."""
        if self.block_mask is None and use_flex(x):
            self.block_mask = document_mask(self.seq)
        return self

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """[B,L,...] → [N,...]."""
        return x.reshape(self.batch * self.length, *x.shape[2:]).index_select(0, self.index)

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """[N,...] → [B,L,...], zeros at padding."""
        out = y.new_zeros(self.batch * self.length, *y.shape[1:])
        out.index_copy_(0, self.index, y)
        return out.view(self.batch, self.length, *y.shape[1:])


#: Cost of a dense attention over ``b`` tiles padded to ``L`` tokens, ``b·L·(L + 64) + 2048``
#: (SDPA forward + backward, one CPU thread: ~0.1 µs per score, ~8 µs per padded row and
#: ~100-300 µs per call), to choose the length groups of `attention_groups`.
_ROW_COST, _CALL_COST = 64, 2048


@dataclass
class AttentionGroups:
    """Tiles of similar length, each group attended as one dense ``[b_g, L_g]`` layout.

    Per group: ``gather`` (long ``[b_g·L_g]``: the packed token in each slot, ``N`` for padding,
    which reads a zero row), ``mask`` (bool ``[b_g,1,1,L_g]``), ``real`` (long: the slots that
    hold tokens) and its ``shape`` ``(b_g, L_g)``; ``order`` (long ``[N]``): where each packed
    token's output is in the concatenated real slots of all groups. A tile's tokens keep their
    packed order, left-aligned; empty tiles belong to no group (they have no tokens).
    """

    gather: list[torch.Tensor]
    mask: list[torch.Tensor]
    real: list[torch.Tensor]
    shape: list[tuple[int, int]]
    order: torch.Tensor

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> AttentionGroups:
        return AttentionGroups([fn(t) for t in self.gather], [fn(t) for t in self.mask],
                               [fn(t) for t in self.real], self.shape, fn(self.order))  # fmt: skip

    def attend(self, qkv: torch.Tensor, heads: int, dropout: float) -> torch.Tensor:
        """Packed ``qkv [N,3D]`` → attention outputs ``[N,D]`` (each tile attends to itself)."""
        d3 = qkv.shape[1]
        d = d3 // 3
        rows = torch.cat([qkv, qkv.new_zeros(1, d3)])  # row N: the padding slots' zeros
        outs = []
        for gather, mask, real, (b, length) in zip(
            self.gather, self.mask, self.real, self.shape, strict=True
        ):
            dense = rows.index_select(0, gather).view(b, length, 3, heads, d // heads)
            q, k, v = dense.permute(2, 0, 3, 1, 4).unbind(0)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
            outs.append(a.transpose(1, 2).reshape(b * length, d).index_select(0, real))
        return torch.cat(outs).index_select(0, self.order)


def _length_groups(lengths: list[int]) -> list[int]:
    """Cut points of ascending ``lengths`` into runs that minimise the summed dense-attention
    cost (dynamic programming over the distinct lengths)."""
    distinct = sorted(set(lengths))
    count = [lengths.count(v) for v in distinct]  # lengths are few; fine on the host
    m = len(distinct)
    best = [0.0] + [float("inf")] * m
    cut = [0] * (m + 1)
    for j in range(1, m + 1):
        top, tiles = distinct[j - 1], 0
        for i in range(j - 1, -1, -1):
            tiles += count[i]
            c = best[i] + tiles * top * (top + _ROW_COST) + _CALL_COST
            if c < best[j]:
                best[j], cut[j] = c, i
    bounds, j = [], m
    while j > 0:
        j = cut[j]
        bounds.append(sum(count[:j]))
    return [*sorted(bounds)[1:], len(lengths)]  # ends of the runs, in tiles


def attention_groups(valid: torch.Tensor) -> AttentionGroups | None:
    """Length groups for dense attention over the packed tokens of ``valid [B,L]`` (on the
    host), or None when one ``[B,L]`` layout costs about as little (a length-bucketed batch)."""
    lengths = valid.sum(1)
    tiles = lengths.nonzero().squeeze(1)
    lens = lengths[tiles]
    if len(tiles) < 2:
        return None
    sort = torch.argsort(lens, stable=True)
    tiles, lens = tiles[sort], lens[sort]
    ends = _length_groups(lens.tolist())
    if len(ends) == 1:
        return None
    starts = torch.cumsum(lengths, 0) - lengths  # first packed token of each tile
    n = int(lengths.sum())
    gather, mask, real, shape, dest = [], [], [], [], []
    begin = 0
    for end in ends:
        g_lens, g_starts = lens[begin:end], starts[tiles[begin:end]]
        width = int(g_lens[-1])
        slot = torch.arange(width)
        ok = slot[None, :] < g_lens[:, None]
        pos = g_starts[:, None] + slot[None, :]
        gather.append(torch.where(ok, pos, n).reshape(-1))
        mask.append(ok[:, None, None, :])
        real.append(ok.reshape(-1).nonzero().squeeze(1))
        shape.append((end - begin, width))
        dest.append(pos[ok])
        begin = end
    order = torch.empty(n, dtype=torch.long)
    order[torch.cat(dest)] = torch.arange(n)
    return AttentionGroups(gather, mask, real, shape, order)


def document_mask(seq: torch.Tensor) -> Any:
    """FlexAttention block mask: token q may attend token k iff both belong to the same tile.

    ``seq`` is sorted (tile after tile), so a block of 128 tokens spans a range of tiles: two
    blocks interact iff their ranges overlap, and attend fully iff both lie inside one tile. The
    mask is built from those ranges, in O((N/128)²) with fixed shapes (no host sync), instead of
    evaluating the N × N token mask as ``create_block_mask`` does (gigabytes at GPU batch
    sizes). Tokens past N (the last block's padding) are given tile -1.
    """
    n = seq.shape[0]
    nb = max(1, -(-n // FLEX_BLOCK))
    padded = F.pad(seq, (0, nb * FLEX_BLOCK - n), value=-1)
    ends = torch.arange(1, nb + 1, device=seq.device) * FLEX_BLOCK
    first = padded[::FLEX_BLOCK]
    last = padded[(ends.clamp(max=n) - 1).clamp(min=0)]
    touch = (first[:, None] <= last[None, :]) & (first[None, :] <= last[:, None])
    whole = (first == last) & (ends <= n)  # inside one tile, no padding
    full = whole[:, None] & whole[None, :] & (first[:, None] == first[None, :])

    def ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query block: how many kv blocks, and which (those first)."""
        count = dense.sum(-1).to(torch.int32)
        index = (~dense).to(torch.int8).argsort(dim=-1, stable=True).to(torch.int32)
        return count[None, None], index[None, None]

    def same_tile(b, h, q, k):
        return padded[q] == padded[k]

    return BlockMask.from_kv_blocks(
        *ordered(touch & ~full), *ordered(full), BLOCK_SIZE=FLEX_BLOCK, mask_mod=same_tile,
        seq_lengths=(n, n),
    )  # fmt: skip


_COMPILED_FLEX: Any = None


def compiled_flex_attention() -> Any:
    """FlexAttention compiled once, for every sequence length (``dynamic``): run eagerly it
    materialises the whole ``N × N`` score matrix of the packed batch instead of fusing."""
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=True)
    return _COMPILED_FLEX


def use_flex(x: torch.Tensor) -> bool:
    """FlexAttention on the packed sequence: CUDA only (and only where PyTorch has it)."""
    return flex_attention is not None and x.is_cuda


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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | Packing) -> torch.Tensor:
        """Padded: x [B,L,D] and a key mask; packed: x [N,D] and its `Packing`."""
        if isinstance(mask, Packing):
            return self._packed(x, mask)
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        drop = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        x = x + self._drop(self.proj(a.transpose(1, 2).reshape(b, n, d)))
        return x + self._drop(self.mlp(self.norm2(x)))

    def _drop(self, y: torch.Tensor) -> torch.Tensor:
        return F.dropout(y, self.dropout, self.training) if self.dropout else y

    def _packed(self, x: torch.Tensor, p: Packing) -> torch.Tensor:
        n, d = x.shape
        h = self.heads
        drop = self.dropout if self.training else 0.0
        qkv = self.qkv(self.norm1(x))  # [N, 3D]: only real tokens
        if p.block_mask is not None:
            q, k, v = qkv.view(1, n, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
            attend = compiled_flex_attention() if q.is_cuda else flex_attention  # CPU: tests
            a = attend(q, k, v, block_mask=p.block_mask)  # [1,h,N,dh]
            a = a.transpose(1, 2).reshape(n, d)
        elif p.groups is not None:
            a = p.groups.attend(qkv, h, drop)
        else:
            dense = p.unpack(qkv).view(p.batch, p.length, 3, h, d // h)
            q, k, v = dense.permute(2, 0, 3, 1, 4).unbind(0)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=p.mask, dropout_p=drop)
            a = p.pack(a.transpose(1, 2)).reshape(n, d)
        x = x + self._drop(self.proj(a))
        return x + self._drop(self.mlp(self.norm2(x)))


class Transformer(nn.Module):
    """A stack of pre-norm blocks and a final LayerNorm; ``packed`` picks the layout."""

    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        packed: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.packed = packed

    def forward(
        self,
        x: torch.Tensor,
        valid: torch.Tensor,
        layers: int = 1,
        packing: Packing | None = None,
    ) -> torch.Tensor:
        """x [B,L,D], valid bool [B,L] -> [B,L,D]; padded positions never influence others.

        ``layers`` > 1 returns the average of the last ``layers`` blocks' normed outputs (the
        data2vec-style target: less tied to the last block's objective-specific features).
        ``packing``: the packing of ``valid`` when it is already known (made on the host).
        """
        if not self.packed:
            return self._run(x, key_mask(valid), layers)
        if packing is None:
            packing = Packing.from_valid(valid)
        return packing.unpack(self.forward_packed(packing.pack(x), packing, layers))

    def forward_packed(self, y: torch.Tensor, packing: Packing, layers: int = 1) -> torch.Tensor:
        """Packed tokens [N,D] → [N,D]."""
        return self._run(y, packing.for_input(y), layers)

    def _run(self, x: torch.Tensor, mask: torch.Tensor | Packing, layers: int) -> torch.Tensor:
        """The blocks, then the normed output (or the mean over the last ``layers`` of them)."""
        first_read = len(self.blocks) - max(layers, 1)
        read = []
        for i, block in enumerate(self.blocks):
            x = block(x, mask)
            if i >= first_read:  # only the outputs that are read are kept alive
                read.append(self.norm(x))
        return read[0] if len(read) == 1 else torch.stack(read).mean(0)


class Predictor(nn.Module):
    """Narrow transformer: projects context outputs and mask tokens in, predictions out.

    ``embed``: the input projection, ``"linear"`` or ``"mlp"`` (Linear → GELU → Linear, width →
    pred_width → pred_width, as the paper's predictor has).
    """

    def __init__(
        self,
        width: int,
        pred_width: int,
        depth: int,
        heads: int,
        dropout: float = 0.0,
        embed: str = "linear",
    ) -> None:
        super().__init__()
        if embed == "mlp":
            self.embed: nn.Module = nn.Sequential(
                nn.Linear(width, pred_width), nn.GELU(), nn.Linear(pred_width, pred_width)
            )
        elif embed == "linear":
            self.embed = nn.Linear(width, pred_width)
        else:
            raise ValueError(f"unknown predictor embed {embed!r} (linear or mlp)")
        self.mask_token = nn.Parameter(torch.zeros(width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.body = Transformer(pred_width, depth, heads, dropout=dropout)
        self.out = nn.Linear(pred_width, width)

    def forward(
        self,
        context: torch.Tensor,
        context_valid: torch.Tensor,
        target_prior: torch.Tensor,
        target_valid: torch.Tensor,
        packing: Packing | None = None,
    ) -> torch.Tensor:
        """context [N,Lc,D] (with prior added), target_prior [N,Lt,D] -> predictions [N,Lt,D].

        ``packing``: the packing of ``[context_valid ‖ target_valid]`` when already known.
        """
        queries = self.mask_token.to(target_prior.dtype) + target_prior
        x = torch.cat([context, queries], dim=1)
        valid = torch.cat([context_valid, target_valid], dim=1)
        if self.body.packed:  # the in/out projections also touch real tokens only
            p = packing if packing is not None else Packing.from_valid(valid)
            y = self.out(self.body.forward_packed(self.embed(p.pack(x)), p))
            return p.unpack(y)[:, context.shape[1] :]
        y = self.body(self.embed(x), valid)
        return self.out(y[:, context.shape[1] :])
