"""`data/boxes.py`: the minimum-area rectangle is minimal, and stable under float noise."""

from __future__ import annotations

import numpy as np
import shapely
from shapely import affinity

from geojepa.data.boxes import _TIE_RTOL, hull_frames, min_rotated_boxes


def _areas(geoms: np.ndarray) -> np.ndarray:
    _, _, len_u, len_v = hull_frames(geoms)
    return len_u * len_v


def test_rectangle_is_as_small_as_geos() -> None:
    rng = np.random.default_rng(0)
    geoms = np.array(
        [shapely.MultiPoint(rng.random((int(rng.integers(3, 40)), 2))).convex_hull
         for _ in range(300)]
        + [shapely.LineString(rng.random((5, 2))) for _ in range(50)]
    )  # fmt: skip
    ours = _areas(geoms)
    geos = shapely.area(shapely.oriented_envelope(geoms))
    assert np.all(ours >= geos * (1 - 1e-12)), "never smaller than the minimum"
    assert np.all(ours <= geos * (1 + _TIE_RTOL) + 1e-15), "at most a tie larger"


def test_tied_rectangles_do_not_flip_with_float_noise() -> None:
    """A regular octagon has four equally small rectangles; the tie rule picks one whatever the
    last bits of the input (GEOS's choice flipped between CPUs)."""
    rng = np.random.default_rng(1)
    octagon = affinity.rotate(shapely.Point(0.5, 0.5).buffer(0.2, quad_segs=2), 10)
    ring = shapely.get_coordinates(octagon.exterior)[:-1]
    noisy = shapely.polygons([ring + rng.normal(0, 1e-12, ring.shape) for _ in range(20)])
    boxes = min_rotated_boxes(noisy)
    assert np.abs(boxes - boxes[0]).max() < 1e-9


def test_points_and_degenerate_lines_get_a_small_square_box() -> None:
    boxes = min_rotated_boxes(
        np.array([shapely.Point(0.3, 0.4), shapely.LineString([(0.1, 0.1), (0.1, 0.1)])]),
        min_side=0.01,
    )
    corners = boxes.reshape(-1, 4, 2)
    np.testing.assert_allclose(corners.mean(axis=1), [[0.3, 0.4], [0.1, 0.1]], atol=1e-12)
    np.testing.assert_allclose(np.ptp(corners, axis=1), 0.01, atol=1e-12)
