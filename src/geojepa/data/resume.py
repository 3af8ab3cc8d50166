"""The output directory of `prepare`: which directory may be written or replaced (only a
provable dataset, and only its own entries), whether a build resumes, and the source
fingerprint that a resume must match.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from geojepa.data import schema
from geojepa.data.config import PrepareConfig
from geojepa.data.features import (
    is_features_file,
)
from geojepa.data.osm import is_osm_file
from geojepa.data.reader import dataset_kind
from geojepa.errors import InputError, OutputError

WORK_DIR = ".work"  # scratch space inside the dataset, removed when the build completes
SOURCE_FILE = ".source.json"  # source fingerprint of an unfinished build (resume checks it)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class SourceHasher(threading.Thread):
    """SHA-256 of the source in a thread (hashlib releases the GIL), overlapping the read."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.result, self.error = path, None, None

    def run(self) -> None:
        try:
            self.result = sha256_file(self.path)
        except OSError as exc:
            self.error = exc

    def value(self) -> str:
        self.join()
        if self.error is not None:
            raise InputError(f"cannot read {self.path}: {self.error}")
        assert self.result is not None
        return self.result


def check_source(source: Any) -> tuple[str, Path | None]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise InputError(f"source not found: {path}")
        if not path.is_file():
            raise InputError(f"source is not a file: {path}")
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        if not head:
            raise InputError(f"source is empty: {path}")
        if is_features_file(path):
            return "features", path
        if is_osm_file(path):
            return "osm", path
        raise InputError(
            f"unsupported source {path.name}: expected an OSM file (.osm.pbf, .osm, .osm.bz2) "
            "or a features GeoParquet (.parquet)"
        )
    if hasattr(source, "geometry") and hasattr(source, "crs"):
        return "geodataframe", None
    raise InputError(f"unsupported source of type {type(source).__name__}")


#: Everything `prepare` writes into a dataset directory; --overwrite removes these and nothing else.
DATASET_ENTRIES = (schema.CONFIG_FILE, schema.MANIFEST_FILE, schema.VOCAB_FILE, SOURCE_FILE,
                   WORK_DIR, schema.SHARD_DIR, "cache")  # fmt: skip


def prepare_output(output: Path, config: PrepareConfig, overwrite: bool) -> tuple[bool, bool]:
    """Make ``output`` usable. Returns (created, resuming).

    Only a directory that is provably a geojepa dataset (see `reader.dataset_kind`) is ever
    replaced, and then only the entries `prepare` writes: a user's other files survive.
    """
    if output.exists() and not output.is_dir():
        raise OutputError(f"output {output} exists and is not a directory")
    if not output.exists():
        try:
            output.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(f"cannot create {output}: {exc.strerror or exc}") from None
        return True, False
    entries = [p for p in output.iterdir() if p.name != WORK_DIR]
    if not entries:
        return False, False
    kind = dataset_kind(output)
    if kind == "model":
        raise OutputError(
            f"output {output} is a geojepa model directory; choose another directory for the "
            "dataset (refusing to replace it, even with --overwrite)"
        )
    if kind is None:
        raise OutputError(
            f"output {output} is not empty and is not a geojepa dataset; choose another "
            "directory (refusing to replace it, even with --overwrite)"
        )
    if overwrite:
        remove_dataset_entries(output)
        return False, False
    try:
        old = json.loads((output / schema.CONFIG_FILE).read_text())
        old = {k: v for k, v in old.items() if k not in ("workers", "location_index")}
    except (OSError, json.JSONDecodeError, AttributeError):
        old = None
    if old != config.content_dict():
        raise OutputError(
            f"output {output} holds a dataset built with a different config; "
            "use --overwrite to replace it or choose another directory"
        )
    return False, True


def remove_dataset_entries(output: Path) -> None:
    for name in DATASET_ENTRIES:
        entry = output / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


def discard_build(output: Path, created: bool) -> None:
    """Remove what a failed fresh build wrote (the directory too if this run created it)."""
    remove_dataset_entries(output)
    if created:
        with contextlib.suppress(OSError):
            output.rmdir()  # only if nothing else is in it


def check_same_source(output: Path, source_id: dict) -> None:
    recorded = output / SOURCE_FILE
    manifest = output / schema.MANIFEST_FILE
    old = None
    if manifest.is_file():
        old = json.loads(manifest.read_text()).get("source")
    elif recorded.is_file():
        old = json.loads(recorded.read_text())
    if old is not None and old.get("sha256") != source_id.get("sha256"):
        raise OutputError(
            f"output {output} was built from a different source; "
            "use --overwrite to replace it or choose another directory"
        )
