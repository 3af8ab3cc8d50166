"""The HTML map (`geojepa.explore.webmap`), including a real headless-browser check.

The browser test uses Debian's `chromium` when it is on PATH and skips (with a message) where
it is not; it installs nothing. Console messages are read from chromium's own log
(`--enable-logging=stderr`), which prints every page console message as an `INFO:CONSOLE`
line; a control page with a deliberate JS error proves that the capture works.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from PIL import Image

from geojepa.errors import InputError
from geojepa.explore.embeddings import embedding_matrix, load_embeddings, project, robust_unit
from geojepa.explore.webmap import embedding_colors, make_map
from test_explore_knn import write_entities, write_tiles


@pytest.fixture
def map_html(tmp_path: Path) -> Path:
    tiles, _ = write_tiles(tmp_path / "tiles.parquet")
    entities, _ = write_entities(tmp_path / "entities.parquet")
    return make_map(tiles, tmp_path / "out" / "map.html", entities=entities)


def _geojson_layers(text: str) -> list[dict]:
    """The FeatureCollections embedded in folium's page (one per GeoJson layer)."""
    layers = []
    for m in re.finditer(r"geo_json_[0-9a-f]+_add\((\{.*\})\);\n", text):
        layers.append(json.loads(m.group(1)))
    return layers


def test_map_html_has_layers_attribution_and_no_cdn(map_html: Path):
    text = map_html.read_text()
    assert "OpenStreetMap</a> contributors" in text
    assert 'id="geojepa-attribution"' in text  # visible even when base tiles cannot load
    assert "tiles (PCA of embeddings" in text
    assert "entities (embedding" in text
    assert "L.control.layers" in text
    # self-contained: no external script or stylesheet (the base tiles are the only remote URL)
    assert not re.search(r"<script[^>]+src=", text)
    assert not re.search(r"<link[^>]+href=[\"']https?:", text)
    assert "L.version" in text or "Leaflet" in text
    layers = _geojson_layers(text)
    assert len(layers) == 2
    tiles, entities = layers
    assert len(tiles["features"]) == 64
    props = tiles["features"][0]["properties"]
    assert set(props) >= {"region_id", "top_tags", "n_entities", "neighbours", "color"}
    assert props["neighbours"].count("<br>") == 4  # five neighbours
    # OSM text is escaped before it reaches the popup's innerHTML
    assert any("&lt;b&gt;" in f["properties"]["tags"] for f in entities["features"])
    assert len({f["properties"]["color"] for f in tiles["features"]}) > 20


def test_colours_separate_the_clusters(tmp_path: Path):
    from test_explore_knn import tile_cluster

    path, labels = write_tiles(tmp_path / "t.parquet", noise=0.05)
    frame = load_embeddings(path)
    rgb = robust_unit(project(embedding_matrix(frame, normalize=True), 3))
    lab = np.array([labels[r] for r in frame.index])
    means = np.array([rgb[lab == c].mean(0) for c in range(3)])
    # every tile's colour is closest to its own cluster's mean colour
    dist = np.linalg.norm(rgb[:, None, :] - means[None, :, :], axis=2)
    np.testing.assert_array_equal(dist.argmin(axis=1), lab)
    between = min(np.linalg.norm(means[a] - means[b]) for a in range(3) for b in range(a + 1, 3))
    assert between > 0.5  # clearly different colours, not shades of one
    assert tile_cluster(0, 0) == 0
    colors = embedding_colors(embedding_matrix(frame, normalize=True))
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colors)


def test_map_rejects_unusable_files(tmp_path: Path):
    tiles, _ = write_tiles(tmp_path / "t.parquet")
    entities, _ = write_entities(tmp_path / "e.parquet")
    gdf = gpd.read_parquet(tiles)
    with pytest.raises(InputError, match="no geometry"):
        make_map(gdf.drop(columns="geometry").pipe(lambda d: d.__class__(d)), tmp_path / "m.html")
    with pytest.raises(InputError, match="no CRS"):
        make_map(gdf.set_crs(None, allow_override=True), tmp_path / "m.html")
    with pytest.raises(InputError, match="holds entities embeddings, expected tiles"):
        make_map(entities, tmp_path / "m.html")
    with pytest.raises(InputError, match="holds tiles embeddings, expected entities"):
        make_map(tiles, tmp_path / "m.html", entities=tiles)
    # another CRS is reprojected, with a warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = make_map(gdf.to_crs(3857), tmp_path / "m.html", neighbours=0)
    assert any("reprojecting" in str(w.message) for w in caught)
    assert out.exists()


# --------------------------------------------------------------------------- real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--window-size=900,700",
    "--virtual-time-budget=4000",
]
# failed loads of remote base-map tiles / assets are expected offline, nothing else is
_ALLOWED = re.compile(r"Failed to load resource|net::ERR_|tile\.openstreetmap\.org", re.I)


def _load(page: Path, tmp_path: Path, name: str) -> tuple[list[str], Image.Image]:
    """Open ``page`` in headless chromium: (console messages that are not allowed, screenshot)."""
    shot = tmp_path / f"{name}.png"
    proc = subprocess.run(
        [
            CHROMIUM,
            *_FLAGS,
            f"--user-data-dir={tmp_path / ('profile-' + name)}",
            f"--screenshot={shot}",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists(), (
        f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-800:]}"
    )
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]
    return [ln for ln in console if not _ALLOWED.search(ln)], Image.open(shot).convert("RGB")


def _big_colours(image: Image.Image, min_pixels: int = 150) -> int:
    """Distinct colours covering at least ``min_pixels`` pixels (text anti-aliasing excluded)."""
    counts = image.getcolors(maxcolors=image.width * image.height)
    return sum(1 for n, _ in counts if n >= min_pixels)


@pytest.mark.skipif(CHROMIUM is None, reason="no `chromium` on PATH (apt-get install chromium)")
def test_map_loads_in_headless_chromium(map_html: Path, tmp_path: Path):
    # control: the log capture must see a JS error, or a clean result would prove nothing
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>notAFunction();</script></body></html>")
    errors, blank = _load(bad, tmp_path, "bad")
    assert any("notAFunction" in e for e in errors)
    assert _big_colours(blank) <= 1

    errors, shot = _load(map_html, tmp_path, "map")
    assert errors == []
    # 64 tiles in distinct embedding colours + entity clips: many large uniform regions
    assert _big_colours(shot) >= 20
    pixels = np.asarray(shot).reshape(-1, 3)
    assert pixels.std(axis=0).mean() > 20


def test_map_has_a_key_for_its_colours(map_html: Path):
    """The key names the axis behind red, green and blue, its share of the variance and the
    tile statistic it follows most closely."""
    text = map_html.read_text()
    key = re.search(r'<div id="geojepa-key".*?</div>', text, re.S)
    assert key is not None
    lines = key.group(0).split("<br>")[1:]
    assert [re.search(r"more (\w+) = higher (PC\d)", line).groups() for line in lines] == [
        ("red", "PC1"), ("green", "PC2"), ("blue", "PC3")]  # fmt: skip
    pattern = r"\(\d+% of the variance\); closest tile statistic: .+ \(r = [+-][01]\.\d\d\)"
    assert all(re.search(pattern, line) for line in lines), lines


def test_color_key_finds_the_statistic_an_axis_follows():
    import pandas as pd

    from geojepa.explore.webmap import color_key, tile_statistics

    rng = np.random.default_rng(0)
    n = 60
    park = rng.random(n) < 0.5
    frame = pd.DataFrame({
        "n_entities": rng.integers(1, 100, n),
        "top_tags": np.where(park, "leisure=park; natural=tree", "building=yes"),
    })  # fmt: skip
    frame.loc[:2, "top_tags"] += "; shop=bakery"  # on 3 tiles: kept; rarer tags are not
    stats = tile_statistics(frame)
    assert set(stats.columns) == {"n_entities", "leisure=park", "natural=tree", "building=yes",
                                  "shop=bakery"}  # fmt: skip
    noise = rng.normal(size=(n, 3))
    coords = np.column_stack([park + 0.1 * noise[:, 0], -frame["n_entities"] + noise[:, 1],
                              noise[:, 2]])  # fmt: skip
    key = color_key(coords, stats, np.array([0.5, 0.3, 0.1]))
    assert key[0]["statistic"] in {"leisure=park", "natural=tree", "building=yes"}  # one split
    assert abs(key[0]["r"]) > 0.9
    assert key[1]["statistic"] == "n_entities" and key[1]["r"] < -0.9
    assert key[0]["variance"] == 0.5 and key[2]["channel"] == "blue"
