"""Open vocabulary: a model trained on one area reads the unseen tags of another through their
own text vectors (issue: a model transfers across areas and languages)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geojepa.data.config import PrepareConfig
from geojepa.data.prepare import prepare_tiles
from geojepa.embed import model_for
from geojepa.model.jepa import GeoJEPA
from geojepa.model.open_vocab import open_vocabulary, unseen_entries
from geojepa.tokenize.tags import SPECIALS, TagVocabulary, build_tag_table
from geojepa.train import PretrainConfig, preset_config, pretrain


@pytest.fixture(scope="module")
def areas(tmp_path_factory, finland_test_pbf, helsinki_pbf):
    root = tmp_path_factory.mktemp("open-vocab")
    town = prepare_tiles(finland_test_pbf, root / "town", PrepareConfig(zoom=15), progress=False)
    part = PrepareConfig(zoom=15, bbox=(24.94, 60.165, 24.955, 60.172))  # a few blocks of Helsinki
    city = prepare_tiles(helsinki_pbf, root / "city", part, progress=False)
    data = preset_config("cpu-small").model_dump()
    data["model"].update(depth=1, predictor_depth=1)
    data["data"]["batch_size"] = 4
    run = pretrain(town, root / "run", config=PretrainConfig.from_dict(data), max_steps=2,
                   progress=False)  # fmt: skip
    return town, city, Path(run)


def _vocab(model: GeoJEPA) -> TagVocabulary:
    """The tag vocabulary a model reads with (its directory's, plus open-vocabulary entries)."""
    return model.require_directory().vocab


def _embed(run: Path, ds, open_vocab: bool) -> np.ndarray:
    import geojepa

    frame = geojepa.embed_tiles(run, ds, progress=False, open_vocabulary=open_vocab)
    return frame.sort_index().filter(like="emb_").to_numpy()


def test_unseen_tags_get_their_own_text_vectors(areas):
    _town, city, run = areas
    model = GeoJEPA.from_pretrained(run)
    old_entries, old_table = list(_vocab(model).entries), model.tokenizer.tag_table.clone()
    new = unseen_entries(_vocab(model), city)
    assert len(new) > 50  # central Helsinki has many tags the small town has not
    assert open_vocabulary(model, city) == len(new)
    assert _vocab(model).entries[: len(old_entries)] == old_entries  # trained rows keep indices
    assert torch.equal(model.tokenizer.tag_table[: len(old_entries)], old_table)
    teacher = model.target["tokenizer"].tag_table  # the EMA teacher encodes at embed time
    assert teacher.shape == model.tokenizer.tag_table.shape
    sample = new[:: max(len(new) // 20, 1)]  # the text model's own vectors, for a sample
    direct = build_tag_table(TagVocabulary([*SPECIALS, *sample]), cache_dir=None)
    rows = model.tokenizer.tag_table[[_vocab(model).index[e] for e in sample]]
    torch.testing.assert_close(rows, direct[len(SPECIALS) :])
    tag = next(e for e in new if "=" in e)
    assert _vocab(model).lookup(*tag.split("=", 1)) == _vocab(model).index[tag]
    assert open_vocabulary(model, city) == 0  # idempotent


def test_the_text_vectors_are_cached_next_to_the_dataset(areas):
    _, city, run = areas
    open_vocabulary(GeoJEPA.from_pretrained(run), city)

    def must_not_run(texts):
        raise AssertionError("the cached vectors were not reused")

    assert open_vocabulary(GeoJEPA.from_pretrained(run), city, embed_fn=must_not_run) > 0


def test_open_vocabulary_changes_only_tiles_with_unseen_tags(areas):
    town, city, run = areas
    # the training area: every tag is known, so nothing changes
    np.testing.assert_array_equal(_embed(run, town, True), _embed(run, town, False))
    opened, closed = _embed(run, city, True), _embed(run, city, False)
    changed = ~np.isclose(opened, closed, atol=1e-6).all(axis=1)
    assert 0.2 < changed.mean() <= 1.0


def test_model_for_can_keep_the_vocabulary_closed(areas):
    _, city, run = areas
    n = len(_vocab(GeoJEPA.from_pretrained(run)))
    assert len(_vocab(model_for(run, city, open_vocabulary=False))) == n
    assert len(_vocab(model_for(run, city))) > n


def test_evaluation_reads_unseen_tags_like_embed(areas):
    from geojepa.eval.evaluate import EvaluateConfig
    from geojepa.eval.inputs import load_networks

    _, city, run = areas
    n = len(_vocab(GeoJEPA.from_pretrained(run)))
    for flag in (True, False):
        nets = load_networks(run, [city], EvaluateConfig(open_vocabulary=flag), want_random=True)
        assert len(nets.base_vocab) == n
        assert (len(nets.vocab) > n) is flag and _vocab(nets.pretrained) is nets.vocab
        # the random-weights twin reads the same table, unseen rows included
        rows = nets.random_init.tokenizer.tag_table.shape[0]
        assert rows == nets.table.shape[0] == len(nets.vocab)
