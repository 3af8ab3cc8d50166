"""Optional ``torch.compile`` of the transformer blocks (``pretrain --compile``).

Each `Block` of the student encoder, the predictor and the EMA teacher is compiled in place
with ``nn.Module.compile``: the module tree is not wrapped, so ``state_dict`` keys (checkpoints,
model directories, the EMA pairing) stay exactly as without compile — no ``_orig_mod.``
prefixes. Blocks share one compiled graph per shape class (all blocks of one width have the
same code), so the compile cost is paid about once per distinct transformer width.

Shapes: the packed layout has a different token count N per batch, so blocks are compiled
with ``dynamic=True`` (symbolic N, B and L) instead of one graph per shape; no rounding of
lengths is needed. What still makes a new graph: grad mode (student vs. EMA teacher), the
width (encoder vs. predictor), and PyTorch's 0/1 specialisation of B and L (a batch of one big
tile under a token budget; a batch of one-token tiles). That is up to about 12 graphs, all on
the one code object ``Block.forward``, over Dynamo's default limit of 8 recompiles per code
object (past it a block silently runs uncompiled), so the limit is raised.
"""

from __future__ import annotations

import torch._dynamo
from torch import nn

from geojepa.model.transformer import Block

#: Graphs allowed per code object (all blocks share ``Block.forward``); see the module docs.
RECOMPILE_LIMIT = 64


def compile_blocks(
    model: nn.Module, *, backend: str = "inductor", dynamic: bool | None = True, **options
) -> int:
    """Compile every `Block` under ``model`` in place; returns how many were compiled.

    ``backend="eager"`` traces with Dynamo but runs eagerly (tests); ``options`` go to
    ``torch.compile`` (e.g. ``mode="max-autotune-no-cudagraphs"``).
    """
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for block in blocks:
        block.compile(backend=backend, dynamic=dynamic, **options)
    return len(blocks)
