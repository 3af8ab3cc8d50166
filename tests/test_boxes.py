"""Minimum rotated boxes: containment, minimality, minimum side and the corner order."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from geojepa.data.boxes import min_rotated_boxes, order_corners
from geojepa.data.schema import MIN_BOX_SIDE


def _check_order(boxes: np.ndarray) -> None:
    c = boxes.reshape(-1, 4, 2).astype(np.float64)
    s = c[..., 0] + c[..., 1]
    assert np.all(s[:, 0] <= s.min(axis=1) + 1e-6), "corner 0 has the smallest x + y"
    x, y = c[..., 0], c[..., 1]
    area2 = np.sum(x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y, axis=1)
    assert np.all(area2 > 0), "clockwise on screen (y down)"


def test_axis_aligned_box_is_tl_tr_br_bl() -> None:
    box = min_rotated_boxes(np.array([shapely.box(0.1, 0.2, 0.5, 0.3)]))[0]
    np.testing.assert_allclose(box, [0.1, 0.2, 0.5, 0.2, 0.5, 0.3, 0.1, 0.3], atol=1e-12)


def test_point_gets_min_side_square_centred_on_it() -> None:
    box = min_rotated_boxes(np.array([shapely.Point(0.5, 0.25)]))[0].reshape(4, 2)
    np.testing.assert_allclose(box.mean(axis=0), [0.5, 0.25], atol=1e-12)
    sides = np.linalg.norm(np.roll(box, -1, axis=0) - box, axis=1)
    np.testing.assert_allclose(sides, MIN_BOX_SIDE, rtol=1e-9)


def test_straight_line_gets_thin_rectangle() -> None:
    box = min_rotated_boxes(np.array([shapely.LineString([(0.2, 0.5), (0.6, 0.5)])]))[0]
    c = box.reshape(4, 2)
    assert c[:, 0].min() == pytest.approx(0.2) and c[:, 0].max() == pytest.approx(0.6)
    assert c[:, 1].max() - c[:, 1].min() == pytest.approx(MIN_BOX_SIDE)


def test_diamond_tie_break_takes_smaller_y() -> None:
    diamond = shapely.Polygon([(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)])
    box = min_rotated_boxes(np.array([diamond]))[0]
    # (0.5, 0) and (0, 0.5) tie on x + y; the one with smaller y comes first
    np.testing.assert_allclose(box[:2], [0.5, 0.0], atol=1e-9)
    _check_order(box[None])


def test_random_geometries_contained_minimal_and_ordered() -> None:
    rng = np.random.default_rng(0)
    geoms = []
    for _ in range(300):
        pts = rng.uniform(0, 1, size=(rng.integers(3, 12), 2)) * rng.uniform(0.01, 1)
        pts += rng.uniform(0, 0.5, size=2)
        kind = rng.integers(3)
        if kind == 0:
            geoms.append(shapely.MultiPoint(pts).convex_hull)
        elif kind == 1:
            geoms.append(shapely.LineString(pts))
        else:
            geoms.append(shapely.MultiPoint(pts))
    geoms = np.array(geoms)
    boxes = min_rotated_boxes(geoms)
    _check_order(boxes)
    polys = shapely.polygons(boxes.reshape(-1, 4, 2))
    assert shapely.contains(shapely.buffer(polys, 1e-9), geoms).all()
    env_area = shapely.area(shapely.oriented_envelope(geoms))
    big = env_area > (MIN_BOX_SIDE * 2) ** 2
    # where no side was grown, the box is the minimum-area rectangle
    sides = np.linalg.norm(np.diff(boxes.reshape(-1, 4, 2)[:, [0, 1, 2]], axis=1), axis=2)
    grown = (sides <= MIN_BOX_SIDE + 1e-12).any(axis=1)
    np.testing.assert_allclose(shapely.area(polys)[big & ~grown], env_area[big & ~grown], rtol=1e-6)
    assert (sides >= MIN_BOX_SIDE - 1e-12).all()


def test_order_corners_is_invariant_to_input_rotation_and_direction() -> None:
    rect = np.array([[0.2, 0.1], [0.7, 0.3], [0.6, 0.55], [0.1, 0.35]])
    expected = order_corners(rect[None])[0]
    for k in range(4):
        for r in (np.roll(rect, k, axis=0), np.roll(rect[::-1], k, axis=0)):
            np.testing.assert_allclose(order_corners(r[None])[0], expected)


def test_boxes_are_minimum_area_rectangles_without_min_side() -> None:
    rng = np.random.default_rng(7)
    geoms = [shapely.Point(0.5, 0.5).buffer(0.3, quad_segs=40)]
    for _ in range(200):
        pts = rng.normal(0.5, rng.uniform(0.01, 0.2), size=(rng.integers(2, 40), 2))
        geoms.append(shapely.MultiPoint(pts).convex_hull)
    geoms = np.array(geoms)
    boxes = min_rotated_boxes(geoms, min_side=0.0)
    polys = shapely.polygons(boxes.reshape(-1, 4, 2))
    expected = shapely.area(shapely.oriented_envelope(geoms))
    np.testing.assert_allclose(shapely.area(polys), expected, rtol=1e-9, atol=1e-12)
    assert shapely.contains(shapely.buffer(polys, 1e-9), geoms).all()
