"""`geojepa prepare` end to end: tiling correctness on real extracts, the rules on a synthetic
OSM file, resume after an interrupted run, features-table input, imagery, and every bad input.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mercantile
import numpy as np
import osmium
import pyarrow as pa
import pyarrow.parquet as pq
import pyproj
import pytest
import shapely

from geojepa.cli import main
from geojepa.data import prepare as prep
from geojepa.data import schema
from geojepa.data import shard as shard_mod
from geojepa.data.config import PrepareConfig
from geojepa.data.info import format_info
from geojepa.data.prepare import prepare_tiles
from geojepa.data.reader import local_to_lonlat, open_dataset
from geojepa.data.tags import TagFilter, is_area
from geojepa.data.tiling import tile_size
from geojepa.errors import InputError, OutputError

Z = 16
TO_MERC = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)


# --------------------------------------------------------------------------- helpers


def _source_elements(pbf: Path) -> dict[str, tuple[shapely.Geometry, list[tuple[str, str]]]]:
    """Every tagged element straight from pyosmium: id -> (lon/lat geometry, raw tags)."""
    fab = osmium.geom.WKBFactory()
    out = {}
    fp = (
        osmium.FileProcessor(str(pbf))
        .with_locations()
        .with_areas()
        .with_filter(osmium.filter.EmptyTagFilter())
    )
    for o in fp:
        try:
            if o.is_node():
                fid, wkb = f"node/{o.id}", fab.create_point(o)
            elif o.is_way():
                fid, wkb = f"way/{o.id}", fab.create_linestring(o)
            elif o.is_area() and not o.from_way():
                fid, wkb = f"relation/{o.orig_id()}", fab.create_multipolygon(o)
            else:
                continue
        except (osmium.InvalidLocationError, RuntimeError):
            continue
        out[fid] = (shapely.from_wkb(wkb), [(t.k, t.v) for t in o.tags])
    return out


def _merc(geom: shapely.Geometry) -> shapely.Geometry:
    return shapely.transform(geom, lambda c: np.column_stack(TO_MERC.transform(c[:, 0], c[:, 1])))


def _expected_tiles(geom: shapely.Geometry) -> set[str]:
    """Tiles a geometry really intersects, by brute force with mercantile's tile squares."""
    if geom.geom_type == "Point":
        t = mercantile.tile(geom.x, geom.y, Z)
        return {f"{Z}/{t.x}/{t.y}"}
    m = _merc(geom)
    dim = shapely.get_dimensions(m)
    out = set()
    for t in mercantile.tiles(*geom.bounds, Z):
        part = shapely.intersection(m, shapely.box(*mercantile.xy_bounds(t)))
        if not part.is_empty and shapely.get_dimensions(part) == dim:
            out.add(f"{Z}/{t.x}/{t.y}")
    return out


def _dataset_tables(path: Path) -> tuple[pa.Table, pa.Table]:
    ds = open_dataset(path)
    return ds.read_tiles(), ds.read_entities()


def _write_osm_xml(path: Path, nodes: list, ways: list, relations: list) -> None:
    def tags(t: dict) -> str:
        return "".join(f'<tag k="{k}" v="{v}"/>' for k, v in t.items())

    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<osm version="0.6" generator="test">']
    for nid, lon, lat, t in nodes:
        lines.append(
            f'<node id="{nid}" version="1" lat="{lat:.7f}" lon="{lon:.7f}">{tags(t)}</node>'
        )
    for wid, refs, t in ways:
        nds = "".join(f'<nd ref="{r}"/>' for r in refs)
        lines.append(f'<way id="{wid}" version="1">{nds}{tags(t)}</way>')
    for rid, members, t in relations:
        mem = "".join(f'<member type="{ty}" ref="{r}" role="{ro}"/>' for ty, r, ro in members)
        lines.append(f'<relation id="{rid}" version="1">{mem}{tags(t)}</relation>')
    lines.append("</osm>")
    path.write_text("\n".join(lines))


def _tile_point(t: mercantile.Tile, fx: float, fy: float) -> tuple[float, float]:
    """lon/lat of the point at fraction (fx, fy) of tile t (y growing south)."""
    b = mercantile.xy_bounds(t)
    mx = b.left + fx * (b.right - b.left)
    my = b.top - fy * (b.top - b.bottom)
    return mercantile.lnglat(mx, my)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def helsinki_ds(helsinki_pbf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hel") / "ds"
    prepare_tiles(helsinki_pbf, out, PrepareConfig(workers=2), progress=False)
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A hand-made OSM XML file exercising each rule; returns (dataset, facts)."""
    root = tmp_path_factory.mktemp("syn")
    t0 = mercantile.tile(10.0, 50.0, Z)
    row = [mercantile.Tile(t0.x + i, t0.y, Z) for i in range(5)]
    nodes = []
    # 1: a tagged node with id 1 (collides numerically with way 1)
    nodes.append((1, *_tile_point(t0, 0.3, 0.3), {"amenity": "bench", "name": "Bench A"}))
    # way 1: a straight line from the centre of row[0] to the centre of row[4]
    nodes.append((101, *_tile_point(row[0], 0.5, 0.5), {}))
    nodes.append((102, *_tile_point(row[4], 0.5, 0.5), {}))
    # way 2: U-turn: inside t0 (lower half), out through the east edge, back into t0
    u = [(0.6, 0.6), (1.4, 0.6), (1.4, 0.8), (0.6, 0.8)]
    for i, (fx, fy) in enumerate(u):
        nodes.append((201 + i, *_tile_point(t0, fx, fy), {}))
    # way 3: bow-tie building (self-intersecting ring) inside t0's upper-left quarter
    bow = [(0.05, 0.05), (0.25, 0.25), (0.25, 0.05), (0.05, 0.25), (0.05, 0.05)]
    for i, (fx, fy) in enumerate(bow[:-1]):
        nodes.append((301 + i, *_tile_point(t0, fx, fy), {}))
    # relation 10: multipolygon with a hole, inside row[1]
    outer = [(0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.1, 0.9)]
    inner = [(0.4, 0.4), (0.6, 0.4), (0.6, 0.6), (0.4, 0.6)]
    for i, (fx, fy) in enumerate(outer):
        nodes.append((401 + i, *_tile_point(row[1], fx, fy), {}))
    for i, (fx, fy) in enumerate(inner):
        nodes.append((411 + i, *_tile_point(row[1], fx, fy), {}))
    # way 5: only metadata tags -> dropped; node 6 the same
    nodes.append((6, *_tile_point(t0, 0.9, 0.1), {"created_by": "JOSM"}))
    ways = [
        (1, [101, 102], {"highway": "primary", "name": "Long Road", "created_by": "x"}),
        (2, [201, 202, 203, 204], {"highway": "service"}),
        (3, [301, 302, 303, 304, 301], {"building": "yes"}),
        (4, [401, 402, 403, 404, 401], {}),
        (5, [411, 412, 413, 414, 411], {}),
        (7, [201, 204], {"created_by": "JOSM"}),
    ]
    relations = [
        (
            10,
            [("way", 4, "outer"), ("way", 5, "inner")],
            {"type": "multipolygon", "landuse": "grass"},
        ),
        (11, [("way", 1, "")], {"type": "route", "route": "bus"}),
    ]
    src = root / "synthetic.osm"
    _write_osm_xml(src, nodes, ways, relations)
    out = root / "ds"
    prepare_tiles(src, out, PrepareConfig(workers=1), progress=False)
    return out, {"t0": t0, "row": row}


# --------------------------------------------------------------------------- real extracts


def _check_against_independent(pbf: Path, ds_path: Path) -> None:
    """(feature, tile) pairs of a dataset == a brute-force recomputation from pyosmium."""
    tiles, ents = _dataset_tables(ds_path)
    source = _source_elements(pbf)
    tf = TagFilter()
    polygonal_ways = {
        f
        for f, t in zip(
            ents.column("feature_id").to_pylist(), ents.column("geom_type").to_pylist(), strict=True
        )
        if f.startswith("way/") and "Polygon" in t
    }
    expected: set[tuple[str, str]] = set()
    for fid, (geom, raw) in source.items():
        if not tf(raw):
            continue  # only metadata tags: skipped by rule
        if fid.startswith("way/") and geom.is_closed and len(geom.coords) >= 4 and is_area(raw):
            assert fid in polygonal_ways or not _expected_tiles(shapely.Polygon(geom.coords))
            geom = shapely.make_valid(shapely.Polygon(geom.coords))
        expected |= {(fid, r) for r in _expected_tiles(geom)}
    got = set(
        zip(
            ents.column("feature_id").to_pylist(), ents.column("region_id").to_pylist(), strict=True
        )
    )
    assert len(got) == ents.num_rows, "one row per (entity, tile)"
    assert got == expected
    # tile rows: one per tile with entities, counts agree
    regions = tiles.column("region_id").to_pylist()
    assert len(set(regions)) == len(regions) == len({r for _, r in expected})
    counts = dict(zip(regions, tiles.column("n_entities").to_pylist(), strict=True))
    assert sum(counts.values()) == ents.num_rows


def test_helsinki_tiles_match_independent_computation(helsinki_pbf: Path, helsinki_ds: Path):
    _check_against_independent(helsinki_pbf, helsinki_ds)


@pytest.mark.slow
def test_liechtenstein_tiles_match_independent_computation(
    liechtenstein_pbf: Path, tmp_path: Path
) -> None:
    out = tmp_path / "li"
    prepare_tiles(liechtenstein_pbf, out, PrepareConfig(), progress=False)
    _check_against_independent(liechtenstein_pbf, out)


def test_helsinki_clips_inside_tiles_boxes_contain_and_lengths_add_up(
    helsinki_pbf: Path, helsinki_ds: Path
):
    _, ents = _dataset_tables(helsinki_ds)
    geoms = shapely.from_wkb(ents.column("geometry").to_numpy(zero_copy_only=False))
    coords = shapely.get_coordinates(geoms)
    assert coords.min() >= 0.0 and coords.max() <= 1.0
    assert shapely.is_valid(geoms).all()
    assert not shapely.is_empty(geoms).any()
    assert (shapely.get_type_id(geoms) != 7).all(), "no geometry collections"
    boxes = np.stack(ents.column("box").to_numpy(zero_copy_only=False)).astype(np.float64)
    polys = shapely.polygons(boxes.reshape(-1, 4, 2))
    assert shapely.contains(shapely.buffer(polys, 1e-5), geoms).all()
    # clipping neither loses nor duplicates: per feature, clip lengths/areas add up
    size = tile_size(Z)
    fids = np.array(ents.column("feature_id").to_pylist())
    source = _source_elements(helsinki_pbf)
    lines = shapely.get_dimensions(geoms) == 1
    length = shapely.length(geoms) * size
    for fid in np.unique(fids[lines])[:400]:
        src = _merc(source[fid][0])
        assert length[fids == fid].sum() == pytest.approx(src.length, rel=1e-6)
    polys_mask = shapely.get_dimensions(geoms) == 2
    area = shapely.area(geoms) * size * size
    for fid in np.unique(fids[polys_mask & np.char.startswith(fids, "relation/")]):
        src = _merc(source[fid][0])
        assert area[fids == fid].sum() == pytest.approx(src.area, rel=1e-6)


def test_helsinki_points_round_trip_and_tags_match_pyosmium(helsinki_pbf: Path, helsinki_ds: Path):
    tiles, ents = _dataset_tables(helsinki_ds)
    source = _source_elements(helsinki_pbf)
    pts = ents.filter(pa.compute.equal(ents.column("geom_type"), "Point"))
    tf = TagFilter()
    for row in pts.slice(0, 300).to_pylist():
        z, x, y = (int(v) for v in row["region_id"].split("/"))
        ll = local_to_lonlat(np.array([shapely.from_wkb(row["geometry"])]), z, x, y)[0]
        src_geom, raw = source[row["feature_id"]]
        assert ll.distance(src_geom) < 1e-7
        # the OPL side channel decodes exactly the tags pyosmium reports
        assert row["tags"] == tf(raw)
    ids = ents.column("feature_id").to_pylist()
    assert all(re.fullmatch(r"(node|way|relation)/\d+", i) for i in ids)
    # tag filter applied: no name values, no metadata keys
    flat = [kv for t in ents.column("tags").to_pylist() for kv in t]
    assert all(v is None for k, v in flat if k == "name" or k.startswith("addr:"))
    assert not any(k == "created_by" for k, _ in flat)
    # entities grouped by tile in the tiles file's order
    first_seen = list(dict.fromkeys(ents.column("region_id").to_pylist()))
    assert first_seen == tiles.column("region_id").to_pylist()


def test_manifest_vocab_and_info(helsinki_ds: Path, capsys: pytest.CaptureFixture) -> None:
    ds = open_dataset(helsinki_ds)
    m = ds.manifest
    ents = ds.read_entities()
    assert m["n_entities"] == ents.num_rows and m["n_tiles"] == ds.read_tiles().num_rows
    assert m["format_version"] == schema.FORMAT_VERSION and len(m["source"]["sha256"]) == 64
    assert sum(m["geometry_types"].values()) == ents.num_rows
    assert m["environment"]["shapely"] == shapely.__version__  # the versions that made it
    assert m["environment"]["pyarrow"] == pa.__version__
    vocab = ds.vocab()
    assert vocab.num_rows == m["vocab_size"]
    counts = vocab.column("count").to_numpy()
    assert (np.diff(counts) <= 0).all()
    n_tags = sum(len(t) for t in ents.column("tags").to_pylist())
    assert counts.sum() == n_tags
    assert main(["info", str(helsinki_ds), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_tiles"] == m["n_tiles"] and info["config"]["zoom"] == Z
    # what the default entity cap would cut, from the tiles' own counts
    per_tile = ds.read_tiles(columns=["n_entities"]).column("n_entities").to_numpy()
    cap = info["entity_cap"]
    assert cap["largest_tile"] == per_tile.max() and cap["entities"] == m["n_entities"]
    assert cap["tiles"] == (per_tile > cap["max_entities"]).sum()
    assert main(["info", str(helsinki_ds)]) == 0
    text = capsys.readouterr().out
    assert "tiles" in text and "\nentity cap   (the default) " in text
    cut = {**cap, "max_entities": 4, "tiles": 2, "entities_dropped": 7, "largest_tile": 9}
    said = ("entity cap   (the default) tokenizer.max_entities 4 cuts 2 tile(s) (the largest "
            f"holds 9 entities): 7 of {cap['entities']:,} entities")  # fmt: skip
    assert said in format_info({**info, "entity_cap": cut})
    assert not (helsinki_ds / prep.WORK_DIR).exists()


# --------------------------------------------------------------------------- synthetic rules


def test_long_way_reaches_vertexless_tiles(synthetic: tuple[Path, dict]) -> None:
    out, facts = synthetic
    ents = open_dataset(out).read_entities().to_pylist()
    regions = {e["region_id"] for e in ents if e["feature_id"] == "way/1"}
    assert regions == {f"{Z}/{t.x}/{t.y}" for t in facts["row"]}
    middle = facts["row"][2]
    clip = next(
        shapely.from_wkb(e["geometry"])
        for e in ents
        if e["feature_id"] == "way/1" and e["region_id"] == f"{Z}/{middle.x}/{middle.y}"
    )
    np.testing.assert_allclose(sorted(shapely.get_coordinates(clip)[:, 0]), [0.0, 1.0], atol=1e-9)


def test_multipart_clip_stays_multipart_and_ids_do_not_collide(synthetic):
    out, facts = synthetic
    ents = open_dataset(out).read_entities().to_pylist()
    t0 = facts["t0"]
    by = {(e["feature_id"], e["region_id"]): e for e in ents}
    u = by[("way/2", f"{Z}/{t0.x}/{t0.y}")]
    assert u["geom_type"] == "MultiLineString"
    assert len(shapely.get_parts(shapely.from_wkb(u["geometry"]))) == 2
    ids = {e["feature_id"] for e in ents}
    assert {"node/1", "way/1"} <= ids
    assert by[("node/1", f"{Z}/{t0.x}/{t0.y}")]["tags"] == [("amenity", "bench"), ("name", None)]
    assert ("way/7" not in ids) and ("node/6" not in ids), "metadata-only elements are skipped"
    assert "relation/11" not in ids, "route relations are skipped by rule"


def test_multipolygon_hole_and_repaired_bowtie(synthetic):
    out, _facts = synthetic
    ds = open_dataset(out)
    ents = {e["feature_id"]: e for e in ds.read_entities().to_pylist()}
    mp = shapely.from_wkb(ents["relation/10"]["geometry"])
    assert mp.geom_type == "Polygon" and len(mp.interiors) == 1
    assert mp.area == pytest.approx(0.8 * 0.8 - 0.2 * 0.2, rel=1e-4)  # 1e-7° node precision
    assert ents["relation/10"]["tags"] == [("landuse", "grass")]
    bow = shapely.from_wkb(ents["way/3"]["geometry"])
    assert bow.is_valid and bow.geom_type == "MultiPolygon"
    assert ds.manifest["geometry_repair"]["repaired"] == 1
    assert ds.manifest["input"]["other_relations_skipped"] == 1
    assert ds.manifest["input"]["empty_after_tag_filter"] == 2


def test_bbox_filter_keeps_only_tiles_meeting_it(synthetic, tmp_path: Path) -> None:
    out, facts = synthetic
    row = facts["row"]
    w, s, e, n = mercantile.bounds(row[2])
    cfg = PrepareConfig(workers=1, bbox=(w + 1e-4, s + 1e-4, e - 1e-4, n - 1e-4))
    src = out.parent / "synthetic.osm"
    ds = prepare_tiles(src, tmp_path / "bb", cfg, progress=False)
    assert ds.read_tiles().column("region_id").to_pylist() == [f"{Z}/{row[2].x}/{row[2].y}"]
    assert ds.read_entities().column("feature_id").to_pylist() == ["way/1"]


def test_polygon_filter_from_geojson_via_cli(synthetic, tmp_path: Path) -> None:
    out, facts = synthetic
    row = facts["row"]
    # a small triangle inside row[3]: only that tile meets it (way/1 passes through)
    pts = [_tile_point(row[3], fx, fy) for fx, fy in ((0.2, 0.2), (0.8, 0.2), (0.5, 0.8))]
    poly = {"type": "Polygon", "coordinates": [[*map(list, pts), list(pts[0])]]}
    path = tmp_path / "area.geojson"
    path.write_text(json.dumps({"type": "Feature", "geometry": poly, "properties": {}}))
    dest = tmp_path / "poly"
    args = ["prepare", str(out.parent / "synthetic.osm"), "-o", str(dest), "--polygon", str(path)]
    assert main([*args, "--workers", "1", "-q"]) == 0
    ds = open_dataset(dest)
    assert ds.read_tiles().column("region_id").to_pylist() == [f"{Z}/{row[3].x}/{row[3].y}"]
    assert shapely.from_wkt(ds.config.polygon_wkt).equals(shapely.geometry.shape(poly))


# --------------------------------------------------------------------------- resume


def _shard_tables(path: Path) -> dict[str, pa.Table]:
    return {p.name: pq.read_table(p) for p in sorted((path / schema.SHARD_DIR).glob("*.parquet"))}


def test_resume_after_interrupted_run_equals_uninterrupted(
    helsinki_pbf: Path, finland_test_pbf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = PrepareConfig(shard_levels=1, min_shard_elements=1)
    full = prepare_tiles(helsinki_pbf, tmp_path / "full", cfg.replace(workers=2), progress=False)
    assert len(full.shards) >= 4

    out = tmp_path / "resumed"
    real = shard_mod.write_shard
    calls = {"n": 0}

    def crash_after_two(*args, **kwargs):
        if calls["n"] == 2:
            raise KeyboardInterrupt  # like Ctrl-C midway
        calls["n"] += 1
        real(*args, **kwargs)

    monkeypatch.setattr(shard_mod, "write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        prepare_tiles(helsinki_pbf, out, cfg.replace(workers=1), progress=False)
    monkeypatch.setattr(shard_mod, "write_shard", real)
    assert (out / schema.CONFIG_FILE).is_file() and not (out / schema.MANIFEST_FILE).exists()
    done = sorted((out / schema.SHARD_DIR).glob("tiles-*.parquet"))
    assert len(done) == 2
    with pytest.raises(InputError, match="incomplete"):
        open_dataset(out)
    # a half-written next shard (entities renamed, tiles not yet) must not count as complete
    stale = out / schema.entities_file(99)
    stale.write_bytes(b"garbage")
    (out / schema.SHARD_DIR / ".tiles-00003.parquet.tmp").write_bytes(b"partial")
    mtimes = {p: p.stat().st_mtime_ns for p in done}

    with pytest.raises(OutputError, match="different source"):
        prepare_tiles(finland_test_pbf, out, cfg.replace(workers=1), progress=False)
    resumed = prepare_tiles(helsinki_pbf, out, cfg.replace(workers=1), progress=False)
    assert {p: p.stat().st_mtime_ns for p in done} == mtimes, "finished shards are skipped"
    stale.unlink()
    assert _shard_tables(out) == _shard_tables(tmp_path / "full")
    assert resumed.manifest["shards"] == full.manifest["shards"]
    for key in ("n_tiles", "n_entities", "entities_per_tile", "geometry_types", "vocab_size"):
        assert resumed.manifest[key] == full.manifest[key]
    assert resumed.vocab().equals(full.vocab())
    assert not list((out / schema.SHARD_DIR).glob(".*.tmp"))
    assert not (out / prep.SOURCE_FILE).exists() and not (out / prep.WORK_DIR).exists()


def test_rerun_same_config_is_a_no_op_and_other_config_needs_overwrite(
    helsinki_pbf: Path, helsinki_ds: Path, tmp_path: Path
) -> None:
    before = (helsinki_ds / schema.MANIFEST_FILE).read_text()
    prepare_tiles(helsinki_pbf, helsinki_ds, PrepareConfig(workers=1), progress=False)
    assert (helsinki_ds / schema.MANIFEST_FILE).read_text() == before
    with pytest.raises(OutputError, match="different config"):
        prepare_tiles(helsinki_pbf, helsinki_ds, PrepareConfig(zoom=15), progress=False)
    out = tmp_path / "ow"
    prepare_tiles(helsinki_pbf, out, PrepareConfig(zoom=14, workers=1), progress=False)
    assert main(["prepare", str(helsinki_pbf), "-o", str(out), "--zoom", "13", "-q"]) == 1
    rc = main(["prepare", str(helsinki_pbf), "-o", str(out), "--zoom", "13", "--overwrite", "-q"])
    assert rc == 0 and open_dataset(out).config.zoom == 13


@pytest.mark.slow
def test_killed_subprocess_resumes(helsinki_pbf: Path, tmp_path: Path) -> None:
    """A real SIGKILL midway (slow: several interpreter starts)."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "geojepa.cli", "prepare", str(helsinki_pbf), "-o", str(out)]
    cmd += ["--shard-levels", "0", "--min-shard-elements", "1", "--workers", "1", "-q"]
    proc = subprocess.Popen(cmd)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / schema.SHARD_DIR).glob("tiles-*.parquet"))) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    assert proc.wait() == -signal.SIGKILL, "the run was killed midway"
    opts = ["--shard-levels", "0", "--min-shard-elements", "1", "-q"]
    assert main(["prepare", str(helsinki_pbf), "-o", str(out), *opts]) == 0
    ref = tmp_path / "ref"
    assert main(["prepare", str(helsinki_pbf), "-o", str(ref), *opts]) == 0
    assert _shard_tables(out) == _shard_tables(ref)


# --------------------------------------------------------------------------- features tables


def test_geodataframe_in_another_crs_matches_wgs84(synthetic, tmp_path: Path) -> None:
    import geopandas as gpd

    out, _ = synthetic
    src = out.parent / "synthetic.osm"
    elements = _source_elements(src)
    tf = TagFilter()
    rows = [(f, json.dumps(dict(t)), g) for f, (g, t) in elements.items() if tf(t)]
    gdf = gpd.GeoDataFrame(
        {"tags": [r[1] for r in rows]},
        geometry=[r[2] for r in rows],
        index=pd_index([r[0] for r in rows]),
        crs="EPSG:4326",
    )
    a = prepare_tiles(gdf, tmp_path / "a", PrepareConfig(workers=1), progress=False)
    utm = gdf.to_crs("EPSG:32632")
    b = prepare_tiles(utm, tmp_path / "b", PrepareConfig(workers=1), progress=False)
    ea, eb = a.read_entities(), b.read_entities()
    assert ea.column("region_id").to_pylist() == eb.column("region_id").to_pylist()
    assert ea.column("feature_id").to_pylist() == eb.column("feature_id").to_pylist()
    ga = shapely.from_wkb(ea.column("geometry").to_numpy(zero_copy_only=False))
    gb = shapely.from_wkb(eb.column("geometry").to_numpy(zero_copy_only=False))
    assert (shapely.hausdorff_distance(ga, gb) < 1e-6).all()
    # GeoParquet round trip gives the same dataset as the GeoDataFrame
    path = tmp_path / "f.parquet"
    gdf.to_parquet(path)
    c = prepare_tiles(path, tmp_path / "c", PrepareConfig(workers=1), progress=False)
    assert c.read_entities().equals(ea)
    # the features-table path and the OSM path agree on every (feature, tile)
    osm = open_dataset(out).read_entities()
    pairs = set(zip(osm.column("feature_id").to_pylist(), osm.column("region_id").to_pylist()))  # noqa: B905
    assert pairs == set(
        zip(ea.column("feature_id").to_pylist(), ea.column("region_id").to_pylist(), strict=False)
    )


def pd_index(values: list[str]):
    import pandas as pd

    return pd.Index(values, name="feature_id")


def test_montevideo_features_file_with_bbox(montevideo_features: Path, tmp_path: Path) -> None:
    bbox = (-56.195, -34.912, -56.180, -34.900)  # central Montevideo, ~1.5 km²
    ds = prepare_tiles(
        montevideo_features, tmp_path / "mvd", PrepareConfig(bbox=bbox, workers=1), progress=False
    )
    tiles, ents = ds.read_tiles(), ds.read_entities()
    assert tiles.num_rows >= 4 and ents.num_rows > 500
    w, s, e, n = (tiles.column(c).to_numpy() for c in ("west", "south", "east", "north"))
    assert (
        (e > bbox[0]).all() and (w < bbox[2]).all() and (n > bbox[1]).all() and (s < bbox[3]).all()
    )
    flat = {k for t in ents.column("tags").to_pylist() for k, _ in t}
    assert not any(k.startswith("mvdgis:") for k in flat), "import keys dropped"
    values = [v for t in ents.column("tags").to_pylist() for k, v in t if k.startswith("addr:")]
    assert values and all(v is None for v in values)


# --------------------------------------------------------------------------- imagery


def _write_geotiff(path: Path, crs: str | None, bounds: tuple, nodata_half: bool = False) -> None:
    import rasterio
    from rasterio.transform import from_bounds

    w, h = 200, 200
    data = np.stack([np.full((h, w), v, np.uint8) for v in (200, 100, 50)])
    if nodata_half:
        data[:, :, : w // 2] = 0
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 3, "dtype": "uint8",
               "transform": from_bounds(*bounds, w, h)}  # fmt: skip
    if crs is not None:
        profile["crs"] = crs
    if nodata_half:
        profile["nodata"] = 0
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def test_imagery_in_utm_with_nodata(helsinki_pbf: Path, helsinki_ds: Path, tmp_path: Path):
    tiles = open_dataset(helsinki_ds).read_tiles()
    lon = (tiles.column("west").to_numpy().min() + tiles.column("east").to_numpy().max()) / 2
    lat = (tiles.column("south").to_numpy().min() + tiles.column("north").to_numpy().max()) / 2
    utm = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32635", always_xy=True)
    cx, cy = utm.transform(lon, lat)
    tif = tmp_path / "utm.tif"
    _write_geotiff(tif, "EPSG:32635", (cx - 600, cy - 600, cx + 600, cy + 600), nodata_half=True)
    ds = prepare_tiles(
        helsinki_pbf, tmp_path / "img", PrepareConfig(image_size=32, workers=2), imagery=[tif],
        progress=False,
    )  # fmt: skip
    t = ds.read_tiles()
    cov = t.column("image_coverage").to_numpy(zero_copy_only=False)
    images = t.column("image").to_pylist()
    has = [im is not None for im in images]
    assert any(has) and not all(has), "raster covers part of the area"
    assert all(len(im) == 32 * 32 * 3 for im in images if im is not None)
    assert np.nanmax(cov) <= 1.0 and np.nanmin(cov) < 1.0, "nodata half lowers coverage"
    assert ds.manifest["imagery"]["tiles_with_image"] == sum(has)
    assert ds.config.imagery == (str(tif.resolve()),)


# --------------------------------------------------------------------------- bad input


def _bad(
    args: list[str], out: Path, capsys: pytest.CaptureFixture, match: str, code: int = 1
) -> None:
    """A failure at run time exits 1, a usage mistake (``code=2``) 2: one line either way."""
    rc = main([*args, "-o", str(out), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert "error:" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(match, err, re.IGNORECASE), err
    assert not out.exists(), "nothing half-written"


def test_bad_inputs_fail_cleanly(
    helsinki_pbf: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    _bad(["prepare", str(tmp_path / "missing.osm.pbf")], out, capsys, "not found")
    _bad(["prepare", str(tmp_path)], out, capsys, "not a file")
    trunc = tmp_path / "trunc.osm.pbf"
    trunc.write_bytes(helsinki_pbf.read_bytes()[: helsinki_pbf.stat().st_size // 2])
    _bad(["prepare", str(trunc)], out, capsys, "cannot read OSM data")
    garbage = tmp_path / "garbage.osm.pbf"
    garbage.write_bytes(os.urandom(3000))
    _bad(["prepare", str(garbage)], out, capsys, "cannot read OSM data")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    _bad(["prepare", str(txt)], out, capsys, "unsupported source")
    nocols = tmp_path / "nocols.parquet"
    pq.write_table(pa.table({"geometry": [shapely.Point(0, 0).wkb]}), nocols)
    _bad(["prepare", str(nocols)], out, capsys, "feature_id, tags")
    src = str(helsinki_pbf)
    _bad(["prepare", src, "--bbox", "-70,-40,-69.9,-39.9"], out, capsys, "no tagged entities")
    _bad(["prepare", src, "--bbox", "1,2,3"], out, capsys, "W,S,E,N", code=2)
    _bad(["prepare", src, "--zoom", "0"], out, capsys, "zoom", code=2)
    _bad(["prepare", src, "--zoom", "30"], out, capsys, "zoom", code=2)
    far = tmp_path / "far.tif"
    _write_geotiff(far, "EPSG:4326", (-70.0, -40.0, -69.9, -39.9))
    _bad(["prepare", src, "--imagery", str(far)], out, capsys, "does not overlap")
    nocrs = tmp_path / "nocrs.tif"
    _write_geotiff(nocrs, None, (24.9, 60.1, 25.0, 60.2))
    _bad(["prepare", src, "--imagery", str(nocrs)], out, capsys, "crs")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["prepare", str(trunc), "-o", str(empty), "-q"]) == 1
    assert list(empty.iterdir()) == [], "an existing empty output is left empty"
    assert main(["info", str(tmp_path / "nope")]) == 1
    assert "not found" in capsys.readouterr().err


def test_output_holding_something_else_is_refused(
    helsinki_pbf: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    for extra in ([], ["--overwrite"]):
        assert main(["prepare", str(helsinki_pbf), "-o", str(out), "-q", *extra]) == 1
        assert "not a geojepa dataset" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["prepare", str(helsinki_pbf), "-o", str(f), "-q"]) == 1
    assert main(["info", str(out)]) == 1
