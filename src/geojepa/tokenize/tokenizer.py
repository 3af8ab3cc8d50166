"""`TileTokenizer`: a `TileBatch` → `Tokens` (content embeddings; no position/modality prior).

Token columns: ``[:, :E]`` one per entity slot (batch order), then, when the tokenizer uses
images and the batch has any, one whole-image token and the patch tokens. Every token is
computed from its own entity/tile only, so a tile's tokens do not depend on the rest of the
batch (in eval mode), and padding is zero with ``valid=False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from geojepa.config import Config
from geojepa.constants import MAX_ENTITIES
from geojepa.tokenize.batch import TileBatch
from geojepa.tokenize.geometry import N_SCALARS
from geojepa.tokenize.image import TILE_BOX, PatchEmbedding, TimmBackbone, patch_boxes
from geojepa.tokenize.tags import DEFAULT_TEXT_MODEL, PAD, UNKNOWN

ENTITY, IMAGE_PATCH, IMAGE_WHOLE = 0, 1, 2


class TokenizerConfig(Config):
    """What an entity/image token is made of. Defaults: tags + geometry (the paper's GT)."""

    text_model: str = Field(DEFAULT_TEXT_MODEL, description="sentence-transformers model/path")
    width: int = Field(384, ge=8, description="token width D (= model width)")
    use_tags: bool = True
    use_geometry: bool = True
    use_image: bool = False
    image_size: int = Field(224, ge=8, description="images are resized to this side")
    patch_size: int = Field(16, ge=2)
    image_backbone: str | None = Field(None, description="timm model name (frozen); None=learned")
    image_checkpoint: str | None = Field(None, description="local checkpoint of image_backbone")
    geometry_points: int = Field(16, ge=2, description="outline samples per entity")
    geometry_hidden: int = Field(256, ge=8, description="hidden width of the geometry MLP")
    fusion: Literal["sum", "concat"] = "sum"
    modality_dropout: float = Field(
        0.1, ge=0.0, le=0.5, description="training: P(drop tags) = P(drop geometry), never both"
    )
    max_entities: int = Field(
        MAX_ENTITIES, ge=1, description="entities kept per tile (seeded choice above it)"
    )
    max_tags: int = Field(32, ge=1, description="tags kept per entity (first ones)")

    @model_validator(mode="after")
    def _check(self) -> TokenizerConfig:
        if not (self.use_tags or self.use_geometry or self.use_image):
            raise ValueError("at least one of use_tags, use_geometry, use_image must be true")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size")
        return self

    @property
    def use_entities(self) -> bool:
        return self.use_tags or self.use_geometry

    @property
    def n_image_tokens(self) -> int:
        return 1 + (self.image_size // self.patch_size) ** 2


@dataclass
class TokenLayout:
    """Where each token of a batch sits and what it is, without its content: a function of the
    batch alone, so the masks and packings of a step can be made on the host."""

    boxes: torch.Tensor  # float [B, L, 8]
    modality: torch.Tensor  # long [B, L]
    valid: torch.Tensor  # bool [B, L]
    n_entity_slots: int


@dataclass
class Tokens:
    tokens: torch.Tensor  # float [B, L, D] content embeddings (no position/modality prior)
    boxes: torch.Tensor  # float [B, L, 8] tile-local box of each token (patches: their square)
    modality: torch.Tensor  # long [B, L]: 0 = entity, 1 = image patch, 2 = whole-image token
    valid: torch.Tensor  # bool [B, L]; False = padding
    n_entity_slots: int  # token columns [:, :E] are entities, then image tokens if any
    # float [B, L, D]: each entity token's geometry part alone (image tokens and padding: 0);
    # None unless asked for (``with_geometry``) and read. What a predictor may be told of a target
    # besides its box (``model.predictor_query = "box_geometry"``).
    geometry: torch.Tensor | None = None


class TileTokenizer(nn.Module):
    """Entity tokens = fusion of a tag embedding and a geometry embedding; image tokens."""

    def __init__(self, config: TokenizerConfig, tag_table: torch.Tensor) -> None:
        super().__init__()
        self.config = config
        self.packed = True  # GeoJEPA.set_packed(False) computes padding slots too
        d = config.width
        # Frozen text table: a buffer (saved with the model, never trained or decayed).
        self.register_buffer("tag_table", tag_table.detach().float().clone(), persistent=True)
        d_text = tag_table.shape[1]
        if config.use_tags:
            self.unknown_tag = nn.Parameter(torch.randn(d_text) * 0.02)
            self.tag_norm = nn.LayerNorm(d_text)
            self.tag_proj = nn.Linear(d_text, d)
        if config.use_geometry:
            p = config.geometry_points
            self.geometry_mlp = nn.Sequential(
                nn.Linear(2 * p + N_SCALARS, config.geometry_hidden),
                nn.GELU(),
                nn.Linear(config.geometry_hidden, config.geometry_hidden),
                nn.GELU(),
                nn.Linear(config.geometry_hidden, d),
            )
        if config.use_tags and config.use_geometry:
            # Stand-ins for a dropped modality during training (modality dropout).
            self.missing_tags = nn.Parameter(torch.zeros(d))
            self.missing_geometry = nn.Parameter(torch.zeros(d))
            if config.fusion == "concat":
                self.fuse = nn.Linear(2 * d, d)
        if config.use_image:
            if config.image_backbone:
                self.image_encoder: nn.Module = TimmBackbone(
                    config.image_backbone,
                    config.image_checkpoint,
                    d,
                    config.image_size,
                    config.patch_size,
                )
            else:
                self.image_encoder = PatchEmbedding(d, config.image_size, config.patch_size)
            self.register_buffer("image_boxes", image_token_boxes(config), persistent=False)

    def tag_embedding(self, tag_ids: torch.Tensor) -> torch.Tensor:
        """[..., T] → [..., D]: layer-norm(sum of tag vectors), projected."""
        lead, t = tag_ids.shape[:-1], tag_ids.shape[-1]
        # embedding_bag sums without materialising [..., T, D_text]; rows PAD and UNKNOWN of
        # the frozen table are zero, and each UNKNOWN adds the learned vector instead.
        summed = nn.functional.embedding_bag(
            tag_ids.reshape(-1, t), self.tag_table, mode="sum", padding_idx=PAD
        ).view(*lead, -1)
        n_unknown = (tag_ids == UNKNOWN).sum(dim=-1, keepdim=True).to(summed.dtype)
        summed = summed + n_unknown * self.unknown_tag.to(summed.dtype)
        return self.tag_proj(self.tag_norm(summed))

    def geometry_embedding(self, geometry: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        """[..., P, 2] + [..., S] → [..., D]."""
        x = torch.cat([geometry.flatten(-2), scalars], dim=-1)
        return self.geometry_mlp(x)

    def entity_tokens(
        self, batch: TileBatch, index: torch.Tensor | None = None, with_geometry: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Entity tokens [B, E, D] and, when ``with_geometry``, their geometry part alone
        [B, E, D] (else None); computed on the real entities only when ``packed`` (the default).

        ``index``: the flat positions of the real entity slots when already known (made on
        the host by `entity_index`, so that the device is not waited for).
        """
        cfg = self.config
        ev = batch.entity_valid
        b, e = ev.shape
        if self.packed:
            index = self.entity_index(batch) if index is None else index
        else:  # every slot, padding included (the padded layout, for comparison)
            index = torch.arange(b * e, device=ev.device)

        def pack(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(b * e, *x.shape[2:]).index_select(0, index)

        def unpack(x: torch.Tensor) -> torch.Tensor:
            full = x.new_zeros(b * e, x.shape[-1])
            full.index_copy_(0, index, x)
            return full.view(b, e, -1)

        tags = self.tag_embedding(pack(batch.tag_ids)) if cfg.use_tags else None
        geom = (
            self.geometry_embedding(pack(batch.geometry), pack(batch.geometry_scalars))
            if cfg.use_geometry
            else None
        )
        if tags is None or geom is None:
            out = tags if geom is None else geom
        else:
            if self.training and cfg.modality_dropout > 0:
                # One uniform draw per entity slot: [0, p) drops tags, [p, 2p) drops geometry
                # (p ≤ 0.5), so each is dropped with probability p and never both.
                u = pack(torch.rand((b, e), device=ev.device))
                drop_tags = (u < cfg.modality_dropout)[..., None]
                drop_geom = ((u >= cfg.modality_dropout) & (u < 2 * cfg.modality_dropout))[
                    ..., None
                ]
                tags = torch.where(drop_tags, self.missing_tags.to(tags.dtype), tags)
                geom = torch.where(drop_geom, self.missing_geometry.to(geom.dtype), geom)
            out = (
                self.fuse(torch.cat([tags, geom], dim=-1))
                if cfg.fusion == "concat"
                else tags + geom
            )
        return unpack(out), (unpack(geom) if with_geometry and geom is not None else None)

    @staticmethod
    def entity_index(batch: TileBatch) -> torch.Tensor:
        """Flat positions ``b·E + e`` of the real entity slots (a ``nonzero``: on a GPU it
        waits for the device, so a training step gets it made on the host)."""
        return batch.entity_valid.reshape(-1).nonzero().squeeze(1)

    def uses_image(self, batch: TileBatch) -> bool:
        return self.config.use_image and batch.image is not None

    def layout(self, batch: TileBatch) -> TokenLayout:
        """Boxes, modality and validity of every token column (see the module docstring)."""
        cfg = self.config
        b = len(batch.region_ids)
        device = batch.entity_valid.device
        boxes, modality, valid = [], [], []
        n_entity = 0
        if cfg.use_entities:
            ev = batch.entity_valid
            n_entity = ev.shape[1]
            boxes.append(batch.entity_box.float() * ev[..., None])
            modality.append(torch.full((b, n_entity), ENTITY, dtype=torch.long, device=device))
            valid.append(ev)
        if self.uses_image(batch):
            n_img = cfg.n_image_tokens
            img_boxes = self.image_boxes
            if img_boxes.device != device:  # a layout made on the host for a model on a GPU
                img_boxes = image_token_boxes(cfg).to(device)
            boxes.append(img_boxes.unsqueeze(0).expand(b, -1, -1))
            mod = torch.full((n_img,), IMAGE_PATCH, dtype=torch.long, device=device)
            mod[0] = IMAGE_WHOLE
            modality.append(mod.unsqueeze(0).expand(b, -1))
            valid.append(batch.image_valid[:, None].expand(b, n_img))
        if not valid:  # image-only tokenizer on a batch without imagery
            return TokenLayout(
                torch.zeros(b, 0, 8, device=device),
                torch.zeros(b, 0, dtype=torch.long, device=device),
                torch.zeros(b, 0, dtype=torch.bool, device=device),
                0,
            )
        return TokenLayout(
            torch.cat(boxes, dim=1), torch.cat(modality, dim=1), torch.cat(valid, dim=1), n_entity
        )

    def image_features(self, batch: TileBatch) -> torch.Tensor | None:
        """The frozen part of the image encoder's work (a frozen backbone's features), or None
        when this tokenizer reads no image of this batch; see `forward`."""
        return self.image_encoder.frozen_features(batch.image) if self.uses_image(batch) else None

    def forward(
        self,
        batch: TileBatch,
        entities: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        with_geometry: bool = False,
    ) -> Tokens:
        """Tokens of ``batch``. ``entities``: `entity_index` of the batch when already known;
        ``image_features``: `image_features` of the batch, when already computed (by the other
        branch of a training step: the student and the teacher share the frozen backbone);
        ``with_geometry``: also each entity's geometry part alone (`Tokens.geometry`), for a
        predictor told the targets' shapes — made only when asked, off the default paths."""
        layout = self.layout(batch)
        b = layout.valid.shape[0]
        tokens, geometry = [], None
        if self.config.use_entities:
            ev = batch.entity_valid[..., None]
            entity, geometry = self.entity_tokens(batch, entities, with_geometry)
            tokens.append(entity * ev)
            geometry = geometry * ev if geometry is not None else None
        if self.uses_image(batch):
            whole, patches = self.image_encoder(batch.image, image_features)
            image = torch.cat([whole, patches], dim=1) * batch.image_valid[:, None, None]
            tokens.append(image)
            if geometry is not None:  # image tokens have no geometry of their own
                geometry = torch.cat([geometry, torch.zeros_like(image)], dim=1)
        device = batch.entity_valid.device
        content = (
            torch.cat(tokens, dim=1)
            if tokens
            else torch.zeros(b, 0, self.config.width, device=device)
        )
        return Tokens(
            content, layout.boxes, layout.modality, layout.valid, layout.n_entity_slots, geometry
        )


def image_token_boxes(config: TokenizerConfig) -> torch.Tensor:
    """[1 + N, 8]: the whole tile for the whole-image token, then the patch squares."""
    return torch.cat([torch.tensor([TILE_BOX]), patch_boxes(config.image_size, config.patch_size)])
