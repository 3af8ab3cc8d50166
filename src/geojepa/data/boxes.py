"""Minimum rotated bounding boxes as the 8 numbers of `geojepa.data.schema` (vectorised).

GEOS gives the minimum-area rectangle (``shapely.oriented_envelope``); it degenerates to a
segment for straight lines and to a point for points. We rebuild every box from a centre, a
unit axis and two side lengths, grow each side to at least ``MIN_BOX_SIDE`` (so no box is
degenerate and points get a small square), then put the corners in the one documented order.
"""

from __future__ import annotations

import numpy as np
import shapely

from geojepa.data.schema import MIN_BOX_SIDE


def order_corners(corners: np.ndarray) -> np.ndarray:
    """Reorder ``(N, 4, 2)`` rectangle corners into the schema order.

    Corner 0 has the smallest ``x + y`` (ties: smaller y); the rest follow clockwise on screen
    (y down), which is counter-clockwise in the usual y-up sense: positive shoelace area.
    """
    corners = np.asarray(corners, dtype=np.float64)
    x, y = corners[..., 0], corners[..., 1]
    area2 = np.sum(x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y, axis=1)
    corners = np.where((area2 < 0)[:, None, None], corners[:, ::-1], corners)
    s = corners[..., 0] + corners[..., 1]
    # smallest x+y; ties (a box at 45°, up to float noise) broken by the smaller y
    tied = s <= s.min(axis=1, keepdims=True) + 1e-9
    ykey = np.where(tied, corners[..., 1], np.inf)
    start = np.argmin(ykey, axis=1)
    idx = (start[:, None] + np.arange(4)[None, :]) % 4
    return np.take_along_axis(corners, idx[..., None], axis=1)


def min_rotated_boxes(geoms: np.ndarray, min_side: float = MIN_BOX_SIDE) -> np.ndarray:
    """``(N, 8)`` float64 boxes (schema corner order, sides >= ``min_side``) of ``geoms``."""
    geoms = np.asarray(geoms, dtype=object)
    n = len(geoms)
    if n == 0:
        return np.zeros((0, 8))
    # a point is its own envelope: only the others go through GEOS's rotating calipers
    env = geoms.copy()
    other = np.flatnonzero(shapely.get_type_id(geoms) != 0)
    env[other] = shapely.oriented_envelope(geoms[other])
    coords, index = shapely.get_coordinates(env, return_index=True)
    counts = np.bincount(index, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # p0, p1, p3 of a rectangle ring (5 coords); segment: p0, p1; point: p0 only
    p0 = coords[starts]
    p1 = coords[starts + np.minimum(counts - 1, 1)]
    p3 = np.where((counts >= 4)[:, None], coords[starts + np.minimum(counts - 1, 3)], p0)
    e1 = p1 - p0
    e2 = p3 - p0
    len1 = np.hypot(e1[:, 0], e1[:, 1])
    len2 = np.hypot(e2[:, 0], e2[:, 1])
    centre = p0 + (e1 + e2) / 2.0
    safe = len1 > 0
    u = np.where(safe[:, None], e1 / np.where(safe, len1, 1.0)[:, None], [1.0, 0.0])
    v = np.stack([-u[:, 1], u[:, 0]], axis=1)
    h1 = np.maximum(len1, min_side)[:, None] / 2.0
    h2 = np.maximum(len2, min_side)[:, None] / 2.0
    corners = np.stack(
        [
            centre - h1 * u - h2 * v,
            centre + h1 * u - h2 * v,
            centre + h1 * u + h2 * v,
            centre - h1 * u + h2 * v,
        ],
        axis=1,
    )
    return order_corners(corners).reshape(n, 8)
