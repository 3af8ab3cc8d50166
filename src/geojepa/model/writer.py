"""The model directory, write side: `write_model_directory` (files, metadata, checksums).

Both `train.export.export_model` (at the end of `geojepa pretrain`) and
`GeoJEPA.save_pretrained` write through here, so a directory always has the same files, the
same safetensors metadata (format version, geojepa's version, ``contents``) and a
``checksums.json`` written last: a directory cut short by a crash fails its check on load
instead of looking whole.

A *compact* export (``compact=True``) holds only what embedding reads (the caller passes
`GeoJEPA.weights_to_save`'s state: the target branch, plus the student's tokenizer and prior
where the teacher shares them) and may store weights and tag table in float16 (``dtype``); it
loads back into a model that embeds as the full one does, up to the rounding of that dtype.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from geojepa import __version__
from geojepa.data.config import PrepareConfig
from geojepa.environment import environment
from geojepa.errors import ConfigError
from geojepa.io.atomic import write_atomic, write_text_atomic
from geojepa.model.directory import (
    CARD_FILE,
    CHECKSUMS_FILE,
    CONFIG_FILE,
    DATASET_CONFIG_FILE,
    ENVIRONMENT_FILE,
    FORMAT_VERSION,
    LEGACY_CARD_FILE,
    TAG_TABLE_CHECK_FILE,
    TAG_TABLE_FILE,
    TRAINING_DATA_FILE,
    VOCAB_FILE,
    WEIGHTS_FILE,
    is_tag_table,
    sha256_of,
    tag_table_fingerprint,
)
from geojepa.tokenize.tags import TagVocabulary

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def write_model_directory(
    out: str | Path,
    *,
    state: dict[str, torch.Tensor],
    tag_table: torch.Tensor,
    config: dict[str, Any],
    vocab: TagVocabulary,
    card: str,
    dataset_config: PrepareConfig | None = None,
    training_data: dict[str, Any] | None = None,
    compact: bool = False,
    dtype: str = "float32",
    tag_table_from_text: bool = False,
) -> Path:
    """Write model directory ``out`` (files replaced atomically one by one, checksums last).

    ``state``: the weights to store (the tag table and, for a compact export, the
    training-only parts already left out); ``config`` the run config as a dict (config.json);
    ``card`` the README.md text;
    ``training_data`` (``{"dataset": path, "n_tiles": N}``, a local path) is written only when
    given (`push_to_hub` leaves it out). ``compact``/``dtype``: see the module docstring.
    ``tag_table_from_text``: store only a fingerprint of the tag table, rebuilt on load from the
    text model (which must give this table: a load checks it).
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CHECKSUMS_FILE).unlink(missing_ok=True)  # a half-rewritten directory never verifies
    cast = DTYPES[dtype]
    write_text_atomic(out / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    weights = _weights(state, cast)
    meta = {
        "format_version": str(FORMAT_VERSION),
        "geojepa": "model",
        "geojepa_version": __version__,
        "contents": "embedding" if compact else "full",
        "dtype": dtype,
    }
    write_atomic(out / WEIGHTS_FILE, lambda p: save_file(weights, str(p), metadata=meta))
    table_file = _write_tag_table(out, tag_table, cast, meta, tag_table_from_text)
    vocab.save(out / VOCAB_FILE)
    files = [CONFIG_FILE, WEIGHTS_FILE, table_file, VOCAB_FILE, ENVIRONMENT_FILE]
    if dataset_config is not None:  # lets `embed` refuse data of another zoom or tag filter
        dataset_config.save(out / DATASET_CONFIG_FILE)
        files.append(DATASET_CONFIG_FILE)
    else:
        (out / DATASET_CONFIG_FILE).unlink(missing_ok=True)
    if training_data is not None:
        write_text_atomic(out / TRAINING_DATA_FILE, json.dumps(training_data, indent=2) + "\n")
        files.append(TRAINING_DATA_FILE)
    else:
        (out / TRAINING_DATA_FILE).unlink(missing_ok=True)
    write_text_atomic(out / ENVIRONMENT_FILE, json.dumps(environment(), indent=2) + "\n")
    write_text_atomic(out / CARD_FILE, card)
    (out / LEGACY_CARD_FILE).unlink(missing_ok=True)  # a format 1 card would contradict it
    record = {
        "format_version": FORMAT_VERSION,
        "geojepa": __version__,
        "files": {name: sha256_of(out / name) for name in files},
    }
    write_text_atomic(out / CHECKSUMS_FILE, json.dumps(record, indent=2) + "\n")
    return out


def _weights(state: dict[str, torch.Tensor], cast: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors to store: on CPU, floats cast, the tag table left out, none sharing memory."""
    weights, seen = {}, set()
    for k, v in state.items():
        if is_tag_table(k):
            continue
        t = v.detach().cpu()
        t = (t.to(cast) if t.is_floating_point() else t).contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():  # teacher and student share frozen tensors
            t = t.clone()  # safetensors refuses shared memory
        seen.add(ptr)
        weights[k] = t
    return weights


def _write_tag_table(
    out: Path, tag_table: torch.Tensor, cast: torch.dtype, meta: dict[str, str], from_text: bool
) -> str:
    """Write the tag table, or only its fingerprint (``from_text``); returns the file's name.

    The other form's file is removed, so a directory never holds both.
    """
    if from_text:
        tables = tag_table_fingerprint(tag_table.detach().cpu())
        table_file = TAG_TABLE_CHECK_FILE
        (out / TAG_TABLE_FILE).unlink(missing_ok=True)
    else:
        tables = {"tag_table": tag_table.detach().cpu().to(cast).contiguous()}
        table_file = TAG_TABLE_FILE
        (out / TAG_TABLE_CHECK_FILE).unlink(missing_ok=True)
    write_atomic(out / table_file, lambda p: save_file(tables, str(p), metadata=meta))
    return table_file
