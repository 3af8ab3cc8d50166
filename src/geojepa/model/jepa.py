"""GeoJEPA: context encoder, EMA target encoder and predictor over tile tokens (DESIGN.md §1).

One training step (``GeoJEPA.forward``) is fully batched: the target encoder encodes every
token of every tile once; the context encoder sees only the context tokens; the predictor
predicts the K targets of all B tiles in *one* call by repeating each tile's context K times
along the batch (as I-JEPA does). Padding never enters attention, the loss or the statistics.

Everything whose size depends on the data (the masks' widths, the packings' ``nonzero``) is
made before the step by `GeoJEPA.plan`, on the host, where it costs no wait: training makes
the plan before copying the batch to the accelerator, so the step itself has no host sync
(no ``.item()``, ``.cpu()``, ``.tolist()`` or ``nonzero``; tests/test_step_hygiene.py).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from geojepa.errors import InputError
from geojepa.model.config import ModelConfig, ModelSpec
from geojepa.model.directory import ModelDirectory
from geojepa.model.masking import MaskGenerator, MaskingConfig, Masks
from geojepa.model.pretrained import Pretrained
from geojepa.model.prior import PositionPrior
from geojepa.model.transformer import Packing, Predictor, Transformer
from geojepa.tokenize.tokenizer import TileTokenizer


class TokensLike(Protocol):
    """What a tokenizer returns (``geojepa.tokenize.tokenizer.Tokens``)."""

    tokens: torch.Tensor
    boxes: torch.Tensor
    modality: torch.Tensor
    valid: torch.Tensor
    n_entity_slots: int
    geometry: torch.Tensor | None  # each token's geometry part alone, or None


@dataclass
class StepOutput:
    """Loss and its terms for one batch; every value is a 0-d tensor (no host sync)."""

    loss: torch.Tensor
    pred_loss: torch.Tensor
    reg_pred: torch.Tensor  # variance + covariance of the predictions (unweighted)
    reg_context: torch.Tensor  # variance + covariance of the context outputs (unweighted)
    var_loss: torch.Tensor  # var_weight × (variance terms): loss = pred + var + cov
    cov_loss: torch.Tensor  # cov_weight × (covariance terms)
    n_targets: torch.Tensor  # number of real target tokens in the batch
    token_loss: torch.Tensor  # token-mean loss of the predictor (pred_loss's reduction aside)
    target_outputs: torch.Tensor  # [B,L,D] target-encoder outputs (for collapse monitors)
    target_valid: torch.Tensor  # [B,L] which of them are real tokens
    targets: torch.Tensor  # [B*K,Lt,D] the targets the predictions were scored against
    targets_valid: torch.Tensor  # [B*K,Lt] which of them are real target tokens

    @property
    def mean_loss(self) -> torch.Tensor:
        """Token-mean loss of predicting every target as the batch's mean target (a monitor:
        computed when read, on logging steps, not in every step)."""
        with torch.no_grad():
            w = self.targets_valid.to(torch.float32)
            mean = _masked_mean(self.targets, self.targets_valid)
            by_mean = F.smooth_l1_loss(mean.expand_as(self.targets), self.targets, beta=1.0,
                                       reduction="none").mean(-1)  # fmt: skip
            return (by_mean * w).sum() / w.sum().clamp(min=1)


@dataclass
class StepPlan:
    """What a training step needs whose *shape* depends on the data, made before the step.

    Masks and packings hold data-dependent sizes (``nonzero``, mask widths); made on the
    device they make the host wait for it. `PretrainModule` makes the plan on the host, before
    the batch is copied to the accelerator, so the step itself never waits (`GeoJEPA.plan`).
    """

    masks: Masks
    entities: torch.Tensor  # long [n]: flat real entity slots (the tokenizer's packing)
    tokens: Packing  # every real token (the teacher's encoder)
    context: Packing  # context tokens [B, Lc] (the student's encoder)
    predictor: Packing  # [context ‖ targets] of the B·K predictor rows

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> StepPlan:
        """A copy with ``fn`` applied to each tensor."""
        m = self.masks
        return StepPlan(
            Masks(**{f.name: fn(getattr(m, f.name)) for f in fields(m)}),
            fn(self.entities),
            *(p.map_tensors(fn) for p in (self.tokens, self.context, self.predictor)),
        )

    def to(self, device: torch.device | str, non_blocking: bool | None = None) -> StepPlan:
        """A copy on ``device`` (non-blocking to CUDA, like `TileBatch.to`)."""
        if non_blocking is None:
            non_blocking = torch.device(device).type == "cuda"
        return self.map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> StepPlan:
        """Pinned copy, so that the copy to a GPU overlaps with its work."""
        return self.map_tensors(torch.Tensor.pin_memory)


@dataclass
class PlannedBatch:
    """A batch and its `StepPlan`, copied to the device together (Lightning calls ``to``)."""

    batch: Any
    plan: StepPlan

    def __len__(self) -> int:
        return len(self.batch)

    def to(self, device: torch.device | str, non_blocking: bool | None = None) -> PlannedBatch:
        return PlannedBatch(self.batch.to(device, non_blocking), self.plan.to(device, non_blocking))


def ema_momentum(step: int, total_steps: int, start: float, end: float) -> float:
    """Linear momentum schedule from ``start`` (step 0) to ``end`` (step ``total_steps``)."""
    t = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return start + (end - start) * t


def masked_vicreg(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Variance (hinge on std at 1) + covariance (off-diagonal²/D) over rows where mask is True,
    unweighted (`vicreg_terms` gives the two apart)."""
    var_loss, cov_loss = vicreg_terms(x, mask, eps)
    return var_loss + cov_loss


def vicreg_terms(
    x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """(variance hinge on the std of each dimension at 1, squared off-diagonal covariance / D)
    over rows where mask is True.

    Padding rows carry zero weight, so the statistics are those of the real tokens only.
    """
    x = x.reshape(-1, x.shape[-1]).float()
    w = mask.reshape(-1, 1).to(x.dtype)
    n = w.sum()
    mean = (x * w).sum(0) / n.clamp(min=1)
    xc = (x - mean) * w
    denom = (n - 1).clamp(min=1)
    var = (xc * xc).sum(0) / denom
    var_loss = F.relu(1.0 - torch.sqrt(var + eps)).mean()
    cov = xc.T @ xc / denom
    d = x.shape[-1]
    off = cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()
    return var_loss, off / d


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the real rows (``valid`` [B,L]) of ``x`` [B,L,D]: one value per dimension."""
    w = valid[..., None].to(x.dtype)
    return (x * w).sum((0, 1)) / w.sum().clamp(min=1)


def standardise(h: torch.Tensor, valid: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each dimension of ``h`` [B,L,D] centred and scaled to unit std over the real tokens
    (``valid`` [B,L]) of the batch; padding stays 0. Statistics carry no gradient."""
    mean = _masked_mean(h, valid)
    var = _masked_mean((h - mean) ** 2, valid)
    return ((h - mean) / torch.sqrt(var + eps)) * valid[..., None].to(h.dtype)


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B,L,...], index [B,...idx] -> x at index along dim 1."""
    b = x.shape[0]
    flat = index.reshape(b, -1)
    out = x.gather(1, flat.view(b, -1, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:]))
    return out.view(*index.shape, *x.shape[2:])


class GeoJEPA(Pretrained, nn.Module):
    """Tokenizer + prior + encoder, their EMA copies, and the predictor.

    ``tokenizer`` maps a batch to tokens (normally a ``TileTokenizer``: ``layout``,
    ``entity_index``, ``image_features`` and ``forward(batch, entities, image_features)``, see
    there). The EMA target branch (``config.ema_scope``) is a deep copy of tokenizer, prior and
    encoder (``"all"``) or of the encoder only (``"encoder"``, the paper's: the teacher then
    reads the student's tokenizer and prior, without gradient and in eval mode); it never
    receives gradients and always runs in eval mode. ``encode``/``tile_embedding``/
    ``entity_embeddings`` use it (the paper's choice).
    """

    def __init__(
        self,
        config: ModelConfig,
        tokenizer: nn.Module,
        masking: MaskingConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.masking_config = masking or MaskingConfig()
        self.masker = MaskGenerator(self.masking_config)
        d = config.width
        self.tokenizer = tokenizer
        self.prior = PositionPrior(d)
        self.encoder = Transformer(
            d, config.depth, config.heads, config.mlp_ratio, dropout=config.dropout
        )
        self.predictor = Predictor(
            d,
            config.predictor_width,
            config.predictor_depth,
            config.predictor_heads,
            dropout=config.dropout,
            embed=config.predictor_embed,
        )
        for part in (self.prior, self.encoder, self.predictor):
            part.apply(_init_weights)  # the tokenizer keeps its own initialisation
        # The teacher's tokenizer shares the frozen tensors (tag table, frozen image backbone,
        # constant buffers) with the student's instead of holding copies of them.
        teacher: dict[str, nn.Module] = {}
        if config.ema_scope == "all":
            memo: dict[int, Any] = {id(t): t for _, t in _frozen_tensors(tokenizer)}
            teacher["tokenizer"] = copy.deepcopy(tokenizer, memo)
            teacher["prior"] = copy.deepcopy(self.prior)
        teacher["encoder"] = copy.deepcopy(self.encoder)
        self.target = nn.ModuleDict(teacher)
        self.target.requires_grad_(False)
        self.target.eval()
        #: What its model directory says about it (vocabulary, run config, training data);
        #: set by `from_pretrained`, None for a network built in memory.
        self.directory: ModelDirectory | None = None

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        """``.to()``/``.float()``… convert buffers module by module: tie the shared ones again."""
        super()._apply(fn, recurse)
        if "target" in self._modules and "tokenizer" in self.target:
            target = self.target["tokenizer"]
            for name, t in _frozen_tensors(self.tokenizer):
                owner, _, leaf = name.rpartition(".")
                mod = target.get_submodule(owner) if owner else target
                table = mod._parameters if isinstance(t, nn.Parameter) else mod._buffers
                table[leaf] = t
        return self

    # --- EMA -------------------------------------------------------------------------------
    def _pair_ema_tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        src, dst = [], []
        for name in self.target:  # ema_scope: the encoder, or tokenizer, prior and encoder
            module = getattr(self, name)
            t_params = dict(self.target[name].named_parameters())
            for pname, p in module.named_parameters():
                if p.requires_grad:  # frozen parts (e.g. the tag table) are not averaged
                    src.append(p)
                    dst.append(t_params[pname])
        return src, dst

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """target ← momentum · target + (1 − momentum) · online, for every learned tensor."""
        # .to(), load_state_dict and DDP keep parameter identity, so the pairing is cached.
        pairs = self.__dict__.get("_ema_cache")
        if pairs is None:
            pairs = self.__dict__["_ema_cache"] = self._pair_ema_tensors()
        src, dst = pairs
        torch._foreach_mul_(dst, momentum)
        torch._foreach_add_(dst, src, alpha=1.0 - momentum)

    def set_packed(self, packed: bool) -> GeoJEPA:
        """Packed layout (default; cost follows real tokens) or padded (for comparison)."""
        for m in self.modules():
            if hasattr(m, "packed"):  # transformers and the tile tokenizer
                m.packed = packed
        return self

    def train(self, mode: bool = True) -> GeoJEPA:
        super().train(mode)
        self.target.eval()  # the teacher is deterministic (no dropout, frozen statistics)
        return self

    # --- encoding --------------------------------------------------------------------------
    def _target_outputs(
        self, batch: Any, plan: StepPlan | None = None, image_features: Any = None
    ) -> tuple[torch.Tensor, TokensLike]:
        entities, packing = (plan.entities, plan.tokens) if plan is not None else (None, None)
        if "tokenizer" in self.target:  # ema_scope "all": the teacher's own EMA copies
            tok = self.target["tokenizer"](batch, entities, image_features)
            prior = self.target["prior"](tok.boxes, tok.modality)
        else:  # ema_scope "encoder": the student's tokenizer and prior, as the teacher runs
            with _evaluating(self.tokenizer):  # no modality dropout for the teacher
                tok = self.tokenizer(batch, entities, image_features)
            prior = self.prior(tok.boxes, tok.modality)
        x = tok.tokens + prior.to(tok.tokens.dtype)
        layers = self.config.target_layers
        h = self.target["encoder"](x, tok.valid, layers=layers, packing=packing)
        h = F.layer_norm(h.float(), (h.shape[-1],))
        return h.masked_fill(~tok.valid[..., None], 0.0), tok

    @torch.no_grad()
    def encode(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Target-encoder token outputs [B,L,D] (layer-normed; padding = 0) and valid [B,L]."""
        h, tok = self._target_outputs(batch)
        return h, tok.valid

    @property
    def entity_width(self) -> int:
        """Length of an entity vector (``entity_embeddings``)."""
        return self.config.width

    @property
    def tile_width(self) -> int:
        """Length of a tile vector (``tile_embedding``)."""
        return 2 * self.config.width + (self.config.tile_pooling == "max_mean_count")

    def pool(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Tile vectors from token outputs, as ``config.tile_pooling`` says."""
        return pool_tiles(h, valid, count=self.config.tile_pooling == "max_mean_count")

    @torch.no_grad()
    def tile_embedding(self, batch: Any) -> torch.Tensor:
        """[max ‖ mean (‖ log(1+n))] over each tile's real tokens; a tile with no token gets 0."""
        h, valid = self.encode(batch)
        return self.pool(h, valid)

    @torch.no_grad()
    def entity_embeddings(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Entity token outputs [B,E,D] and their validity [B,E] (same order as the batch)."""
        h, tok = self._target_outputs(batch)
        e = tok.n_entity_slots
        return h[:, :e], tok.valid[:, :e]

    # --- training --------------------------------------------------------------------------
    def plan(self, batch: Any, generator: torch.Generator | None = None) -> StepPlan:
        """Masks (drawn from ``generator``) and packings of a training step on ``batch``.

        Made where ``batch`` is: on the host, nothing here waits for an accelerator.
        """
        layout = self.tokenizer.layout(batch)
        masks = self.masker(layout.valid, layout.modality, layout.boxes, generator)
        k = masks.target_index.shape[1]
        rows = torch.cat(
            [
                masks.context_valid.repeat_interleave(k, dim=0),
                masks.target_valid.flatten(0, 1),
            ],
            dim=1,
        )
        return StepPlan(
            masks=masks,
            entities=self.tokenizer.entity_index(batch),
            tokens=Packing.from_valid(layout.valid),
            context=Packing.from_valid(masks.context_valid),
            predictor=Packing.from_valid(rows),
        )

    def forward(
        self,
        batch: Any,
        generator: torch.Generator | None = None,
        plan: StepPlan | None = None,
    ) -> StepOutput:
        """One JEPA step: loss terms for ``batch``.

        ``plan``: its masks and packings, made on the host (`plan`); without it they are made
        here from ``generator``, which waits for the device once or more on a GPU.
        """
        if plan is None:
            plan = self.plan(batch, generator)
        feats = self.tokenizer.image_features(batch)  # a frozen backbone runs once per step
        shapes = self.config.predictor_query == "box_geometry"
        tok = self.tokenizer(batch, plan.entities, feats, with_geometry=shapes)
        with torch.no_grad():
            h, _ = self._target_outputs(batch, plan, feats)
        return self.loss_from_tokens(tok, h, plan)

    def loss_from_tokens(self, tok: TokensLike, h: torch.Tensor, plan: StepPlan) -> StepOutput:
        """Context encoding, batched prediction of all targets and the loss."""
        masks = plan.masks
        b, _, d = tok.tokens.shape
        k, lt = masks.target_index.shape[1:]
        prior = self.prior(tok.boxes, tok.modality).to(tok.tokens.dtype)  # [B,L,D]
        x = tok.tokens + prior
        ctx_x = _gather(x, masks.context_index)
        z = self.encoder(ctx_x, masks.context_valid, packing=plan.context)  # [B,Lc,D]

        # All K targets of all B tiles in one predictor call: repeat each context K times.
        ctx_in = (z + _gather(prior, masks.context_index)).repeat_interleave(k, dim=0)
        ctx_valid = masks.context_valid.repeat_interleave(k, dim=0)
        t_valid = masks.target_valid.reshape(b * k, lt)
        query = prior
        if self.config.predictor_query == "box_geometry":
            if tok.geometry is None:  # ModelSpec refuses the combination; a bare tokenizer
                raise ValueError("predictor_query 'box_geometry': the tokens carry no geometry")
            query = prior + tok.geometry.to(prior.dtype)
        t_query = _gather(query, masks.target_index).reshape(b * k, lt, d)
        pred = self.predictor(ctx_in, ctx_valid, t_query, t_valid, plan.predictor)  # [B*K,Lt,D]
        targets = standardise(h, tok.valid) if self.config.target_norm == "token_batch" else h
        target = _gather(targets, masks.target_index).reshape(b * k, lt, d)  # fp32

        with torch.autocast(device_type=pred.device.type, enabled=False):  # losses in fp32
            per_token = F.smooth_l1_loss(pred.float(), target, beta=1.0, reduction="none")
            w = t_valid.to(torch.float32)
            n_t = w.sum()
            per_token = per_token.mean(-1) * w  # [B*K,Lt]
            if self.config.pred_loss_reduction == "per_target_sum":
                # the paper: each target's mean over its tokens (in the batch), summed over K
                per_target = per_token.view(b, k, lt).sum((0, 2))
                pred_loss = (per_target / w.view(b, k, lt).sum((0, 2)).clamp(min=1)).sum()
            else:
                pred_loss = per_token.sum() / n_t.clamp(min=1)
            token_loss = (per_token.sum() / n_t.clamp(min=1)).detach()
            var_pred, cov_pred = vicreg_terms(pred, t_valid)
            var_ctx, cov_ctx = vicreg_terms(z, masks.context_valid)
            var_loss = self.config.var_weight * (var_pred + var_ctx)
            cov_loss = self.config.cov_weight * (cov_pred + cov_ctx)
            loss = pred_loss + var_loss + cov_loss
        return StepOutput(
            loss=loss,
            pred_loss=pred_loss.detach(),
            reg_pred=(var_pred + cov_pred).detach(),
            reg_context=(var_ctx + cov_ctx).detach(),
            var_loss=var_loss.detach(),
            cov_loss=cov_loss.detach(),
            n_targets=n_t.detach(),
            token_loss=token_loss,
            target_outputs=h,
            target_valid=tok.valid,
            targets=target,
            targets_valid=t_valid,
        )

    # --- persistence (from_pretrained, save_pretrained, push_to_hub: model/pretrained.py) ---
    @classmethod
    def from_spec(cls, spec: ModelSpec, tag_table: torch.Tensor) -> GeoJEPA:
        """A fresh GeoJEPA (its TileTokenizer included, random weights) for ``spec`` (a
        ModelSpec, or a run config, which is one)."""
        return cls(spec.model, TileTokenizer(spec.tokenizer, tag_table), spec.masking)

    def embedding_key(self, key: str) -> bool:
        """Whether state-dict ``key`` is read by embedding (``encode`` and what builds on it):
        the target branch, and with ``ema_scope="encoder"`` the student's tokenizer and prior,
        which the teacher reads. The rest (the student's encoder, the predictor) only trains."""
        shared = () if "tokenizer" in self.target else ("tokenizer.", "prior.")
        return key.startswith(("target.", *shared))

    def weights_to_save(self, compact: bool = False) -> dict[str, torch.Tensor]:
        """The state to store in a model directory: every weight, or (``compact``) only those
        embedding reads (`embedding_key`)."""
        state = self.state_dict()
        return {k: v for k, v in state.items() if not compact or self.embedding_key(k)}

    def require_directory(self) -> ModelDirectory:
        """``directory``, or InputError for a network that was not loaded from a model
        directory (it has no tag vocabulary to read a dataset with)."""
        if self.directory is None:
            raise InputError("this GeoJEPA has no tag vocabulary (load it with from_pretrained)")
        return self.directory


def build_model(spec: ModelSpec, tag_table: torch.Tensor) -> GeoJEPA:
    """A fresh GeoJEPA (its TileTokenizer included, random weights) for ``spec`` (a ModelSpec,
    or a run config, which is one)."""
    return GeoJEPA.from_spec(spec, tag_table)


@contextlib.contextmanager
def _evaluating(module: nn.Module) -> Iterator[None]:
    """``module`` and its children in eval mode for the block, their modes restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.train(False)
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _frozen_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Buffers and parameters that are never trained (shared by the student and the teacher)."""
    frozen: list[tuple[str, torch.Tensor]] = list(module.named_buffers())
    frozen += [(n, p) for n, p in module.named_parameters() if not p.requires_grad]
    return frozen


def pool_tiles(h: torch.Tensor, valid: torch.Tensor, count: bool = False) -> torch.Tensor:
    """[max ‖ mean] over real tokens; padding never enters either statistic.

    ``count`` appends log(1 + number of real tokens): mean and max do not change when a tile
    holds ten times as many of the same things, a count task needs to know.
    """
    m = valid[..., None]
    n = m.sum(1).to(h.dtype)
    mean = h.masked_fill(~m, 0.0).sum(1) / n.clamp(min=1)
    mx = h.masked_fill(~m, -math.inf).amax(1)
    mx = torch.where(valid.any(1, keepdim=True), mx, torch.zeros_like(mx))
    parts = [mx, mean, torch.log1p(n)] if count else [mx, mean]
    return torch.cat(parts, dim=-1)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
