"""The model card: ``README.md`` of a model directory, a Hugging Face style card.

The card opens with a YAML header (``license``, ``library_name: geojepa``, ``tags``,
``datasets`` and, when the exporter passes benchmark rows, ``metrics`` and a ``model-index``
with each row's interval) that ``huggingface_hub.ModelCard`` parses; the Markdown below it is
for people. The header is written as JSON values (valid YAML), so no YAML writer is needed.

The training data is named by what travels with the model: each source file's name, size,
SHA-256 and OSM snapshot date (from the PBF header, where the extract records one). A
machine's paths never enter the card (`training_data.json` keeps the local path `evaluate`
needs, outside the card).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from geojepa.model.directory import FORMAT_VERSION
from geojepa.tokenize.tags import DEFAULT_TEXT_MODEL, DEFAULT_TEXT_MODEL_LICENSE

#: The licence of the weights in the card's header (geojepa's own; the data's ODbL notice is
#: in the card's text).
LICENSE = "apache-2.0"
TAGS = ("geojepa", "openstreetmap", "geospatial", "self-supervised", "jepa", "embeddings")


@dataclass(frozen=True)
class EvalRow:
    """One benchmark result for the card: ``value`` of ``metric`` (e.g. ``"mae"``) on
    ``task`` over ``dataset``, with its interval ``[low, high]`` (e.g. mean ± std over seeds,
    or a bootstrap interval: ``interval`` says which); ``task_type`` is the Hub's task kind
    (``tabular-classification`` for the 0/1 bridge tasks)."""

    task: str
    metric: str
    value: float
    low: float | None = None
    high: float | None = None
    dataset: str = "geojepa benchmark"
    interval: str = "95% interval"
    task_type: str = "tabular-regression"


def model_card(
    config: Any,
    info: dict[str, Any],
    results: list[EvalRow] | None = None,
    name: str = "geojepa-model",
) -> str:
    """The card of a model built from ``config`` (anything with ``tokenizer`` and ``model``
    sections, and optionally ``preset``: a run config or a ModelSpec).

    ``info`` (all optional): ``date``, ``recipe`` (a line on the preset), ``sources`` (a list
    of ``{"name", "kind", "sha256", "size", "snapshot"}``), ``dataset_name``, ``n_tiles``,
    ``steps``, ``epochs``, ``batches``, ``devices``, ``throughput``, ``final_losses``,
    ``compact`` (the embedding-only export, with its ``dtype``), ``notes`` (lines for a Notes
    section: how the results were measured, limits). ``results``: benchmark rows for the header.
    """
    date = info.get("date") or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sources = list(info.get("sources") or [])
    header = _header(sources, results or [], name, info)
    losses = info.get("final_losses") or {}
    loss_lines = "\n".join(f"| {k} | {v:.4f} |" for k, v in losses.items()) or "| – | – |"
    t, m = config.tokenizer, config.model
    f = _method_fields(config, info)
    return f"""{header}
# GeoJEPA model card

Self-supervised embeddings of map tiles and OpenStreetMap entities (GeoJEPA,
arXiv 2503.05774), trained with `geojepa pretrain`.

| field | value |
|---|---|
| format version | {FORMAT_VERSION} |
| date | {date} |
| preset | {getattr(config, "preset", None) or "custom"} |
| training data | {info.get("dataset_name", "?")} ({info.get("n_tiles", "?")} tiles; see below) |
| entity cap | {_entity_cap(info.get("entity_cap"))} |
| inputs | {f["inputs"]} |
| text model | {t.text_model} |
| text model licence | {f["text_licence"]} |
| recipe | {info.get("recipe") or "custom configuration"} |
| encoder | width {m.width}, {m.depth} layers, {m.heads} heads, dropout {m.dropout} |
| predictor | width {m.predictor_width}, {m.predictor_depth} layers |
| loss | {f["loss"]} |
| EMA teacher | {f["ema"]} |
| weights | {f["contents"]} |
| optimiser steps | {info.get("steps", "?")} (epochs: {_epochs(info.get("epochs"))}) |
| batches | {info.get("batches", "?")} |
| devices | {info.get("devices", "?")} |
| training speed | {_speed(info.get("throughput"))} |

## Training data

{_sources_table(sources)}

## Final training losses

| term | value |
|---|---|
{loss_lines}
{_results_section(results or [])}{_notes_section(info.get("notes") or [])}
## Use

```python
from geojepa.model import GeoJEPA
model = GeoJEPA.from_pretrained("{info.get("repo_id") or "PATH/TO/THIS/DIRECTORY"}")
```

`tile_embedding(batch)` gives {f["pooling"]} over the target encoder's token outputs
({f["tile_width"]} numbers); `entity_embeddings(batch)` gives one {m.width}-d vector per entity.
`from_pretrained` takes this directory's path or its Hub id (`owner/name`, with
`pip install 'geojepa[hub]'`); `checksums.json` holds the SHA-256 of every model file, and
loading checks them.

Data: © OpenStreetMap contributors, ODbL.
"""


def _method_fields(config: Any, info: dict[str, Any]) -> dict[str, str]:
    """The card's lines on what the model reads and how it was trained, from its config."""
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
    targets = f"mean of the last {m.target_layers} blocks" if m.target_layers > 1 else "last block"
    if getattr(m, "target_norm", "token") == "token_batch":
        targets += ", standardised per dimension over the batch"
    per_target = m.pred_loss_reduction == "per_target_sum"
    reduction = "sum over targets of each target's mean" if per_target else "mean over tokens"
    ema = "encoder (student's tokenizer, prior)" if m.ema_scope == "encoder" else "all"
    ema += f", momentum {m.ema_momentum[0]} → {m.ema_momentum[1]}"
    ema += f" over {m.ema_steps} steps" if m.ema_steps else " over the schedule"
    return {
        "inputs": ", ".join(inputs),
        "text_licence": text_licence,
        "pooling": "[max ‖ mean ‖ log(1 + tokens)]" if counted else "[max ‖ mean]",
        "tile_width": str(2 * m.width + counted),
        "loss": f"smooth-L1 to teacher targets ({targets}; {reduction}) + {m.var_weight} × "
        f"variance + {m.cov_weight} × covariance",
        "ema": ema,
        "contents": (
            f"embedding only (target encoder, tokenizer, prior; {info.get('dtype', 'float32')}): "
            "embeds, cannot resume training"
            if info.get("compact")
            else "every weight (resumable from its run's checkpoints)"
        ),
    }


def _entity_cap(cap: dict[str, int] | None) -> str:
    """What ``tokenizer.max_entities`` cut of the training data (`data.info.entities_over_cap`)."""
    from geojepa.data.info import entity_cap_note

    if not cap:
        return "?"
    return entity_cap_note(cap) or f"none: no tile holds more than {cap['max_entities']:,}"


def _epochs(epochs: Any) -> str:
    """Passes over the training tiles, two decimals (a resumed run's share is not whole)."""
    return f"{epochs:.2f}" if isinstance(epochs, int | float) else "?"


def _notes_section(notes: list[str]) -> str:
    return "\n## Notes\n\n" + "\n".join(f"- {n}" for n in notes) + "\n" if notes else ""


def card_info(card: str) -> dict[str, Any]:
    """The ``info`` a card was written from (its header's ``geojepa`` line), so that
    ``save_pretrained`` writes the same card again; {} for a card without one."""
    lines = card.split("\n---", 1)[0].splitlines() if card.startswith("---") else []
    for line in lines:
        if line.startswith("geojepa: "):
            try:
                info = json.loads(line.removeprefix("geojepa: "))
            except ValueError:
                return {}
            return info if isinstance(info, dict) else {}
    return {}


#: What of ``info`` the card's header keeps for `card_info` (never a path).
_KEPT = ("date", "recipe", "sources", "dataset_name", "n_tiles", "entity_cap", "steps", "epochs",
         "batches", "devices", "throughput", "final_losses")  # fmt: skip


def _header(
    sources: list[dict[str, Any]], results: list[EvalRow], name: str, info: dict[str, Any]
) -> str:
    fields: dict[str, Any] = {
        "license": LICENSE,
        "library_name": "geojepa",
        "tags": list(TAGS),
    }
    names = [s["name"] for s in sources if s.get("name")]
    if names:
        fields["datasets"] = names
    if results:
        fields["metrics"] = sorted({r.metric for r in results})
        fields["model-index"] = [{"name": name, "results": [_index_row(r) for r in results]}]
    fields["geojepa"] = {k: info[k] for k in _KEPT if k in info}
    lines = ["---", *(f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in fields.items())]
    return "\n".join([*lines, "---"])


def _index_row(r: EvalRow) -> dict[str, Any]:
    metric: dict[str, Any] = {"type": r.metric, "value": r.value, "name": _metric_name(r)}
    return {
        "task": {"type": r.task_type, "name": r.task},
        "dataset": {"name": r.dataset, "type": r.dataset},
        "metrics": [metric],
    }


def _metric_name(r: EvalRow) -> str:
    if r.low is None or r.high is None:
        return r.metric
    return f"{r.metric} ({r.interval} {r.low:.4g}–{r.high:.4g})"


def _results_section(results: list[EvalRow]) -> str:
    if not results:
        return ""
    rows = "\n".join(
        f"| {r.task} | {r.dataset} | {r.metric} | {r.value:.4g} | "
        + (f"{r.low:.4g}–{r.high:.4g} ({r.interval})" if r.low is not None and r.high is not None
           else "–")
        + " |"
        for r in results
    )  # fmt: skip
    head = "| task | data | metric | value | interval |\n|---|---|---|---|---|"
    return f"\n## Evaluation\n\n{head}\n{rows}\n"


def _sources_table(sources: list[dict[str, Any]]) -> str:
    if not sources:
        return "Not recorded (a model built outside `geojepa pretrain`, or before format 2)."
    lines = [
        f"| {s.get('name', '?')} | {s.get('kind', '?')} | "
        f"{s['size'] if isinstance(s.get('size'), int) else '?'} | "
        f"`{s.get('sha256') or '?'}` | {s.get('snapshot') or 'not recorded in the file'} |"
        for s in sources
    ]
    return ("| source | kind | bytes | SHA-256 | OSM snapshot |\n|---|---|---|---|---|\n"
            + "\n".join(lines))  # fmt: skip


def _speed(throughput: dict[str, float] | None) -> str:
    """``1,234 real tokens/s, 56.7 tiles/s`` (the last training attempt's loop), or ``?``."""
    if not throughput:
        return "?"
    return (f"{throughput['real_tokens_per_s']:,.0f} real tokens/s, "
            f"{throughput['tiles_per_s']:.1f} tiles/s (last attempt's training loop)")  # fmt: skip
