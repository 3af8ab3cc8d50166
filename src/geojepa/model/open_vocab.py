"""Open vocabulary: a trained model reads tags it never saw in training.

The tag table holds frozen text vectors of ``key=value`` strings, and the tokenizer learns only
a projection of them; so the text encoder can give a vector to any tag, including one of an
area (or a language) the model was not trained on. Without this, an unseen tag falls back to its
key, a key prefix, or UNKNOWN (see `tokenize.tags`). :func:`open_vocabulary` appends the
dataset's unseen entries to the model's vocabulary (``model.directory.vocab``) and their text
vectors to its tag table (in memory; the model directory is not changed). The vectors are
cached next to the dataset, like the training table, so a second embed of the same data does
not load the text model.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from geojepa.errors import InputError
from geojepa.model.jepa import GeoJEPA
from geojepa.tokenize.tags import SPECIALS, EmbedFn, TagVocabulary, build_tag_table
from geojepa.tokenize.tokenizer import TileTokenizer

if TYPE_CHECKING:
    from geojepa.data.reader import TileDataset

log = logging.getLogger(__name__)


def unseen_entries(vocab: TagVocabulary, ds: TileDataset) -> list[str]:
    """Entries of ``ds``'s vocabulary (tags, keys, key prefixes) that ``vocab`` lacks."""
    theirs = TagVocabulary.from_dataset(ds).entries[len(SPECIALS) :]
    return [e for e in theirs if e not in vocab.index]


def open_vocabulary(
    model: GeoJEPA,
    ds: TileDataset,
    *,
    embed_fn: EmbedFn | None = None,
    cache_dir: Path | str | None = None,
) -> int:
    """Give every tag of ``ds`` its own text vector in ``model``; returns how many were added.

    The model's own rows keep their indices, so tags it was trained on are read exactly as
    before. ``embed_fn`` replaces the model's text encoder (tests, custom encoders).
    ``cache_dir``: where the new vectors are cached (default: the dataset's directory; a
    dataset in a temporary folder should name a lasting one, or every call loads the text model).
    """
    directory = model.require_directory()
    vocab = directory.vocab
    new = unseen_entries(vocab, ds)
    if not new:
        return 0
    text_model = directory.spec.tokenizer.text_model
    try:
        rows = build_tag_table(TagVocabulary([*SPECIALS, *new]), text_model,
                               cache_dir=ds.path if cache_dir is None else cache_dir,
                               embed_fn=embed_fn)[len(SPECIALS) :]  # fmt: skip
    except InputError as exc:
        raise InputError(
            f"cannot embed the {len(new)} tags of {ds.path} that the model has not seen ({exc}); "
            "use --closed-vocabulary to read them through their keys instead"
        ) from None
    width = model.tokenizer.tag_table.shape[1]
    if rows.shape[1] != width:
        raise InputError(
            f"text model {text_model!r} gives {rows.shape[1]}-d vectors, the model's tag table "
            f"has {width}: it was trained with another text model"
        )
    # the student's tokenizer and the EMA teacher's both read the table
    for tokenizer in [m for m in model.modules() if isinstance(m, TileTokenizer)]:
        old = tokenizer.tag_table
        tokenizer.tag_table = torch.cat([old, rows.to(old.device, old.dtype)])
    model.directory = dataclasses.replace(directory, vocab=TagVocabulary([*vocab.entries, *new]))
    log.info("open vocabulary: %d entries of %s added to the model's %d", len(new), ds.path,
             len(vocab))  # fmt: skip
    return len(new)
