"""Shape features of entities in their own minimum-rotated-box frame (numpy, vectorised).

An entity's *position, size and orientation* in the tile are carried by its 8-number box (the
model's position prior); these features describe its *shape* independently of where it is:

* ``outline`` [N, P, 2]: the entity's path resampled to P points at equal arc length, expressed
  in its box frame: x along the long side, y along the short side, each divided by that half
  side (so in [-1, 1]; a straight line has y = 0). The path is the exterior ring of a polygon,
  the line itself, or every part in turn for multi-geometries (arc length is not counted across
  the gap between parts: parts are never glued together). Geometries of zero length (points,
  multipoints) spread the P samples over their vertices. The sign of each axis is fixed by the
  third moment of the samples, so the features do not change when the entity is rotated or
  translated (mirror images share features).
* ``scalars`` [N, S] (names in :data:`SCALAR_NAMES`): kind one-hot (point, line, polygon,
  multi), dimension, log area, log length, log box sides, elongation, fill ratio, log vertex /
  part / hole counts, all scaled to roughly [-1, 1]. Because sizes are scalars, points and
  two-node lines of different lengths get different features even though all of their outlines
  look alike in their own frame.
"""

from __future__ import annotations

import numpy as np
import shapely

from geojepa.data.boxes import hull_frames, min_rotated_boxes
from geojepa.data.schema import MIN_BOX_SIDE

SCALAR_NAMES = (
    "is_point",
    "is_line",
    "is_polygon",
    "is_multi",
    "dimension",
    "log_area",
    "log_length",
    "log_long_side",
    "log_short_side",
    "elongation",
    "fill",
    "log_vertices",
    "log_parts",
    "log_holes",
)
N_SCALARS = len(SCALAR_NAMES)


def _frames(geoms: np.ndarray, boxes: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Centre [N,2], long-axis unit vector [N,2], long side [N], short side [N].

    From the stored 8-number boxes when given (no hull computed), else from the minimum
    rotated rectangle of `geojepa.data.boxes` (the one `prepare` writes).
    """
    if boxes is None:
        centre, axis, len_axis, len_other = hull_frames(geoms)
        other = np.stack([-axis[:, 1], axis[:, 0]], axis=1)
        swap = len_other > len_axis
        u = np.where(swap[:, None], other, axis)
        return centre, u, np.maximum(len_axis, len_other), np.minimum(len_axis, len_other)
    corners = np.asarray(boxes, dtype=np.float64).reshape(-1, 4, 2)
    c0, c1, c3 = corners[:, 0], corners[:, 1], corners[:, 3]
    e1, e2 = c1 - c0, c3 - c0
    centre = c0 + (e1 + e2) / 2.0
    l1, l2 = np.linalg.norm(e1, axis=1), np.linalg.norm(e2, axis=1)
    long_vec = np.where((l1 >= l2)[:, None], e1, e2)
    long_side, short_side = np.maximum(l1, l2), np.minimum(l1, l2)
    u = np.where(
        (long_side > 0)[:, None],
        long_vec / np.where(long_side > 0, long_side, 1.0)[:, None],
        np.array([1.0, 0.0]),
    )
    return centre, u, long_side, short_side


def _resample(geoms: np.ndarray, n_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points [N, P, 2] at equal arc length along each entity's path; vertex and hole counts."""
    n = len(geoms)
    parts, part_entity = shapely.get_parts(geoms, return_index=True)
    while (nested := shapely.get_type_id(parts) >= 4).any():  # collections of multi-parts
        sub, sub_idx = shapely.get_parts(parts[nested], return_index=True)
        owner = part_entity[nested][sub_idx]
        order = np.argsort(np.concatenate([part_entity[~nested], owner]), kind="stable")
        parts = np.concatenate([parts[~nested], sub])[order]
        part_entity = np.concatenate([part_entity[~nested], owner])[order]
    ptype = shapely.get_type_id(parts)
    is_poly = ptype == 3
    holes = np.bincount(
        part_entity[is_poly], weights=shapely.get_num_interior_rings(parts[is_poly]), minlength=n
    )
    paths = parts.copy()
    paths[is_poly] = shapely.get_exterior_ring(parts[is_poly])
    coords, ci = shapely.get_coordinates(paths, return_index=True)
    out = np.zeros((n, n_points, 2))
    if len(coords) == 0:
        return out, np.zeros(n), holes
    ent = part_entity[ci]
    counts = np.bincount(ent, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ends = starts + counts
    same = ci[1:] == ci[:-1]  # segment j joins coordinate j and j+1 of one part
    seg = np.where(same, np.linalg.norm(np.diff(coords, axis=0), axis=1), 0.0)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    has = counts > 0
    first = np.where(has, starts, 0)
    last = np.where(has, ends - 1, 0)
    total = cum[last] - cum[first]
    frac = np.linspace(0.0, 1.0, n_points) if n_points > 1 else np.zeros(1)

    # Entities with length: interpolate along the path.
    t = cum[first][:, None] + frac[None, :] * total[:, None]  # [N, P]
    j = np.searchsorted(cum, t, side="right") - 1
    j = np.clip(j, first[:, None], np.maximum(last[:, None] - 1, first[:, None]))
    seg_j = np.where(j < len(seg), seg[np.minimum(j, len(seg) - 1)], 0.0) if len(seg) else 0 * t
    w = np.where(seg_j > 0, (t - cum[j]) / np.where(seg_j > 0, seg_j, 1.0), 0.0)
    w = np.clip(w, 0.0, 1.0)[..., None]
    nxt = np.minimum(j + 1, len(coords) - 1)
    along = coords[j] + w * (coords[nxt] - coords[j]) * (seg_j > 0)[..., None]

    # Zero-length entities (points, multipoints): spread the samples over the vertices.
    k = first[:, None] + np.rint(frac[None, :] * (counts[:, None] - 1).clip(0)).astype(np.int64)
    by_vertex = coords[np.clip(k, 0, len(coords) - 1)]

    out = np.where((total > 0)[:, None, None], along, by_vertex)
    out[~has] = 0.0
    return out, counts.astype(np.float64), holes


def _canonical_sign(c: np.ndarray) -> np.ndarray:
    """Flip each row so its third moment is positive; symmetric rows (moment ~0) so that the
    path starts on the negative side. Removes the sign ambiguity of the box axes, so a
    rotation by any angle (180° included) gives the same features."""
    m3 = (c**3).sum(axis=1)
    off = np.abs(c) > 1e-6
    first = c[np.arange(len(c)), np.argmax(off, axis=1)]
    sign = np.where(np.abs(m3) > 1e-6, np.sign(m3), np.where(first > 0, -1.0, 1.0))
    return c * sign[:, None]


def geometry_features(
    geoms: np.ndarray, n_points: int = 16, boxes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(outline [N, P, 2], scalars [N, S])`` float32 for shapely geometries in tile units.

    ``boxes`` [N, 8]: the dataset's stored boxes, used as the frame instead of recomputing the
    minimum rotated rectangle (about a quarter of the cost). They differ only for shapes
    thinner than ``MIN_BOX_SIDE``, whose short side then reads ``MIN_BOX_SIDE`` instead of 0.
    Empty or missing geometries get all-zero features.
    """
    geoms = np.asarray(geoms, dtype=object).reshape(-1)
    n = len(geoms)
    if n == 0:
        return np.zeros((0, n_points, 2), np.float32), np.zeros((0, N_SCALARS), np.float32)
    missing = shapely.is_missing(geoms)
    geoms = np.where(missing, shapely.Point(), geoms)
    empty = shapely.is_empty(geoms)
    centre, u, long_side, short_side = _frames(geoms, boxes)
    pts, n_vertices, n_holes = _resample(geoms, n_points)

    # Into the box frame: x along the long side, y along the short side, / half side.
    v = np.stack([-u[:, 1], u[:, 0]], axis=1)
    d = pts - centre[:, None, :]
    x = np.einsum("npk,nk->np", d, u)
    y = np.einsum("npk,nk->np", d, v)
    hx = np.where(long_side > 0, long_side / 2.0, np.inf)
    hy = np.where(short_side > 1e-9 * long_side, short_side / 2.0, np.inf)
    x = np.clip(x / hx[:, None], -1.0, 1.0)
    y = np.clip(y / hy[:, None], -1.0, 1.0)
    x, y = _canonical_sign(x), _canonical_sign(y)
    outline = np.stack([x, y], axis=-1)

    type_id = shapely.get_type_id(geoms)
    area = shapely.area(geoms)
    length = shapely.length(geoms)
    n_parts = shapely.get_num_geometries(geoms).astype(np.float64)
    dim = np.clip(shapely.get_dimensions(geoms), 0, 2)
    box_area = long_side * short_side
    scalars = np.stack(
        [
            type_id == 0,
            (type_id == 1) | (type_id == 2),
            type_id == 3,
            type_id >= 4,
            dim / 2.0,
            (np.log10(area + 1e-8) + 4.0) / 4.0,
            (np.log10(length + 1e-5) + 2.0) / 3.0,
            (np.log10(long_side + 1e-5) + 2.0) / 3.0,
            (np.log10(short_side + 1e-5) + 2.0) / 3.0,
            np.where(long_side > 0, 1.0 - short_side / np.where(long_side > 0, long_side, 1), 0),
            np.where(box_area > 0, area / np.where(box_area > 0, box_area, 1.0), 0.0),
            np.log2(n_vertices + 1.0) / 10.0,
            np.log2(np.maximum(n_parts, 1.0)) / 5.0,
            np.log2(n_holes + 1.0) / 5.0,
        ],
        axis=1,
    ).astype(np.float64)
    outline[empty] = 0.0
    scalars[empty] = 0.0
    return outline.astype(np.float32), scalars.astype(np.float32)


def box_corners(geoms: np.ndarray, min_side: float = MIN_BOX_SIDE) -> np.ndarray:
    """The schema's 8-number box [N, 8] float32 of each geometry: minimum rotated rectangle,
    sides at least ``min_side``, corner 0 = smallest x + y (ties: smaller y), then clockwise on
    screen. The same boxes `prepare` writes (`geojepa.data.boxes`), for synthetic data and tests.
    """
    return min_rotated_boxes(geoms, min_side).astype(np.float32)
