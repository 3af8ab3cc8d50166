"""Collate: tokenised tiles (`TileArrays`) → one padded `TileBatch` of torch tensors.

Vectorised: the ragged entity and tag arrays are scattered into zero-padded tensors with one
index per entity and per tag, no Python loop over tiles. Padding is zero everywhere (``PAD``
tag ids, empty outlines and boxes) and ``entity_valid`` marks the real entities.
"""

from __future__ import annotations

import numpy as np
import torch

from geojepa.errors import InputError
from geojepa.tokenize.batch import TileBatch
from geojepa.tokenize.geometry import N_SCALARS
from geojepa.tokenize.shards import TileArrays, run_starts


def collate(arrays: TileArrays, image_size: int | None) -> TileBatch:
    """All tiles of ``arrays`` → one padded `TileBatch` (entities padded to the batch max)."""
    b = len(arrays)
    counts = arrays.ent_count
    e = max(1, int(counts.max(initial=0)))
    n_ent = int(counts.sum())
    row = np.repeat(np.arange(b), counts)
    col = np.arange(n_ent) - np.repeat(run_starts(counts), counts)
    p = arrays.geometry.shape[1]

    valid = np.zeros((b, e), dtype=bool)
    valid[row, col] = True
    geometry = np.zeros((b, e, p, 2), dtype=np.float32)
    geometry[row, col] = arrays.geometry
    scalars = np.zeros((b, e, N_SCALARS), dtype=np.float32)
    scalars[row, col] = arrays.scalars
    boxes = np.zeros((b, e, 8), dtype=np.float32)
    boxes[row, col] = arrays.boxes

    tc = arrays.tag_count
    t = max(1, int(tc.max(initial=0)))
    trow = np.repeat(np.arange(n_ent), tc)
    tcol = np.arange(len(arrays.tag_ids)) - np.repeat(run_starts(tc), tc)
    ent_tags = np.zeros((n_ent, t), dtype=np.int64)
    ent_tags[trow, tcol] = arrays.tag_ids
    tag_ids = np.zeros((b, e, t), dtype=np.int64)
    tag_ids[row, col] = ent_tags

    has_image = np.array([img is not None for img in arrays.images], dtype=bool)
    image = None
    if image_size is not None and has_image.any():
        npx = image_size * image_size * 3
        have = np.flatnonzero(has_image)
        raws = [arrays.images[i] for i in have]
        bad = [i for i, raw in zip(have, raws, strict=True) if len(raw) != npx]
        if bad:
            i = bad[0]
            raise InputError(
                f"tile {arrays.region_ids[i]}: image has {len(arrays.images[i])} bytes, "
                f"expected {npx} ({image_size}×{image_size}×3)"
            )
        pixels = np.zeros((b, image_size, image_size, 3), dtype=np.uint8)
        shape = (len(have), image_size, image_size, 3)
        pixels[have] = np.frombuffer(b"".join(raws), dtype=np.uint8).reshape(shape)
        image = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()

    split = np.cumsum(counts)[:-1]
    return TileBatch(
        region_ids=[str(r) for r in arrays.region_ids],
        feature_ids=[f.tolist() for f in np.split(arrays.feature_ids, split)],
        entity_valid=torch.from_numpy(valid),
        tag_ids=torch.from_numpy(tag_ids),
        geometry=torch.from_numpy(geometry),
        geometry_scalars=torch.from_numpy(scalars),
        entity_box=torch.from_numpy(boxes),
        image=image,
        image_valid=torch.from_numpy(has_image & (image is not None)),
    )
