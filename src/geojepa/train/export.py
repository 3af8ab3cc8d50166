"""The model directory, write side: `export_model` and the model card.

The layout, the format version and the reading of a directory (with its checks) are in
`geojepa.model.directory`, below the training layer, so that `GeoJEPA.from_pretrained` needs
nothing from here; `build_model` and `load_model` are re-exported for older imports.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from geojepa.data.config import PrepareConfig
from geojepa.environment import environment
from geojepa.io.atomic import write_atomic, write_text_atomic
from geojepa.model.directory import (
    CARD_FILE,
    CONFIG_FILE,
    DATASET_CONFIG_FILE,
    ENVIRONMENT_FILE,
    FORMAT_VERSION,
    TAG_TABLE_FILE,
    TRAINING_DATA_FILE,
    VOCAB_FILE,
    WEIGHTS_FILE,
    is_tag_table,
)
from geojepa.model.io import LoadedModel, load_model
from geojepa.model.jepa import GeoJEPA, build_model
from geojepa.tokenize.tags import DEFAULT_TEXT_MODEL, DEFAULT_TEXT_MODEL_LICENSE, TagVocabulary
from geojepa.train.config import PRESET_NOTES, PretrainConfig

__all__ = ["LoadedModel", "build_model", "export_model", "load_model", "model_card"]


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
        if is_tag_table(k):
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
