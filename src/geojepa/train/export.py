"""Exporting a run: `export_model` (the model directory at the end of `geojepa pretrain`), its
card with the preset's recipe, and the training data's sources as the card names them.

The files, checksums and format version are written by `geojepa.model.writer` and read (with
their checks) by `geojepa.model.directory`, below the training layer, so that
`GeoJEPA.from_pretrained`/`save_pretrained` need nothing from here; `build_model` and
`load_model` are re-exported for older imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geojepa.data.config import PrepareConfig
from geojepa.model import card
from geojepa.model.card import EvalRow
from geojepa.model.io import LoadedModel, load_model
from geojepa.model.jepa import GeoJEPA, build_model
from geojepa.model.writer import write_model_directory
from geojepa.tokenize.tags import TagVocabulary
from geojepa.train.config import PRESET_NOTES, PretrainConfig

__all__ = ["EvalRow", "LoadedModel", "build_model", "export_model", "load_model", "model_card",
           "training_sources"]  # fmt: skip


def export_model(
    model: GeoJEPA,
    config: PretrainConfig,
    vocab: TagVocabulary,
    out: str | Path,
    info: dict[str, Any] | None = None,
    dataset_config: PrepareConfig | None = None,
    training_data: dict[str, Any] | None = None,
    *,
    results: list[EvalRow] | None = None,
    compact: bool = False,
    dtype: str = "float32",
) -> Path:
    """Write the model directory ``out`` (`model.writer.write_model_directory`: files replaced
    atomically one by one, ``checksums.json`` last).

    ``training_data`` (``{"dataset": path, "n_tiles": N}``) lets `evaluate` find the tiles the
    model was trained on, to report any overlap with its val/test tiles; it stays out of the
    card. ``info`` fills the card (`model_card`); ``results`` (benchmark rows with intervals)
    go to the card's header. ``compact``/``dtype``: an embedding-only export
    (`GeoJEPA.save_pretrained`).
    """
    info = dict(info or {})
    card = model_card(config, {**info, "compact": compact, "dtype": dtype}, results,
                      name=info.get("name", Path(out).name))  # fmt: skip
    return write_model_directory(
        out,
        state=model.weights_to_save(compact),
        tag_table=model.tokenizer.tag_table,
        config=config.model_dump(mode="json"),
        vocab=vocab,
        card=card,
        dataset_config=dataset_config,
        training_data=training_data,
        compact=compact,
        dtype=dtype,
    )


def model_card(
    config: PretrainConfig,
    info: dict[str, Any],
    results: list[EvalRow] | None = None,
    name: str = "geojepa-model",
) -> str:
    """The README.md card of a run (`model.card.model_card`, with the preset's recipe)."""
    recipe = PRESET_NOTES.get(config.preset or "", "custom configuration")
    return card.model_card(config, {"recipe": recipe, **info}, results, name)


def training_sources(source: dict[str, Any]) -> list[dict[str, Any]]:
    """The source files of a dataset (its manifest's ``source``, followed through merges and
    subsets) as the card names them: file name, kind, size, SHA-256 and the OSM snapshot date
    of a PBF's header (read from the file while it is still there). No paths."""
    leaves: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for n in node:
                walk(n)
        elif isinstance(node, dict):
            if "path" in node and "sha256" in node:
                leaves.append(node)
            for key in ("source", "of"):
                walk(node.get(key))

    walk(source)
    out, seen = [], set()
    for leaf in leaves:
        if leaf["sha256"] in seen:
            continue
        seen.add(leaf["sha256"])
        out.append({"name": Path(leaf["path"]).name, "kind": leaf.get("kind", "?"),
                    "size": leaf.get("size"), "sha256": leaf["sha256"],
                    "snapshot": _osm_snapshot(Path(leaf["path"]))})  # fmt: skip
    return out


def _osm_snapshot(path: Path) -> str | None:
    """The replication timestamp in an OSM PBF's header (None if absent or unreadable)."""
    if not path.name.endswith(".pbf") or not path.is_file():
        return None
    try:
        import osmium

        reader = osmium.io.Reader(str(path), osmium.osm.osm_entity_bits.NOTHING)
        try:
            stamp = reader.header().get("osmosis_replication_timestamp")
        finally:
            reader.close()
    except Exception:  # a damaged header: the card says "not recorded"
        return None
    return stamp or None
