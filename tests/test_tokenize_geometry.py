"""Entity shape features in the entity's own box frame."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from shapely import affinity

from geojepa.data.schema import MIN_BOX_SIDE
from geojepa.tokenize.geometry import (
    N_SCALARS,
    SCALAR_NAMES,
    _resample,
    box_corners,
    geometry_features,
)

L_SHAPE = shapely.Polygon([(0.1, 0.1), (0.5, 0.1), (0.5, 0.2), (0.2, 0.2), (0.2, 0.4), (0.1, 0.4)])
BENT_LINE = shapely.LineString([(0.1, 0.1), (0.4, 0.15), (0.45, 0.3)])


def s(name: str) -> int:
    return SCALAR_NAMES.index(name)


def test_shapes_kinds_and_empty() -> None:
    geoms = np.array(
        [
            shapely.Point(0.5, 0.5),
            BENT_LINE,
            L_SHAPE,
            shapely.MultiPolygon([shapely.box(0, 0, 0.1, 0.1), shapely.box(0.3, 0, 0.4, 0.1)]),
            shapely.Polygon(),
            None,
        ],
        dtype=object,
    )
    outline, scalars = geometry_features(geoms, n_points=12)
    assert outline.shape == (6, 12, 2) and scalars.shape == (6, N_SCALARS)
    assert outline.dtype == np.float32 and np.isfinite(outline).all() and np.isfinite(scalars).all()
    kinds = scalars[:, : s("is_multi") + 1]
    assert kinds[:4].tolist() == np.eye(4).tolist()
    assert np.all(outline[4:] == 0) and np.all(scalars[4:] == 0)  # empty / missing
    assert np.abs(outline).max() <= 1.0
    assert scalars[3, s("log_parts")] > 0 and scalars[2, s("log_parts")] == 0


def test_points_and_two_node_lines_do_not_collapse() -> None:
    geoms = np.array(
        [shapely.Point(0.2, 0.3), shapely.Point(0.7, 0.1)]
        + [
            shapely.LineString([(0.5, 0.5), (0.5 + r * np.cos(a), 0.5 + r * np.sin(a))])
            for r in (0.01, 0.05, 0.2)
            for a in (0.0, 0.7, 2.0)
        ],
        dtype=object,
    )
    outline, scalars = geometry_features(geoms)
    feats = np.concatenate([outline.reshape(len(geoms), -1), scalars], axis=1)
    # points are alike (a point has no shape), but differ from every line
    assert np.allclose(feats[0], feats[1])
    assert np.all(np.abs(feats[2:] - feats[0]).max(axis=1) > 0.1)
    # lines of different lengths differ
    lines = feats[2:].reshape(3, 3, -1)
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.abs(lines[i, 0] - lines[j, 0]).max() > 0.1
    # orientation is not a shape feature (it lives in the entity box) ...
    assert np.allclose(lines[:, 0], lines[:, 1], atol=1e-5)
    # ... and the boxes of differently oriented lines do differ
    boxes = box_corners(geoms[2:5])
    assert np.abs(boxes[0] - boxes[1]).max() > 1e-3


@pytest.mark.parametrize(
    "geom",
    [
        L_SHAPE,
        BENT_LINE,
        shapely.box(0.1, 0.1, 0.5, 0.3),
        shapely.MultiPoint([(0, 0), (0.1, 0.05)]),
    ],
)
@pytest.mark.parametrize("angle", [17.0, 90.0, 180.0, 251.0])
def test_invariant_to_rotation_and_translation(geom: shapely.Geometry, angle: float) -> None:
    moved = affinity.translate(affinity.rotate(geom, angle, origin=(0.3, 0.3)), 0.11, -0.07)
    o1, s1 = geometry_features(np.array([geom]))
    o2, s2 = geometry_features(np.array([moved]))
    np.testing.assert_allclose(o1, o2, atol=1e-4)
    np.testing.assert_allclose(s1, s2, atol=1e-4)


def test_sizes_scale_features() -> None:
    small, big = L_SHAPE, affinity.scale(L_SHAPE, 3, 3)
    (o1, o2), (s1, s2) = geometry_features(np.array([small, big]))
    np.testing.assert_allclose(o1, o2, atol=1e-5)  # same shape
    for name in ("log_area", "log_length", "log_long_side", "log_short_side"):
        assert s2[s(name)] > s1[s(name)]
    assert s1[s("fill")] == pytest.approx(s2[s("fill")], abs=1e-5)
    assert 0 < s1[s("fill")] < 1


def test_multipolygon_parts_are_not_glued() -> None:
    """Samples of a two-part polygon lie on its boundary, never on the gap between parts."""
    mp = shapely.MultiPolygon([shapely.box(0, 0, 0.1, 0.1), shapely.box(0.5, 0.5, 0.6, 0.6)])
    pts, _, _ = _resample(np.array([mp]), 64)
    dist = shapely.distance(shapely.points(pts[0]), mp.boundary)
    assert dist.max() < 1e-9
    # both parts are sampled, in proportion to their length
    in_first = (pts[0, :, 0] <= 0.1).sum()
    assert 24 <= in_first <= 40


def test_line_samples_follow_the_line() -> None:
    pts, counts, _ = _resample(np.array([BENT_LINE]), 9)
    assert counts[0] == 3
    np.testing.assert_allclose(pts[0, 0], [0.1, 0.1])
    np.testing.assert_allclose(pts[0, -1], [0.45, 0.3])
    assert shapely.distance(shapely.points(pts[0]), BENT_LINE).max() < 1e-9
    steps = np.linalg.norm(np.diff(pts[0], axis=0), axis=1)
    assert steps.min() > 0.5 * steps.max()  # roughly equal arc length (corners shorten chords)


def test_box_corners_order_and_min_side() -> None:
    boxes = box_corners(
        np.array([shapely.box(0.1, 0.2, 0.4, 0.3), shapely.Point(0.5, 0.5)], dtype=object)
    )
    np.testing.assert_allclose(boxes[0], [0.1, 0.2, 0.4, 0.2, 0.4, 0.3, 0.1, 0.3], atol=1e-6)
    h = MIN_BOX_SIDE / 2
    np.testing.assert_allclose(
        boxes[1],
        [0.5 - h, 0.5 - h, 0.5 + h, 0.5 - h, 0.5 + h, 0.5 + h, 0.5 - h, 0.5 + h],
        atol=1e-6,
    )
    rotated = box_corners(np.array([affinity.rotate(shapely.box(0.4, 0.45, 0.6, 0.55), 30)]))
    c = rotated.reshape(4, 2)
    assert np.argmin(c.sum(axis=1)) == 0
    # clockwise on screen (y down) = positive shoelace area in raw coordinates
    area = 0.5 * np.sum(c[:, 0] * np.roll(c[:, 1], -1) - np.roll(c[:, 0], -1) * c[:, 1])
    assert area > 0


def test_stored_boxes_give_the_same_frame() -> None:
    """The loader frames entities with the dataset's boxes; for shapes wider than MIN_BOX_SIDE
    that is the same frame as GEOS' minimum rotated rectangle."""
    geoms = np.array(
        [L_SHAPE, affinity.rotate(L_SHAPE, 33), shapely.box(0.1, 0.1, 0.5, 0.3),
         affinity.rotate(shapely.Polygon([(0, 0), (0.2, 0), (0.05, 0.1)]), 71)],
        dtype=object,
    )  # fmt: skip
    o1, s1 = geometry_features(geoms)
    o2, s2 = geometry_features(geoms, boxes=box_corners(geoms))
    np.testing.assert_allclose(o1, o2, atol=1e-4)
    np.testing.assert_allclose(s1, s2, atol=1e-4)
    # a point and a straight line: only box sides differ (MIN_BOX_SIDE instead of 0)
    line = np.array([BENT_LINE.boundary.geoms[0], shapely.LineString([(0, 0), (0.3, 0.1)])])
    o1, s1 = geometry_features(line)
    o2, s2 = geometry_features(line, boxes=box_corners(line))
    np.testing.assert_allclose(o1, o2, atol=1e-4)
    same = [i for i, n in enumerate(SCALAR_NAMES) if "side" not in n and n != "elongation"]
    np.testing.assert_allclose(s1[:, same], s2[:, same], atol=1e-4)


def test_nested_collection_parts_are_not_glued() -> None:
    mp = shapely.MultiPolygon([shapely.box(0, 0, 0.1, 0.1), shapely.box(0.5, 0.5, 0.6, 0.6)])
    gc = shapely.GeometryCollection([mp, shapely.LineString([(0.8, 0.0), (0.8, 0.3)])])
    pts, counts, _ = _resample(np.array([shapely.Point(1, 1), gc, L_SHAPE]), 64)
    assert counts.tolist() == [1, 12, 7]
    assert (
        shapely.distance(shapely.points(pts[1]), shapely.union(mp.boundary, gc.geoms[1])).max()
        < 1e-9
    )
    assert shapely.distance(shapely.points(pts[2]), L_SHAPE.boundary).max() < 1e-9
