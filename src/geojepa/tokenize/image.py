"""Image tokens: a learned ViT-style patch embedding (default) or a frozen timm backbone.

Either way a tile image becomes one whole-image token followed by (size/patch)² patch tokens in
row-major order (row 0 = north), each with its square in tile-local coordinates as its box.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from geojepa.errors import ConfigError, InputError
from geojepa.optional import require

#: ImageNet statistics: the usual input normalisation, so a pretrained backbone sees what it
#: was trained on and the learned embedding starts from centred inputs.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

#: Box of the whole tile (the whole-image token), schema corner order.
TILE_BOX = (0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0)


def patch_boxes(image_size: int, patch_size: int) -> torch.Tensor:
    """[N, 8] squares of the patches (row-major) in tile-local coordinates, schema corner order
    (top-left, top-right, bottom-right, bottom-left; y grows south like image rows)."""
    if image_size % patch_size:
        raise ConfigError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    g = image_size // patch_size
    edges = torch.arange(g + 1, dtype=torch.float32) / g
    y0, x0 = torch.meshgrid(edges[:-1], edges[:-1], indexing="ij")
    y1, x1 = torch.meshgrid(edges[1:], edges[1:], indexing="ij")
    boxes = torch.stack([x0, y0, x1, y0, x1, y1, x0, y1], dim=-1)
    return boxes.reshape(g * g, 8)


def normalise_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [B, 3, H, W] → float [B, 3, size, size], ImageNet-normalised (resized if needed)."""
    x = image.float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    mean = x.new_tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class PatchEmbedding(nn.Module):
    """Learned patch embedding: conv with stride = patch, plus a whole-image token that is a
    projection of the mean of the patch embeddings."""

    def __init__(self, width: int, image_size: int = 224, patch_size: int = 16) -> None:
        super().__init__()
        patch_boxes(image_size, patch_size)  # validates the sizes
        self.image_size = image_size
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(width)
        self.whole = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width))

    def frozen_features(self, image: torch.Tensor) -> torch.Tensor:
        """The part without learned weights (normalised, resized pixels), shared by the student
        and the teacher of a step."""
        return normalise_image(image, self.image_size)

    def forward(
        self, image: torch.Tensor, features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [B, 3, H, W] → (whole-image token [B, 1, D], patches [B, N, D]).

        ``features``: ``frozen_features(image)`` when the caller already has them.
        """
        x = self.proj(self.frozen_features(image) if features is None else features)
        patches = self.norm(x.flatten(2).transpose(1, 2))
        whole = self.whole(patches.mean(dim=1, keepdim=True))
        return whole, patches


class TimmBackbone(nn.Module):
    """A frozen timm ViT from a local checkpoint, then a trained linear projection to width.

    Its class token becomes the whole-image token and its patch tokens the patches. timm is
    optional: it is imported only here. The backbone stays in eval mode even when the module
    is switched to training (a frozen backbone must not update norm statistics or use dropout).
    """

    def __init__(
        self,
        name: str,
        checkpoint: str | Path | None,
        width: int,
        image_size: int = 224,
        patch_size: int = 16,
    ) -> None:
        super().__init__()
        if checkpoint is None:  # a frozen backbone with random weights would never learn
            raise ConfigError(
                f"the frozen image backbone {name!r} needs its pretrained weights: set "
                "tokenizer.image_checkpoint to a local checkpoint file (nothing is downloaded)"
            )
        timm = require("timm", "image_backbone", "imagery")
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise InputError(f"image backbone checkpoint not found: {checkpoint}")
        try:
            self.backbone = timm.create_model(
                name,
                pretrained=False,
                num_classes=0,
                img_size=image_size,
                checkpoint_path=str(checkpoint) if checkpoint else "",
            )
        except Exception as exc:  # report any model/checkpoint mismatch plainly
            raise ConfigError(f"cannot build timm model {name!r}: {exc}") from None
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.image_size = image_size
        self.n_patches = (image_size // patch_size) ** 2
        self.proj = nn.Linear(self.backbone.num_features, width)

    def train(self, mode: bool = True) -> TimmBackbone:
        super().train(mode)
        self.backbone.eval()
        return self

    @torch.no_grad()
    def frozen_features(self, image: torch.Tensor) -> torch.Tensor:
        """The frozen backbone's token features [B, prefix + N, C]: computed once per training
        step and shared by the student and the teacher (they hold the same frozen weights)."""
        feats = self.backbone.forward_features(normalise_image(image, self.image_size))
        if feats.ndim != 3 or feats.shape[1] < self.n_patches + 1:
            raise ConfigError(
                f"image backbone gives features {tuple(feats.shape)}; expected "
                f"[B, prefix + {self.n_patches}, C] (a ViT with patch size matching patch_size)"
            )
        return feats

    def forward(
        self, image: torch.Tensor, features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [B, 3, H, W] → (whole-image token [B, 1, D], patches [B, N, D]).

        ``features``: ``frozen_features(image)`` when the caller already has them.
        """
        feats = self.proj(self.frozen_features(image) if features is None else features)
        return feats[:, :1], feats[:, -self.n_patches :]
