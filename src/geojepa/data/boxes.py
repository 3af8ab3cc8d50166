"""Minimum rotated bounding boxes as the 8 numbers of `geojepa.data.schema` (vectorised).

The one implementation of the box (`prepare` writes it; the tokenizer's synthetic data and
tests use it too). The minimum-area rectangle comes from rotating calipers over the convex
hull, with a stated tie rule, because a near-square or round shape has several rectangles of
(nearly) equal area and GEOS's ``oriented_envelope`` picked among them by float noise: the
same data gave other boxes on CPUs without AVX-512. Every box is rebuilt from a centre, a
unit axis and two side lengths, each side grown to at least ``MIN_BOX_SIDE`` (so no box is
degenerate and points get a small square), and its corners put in the one documented order.
"""

from __future__ import annotations

import itertools

import numpy as np
import shapely

from geojepa.data.schema import MIN_BOX_SIDE

#: rectangles whose areas differ by less than this (relative) are tied
_TIE_RTOL = 1e-6
#: (hull edge, hull vertex) pairs projected at once: bounds memory (~100 MB a chunk)
_PAIRS_PER_CHUNK = 2_000_000


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
    geoms = np.asarray(geoms, dtype=object).reshape(-1)
    n = len(geoms)
    if n == 0:
        return np.zeros((0, 8))
    centre, u, len1, len2 = hull_frames(geoms)
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


def hull_frames(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre, unit axis and the two side lengths of each geometry's minimum-area rectangle.

    Rotating calipers over the convex hull: one candidate rectangle per hull edge direction.
    Near-ties (areas within ``_TIE_RTOL``) go to the direction with the smallest angle modulo
    90°, so the choice does not flip with the last bits of the input (GEOS's
    ``oriented_envelope`` picks among tied rectangles by float noise, which differs between
    CPUs with and without AVX-512).
    """
    n = len(geoms)
    coords, index = shapely.get_coordinates(shapely.convex_hull(geoms), return_index=True)
    # edges: consecutive hull coordinates of the same geometry (points have none)
    same = index[1:] == index[:-1]
    e_geom = index[:-1][same]
    delta = (coords[1:] - coords[:-1])[same]
    keep = np.hypot(delta[:, 0], delta[:, 1]) > 0
    e_geom, delta = e_geom[keep], delta[keep]
    theta = np.mod(np.arctan2(delta[:, 1], delta[:, 0]), np.pi / 2)
    theta[theta > np.pi / 2 - 1e-12] = 0.0  # the same orientation as 0
    # every (edge, vertex of its geometry) pair, in chunks that bound memory
    v_count = np.bincount(index, minlength=n)
    # first hull vertex of each geometry (an empty geometry has none: any valid row, size 0)
    v_start = np.minimum(np.searchsorted(index, np.arange(n)), max(len(coords) - 1, 0))
    lo_u = np.empty(len(e_geom))
    hi_u, lo_v, hi_v = np.empty_like(lo_u), np.empty_like(lo_u), np.empty_like(lo_u)
    per_edge = v_count[e_geom]
    ends = np.cumsum(per_edge)
    chunk_edges = np.searchsorted(
        ends, np.arange(_PAIRS_PER_CHUNK, ends[-1] if len(ends) else 0, _PAIRS_PER_CHUNK)
    )
    bounds = np.unique(np.r_[0, chunk_edges, len(e_geom)])
    for a, b in itertools.pairwise(bounds):
        counts = per_edge[a:b]
        edge = np.repeat(np.arange(a, b), counts)
        offset = np.arange(len(edge)) - np.repeat(np.cumsum(counts) - counts, counts)
        pts = coords[v_start[e_geom[edge]] + offset]
        c, s = np.cos(theta[edge]), np.sin(theta[edge])
        pu = pts[:, 0] * c + pts[:, 1] * s
        pv = -pts[:, 0] * s + pts[:, 1] * c
        starts = np.cumsum(counts) - counts
        lo_u[a:b] = np.minimum.reduceat(pu, starts)
        hi_u[a:b] = np.maximum.reduceat(pu, starts)
        lo_v[a:b] = np.minimum.reduceat(pv, starts)
        hi_v[a:b] = np.maximum.reduceat(pv, starts)
    area = (hi_u - lo_u) * (hi_v - lo_v)
    best_area = np.full(n, np.inf)
    np.minimum.at(best_area, e_geom, area)
    tied = area <= best_area[e_geom] * (1.0 + _TIE_RTOL) + 1e-300
    # among the tied edges of a geometry: the smallest angle (then the first edge)
    pick = np.full(n, -1)
    order = np.lexsort((theta, ~tied, e_geom))
    first = np.r_[True, e_geom[order][1:] != e_geom[order][:-1]] if len(order) else order
    pick[e_geom[order][first]] = order[first]
    # geometries without an edge (points): an axis-aligned frame at the point
    has = pick >= 0
    p = pick[has]
    ang = np.zeros(n)
    ang[has] = theta[p]
    u = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    v = np.stack([-u[:, 1], u[:, 0]], axis=1)
    len_u, len_v = np.zeros(n), np.zeros(n)
    anchor = coords[v_start] if len(coords) else np.zeros((n, 2))
    mid_u, mid_v = anchor[:, 0].copy(), anchor[:, 1].copy()  # a point: the point itself
    len_u[has], len_v[has] = hi_u[p] - lo_u[p], hi_v[p] - lo_v[p]
    mid_u[has], mid_v[has] = (hi_u[p] + lo_u[p]) / 2, (hi_v[p] + lo_v[p]) / 2
    centre = mid_u[:, None] * u + mid_v[:, None] * v
    return centre, u, len_u, len_v
