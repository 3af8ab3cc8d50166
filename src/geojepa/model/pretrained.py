"""Sharing a GeoJEPA: `from_pretrained`, `save_pretrained` and `push_to_hub`, as Hugging Face
and torchgeo users know them (mixed into `model.jepa.GeoJEPA`).

Names resolve in `model.hub` (a directory, ``"default"``, a Hub id); the files are read and
checked (``checksums.json``) by `model.directory` and written by `model.writer`; the card is
`model.card`'s. A compact model (``save_pretrained(compact=True)``) holds only what embedding
reads; on load its student parts start as copies of the teacher and its predictor stays
untrained, so it embeds exactly as the full model but cannot resume training.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

from geojepa.errors import ConfigError
from geojepa.model.card import EvalRow, card_info, model_card
from geojepa.model.directory import (
    CARD_FILE,
    CONFIG_FILE,
    load_weights,
    read_model_directory,
    read_model_file,
)
from geojepa.model.hub import resolve_model, upload
from geojepa.model.writer import write_model_directory

P = TypeVar("P", bound="Pretrained")


class Pretrained:
    """`from_pretrained` / `save_pretrained` / `push_to_hub` for a network class with
    ``from_spec(spec, tag_table)``, ``embedding_key``, ``weights_to_save``, ``target``,
    ``tokenizer``, ``directory`` and ``require_directory`` (`model.jepa.GeoJEPA`)."""

    @classmethod
    def from_pretrained(
        cls: type[P],
        name_or_path: str | Path,
        map_location: str = "cpu",
        revision: str | None = None,
    ) -> P:
        """Load a model directory written by ``geojepa pretrain`` or `save_pretrained` (see
        ``model/directory.py``), in eval mode on ``map_location``; ``directory`` holds what the
        directory says about it. ``name_or_path``: a directory, ``"default"`` (the model shipped
        with geojepa) or a Hub id ``owner/name`` (``revision``: its branch, tag or commit; see
        ``model/hub.py``). InputError if it is none of these, or incomplete, damaged (a file
        whose SHA-256 differs from ``checksums.json``) or too new."""
        path = resolve_model(name_or_path, revision)
        directory, table = read_model_directory(path)
        build: Any = cls  # GeoJEPA: from_spec builds the network
        model = read_model_file(path / CONFIG_FILE,
                                lambda p: build.from_spec(directory.spec, table))  # fmt: skip
        compact = directory.compact  # its training-only weights are absent, not lost
        load_weights(model, path, map_location, lambda k: compact and not model.embedding_key(k))
        if directory.compact:  # the student starts as the teacher, as at initialisation
            for name in model.target:
                getattr(model, name).load_state_dict(model.target[name].state_dict())
        model.directory = directory
        return model.to(map_location).eval()

    def save_pretrained(
        self,
        path: str | Path,
        *,
        compact: bool = False,
        dtype: str = "float32",
        results: list[EvalRow] | None = None,
        training_data: bool = True,
        repo_id: str | None = None,
        tag_table: str = "stored",
        info_update: dict[str, Any] | None = None,
    ) -> Path:
        """Write this model as a model directory ``path`` that `from_pretrained` reads.

        ``compact``: only what embedding needs (no student encoder, no predictor: it embeds
        but cannot resume training), with weights and tag table in ``dtype`` (``"float16"``
        halves them; embeddings then differ by float16 rounding). ``results``: benchmark rows
        for the card's header (`model.card.EvalRow`). ``training_data``: keep
        ``training_data.json`` (the local path of the training data, for `evaluate`).
        ``tag_table``: ``"stored"``, or ``"text"`` to store only its fingerprint and rebuild it
        on load from the text model geojepa ships (once per machine, then cached): the shipped
        default model is 7 MB instead of 13 MB this way. ``info_update``: card facts to add or
        replace (`model.card.model_card`'s ``info``: sources, steps, recipe, notes…).
        """
        if tag_table not in ("stored", "text"):
            raise ConfigError(f'tag_table must be "stored" or "text", not {tag_table!r}')
        directory = self.require_directory()
        source = directory.path
        old = (source / CARD_FILE) if source is not None else None
        info = card_info(old.read_text(encoding="utf-8")) if old and old.is_file() else {}
        info.update(info_update or {})
        info.update(compact=compact, dtype=dtype)
        if repo_id:
            info["repo_id"] = repo_id
        spec = directory.spec
        card_config = SimpleNamespace(tokenizer=spec.tokenizer, model=spec.model,
                                      preset=directory.config.get("preset"))  # fmt: skip
        card = model_card(card_config, info, results, name=repo_id or Path(path).name)
        return write_model_directory(
            path,
            state=self.weights_to_save(compact),
            tag_table=self.tokenizer.tag_table,
            config=directory.config,
            vocab=directory.vocab,
            card=card,
            dataset_config=directory.dataset_config,
            training_data=directory.training_data if training_data else None,
            compact=compact,
            dtype=dtype,
            tag_table_from_text=tag_table == "text",
        )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        compact: bool = False,
        dtype: str = "float32",
        results: list[EvalRow] | None = None,
        private: bool = False,
        token: str | None = None,
    ) -> str:
        """`save_pretrained` into a temporary folder (without ``training_data.json``: a local
        path) and upload it to Hub model repository ``repo_id`` (created if needed; needs
        ``pip install 'geojepa[hub]'`` and a token). The repository's URL."""
        with tempfile.TemporaryDirectory(prefix="geojepa-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "model", compact=compact, dtype=dtype,
                                          results=results, training_data=False,
                                          repo_id=repo_id)  # fmt: skip
            return upload(folder, repo_id, private=private, token=token)
