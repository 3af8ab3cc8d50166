"""`TileBatch`: what the collate function hands to the tokenizer (CPU tensors, padded)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class TileBatch:
    """B tiles, entities padded to the batch maximum E, tags padded to the batch maximum T.

    ``entity_valid`` is the single source of truth for padding: padded entity slots hold zeros
    (tag id 0 = padding row, zero geometry) and must never be attended, pooled or scored.
    """

    region_ids: list[str]  # B tiles, "z/x/y"
    feature_ids: list[list[str]]  # per tile, its real entities in token order
    entity_valid: torch.Tensor  # bool [B, E]; False = padding
    tag_ids: torch.Tensor  # long [B, E, T]; rows of the tag table, 0 = padding
    geometry: torch.Tensor  # float [B, E, P, 2] outline in the entity's own box frame
    geometry_scalars: torch.Tensor  # float [B, E, S]
    entity_box: torch.Tensor  # float [B, E, 8] tile-local corners, schema.py order
    image: torch.Tensor | None  # uint8 [B, 3, H, W], or None when no tile has imagery
    image_valid: torch.Tensor  # bool [B]

    def __len__(self) -> int:
        return len(self.region_ids)

    def _map(self, fn) -> TileBatch:
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            values[f.name] = fn(v) if isinstance(v, torch.Tensor) else v
        return TileBatch(**values)

    def to(self, device: torch.device | str, non_blocking: bool | None = None) -> TileBatch:
        """A copy with every tensor on ``device`` (the string lists are shared).

        Copies to a CUDA device are non-blocking by default (Lightning calls ``to(device)``
        without the flag on objects that are not tensors): from pinned memory they overlap
        with compute.
        """
        if non_blocking is None:
            non_blocking = torch.device(device).type == "cuda"
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> TileBatch:
        """Pinned copy; called by DataLoader(pin_memory=True) for faster host→GPU copies."""
        return self._map(lambda t: t.pin_memory())
