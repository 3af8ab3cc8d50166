"""The model directory: what `geojepa pretrain` leaves for `embed`/`evaluate` and for users.

Layout (format version ``FORMAT_VERSION``)::

    config.json          the PretrainConfig of the run
    model.safetensors    every weight except the frozen tag table (no pickle)
    tag_table.safetensors the frozen text-embedding table (one row per vocabulary entry)
    vocab.json           the tag vocabulary (TagVocabulary.save)
    MODEL_CARD.md        data, steps, final losses, date
    dataset.json         the PrepareConfig of the training data (zoom, tag filter)
    training_data.json   where the training data lies and how many tiles it held
    environment.json     geojepa's version and the resolved versions of its dependencies
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from geojepa.data.config import PrepareConfig
from geojepa.environment import environment
from geojepa.errors import GeojepaError, InputError
from geojepa.io.atomic import write_atomic, write_text_atomic
from geojepa.model.jepa import GeoJEPA
from geojepa.tokenize.tags import DEFAULT_TEXT_MODEL, DEFAULT_TEXT_MODEL_LICENSE, TagVocabulary
from geojepa.tokenize.tokenizer import TileTokenizer
from geojepa.train.config import FORMAT_VERSION, PRESET_NOTES, PretrainConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TAG_TABLE_FILE = "tag_table.safetensors"
VOCAB_FILE = "vocab.json"
CARD_FILE = "MODEL_CARD.md"
DATASET_CONFIG_FILE = "dataset.json"  # PrepareConfig of the training data (zoom, tag filter)
TRAINING_DATA_FILE = "training_data.json"  # {"dataset": path, "n_tiles": N} of the training data
ENVIRONMENT_FILE = "environment.json"  # geojepa and dependency versions at export
T = TypeVar("T")
REQUIRED = (CONFIG_FILE, WEIGHTS_FILE, TAG_TABLE_FILE, VOCAB_FILE)


def build_model(config: PretrainConfig, tag_table: torch.Tensor) -> GeoJEPA:
    """A fresh GeoJEPA (tokenizer included, random weights) for ``config``."""
    tokenizer = TileTokenizer(config.tokenizer, tag_table)
    return GeoJEPA(config.model, tokenizer, config.masking)


def _is_tag_table(key: str) -> bool:
    return key.endswith("tag_table")


def export_model(
    model: GeoJEPA,
    config: PretrainConfig,
    vocab: TagVocabulary,
    out: str | Path,
    info: dict[str, Any] | None = None,
    dataset_config: PrepareConfig | None = None,
    training_data: dict[str, Any] | None = None,
) -> Path:
    """Write the model directory ``out`` (files are replaced atomically one by one).

    ``training_data`` (``{"dataset": path, "n_tiles": N}``) lets `evaluate` find the tiles the
    model was trained on, to report any overlap with its val/test tiles.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / CONFIG_FILE)
    state, seen = {}, set()
    for k, v in model.state_dict().items():
        if _is_tag_table(k):
            continue
        t = v.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():  # teacher and student share frozen tensors
            t = t.clone()  # safetensors refuses shared memory
        seen.add(ptr)
        state[k] = t
    meta = {"format_version": str(FORMAT_VERSION), "geojepa": "model"}
    write_atomic(out / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata=meta))
    table = model.tokenizer.tag_table.detach().cpu().contiguous()
    write_atomic(
        out / TAG_TABLE_FILE, lambda p: save_file({"tag_table": table}, str(p), metadata=meta)
    )
    vocab.save(out / VOCAB_FILE)
    if dataset_config is not None:  # lets `embed` refuse data of another zoom or tag filter
        dataset_config.save(out / DATASET_CONFIG_FILE)
    if training_data is not None:
        write_text_atomic(out / TRAINING_DATA_FILE, json.dumps(training_data, indent=2) + "\n")
    write_text_atomic(out / ENVIRONMENT_FILE, json.dumps(environment(), indent=2) + "\n")
    write_text_atomic(out / CARD_FILE, model_card(config, info or {}))
    return out


def _speed(throughput: dict[str, float] | None) -> str:
    """``1,234 real tokens/s, 56.7 tiles/s`` (the last training attempt's loop), or ``?``."""
    if not throughput:
        return "?"
    return (f"{throughput['real_tokens_per_s']:,.0f} real tokens/s, "
            f"{throughput['tiles_per_s']:.1f} tiles/s (last attempt's training loop)")  # fmt: skip


def model_card(config: PretrainConfig, info: dict[str, Any]) -> str:
    """A short Markdown card filled from the run."""
    date = info.get("date") or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    losses = info.get("final_losses") or {}
    loss_lines = "\n".join(f"| {k} | {v:.4f} |" for k, v in losses.items()) or "| – | – |"
    t, m = config.tokenizer, config.model
    inputs = [n for n, on in (("tags", t.use_tags), ("geometry", t.use_geometry),
                              ("imagery", t.use_image)) if on]  # fmt: skip
    default_text = t.text_model.removeprefix("sentence-transformers/") == DEFAULT_TEXT_MODEL
    text_licence = (
        f"{DEFAULT_TEXT_MODEL_LICENSE} (sentence-transformers/{DEFAULT_TEXT_MODEL}; "
        "weights checked against the upstream SHA-256)"
        if default_text
        else "see the text model's own card"
    )
    counted = m.tile_pooling == "max_mean_count"
    pooling = "[max ‖ mean ‖ log(1 + tokens)]" if counted else "[max ‖ mean]"
    tile_width = 2 * m.width + counted
    targets = f"mean of the last {m.target_layers} blocks" if m.target_layers > 1 else "last block"
    per_target = m.pred_loss_reduction == "per_target_sum"
    reduction = "sum over targets of each target's mean" if per_target else "mean over tokens"
    loss = (f"smooth-L1 to teacher targets ({targets}; {reduction}) + {m.var_weight} × variance "
            f"+ {m.cov_weight} × covariance")  # fmt: skip
    ema = "encoder (student's tokenizer, prior)" if m.ema_scope == "encoder" else "all"
    ema += f", momentum {m.ema_momentum[0]} → {m.ema_momentum[1]}"
    ema += f" over {m.ema_steps} steps" if m.ema_steps else " over the run"
    return f"""# GeoJEPA model card

Self-supervised embeddings of map tiles and OpenStreetMap entities (GeoJEPA,
arXiv 2503.05774), trained with `geojepa pretrain`.

| field | value |
|---|---|
| format version | {FORMAT_VERSION} |
| date | {date} |
| preset | {config.preset or "custom"} |
| training data | `{info.get("dataset", "?")}` ({info.get("n_tiles", "?")} tiles) |
| inputs | {", ".join(inputs)} |
| text model | {t.text_model} |
| text model licence | {text_licence} |
| recipe | {PRESET_NOTES.get(config.preset or "", "custom configuration")} |
| encoder | width {m.width}, {m.depth} layers, {m.heads} heads, dropout {m.dropout} |
| predictor | width {m.predictor_width}, {m.predictor_depth} layers |
| loss | {loss} |
| EMA teacher | {ema} |
| optimiser steps | {info.get("steps", "?")} (epochs: {info.get("epochs", "?")}) |
| devices | {info.get("devices", "?")} |
| training speed | {_speed(info.get("throughput"))} |

## Final training losses

| term | value |
|---|---|
{loss_lines}

## Use

```python
from geojepa.model import GeoJEPA
model = GeoJEPA.from_pretrained("{info.get("name", "RUN")}")
```

`tile_embedding(batch)` gives {pooling} over the target encoder's token outputs
({tile_width} numbers); `entity_embeddings(batch)` gives one {m.width}-d vector per entity.

Data: © OpenStreetMap contributors, ODbL.
"""


def load_model(path: str | Path, map_location: str = "cpu") -> GeoJEPA:
    """Rebuild a GeoJEPA from a model directory (InputError if incomplete or too new)."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"model directory not found: {path}")
    missing = [name for name in REQUIRED if not (path / name).exists()]
    if missing:
        raise InputError(f"{path} is not a complete geojepa model directory (missing: "
                         f"{', '.join(missing)})")  # fmt: skip
    meta = _read_model_file(path / WEIGHTS_FILE, lambda p: _safetensors_metadata(p))
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
    config = _read_model_file(path / CONFIG_FILE, PretrainConfig.load)
    table = _read_model_file(path / TAG_TABLE_FILE, lambda p: load_file(str(p))["tag_table"])
    vocab = _read_model_file(path / VOCAB_FILE, TagVocabulary.load)
    if len(vocab) != table.shape[0]:
        raise InputError(f"{path}: vocabulary ({len(vocab)}) and tag table "
                         f"({table.shape[0]} rows) do not match")  # fmt: skip
    model = _read_model_file(path / CONFIG_FILE, lambda p: build_model(config, table))
    state = _read_model_file(path / WEIGHTS_FILE, lambda p: load_file(str(p), device=map_location))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        first = str(exc).strip().splitlines()[-1].strip()
        raise InputError(
            f"{path / WEIGHTS_FILE} does not match {path / CONFIG_FILE} ({first}); the model "
            "directory is damaged or mixed from two runs: export it again"
        ) from None
    bad = [k for k in result.missing_keys if not _is_tag_table(k)] + list(result.unexpected_keys)
    if bad:
        raise InputError(f"{path / WEIGHTS_FILE} does not match its config ({bad[:3]} ...)")
    model.vocab = vocab  # type: ignore[attr-defined]
    model.pretrain_config = config  # type: ignore[attr-defined]
    dataset_json = path / DATASET_CONFIG_FILE
    model.dataset_config = (  # type: ignore[attr-defined]
        _read_model_file(dataset_json, PrepareConfig.load) if dataset_json.exists() else None
    )
    model.training_data = read_training_data(path)  # type: ignore[attr-defined]
    return model.to(map_location).eval()


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


def read_model_info(path: str | Path) -> dict[str, Any]:
    """config.json of a model directory as a dict (for `geojepa info`-style tools)."""
    return json.loads((Path(path) / CONFIG_FILE).read_text())


def _safetensors_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def _read_model_file(path: Path, read: Callable[[Path], T]) -> T:
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
