"""Resampling a raster window onto a tile's pixel grid: a grid of exactly projected control
points upsampled to every pixel, then bilinear sampling that respects invalid pixels.

Plain numpy and elementwise on purpose (a BLAS call here spawns threads that fight the worker
processes), in float32 throughout (a float64 promotion doubles the cost).
"""

from __future__ import annotations

import numpy as np


def upsample_grid(grid: np.ndarray, size: int) -> np.ndarray:
    """Linearly interpolate [C, n, n] evenly spaced samples onto [C, size, size] points.

    Elementwise on purpose: a BLAS matmul here spawns threads that fight the worker processes.
    """
    n = grid.shape[-1]
    if n == 1:
        return np.broadcast_to(grid, (*grid.shape[:-2], size, size)).copy()
    t = np.arange(size) * ((n - 1) / max(size - 1, 1))
    k = np.minimum(t.astype(np.intp), n - 2)
    f = (t - k).astype(grid.dtype)
    g = 1 - f
    cols = np.take(grid, k, axis=-1) * g + np.take(grid, k + 1, axis=-1) * f
    return np.take(cols, k, axis=-2) * g[:, None] + np.take(cols, k + 1, axis=-2) * f[:, None]


def bilinear(
    data: np.ndarray, mask: np.ndarray, cols: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``data`` [B, h, w] at float32 array coordinates (pixel centres at i + 0.5).

    Invalid or outside neighbours get no weight and the rest are renormalised; an output pixel
    is valid when the source pixel under it is, which puts a nodata or raster edge exactly
    where it is in the source. Returns float32 [B, H, W] and bool [H, W].
    """
    bands, h, w = data.shape
    # Common case first: every neighbour exists and is valid, so no weights need checking.
    plain = bool(
        mask.all()
        and min(cols.min(), rows.min()) >= 0.5
        and cols.max() < w - 0.5
        and rows.max() < h - 0.5
    )
    if plain:
        stride, shift, flat_weights = w, np.float32(-0.5), None
        flat = data.reshape(bands, -1)
    else:
        # One invalid pixel of padding on every side keeps every neighbour index in range.
        stride, shift = w + 2, np.float32(0.5)
        padded = np.zeros((bands, h + 2, stride), data.dtype)
        padded[:, 1:-1, 1:-1] = data
        if data.dtype.kind == "f":
            padded[:, 1:-1, 1:-1][:, ~mask] = 0  # NaN times a zero weight would still be NaN
        weights = np.zeros((h + 2, stride), np.float32)
        weights[1:-1, 1:-1] = mask
        flat, flat_weights = padded.reshape(bands, -1), weights.ravel()
    # (all in float32: a float64 promotion here doubles the cost of the whole function)
    fx, fy = cols.ravel() + shift, rows.ravel() + shift
    if not plain:
        fx, fy = clamp(fx, w + 0.999), clamp(fy, h + 0.999)
    x0, y0 = np.floor(fx), np.floor(fy)
    wx, wy = fx - x0, fy - y0
    corner = y0.astype(np.intp) * stride + x0.astype(np.intp)
    acc = np.zeros((bands, fx.size), np.float32)
    total = np.zeros(fx.size, np.float32)
    for offset, wk in (
        (0, (1 - wx) * (1 - wy)),
        (1, wx * (1 - wy)),
        (stride, (1 - wx) * wy),
        (stride + 1, wx * wy),
    ):
        index = corner + offset
        if flat_weights is not None:
            wk *= np.take(flat_weights, index)
            total += wk
        for b in range(bands):  # 1-D take is several times faster than 2-D fancy indexing
            acc[b] += np.take(flat[b], index) * wk
    if flat_weights is None:
        return acc.reshape(bands, *cols.shape), np.ones(cols.shape, bool)
    # valid iff the source pixel under the sample point is: edges stay where they are
    nearest = corner + (wx >= 0.5) + stride * (wy >= 0.5)
    valid = np.take(flat_weights, nearest) > 0
    acc /= np.maximum(total, np.float32(1e-6))
    return acc.reshape(bands, *cols.shape), valid.reshape(cols.shape)


def clamp(values: np.ndarray, high: float) -> np.ndarray:
    """Clamp to [0, high] in place (np.clip is several times slower on small float32 arrays)."""
    np.maximum(values, np.float32(0.0), out=values)
    return np.minimum(values, np.float32(high), out=values)
