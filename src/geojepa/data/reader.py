"""Reading a tile dataset written by `geojepa prepare` (layout: `geojepa.data.schema`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely

from geojepa.data import schema
from geojepa.data.config import PrepareConfig
from geojepa.data.tiling import local_to_merc, merc_to_lonlat
from geojepa.errors import GeojepaError, InputError


class TileDataset:
    """A complete tile dataset on disk; shards are read lazily, one at a time."""

    def __init__(self, path: Path, config: PrepareConfig, manifest: dict) -> None:
        self.path = path
        self.config = config
        self.manifest = manifest
        self.shards: list[int] = [int(s) for s in manifest["shards"]]

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"TileDataset({str(self.path)!r}, zoom={self.config.zoom}, shards={len(self.shards)}, "
            f"tiles={m.get('n_tiles')}, entities={m.get('n_entities')})"
        )

    def _read(self, kind: str, shard: int | None, columns: list[str] | None) -> pa.Table:
        name = schema.tiles_file if kind == "tiles" else schema.entities_file
        target = schema.TILE_SCHEMA if kind == "tiles" else schema.ENTITY_SCHEMA
        shards = self.shards if shard is None else [shard]
        if shard is not None and shard not in self.shards:
            raise InputError(f"{self.path}: no shard {shard} (shards: {len(self.shards)})")
        tables = [_read_shard(self.path / name(s), columns) for s in shards]
        if not tables:
            fields = target if columns is None else [target.field(c) for c in columns]
            return pa.schema(fields).empty_table()
        return pa.concat_tables(tables)

    def read_tiles(self, shard: int | None = None, columns: list[str] | None = None) -> pa.Table:
        """Tile rows (TILE_SCHEMA) of one shard, or of all shards when ``shard`` is None."""
        return self._read("tiles", shard, columns)

    def read_entities(self, shard: int | None = None, columns: list[str] | None = None) -> pa.Table:
        """Entity rows (ENTITY_SCHEMA), sorted by tile in the tiles file's order."""
        return self._read("entities", shard, columns)

    def iter_shards(self) -> Iterator[tuple[int, pa.Table, pa.Table]]:
        """(shard, tiles, entities) one shard at a time: memory bounded by a shard."""
        for s in self.shards:
            yield s, self.read_tiles(s), self.read_entities(s)

    def vocab(self) -> pa.Table:
        """Tag vocabulary: key, value (null = key only), count; most frequent first."""
        return pq.read_table(self.path / schema.VOCAB_FILE)


def _read_shard(path: Path, columns: list[str] | None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise _damaged(path, _first_line(exc)) from None


def _footer(path: Path) -> pq.FileMetaData:
    try:
        return pq.ParquetFile(path).metadata
    except (pa.ArrowException, OSError) as exc:
        raise _damaged(path, _first_line(exc)) from None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def _damaged(path: Path, why: str) -> InputError:
    return InputError(
        f"{path} is damaged ({why}); re-run `geojepa prepare --overwrite` to rebuild the dataset"
    )


def check_shards(ds: TileDataset) -> None:
    """Check what the manifest claims against the shard files (InputError naming the first
    damaged file): every footer reads, each entities file holds the rows its tiles file counts
    (``n_entities``), and the totals are the manifest's. Reads footers and one small column."""
    tiles_total = entities_total = 0
    for s in ds.shards:
        tiles, entities = ds.path / schema.tiles_file(s), ds.path / schema.entities_file(s)
        tile_rows = _footer(tiles).num_rows
        entity_rows = _footer(entities).num_rows
        counted = int(pc.sum(_read_shard(tiles, ["n_entities"]).column(0)).as_py() or 0)
        if entity_rows != counted:
            raise _damaged(entities, f"{entity_rows} rows, its tiles file counts {counted}")
        tiles_total += tile_rows
        entities_total += entity_rows
    m = ds.manifest
    if (tiles_total, entities_total) != (m.get("n_tiles"), m.get("n_entities")):
        raise _damaged(
            ds.path / schema.MANIFEST_FILE,
            f"it counts {m.get('n_tiles')} tiles and {m.get('n_entities')} entities, the shards "
            f"hold {tiles_total} and {entities_total}",
        )


#: Files that only a model/run directory holds (`model.directory.WEIGHTS_FILE`,
#: `pretrain.CKPT_DIR`).
_MODEL_ENTRIES = ("model.safetensors", "checkpoints", "tag_table.safetensors")
#: Files that only `prepare` writes: the manifest when done, these while a build is unfinished.
_BUILD_ENTRIES = (".source.json", ".work")


def dataset_kind(path: str | Path) -> str | None:
    """What a directory provably is: "dataset", "incomplete" (an unfinished build), "model", or
    None (anything else: a folder that merely holds a ``config.json`` is not a dataset)."""
    path = Path(path)
    if any((path / name).exists() for name in _MODEL_ENTRIES):
        return "model"
    if not (path / schema.CONFIG_FILE).is_file():
        return None
    try:
        manifest = json.loads((path / schema.MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        manifest = None
    if isinstance(manifest, dict) and "format_version" in manifest and "shards" in manifest:
        return "dataset"
    if any((path / name).exists() for name in _BUILD_ENTRIES) or any(
        (path / schema.SHARD_DIR).glob("tiles-*.parquet")
    ):
        return "incomplete"
    return None


def open_dataset(path: str | Path) -> TileDataset:
    """Open a dataset directory; InputError unless `prepare` finished writing it."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"dataset not found: {path}")
    manifest_path = path / schema.MANIFEST_FILE
    kind = dataset_kind(path)
    if kind == "model":
        raise InputError(
            f"{path} is a geojepa model directory, not a tile dataset (give the dataset that "
            "`geojepa prepare` wrote)"
        )
    if kind == "incomplete" and not manifest_path.is_file():
        raise InputError(
            f"{path} is an incomplete dataset (no {schema.MANIFEST_FILE}); re-run the same "
            "`geojepa prepare` command to finish it"
        )
    if not manifest_path.is_file():
        raise InputError(f"{path} is not a geojepa tile dataset (no {schema.MANIFEST_FILE})")
    try:  # prepare writes the manifest last and atomically: one that does not parse is damaged
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{manifest_path} is unreadable ({exc}); re-run `geojepa prepare --overwrite` to "
            "rebuild the dataset"
        ) from None
    if not isinstance(manifest, dict):
        raise InputError(f"{manifest_path} is unreadable (not a geojepa manifest)")
    version = manifest.get("format_version")
    if version != schema.FORMAT_VERSION:
        raise InputError(
            f"{path} has dataset format version {version}; this geojepa reads "
            f"{schema.FORMAT_VERSION} (re-run `geojepa prepare`)"
        )
    try:
        config = PrepareConfig.load(path / schema.CONFIG_FILE)
    except GeojepaError as exc:
        raise InputError(f"{path}: bad {schema.CONFIG_FILE}: {exc}") from None
    for s in manifest.get("shards", []):
        if not (path / schema.tiles_file(int(s))).is_file():
            raise InputError(f"{path}: shard {s} listed in the manifest is missing")
    return TileDataset(path, config, manifest)


def local_to_lonlat(geoms: np.ndarray, z: int, x: int, y: int) -> np.ndarray:
    """Tile-local geometries of tile ``z/x/y`` → EPSG:4326 (lon, lat)."""
    merc = local_to_merc(np.asarray(geoms, dtype=object), z, x, y)

    def fn(coords: np.ndarray) -> np.ndarray:
        return np.column_stack(merc_to_lonlat(coords[:, 0], coords[:, 1]))

    return shapely.transform(merc, fn)
