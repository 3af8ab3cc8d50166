"""`prepare`'s output is unchanged by refactoring: content digests of real extracts.

The digests were computed with the code before `data/prepare.py` was split by stage (commit
a6ef38a^), over the decoded, sorted tile and entity tables (values, geometry bytes and types;
not the file layout or dictionary encoding). A change to what `prepare` writes fails here: if
the change is intended, recompute the digests and say why in the commit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pytest

from geojepa.data.config import PrepareConfig
from geojepa.data.prepare import prepare_tiles


def table_digest(table: pa.Table, keys: list[str]) -> str:
    """sha256 (16 hex) of a table's decoded content in key order."""
    columns = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        columns[name] = column
    canonical = pa.table(columns).sort_by([(k, "ascending") for k in keys])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, canonical.schema) as writer:
        writer.write_table(canonical)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16]


def _digests(source: Path, out: Path, zoom: int, workers: int) -> tuple[str, str, int, int]:
    ds = prepare_tiles(source, out, PrepareConfig(zoom=zoom, workers=workers), progress=False)
    return (
        table_digest(ds.read_tiles(), ["region_id"]),
        table_digest(ds.read_entities(), ["region_id", "feature_id"]),
        ds.manifest["n_tiles"],
        ds.manifest["n_entities"],
    )


def test_helsinki_unchanged(helsinki_pbf: Path, tmp_path: Path) -> None:
    got = _digests(helsinki_pbf, tmp_path / "ds", zoom=17, workers=2)
    assert got == ("32493d564ba3348c", "dc2be19b1bd6e396", 95, 14611)


def test_liechtenstein_unchanged(liechtenstein_pbf: Path, tmp_path: Path) -> None:
    got = _digests(liechtenstein_pbf, tmp_path / "ds", zoom=16, workers=1)
    assert got == ("e8f84085efe484cf", "c2a636d3a7e220a5", 1808, 17874)


@pytest.mark.slow
def test_neubrandenburg_unchanged(neubrandenburg_pbf: Path, tmp_path: Path) -> None:
    assert _digests(neubrandenburg_pbf, tmp_path / "z16", zoom=16, workers=2) == (
        "ec192552734f3551", "3e7842f7989ea717", 4573, 53788,
    )  # fmt: skip
    assert _digests(neubrandenburg_pbf, tmp_path / "z17", zoom=17, workers=1) == (
        "351730ff7695a24a", "2030b3c5903f1072", 14719, 75874,
    )  # fmt: skip


@pytest.mark.slow
def test_montevideo_features_unchanged(montevideo_features: Path, tmp_path: Path) -> None:
    got = _digests(montevideo_features, tmp_path / "ds", zoom=16, workers=1)
    assert got == ("8ffe61ea38ed82c8", "5bfafa1f2d8f3866", 1247, 250284)
