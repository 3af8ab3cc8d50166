"""`geojepa evaluate`: dataset subset/merge, embedding path, end-to-end report, bad inputs."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from geojepa.cli import main
from geojepa.data.combine import merge_datasets, subset_dataset
from geojepa.data.config import PrepareConfig
from geojepa.data.reader import open_dataset
from geojepa.embed import embed_shard
from geojepa.errors import InputError, OutputError
from geojepa.eval import ProbeConfig, SplitConfig, get_task, load_split, make_split, save_split
from geojepa.eval.evaluate import EvaluateConfig, encode_arrays, evaluate, tokenize_masked
from geojepa.eval.split import file_sha256
from geojepa.eval.supervised import SupervisedConfig
from geojepa.model.directory import ModelDirectory
from geojepa.tokenize.tags import TagVocabulary, build_tag_table
from geojepa.train import PretrainConfig, preset_config, pretrain
from geojepa.train.export import build_model
from helpers.synthetic import write_synthetic_dataset


def fake_embed(texts: list[str]) -> np.ndarray:
    """Deterministic stand-in for the sentence encoder (no model load in fast tests)."""
    out = np.zeros((len(texts), 16), dtype=np.float32)
    for i, text in enumerate(texts):
        # crc32, not hash(): str hashes change per process (PYTHONHASHSEED), which made the
        # tag vectors, and so the supervised test's outcome, differ from run to run
        out[i] = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(16)
    return out


def tiny_config() -> PretrainConfig:
    data = preset_config("cpu-small").model_dump()
    data["model"].update(depth=1, predictor_depth=1)
    data["data"]["batch_size"] = 8
    data["trainer"].update(log_every_n_steps=1)
    return PretrainConfig.from_dict(data)


def fast_config(**changes) -> EvaluateConfig:
    base = EvaluateConfig(
        split=SplitConfig(block_zoom=15),
        probes=("linear", "mlp"),
        probe=ProbeConfig(
            mlp_hidden=(16,), mlp_weight_decays=(0.01,), mlp_max_epochs=8, mlp_patience=2
        ),
        supervised=SupervisedConfig(depth=1, max_epochs=1, patience=1),
        batch_tokens=2048,
    )
    return base.replace(**changes) if changes else base


def entity_keys(ds) -> set[tuple[str, str]]:
    table = ds.read_entities(columns=["region_id", "feature_id"])
    return set(
        zip(*(table.column(c).to_pylist() for c in ("region_id", "feature_id")), strict=True)
    )


def vocab_counts(entities: pa.Table) -> dict[tuple[str, str | None], int]:
    tags = entities.column("tags").combine_chunks()
    frame = pd.DataFrame({"k": tags.keys.to_pylist(), "v": tags.items.to_pylist()}).fillna(
        {"v": "\0"}
    )
    return {(k, None if v == "\0" else v): n for (k, v), n in frame.value_counts().items()}


# --------------------------------------------------------------------------- subset / merge


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("syn") / "tiles"
    return write_synthetic_dataset(
        path, n_shards=3, tiles_per_shard=(6, 9), entities_per_tile=(1, 12), seed=3
    )


def test_subset_and_merge_roundtrip(synthetic: Path, tmp_path: Path) -> None:
    ds = open_dataset(synthetic)
    ids = ds.read_tiles(columns=["region_id"]).column("region_id").to_pylist()
    half_a, half_b = ids[::2], ids[1::2]
    a = subset_dataset(ds, half_a, tmp_path / "a")
    b = subset_dataset(synthetic, half_b, tmp_path / "b")
    a_ids = a.read_tiles(columns=["region_id"]).column("region_id").to_pylist()
    assert sorted(a_ids) == sorted(half_a)
    assert {r for r, _ in entity_keys(a)} <= set(half_a)
    assert a.manifest["n_tiles"] == len(half_a)
    assert a.manifest["n_entities"] == a.read_entities().num_rows
    assert a.manifest["source"]["kind"] == "subset"
    # the vocabulary is recomputed from the kept entities only
    kept = vocab_counts(a.read_entities())
    stored = a.vocab().to_pylist()
    assert {(r["key"], r["value"]): r["count"] for r in stored} == kept
    counts = [r["count"] for r in stored]
    assert counts == sorted(counts, reverse=True)

    merged = merge_datasets([a, b], tmp_path / "merged")
    assert merged.config.zoom == ds.config.zoom
    assert sorted(merged.read_tiles(columns=["region_id"]).column("region_id").to_pylist()) == (
        sorted(ids)
    )
    assert entity_keys(merged) == entity_keys(ds)
    assert merged.manifest["n_entities"] == ds.read_entities().num_rows
    full = vocab_counts(ds.read_entities())
    assert {(r["key"], r["value"]): r["count"] for r in merged.vocab().to_pylist()} == full
    assert [s["dataset"] for s in merged.manifest["source"]["of"]] == [
        str(a.path.resolve()),
        str(b.path.resolve()),
    ]
    # every shard is complete and readable in the order of its tiles
    for _, tiles, entities in merged.iter_shards():
        order = {r: i for i, r in enumerate(tiles.column("region_id").to_pylist())}
        pos = [order[r] for r in entities.column("region_id").to_pylist()]
        assert pos == sorted(pos)


def test_subset_and_merge_bad_inputs(synthetic: Path, tmp_path: Path) -> None:
    ds = open_dataset(synthetic)
    some = ds.read_tiles(columns=["region_id"]).column("region_id").to_pylist()[:3]
    with pytest.raises(InputError, match=r"not tiles of .*e\.g\. 16/1/1"):
        subset_dataset(ds, [*some, "16/1/1"], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # nothing half-written is left behind
    with pytest.raises(InputError, match="no region ids"):
        subset_dataset(ds, [], tmp_path / "empty")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        subset_dataset(ds, some, tmp_path / "taken")
    with pytest.raises(OutputError, match="not a tile dataset"):
        subset_dataset(ds, some, tmp_path / "taken", overwrite=True)
    assert (tmp_path / "taken" / "x.txt").read_text() == "mine"
    with pytest.raises(OutputError, match="input datasets"):
        merge_datasets([ds], synthetic)
    with pytest.raises(InputError, match="overlapping"):
        merge_datasets([ds, ds], tmp_path / "twice")
    other = write_synthetic_dataset(tmp_path / "z15", n_shards=1, zoom=15, seed=1)
    with pytest.raises(InputError, match=r"different zoom \(16 vs 15\)"):
        merge_datasets([ds, other], tmp_path / "mixed")


# ------------------------------------------------------------------------- embedding path


def test_encode_arrays_matches_embed_shard(synthetic: Path) -> None:
    """The evaluation's sorted batching gives the embeddings `geojepa embed` writes."""
    ds = open_dataset(synthetic)
    cfg = tiny_config()
    vocab = TagVocabulary.from_dataset(ds)
    torch.manual_seed(0)
    model = build_model(cfg, build_tag_table(vocab, "fake", None, embed_fn=fake_embed)).eval()
    model.directory = ModelDirectory.of_run(cfg, vocab)
    task = get_task("way_bridge")
    arrays = tokenize_masked([ds], task, vocab, cfg.tokenizer, seed=cfg.trainer.seed)
    tiles, ents = encode_arrays(model, arrays, entities=True, batch_tokens=64)
    for shard in ds.shards:
        ref = embed_shard(
            model, ds, shard, entities=True, batch_size=5, entity_transform=task.remove
        )
        cols = [c for c in ref.tiles.columns if c.startswith("emb_")]
        np.testing.assert_allclose(tiles.loc[ref.tiles.index, cols], ref.tiles[cols], atol=1e-5)
        keys = pd.MultiIndex.from_arrays(
            [ref.entities["region_id"], ref.entities.index], names=["region_id", "feature_id"]
        )
        ecols = [c for c in ref.entities.columns if c.startswith("emb_")]
        np.testing.assert_allclose(ents.loc[keys, ecols].to_numpy(), ref.entities[ecols], atol=1e-5)
    assert len(tiles) == ds.manifest["n_tiles"]


def test_supervised_learns_a_visible_label(synthetic: Path, tmp_path: Path) -> None:
    """With nothing removed, "the tile has a tree" is in the tokens: the transformer finds it."""
    from geojepa.data.tags import TagEntries
    from geojepa.eval.supervised import train_supervised
    from geojepa.eval.tasks import Task, _per_tile

    def trees(tiles: pa.Table, entities: pa.Table) -> pd.Series:
        tags = TagEntries.of(entities)
        rows = tags.rows_with(tags.key_is("natural")).astype(np.int64)
        return _per_tile(entities, rows, tiles, "max")

    ds_path = write_synthetic_dataset(
        tmp_path / "many", n_shards=4, tiles_per_shard=(20, 28), entities_per_tile=(1, 6), seed=5
    )
    ds = open_dataset(ds_path)
    task = Task("has_tree", "binary", "tile", lambda e: e, "a tree in the tile", trees)
    labels = task.labels(ds.read_tiles(), ds.read_entities())
    split = make_split(labels.index, SplitConfig(block_zoom=15, seed=1))
    cfg = tiny_config()
    vocab = TagVocabulary.from_dataset(ds)
    table = build_tag_table(vocab, "fake", None, embed_fn=fake_embed)
    arrays = tokenize_masked([ds], task, vocab, cfg.tokenizer)
    sup = SupervisedConfig(width=8, depth=1, heads=2, max_epochs=8, patience=3,
                           tokens_per_batch=256)  # fmt: skip
    assert cfg.tokenizer.width != 8  # its own width, not the evaluated network's
    rows = train_supervised(arrays, labels, split, task, cfg.tokenizer, table, (0,), sup)
    assert 0.3 < labels.mean() < 0.9
    assert rows[0].model == "supervised" and rows[0].probe == "end2end"
    assert rows[0].n_train + rows[0].n_val + rows[0].n_test == len(labels)
    assert rows[0].metrics["auroc"] > 0.8, rows[0]
    assert rows[0].params["width"] == 8
    p = rows[0].params  # early-stopped (patience 3 without a better val score) or capped at 8
    assert p["converged"] == (p["stopped_at"] - p["epochs"] >= 3) and p["stopped_at"] <= 8


def test_evaluate_without_a_run(synthetic: Path, tmp_path: Path) -> None:
    """Baselines only, plus the preset network with random weights; a given split is used."""
    ds = open_dataset(synthetic)
    cfg = preset_config("cpu-small")
    build_tag_table(
        TagVocabulary.from_dataset(ds), cfg.tokenizer.text_model, ds.path, embed_fn=fake_embed
    )
    ids = ds.read_tiles(columns=["region_id"]).column("region_id").to_pylist()
    split_path = save_split(make_split(ids, SplitConfig(block_zoom=15, seed=2)), tmp_path / "s.csv")
    result = evaluate(
        None,
        [synthetic],
        tmp_path / "report",
        tasks=["building_count"],
        seeds=(0,),
        baselines=("dummy", "random_init"),
        split=split_path,
        config=fast_config(),
        progress=False,
    )
    assert set(result.summary["model"]) == {"dummy", "random_init"}
    provenance = json.loads((tmp_path / "report" / "provenance.json").read_text())
    assert provenance["split"]["given_split_sha256"] == file_sha256(split_path)
    assert provenance["run"] is None
    saved = load_split(tmp_path / "report" / "split.parquet")
    assert saved.equals(load_split(split_path))


def test_the_stages_run_one_by_one_as_evaluate_runs_them(synthetic: Path, tmp_path: Path) -> None:
    """`make_request` → `load_models` → `load_labels` → `score_tasks`, called from a test, give
    the scores `evaluate` reports for the same arguments."""
    from geojepa.eval.inputs import load_labels, load_models
    from geojepa.eval.report import summarize
    from geojepa.eval.request import make_request
    from geojepa.eval.scoring import score_tasks

    ds = open_dataset(synthetic)
    cfg = preset_config("cpu-small")
    build_tag_table(
        TagVocabulary.from_dataset(ds), cfg.tokenizer.text_model, ds.path, embed_fn=fake_embed
    )
    args = dict(
        tasks=["building_count"], seeds=(0,), baselines=("dummy", "random_init"), split=None,
        config=fast_config(bootstrap=0), progress=False,
    )  # fmt: skip
    request = make_request(None, [synthetic], tmp_path / "stages", **args)
    models = load_models(request)
    assert models.networks.pretrained is None and models.networks.random_init is not None
    data = load_labels(request, models)
    assert data.tasks == ["building_count"] and not data.skipped
    scores = score_tasks(request, models, data)
    assert set(scores.task_seconds) == {"building_count"}
    result = evaluate(None, [synthetic], tmp_path / "whole", **args)
    pd.testing.assert_frame_equal(summarize(scores.rows), result.summary)


def test_every_model_sees_the_same_entities(synthetic: Path, tmp_path: Path, monkeypatch) -> None:
    """Tag counts, pooled text and the networks all see the tokenizer's capped entity subset."""
    import geojepa.eval.masked as masked_mod
    import geojepa.eval.scoring as scoring

    ds = open_dataset(synthetic)
    cfg = preset_config("cpu-small")
    build_tag_table(
        TagVocabulary.from_dataset(ds), cfg.tokenizer.text_model, ds.path, embed_fn=fake_embed
    )
    seen: dict[str, set] = {}

    def keys(table: pa.Table) -> set:
        cols = (table.column(c).to_pylist() for c in ("region_id", "feature_id"))
        return set(zip(*cols, strict=True))

    def spy_counts(masked, *args, **kwargs):
        seen["tag_counts"] = keys(masked)
        return real_counts(masked, *args, **kwargs)

    def spy_baseline(name, task, masked, *args, **kwargs):
        seen[name] = keys(masked)
        return real_baseline(name, task, masked, *args, **kwargs)

    def spy_encode(model, arrays, *args, **kwargs):
        seen["networks"] = set(masked_mod.token_entities(arrays))
        return real_encode(model, arrays, *args, **kwargs)

    real_counts, real_baseline, real_encode = (
        scoring.tag_count_features, scoring.baseline_features, masked_mod.encode_arrays
    )  # fmt: skip
    monkeypatch.setattr(scoring, "tag_count_features", spy_counts)
    monkeypatch.setattr(scoring, "baseline_features", spy_baseline)
    monkeypatch.setattr(masked_mod, "encode_arrays", spy_encode)
    monkeypatch.setattr(scoring, "sentence_transformer_embedder", lambda: fake_embed)
    evaluate(
        None, [synthetic], tmp_path / "r", tasks=["building_count"], seeds=(0,),
        baselines=("tag_counts", "pooled_text", "random_init"),
        config=fast_config(max_entities=3, probes=("linear",)), progress=False,
    )  # fmt: skip
    kept = seen["networks"]
    everything = keys(get_task("building_count").remove(ds.read_entities()))
    assert kept < everything  # the cap dropped entities (else the test is weak)
    assert pd.Series([r for r, _ in kept]).value_counts().max() <= 3
    assert seen["tag_counts"] == kept
    assert seen["pooled_text"] == kept


def test_same_input_keeps_the_first_tags_of_kept_entities(synthetic: Path) -> None:
    from geojepa.eval.evaluate import same_input, token_entities

    ds = open_dataset(synthetic)
    vocab = TagVocabulary.from_dataset(ds)
    tok = tiny_config().tokenizer.replace(max_entities=2, max_tags=1)
    arrays = tokenize_masked([ds], None, vocab, tok)
    entities = ds.read_entities()
    cut = same_input(entities, arrays, tok.max_tags)
    columns = (cut.column(c).to_pylist() for c in ("region_id", "feature_id"))
    pairs = list(zip(*columns, strict=True))
    assert set(pairs) == set(token_entities(arrays)) and len(pairs) == len(arrays.feature_ids)
    full = {
        (r, f): t
        for r, f, t in zip(
            entities.column("region_id").to_pylist(),
            entities.column("feature_id").to_pylist(),
            entities.column("tags").to_pylist(),
            strict=True,
        )
    }
    assert any(len(t) > 1 for t in full.values())  # some entity loses tags (else weak)
    for pair, tags in zip(pairs, cut.column("tags").to_pylist(), strict=True):
        assert tags == full[pair][:1]
    assert cut.schema == entities.schema


# ------------------------------------------------------------------------------ Helsinki


@pytest.fixture(scope="module")
def helsinki(helsinki_pbf: Path, tmp_path_factory) -> tuple[Path, Path]:
    """Helsinki at zoom 17 and a GeoJEPA pretrained on it for a few steps (fake text table)."""
    from geojepa.data.prepare import prepare_tiles

    root = tmp_path_factory.mktemp("helsinki")
    config = PrepareConfig(zoom=17, workers=1, shard_levels=2, min_shard_elements=500)
    ds = prepare_tiles(helsinki_pbf, root / "ds", config, progress=False)
    cfg = tiny_config()
    # pre-fill the tag-table cache so pretraining does not load the sentence encoder
    build_tag_table(
        TagVocabulary.from_dataset(ds), cfg.tokenizer.text_model, ds.path, embed_fn=fake_embed
    )
    run = pretrain(ds.path, root / "run", config=cfg, max_steps=3, progress=False)
    return ds.path, run


def test_evaluate_helsinki_end_to_end(helsinki: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, run = helsinki
    out = tmp_path / "report"
    # the training data comes from the model directory's JSON, not from the card's prose
    (run / "README.md").write_text("# a card someone edited\n")
    result = evaluate(
        run,
        [dataset],
        out,
        tasks=["traffic_signals", "way_bridge"],
        seeds=(0, 1),
        baselines=("dummy", "tag_counts", "random_init", "supervised"),
        config=fast_config(supervised_seeds=1),
        progress=False,
    )
    for name in ("results.csv", "results_per_seed.csv", "results.md", "results.png"):
        assert (out / name).stat().st_size > 0, name
    summary = pd.read_csv(out / "results.csv")
    models = set(zip(summary["model"], summary["probe"], strict=True))
    assert {("geojepa", "linear"), ("geojepa", "mlp"), ("random_init", "mlp")} <= models
    assert {("dummy", "dummy"), ("tag_counts", "linear"), ("supervised", "end2end")} <= models
    assert set(summary["task"]) == {"traffic_signals", "way_bridge"}
    seeds_of = summary.groupby(["model", "probe"])["n_seeds"].max()
    assert seeds_of[("geojepa", "mlp")] == 2 and seeds_of[("supervised", "end2end")] == 1
    assert np.isfinite(summary.loc[summary["metric"] == "mae", "mean"]).all()
    # 95% block-bootstrap intervals of the headline metrics, and differences to GeoJEPA
    head = summary[summary["metric"] == "mae"]  # way_bridge's small test set has no positive
    assert (head["ci_low"] <= head["ci_high"]).all() and len(head) > 0
    rivals = head[head["model"] != "geojepa"]
    assert set(rivals["verdict"]) <= {"win", "loss", "tie"} and len(rivals) > 0
    assert summary.loc[summary["metric"] == "rmse", "ci_low"].isna().all()
    by_area = pd.read_csv(out / "results_by_area.csv")
    assert set(by_area["area"]) == {dataset.name}
    assert {"ci_low", "verdict"} <= set(summary.columns)
    # random weights really are another network: different features, same probes
    geo = summary.query("model == 'geojepa' and probe == 'linear' and metric == 'mae'")
    rnd = summary.query("model == 'random_init' and probe == 'linear' and metric == 'mae'")
    assert not np.allclose(geo["mean"].to_numpy(), rnd["mean"].to_numpy(), atol=0, rtol=1e-9)

    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["split_sha256"] == file_sha256(out / "split.parquet")
    assert provenance["git"] is None or len(provenance["git"]["commit"]) == 40
    assert provenance["machine"]["cpus"] >= 1 and provenance["wall_seconds"] > 0
    assert provenance["run_training_data"] == str(dataset.resolve())
    # the run was pretrained on all of Helsinki, and the report says so
    assert provenance["split"]["pretraining_overlap"]["test"] > 0
    text = (out / "results.md").read_text()
    assert "## Notes" in text and "supervised transformer ran on seeds [0] only" in text
    assert "## Uncertainty: 95% intervals" in text and "### Per area" in text
    assert "**Warning**: the run was pretrained on data holding" in text

    # the saved split is spatial and disjoint: each tile once, each block in one split
    split = load_split(out / "split.parquet")
    assert split["region_id"].is_unique
    assert (split.groupby("block_id")["split"].nunique() == 1).all()
    assert set(split["split"]) == {"train", "val", "test"}
    assert len(result.rows) == len(pd.read_csv(out / "results_per_seed.csv")["seed"].index) // 2


def test_removed_tags_absent_from_embedded_input(helsinki: tuple[Path, Path]) -> None:
    """What the networks embed for a task holds no vocabulary row of its removed tags."""
    from geojepa.model import GeoJEPA

    dataset, run = helsinki
    ds = open_dataset(dataset)
    model = GeoJEPA.from_pretrained(run)
    cfg, vocab = model.directory.spec.tokenizer, model.directory.vocab
    checks = {
        "way_bridge": lambda e: "bridge" in e or e.split("=")[0] == "layer",
        "max_speed": lambda e: "maxspeed" in e.split("=")[0],
        "traffic_signals": lambda e: "traffic_signals" in e,
    }
    for name, is_label_tag in checks.items():
        rows = {i for i, entry in enumerate(vocab.entries) if is_label_tag(entry)}
        assert rows, name
        original = tokenize_masked([ds], None, vocab, cfg)
        masked = tokenize_masked([ds], get_task(name), vocab, cfg)
        assert rows & set(original.tag_ids.tolist()), f"{name}: nothing to remove (weak test)"
        assert not rows & set(masked.tag_ids.tolist()), name
    # traffic-signal points are gone as entities, not only as tags
    signals = tokenize_masked([ds], get_task("traffic_signals"), vocab, cfg)
    assert signals.ent_count.sum() < original.ent_count.sum()


# ---------------------------------------------------------------------------- bad inputs


def test_cli_bad_inputs(
    helsinki: tuple[Path, Path], synthetic: Path, tmp_path: Path, capsys
) -> None:
    dataset, run = helsinki
    base = ["evaluate", "--run", str(run), "-o", str(tmp_path / "r"), "--seeds", "1", "-q"]

    def error(*args: str, code: int = 1) -> str:  # 1: fails at run time; 2: a usage mistake
        assert main([*base, *args]) == code
        return capsys.readouterr().err

    assert "zoom=16" in error("--dataset", str(synthetic))
    unfiltered = write_synthetic_dataset(tmp_path / "unfiltered", n_shards=1, zoom=17, seed=4)
    PrepareConfig(zoom=17, image_size=32, tag_filter=False).save(unfiltered / "config.json")
    assert "tag_filter=False" in error("--dataset", str(unfiltered))
    assert "split file not found" in error(
        "--dataset", str(dataset), "--split", str(tmp_path / "nope.parquet")
    )
    assert "unknown task 'bridges'" in error("--dataset", str(dataset), "--tasks", "bridges",
                                             code=2)  # fmt: skip
    assert "model directory not found" in main_err(
        capsys, ["evaluate", "--run", str(tmp_path / "none"), "-d", str(dataset), "-o", "x"], 1
    )

    # a split that puts every block holding a bridge into test: no positive train label
    ds = open_dataset(dataset)
    tiles, entities = ds.read_tiles(), ds.read_entities()
    labels = get_task("bridge").labels(tiles, entities)
    split = make_split(labels.index, SplitConfig(block_zoom=15))
    positive_blocks = set(split.loc[split["region_id"].isin(labels.index[labels == 1]), "block_id"])
    assert positive_blocks
    split.loc[split["block_id"].isin(positive_blocks), "split"] = "test"
    path = save_split(split, tmp_path / "split.csv")
    err = error("--dataset", str(dataset), "--split", str(path), "--tasks", "bridge")
    assert "no positive label in the train split" in err


def main_err(capsys, argv: list[str], code: int = 2) -> str:
    """The one error line of a failing command (exit 2: a usage mistake; 1: at run time)."""
    assert main(argv) == code
    return capsys.readouterr().err


# ------------------------------------------------------------------- protocol from the CLI


def test_protocol_from_the_cli(synthetic: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """`split` → `pretrain --split` (train blocks only) → `evaluate --split --preset
    benchmark`: the model never saw a val/test tile, and the report says so."""
    import importlib

    from geojepa.model import GeoJEPA

    pretrain_module = importlib.import_module("geojepa.train.pretrain")  # not the function

    real = pretrain_module.build_tag_table  # no sentence-encoder load in a fast test
    monkeypatch.setattr(
        pretrain_module, "build_tag_table",
        lambda vocab, model, cache_dir=None: real(vocab, model, cache_dir, embed_fn=fake_embed),
    )  # fmt: skip
    split_path = tmp_path / "split.parquet"
    argv = ["split", "-d", str(synthetic), "-o", str(split_path), "--block-zoom", "15"]
    assert main(argv) == 0
    assert "split: " in capsys.readouterr().out
    split = load_split(split_path)
    ds = open_dataset(synthetic)
    assert len(split) == ds.manifest["n_tiles"] and set(split["split"]) == {"train", "val", "test"}
    n_train = int((split["split"] == "train").sum())

    run = tmp_path / "run"
    argv = ["pretrain", str(synthetic), "-o", str(run), "--split", str(split_path)]
    assert main([*argv, "--max-steps", "2", "--batch-size", "4"]) == 0
    model = GeoJEPA.from_pretrained(run)
    record = model.directory.training_data
    assert record["n_tiles"] == n_train
    assert record["subset_of"] == str(synthetic.resolve())
    trained = open_dataset(record["dataset"])
    train_ids = set(split.loc[split["split"] == "train", "region_id"])
    assert set(trained.read_tiles(columns=["region_id"]).column("region_id").to_pylist()) == (
        train_ids
    )

    build_tag_table(  # the evaluation embeds with the run's table; the baselines need none
        TagVocabulary.from_dataset(ds), model.directory.spec.tokenizer.text_model, ds.path,
        embed_fn=fake_embed,
    )  # fmt: skip
    report = tmp_path / "report"
    argv = ["evaluate", "-d", str(synthetic), "--run", str(run), "--split", str(split_path)]
    argv += ["-o", str(report), "--preset", "benchmark", "--tasks", "building_count"]
    assert main([*argv, "--seeds", "1", "--baselines", "dummy", "-q"]) == 0
    provenance = json.loads((report / "provenance.json").read_text())
    assert provenance["split"]["pretraining_overlap"] == {"train": n_train, "val": 0, "test": 0}
    used = provenance["config"]["evaluate"]
    assert used["probe"]["mlp_hidden"] == [128] and used["tag_count_max_features"] == 1000

    # bad input: one line each
    assert "unknown evaluate preset 'fast'" in main_err(capsys, [*argv, "--preset", "fast"])
    partial = save_split(split.iloc[:-1], tmp_path / "partial.csv")
    err = main_err(capsys, ["pretrain", str(synthetic), "-o", str(tmp_path / "r2"),
                            "--split", str(partial)], 1)  # fmt: skip
    assert "not in the split" in err
    err = main_err(capsys, ["split", "-d", str(synthetic), "-o", "x.parquet", "--fractions", "1,2"])
    assert "--fractions must be three numbers" in err

    # a recipe-search split from the CLI: the test blocks are gone, val is what gets scored
    search_path = tmp_path / "search.parquet"
    assert main(["split", "--search-from", str(split_path), "-o", str(search_path)]) == 0
    search = load_split(search_path).set_index("region_id")["split"]
    original = split.set_index("region_id")["split"]
    assert set(search.index[search != "unused"]) == set(original.index[original != "test"])
    assert (original[search.index[search == "test"]] == "val").all()
    searched = tmp_path / "searched"
    argv = ["evaluate", "-d", str(synthetic), "--run", str(run), "--split", str(search_path)]
    argv += ["-o", str(searched), "--preset", "benchmark", "--tasks", "building_count"]
    assert main([*argv, "--seeds", "1", "--baselines", "dummy", "-q"]) == 0
    used = json.loads((searched / "provenance.json").read_text())["split"]
    assert used["split_counts"]["test"] == int((original == "val").sum())  # the original val
    assert used["evaluated_tiles"] == int((original != "test").sum())  # test never read
    err = main_err(capsys, ["split", "-o", "x.parquet"])
    assert "--search-from" in err
    # label efficiency from the CLI: a quarter of the train blocks keep their labels
    quarter = tmp_path / "quarter.parquet"
    argv = ["split", "--from", str(split_path), "--label-fraction", "0.25", "-o", str(quarter)]
    assert main(argv) == 0
    fewer = load_split(quarter).set_index("region_id")["split"]
    assert set(fewer.index[fewer == "test"]) == set(original.index[original == "test"])
    assert 0 < (fewer == "train").sum() < (original == "train").sum()
    assert (original[fewer.index[fewer == "unused"]] == "train").all()
    err = main_err(capsys, ["split", "--from", str(split_path), "--search-from", str(split_path),
                            "-o", "x.parquet"])  # fmt: skip
    assert "not both" in err
    err = main_err(capsys, ["split", "--search-from", str(split_path), "-d", str(synthetic),
                            "-o", "x.parquet"])  # fmt: skip
    assert "drop --dataset" in err
