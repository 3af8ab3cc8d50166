"""The model directory, read side: its files, its format version, and reading it with checks.

What `geojepa pretrain` leaves for `embed`/`evaluate` and for users (format ``FORMAT_VERSION``;
written by `model.writer`)::

    config.json          the run config (train.config.PretrainConfig: a ModelSpec + the run's)
    model.safetensors    every weight except the frozen tag table (no pickle); its metadata
                         holds the format version, geojepa's version and what it holds
                         (``contents``: "full", or "embedding" for a compact export)
    tag_table.safetensors the frozen text-embedding table (one row per vocabulary entry)
    vocab.json           the tag vocabulary (TagVocabulary.save)
    README.md            the model card, with a Hugging Face YAML header (format 1: MODEL_CARD.md)
    dataset.json         the PrepareConfig of the training data (zoom, tag filter)
    training_data.json   where the training data lies and how many tiles it held (local path)
    environment.json     geojepa's version and the resolved versions of its dependencies
    checksums.json       the SHA-256 of each file above but the card, written last (format 2)

The files are checked as one unit: every file ``checksums.json`` lists must be there with its
hash, so a flipped bit, an edited config or a removed ``dataset.json`` (which would skip the
zoom guard of `embed`) is one InputError line naming the file. The card is not listed: people
edit cards. Format 1 directories (no checksums) still load, with a warning.

A missing or damaged file is one InputError line naming it, never a traceback from safetensors
or pydantic. Nothing here builds a network: `model.jepa.GeoJEPA.from_pretrained` does, from
what `read_model_directory` returns.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from geojepa.data.config import PrepareConfig
from geojepa.errors import GeojepaError, InputError
from geojepa.model.config import ModelSpec
from geojepa.tokenize.tags import TagVocabulary

#: Version of the model-directory format (written by `model.writer`, read here). 2: the card
#: is README.md with a YAML header, checksums.json, compact (embedding-only) exports.
FORMAT_VERSION = 2

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TAG_TABLE_FILE = "tag_table.safetensors"
VOCAB_FILE = "vocab.json"
CARD_FILE = "README.md"  # the model card (Hugging Face convention)
LEGACY_CARD_FILE = "MODEL_CARD.md"  # the card of format 1 directories
CHECKSUMS_FILE = "checksums.json"  # {"geojepa": version, "files": {name: sha256}} (format 2)
DATASET_CONFIG_FILE = "dataset.json"  # PrepareConfig of the training data (zoom, tag filter)
#: In place of the tag table: a fingerprint of it (row norms, a seeded projection) for a table
#: rebuilt on load from the text model the package ships (a compact export's
#: ``tag_table="text"``: the table is ~45% of a float16 cpu-base model)
TAG_TABLE_CHECK_FILE = "tag_table_check.safetensors"
TAG_TABLE_RTOL = 1e-3  # a rebuilt table must match its fingerprint this closely
TRAINING_DATA_FILE = "training_data.json"  # {"dataset": path, "n_tiles": N} of the training data
ENVIRONMENT_FILE = "environment.json"  # geojepa and dependency versions at export
REQUIRED = (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE)  # + the tag table or its fingerprint
T = TypeVar("T")


@dataclass(frozen=True)
class ModelDirectory:
    """What a model directory says about its model, besides the weights.

    ``spec`` is what the network is built from; ``config`` the whole saved run config as a dict
    (`train.config.PretrainConfig.from_dict` reads it back); ``vocab`` the tag vocabulary whose
    entries are the rows of the model's tag table (open vocabulary appends to both, in memory);
    ``dataset_config`` and ``training_data`` describe the training data (None for runs that did
    not save them). ``path`` is None for a model assembled in memory.
    """

    spec: ModelSpec
    config: dict[str, Any]
    vocab: TagVocabulary
    dataset_config: PrepareConfig | None = None
    training_data: dict[str, Any] | None = None
    path: Path | None = None
    compact: bool = False  # an embedding-only export (no student, no predictor)

    @classmethod
    def of_run(
        cls,
        config: ModelSpec,
        vocab: TagVocabulary,
        dataset_config: PrepareConfig | None = None,
        training_data: dict[str, Any] | None = None,
    ) -> ModelDirectory:
        """The record of a model built in memory from ``config`` (a run config or a spec)."""
        return cls(config.spec(), config.model_dump(mode="json"), vocab, dataset_config,
                   training_data)  # fmt: skip


def read_model_directory(path: str | Path) -> tuple[ModelDirectory, torch.Tensor]:
    """The record and the tag table [V, D_text] of model directory ``path`` (InputError if
    incomplete, too new or damaged; the weights are checked for a format version only)."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"model directory not found: {path}")
    missing = [name for name in REQUIRED if not (path / name).exists()]
    rebuild = not (path / TAG_TABLE_FILE).exists() and (path / TAG_TABLE_CHECK_FILE).exists()
    if not rebuild and not (path / TAG_TABLE_FILE).exists():
        missing.append(TAG_TABLE_FILE)
    if missing:
        raise InputError(f"{path} is not a complete geojepa model directory (missing: "
                         f"{', '.join(missing)})")  # fmt: skip
    meta = read_model_file(path / WEIGHTS_FILE, _safetensors_metadata)
    try:
        version = int(meta.get("format_version", "-1"))
    except ValueError:
        version = -1
    if version < 1:
        raise InputError(f"{path / WEIGHTS_FILE} has no geojepa format version")
    if version > FORMAT_VERSION:
        raise InputError(
            f"{path} was written by a newer geojepa (format {version}; this version reads up "
            f"to {FORMAT_VERSION}): upgrade geojepa"
        )
    verify_checksums(path, version)
    config = read_model_file(path / CONFIG_FILE, _read_json_object)
    spec = read_model_file(path / CONFIG_FILE, lambda p: ModelSpec.from_run_config(config))
    vocab = read_model_file(path / VOCAB_FILE, TagVocabulary.load)
    if rebuild:
        table = rebuilt_tag_table(path, vocab, spec.tokenizer.text_model)
    else:
        table = read_model_file(path / TAG_TABLE_FILE, lambda p: load_file(str(p))["tag_table"])
    table = table.float()  # a compact export may store it in float16
    if len(vocab) != table.shape[0]:
        raise InputError(f"{path}: vocabulary ({len(vocab)}) and tag table "
                         f"({table.shape[0]} rows) do not match")  # fmt: skip
    dataset_json = path / DATASET_CONFIG_FILE
    dataset_config = (
        read_model_file(dataset_json, PrepareConfig.load) if dataset_json.exists() else None
    )
    compact = meta.get("contents", "full") == "embedding"
    record = ModelDirectory(spec, config, vocab, dataset_config, read_training_data(path), path,
                            compact)  # fmt: skip
    return record, table


def tag_table_fingerprint(table: torch.Tensor) -> dict[str, torch.Tensor]:
    """Row norms and a seeded 4-column projection of a tag table: enough to tell a rebuilt
    table from another text model's (or another vocabulary's), 5 floats a row."""
    table = table.float()
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(table.shape[1], 4, generator=generator)
    projection = (table @ directions).contiguous()
    return {"norms": table.norm(dim=1).contiguous(), "projection": projection}


def rebuilt_tag_table(path: Path, vocab: TagVocabulary, text_model: str) -> torch.Tensor:
    """The tag table of a ``tag_table="text"`` export: embedded anew by ``text_model`` (once per
    machine: cached in `tag_table_cache_dir`) and checked against ``tag_table_check``."""
    from geojepa.tokenize.tags import build_tag_table

    check = read_model_file(path / TAG_TABLE_CHECK_FILE, lambda p: load_file(str(p)))
    table = build_tag_table(vocab, text_model, tag_table_cache_dir())
    got = tag_table_fingerprint(table)
    for key, want in check.items():
        if (
            key not in got
            or got[key].shape != want.shape
            or not torch.allclose(got[key], want.float(), rtol=TAG_TABLE_RTOL, atol=TAG_TABLE_RTOL)
        ):
            raise InputError(
                f"{path}: the text model {text_model!r} installed here gives another tag table "
                f"than the one this model was exported with ({TAG_TABLE_CHECK_FILE}: {key} "
                "differs); install the text model version of its environment.json"
            )
    return table


def tag_table_cache_dir() -> Path:
    """Where rebuilt tag tables are cached: ``$GEOJEPA_CACHE``, else ``$XDG_CACHE_HOME/geojepa``
    or ``~/.cache/geojepa``."""
    if os.environ.get("GEOJEPA_CACHE"):
        return Path(os.environ["GEOJEPA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "geojepa"


def sha256_of(path: Path) -> str:
    """The SHA-256 (hex) of the file ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksums(path: Path, version: int = FORMAT_VERSION) -> None:
    """Check every file ``checksums.json`` of directory ``path`` lists against its SHA-256:
    InputError naming the first file that is missing or differs. A format 1 directory (written
    before checksums) has none: a warning says its files are not verified."""
    record_file = path / CHECKSUMS_FILE
    if not record_file.exists():
        if version >= 2:
            raise InputError(f"{path} is not a complete geojepa model directory (missing: "
                             f"{CHECKSUMS_FILE})")  # fmt: skip
        warnings.warn(
            f"{path} was exported before geojepa recorded checksums (format {version}): its "
            "files are not verified; export or save_pretrained it again to add them",
            stacklevel=3,
        )
        return
    record = read_model_file(record_file, _read_json_object)
    files = record.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise InputError(f"{record_file} is damaged (no files → sha256 record)")
    for name, digest in files.items():
        file = path / name
        if Path(name).name != name or not file.is_file():
            raise InputError(f"{file} is missing (listed in {CHECKSUMS_FILE}): the model "
                             "directory is incomplete; copy or export it again")  # fmt: skip
        if sha256_of(file) != digest:
            raise InputError(
                f"{file} is damaged or was edited (its SHA-256 differs from the one recorded at "
                f"export in {CHECKSUMS_FILE}): copy or export the model directory again"
            )


def load_weights(
    model: nn.Module,
    path: str | Path,
    map_location: str = "cpu",
    optional: Callable[[str], bool] = lambda key: False,
) -> None:
    """Load ``model.safetensors`` of directory ``path`` into ``model`` (built from its spec);
    every weight but the tag table and the keys ``optional`` accepts (a compact export's
    training-only parts) must be there with its shape (InputError if not). Weights stored in
    float16 are cast to the model's dtype."""
    path = Path(path)
    state = read_model_file(path / WEIGHTS_FILE, lambda p: load_file(str(p), device=map_location))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        first = str(exc).strip().splitlines()[-1].strip()
        raise InputError(
            f"{path / WEIGHTS_FILE} does not match {path / CONFIG_FILE} ({first}); the model "
            "directory is damaged or mixed from two runs: export it again"
        ) from None
    bad = [k for k in result.missing_keys if not (is_tag_table(k) or optional(k))]
    bad += list(result.unexpected_keys)
    if bad:
        raise InputError(f"{path / WEIGHTS_FILE} does not match its config ({bad[:3]} ...)")


def is_tag_table(key: str) -> bool:
    """Whether a state-dict key is a (frozen) tag table, stored in its own file."""
    return key.endswith("tag_table")


def read_training_data(path: str | Path) -> dict[str, Any] | None:
    """``training_data.json`` of a model directory (None if absent: older runs, or not saved)."""
    file = Path(path) / TRAINING_DATA_FILE
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {file}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("dataset"), str):
        raise InputError(f'{file} does not name its dataset (expected {{"dataset": path}})')
    return data


def _read_json_object(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"a JSON object expected, not {type(data).__name__}")
    return data


def _safetensors_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def read_model_file(path: Path, read: Callable[[Path], T]) -> T:
    """``read(path)``, with any failure of a damaged file turned into one clear InputError."""
    try:
        return read(path)
    except GeojepaError as exc:
        raise InputError(f"{path}: {exc}") from None
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(
            f"{path} is damaged or not a geojepa model file ({type(exc).__name__}: {first}); "
            "export or copy the model directory again"
        ) from None
