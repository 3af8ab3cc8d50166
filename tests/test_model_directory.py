"""The model directory as one shareable, verified unit: a Hub-style card, checksums checked on
load, geojepa's version recorded, `from_pretrained` by path / "default" / Hub id,
`save_pretrained`/`push_to_hub`, and the compact (embedding-only) export."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import geojepa
from geojepa.cli import main
from geojepa.errors import InputError
from geojepa.model import GeoJEPA
from geojepa.model import hub as hub_module
from geojepa.model.card import EvalRow
from geojepa.tokenize.tags import TagVocabulary, build_tag_table
from geojepa.train.config import PretrainConfig, preset_config
from geojepa.train.export import build_model, export_model, training_sources
from helpers.synthetic import write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILES = ("config.json", "model.safetensors", "tag_table.safetensors", "vocab.json",
               "dataset.json", "training_data.json", "environment.json")  # fmt: skip


def fake_embed(texts: list[str]) -> np.ndarray:
    return np.random.default_rng(len(texts)).normal(size=(len(texts), 16)).astype(np.float32)


def _export(root: Path, ds, ema_scope: str = "all", name: str = "model") -> Path:
    data = preset_config("cpu-small").model_dump()
    data["model"].update(depth=1, predictor_depth=1, ema_scope=ema_scope)
    cfg = PretrainConfig.from_dict(data)
    vocab = TagVocabulary.from_dataset(ds)
    torch.manual_seed(0)
    model = build_model(cfg, build_tag_table(vocab, "fake", None, embed_fn=fake_embed))
    with torch.no_grad():  # a teacher that differs from its student, as after training
        for p in model.target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    info = {"dataset_name": ds.path.name, "n_tiles": ds.manifest["n_tiles"], "steps": 7,
            "sources": [{"name": "town.osm.pbf", "kind": "osm", "size": 12, "sha256": "ab" * 32,
                         "snapshot": "2013-08-03T19:00:02Z"}]}  # fmt: skip
    training = {"dataset": str(ds.path.resolve()), "n_tiles": ds.manifest["n_tiles"]}
    rows = [EvalRow("max_speed", "mae", 11.8, 10.9, 12.7, dataset="Neubrandenburg z16"),
            EvalRow("bridge", "f1", 0.61, task_type="tabular-classification")]  # fmt: skip
    return export_model(model, cfg, vocab, root / name, info, ds.config, training, results=rows)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("modeldir")
    path = write_synthetic_dataset(tmp / "ds", n_shards=2, tiles_per_shard=(4, 7), seed=3)
    ds = geojepa.open_dataset(path)
    return _export(tmp, ds), ds


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "copy"))


def _tiles(model, ds) -> np.ndarray:
    frame = geojepa.embed_tiles(model, ds, progress=False, open_vocabulary=False)
    return frame[[c for c in frame.columns if c.startswith("emb_")]].to_numpy()


# --- the card ------------------------------------------------------------------------------
def test_card_is_a_hub_readme_with_a_yaml_header(exported) -> None:
    run, ds = exported
    assert (run / "README.md").is_file() and not (run / "MODEL_CARD.md").exists()
    text = (run / "README.md").read_text()
    yaml = pytest.importorskip("yaml")
    header = yaml.safe_load(text.split("---")[1])
    assert header["library_name"] == "geojepa" and header["license"] == "apache-2.0"
    assert "openstreetmap" in header["tags"] and header["datasets"] == ["town.osm.pbf"]
    assert header["metrics"] == ["f1", "mae"]
    # the data by name, hash and snapshot date; never a local path
    assert "town.osm.pbf" in text and "ab" * 32 in text and "2013-08-03T19:00:02Z" in text
    assert str(ds.path.resolve()) not in text and str(ds.path) not in text


def test_huggingface_modelcard_parses_the_card_with_its_intervals(exported) -> None:
    hf = pytest.importorskip("huggingface_hub")
    run, _ = exported
    card = hf.ModelCard((run / "README.md").read_text())
    assert card.data.library_name == "geojepa" and card.data.license == "apache-2.0"
    result, bridge = card.data.eval_results
    assert result.task_name == "max_speed" and result.metric_type == "mae"
    assert result.metric_value == 11.8 and "10.9–12.7" in result.metric_name
    assert result.dataset_name == "Neubrandenburg z16"
    assert bridge.task_type == "tabular-classification" and bridge.metric_name == "f1"


def test_training_sources_name_files_hashes_and_snapshot_dates(liechtenstein_pbf) -> None:
    leaf = {"kind": "osm", "path": str(liechtenstein_pbf), "size": 5, "sha256": "cd" * 32}
    manifest_source = {"kind": "merge", "of": [
        {"dataset": "/x/a", "source": {"kind": "subset", "of": {"dataset": "/x/b",
                                                                "source": leaf}}},
        {"dataset": "/x/c", "source": {**leaf, "sha256": "ef" * 32, "path": "/gone/c.osm.pbf"}},
    ]}  # fmt: skip
    sources = training_sources(manifest_source)
    assert sources == [
        {"name": liechtenstein_pbf.name, "kind": "osm", "size": 5, "sha256": "cd" * 32,
         "snapshot": "2013-08-03T19:00:02Z"},
        {"name": "c.osm.pbf", "kind": "osm", "size": 5, "sha256": "ef" * 32, "snapshot": None},
    ]  # fmt: skip


# --- version and checksums -----------------------------------------------------------------
def test_version_and_checksums_are_recorded(exported) -> None:
    run, _ = exported
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["geojepa_version"] == geojepa.__version__ and meta["format_version"] == "2"
    record = json.loads((run / "checksums.json").read_text())
    assert record["geojepa"] == geojepa.__version__
    assert sorted(record["files"]) == sorted(MODEL_FILES)  # the card is not checked


@pytest.mark.parametrize("damage", ["bit flip", "heads 8", "max_entities 4", "no dataset.json",
                                    "no checksums.json", "edited tag table"])  # fmt: skip
def test_a_damaged_model_file_is_named(exported, tmp_path: Path, damage: str) -> None:
    run = _copy(exported[0], tmp_path)
    if damage == "bit flip":
        data = bytearray((run / "model.safetensors").read_bytes())
        data[-100] ^= 0x10  # a weight, not the header
        (run / "model.safetensors").write_bytes(bytes(data))
        name = "model.safetensors"
    elif damage in ("heads 8", "max_entities 4"):
        config = json.loads((run / "config.json").read_text())
        key, value = damage.split()
        section = "model" if key == "heads" else "tokenizer"
        config[section][key] = int(value)
        (run / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        name = "config.json"
    elif damage == "edited tag table":
        data = bytearray((run / "tag_table.safetensors").read_bytes())
        data[-3] ^= 0x01
        (run / "tag_table.safetensors").write_bytes(bytes(data))
        name = "tag_table.safetensors"
    else:
        name = damage.removeprefix("no ")
        (run / name).unlink()
    with pytest.raises(InputError) as err:
        GeoJEPA.from_pretrained(run)
    message = str(err.value)
    assert "\n" not in message
    assert f"{run / name} " in message or f"(missing: {name})" in message


def test_a_format_1_directory_loads_with_a_warning_and_saves_as_format_2(
    exported, tmp_path: Path
) -> None:
    run = _copy(exported[0], tmp_path)  # as written before checksums and README.md
    (run / "checksums.json").unlink()
    (run / "README.md").rename(run / "MODEL_CARD.md")
    weights = load_file(str(run / "model.safetensors"))
    save_file(weights, str(run / "model.safetensors"),
              metadata={"format_version": "1", "geojepa": "model"})  # fmt: skip
    with pytest.warns(UserWarning, match="files are not verified"):
        model = GeoJEPA.from_pretrained(run)
    out = model.save_pretrained(run)  # upgraded in place
    assert (out / "checksums.json").is_file() and (out / "README.md").is_file()
    assert not (out / "MODEL_CARD.md").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GeoJEPA.from_pretrained(out)


def test_an_edited_card_still_loads(exported, tmp_path: Path) -> None:
    run = _copy(exported[0], tmp_path)
    (run / "README.md").write_text("# my own notes\n")
    GeoJEPA.from_pretrained(run)


# --- sharing ---------------------------------------------------------------------------------
def test_save_pretrained_round_trips_and_keeps_the_card(exported, tmp_path: Path) -> None:
    run, _ = exported
    model = GeoJEPA.from_pretrained(run)
    out = model.save_pretrained(tmp_path / "saved")
    again = GeoJEPA.from_pretrained(out)
    torch.testing.assert_close(again.state_dict(), model.state_dict(), rtol=0, atol=0)
    assert again.directory.training_data == model.directory.training_data
    card = (out / "README.md").read_text()
    assert "| optimiser steps | 7 " in card and "2013-08-03T19:00:02Z" in card


def test_a_shareable_directory_holds_no_local_path(exported, tmp_path: Path) -> None:
    run, ds = exported
    out = GeoJEPA.from_pretrained(run).save_pretrained(tmp_path / "share", training_data=False)
    assert not (out / "training_data.json").exists()
    needles = {str(ds.path.resolve()), str(tmp_path), str(run), str(Path.home())}
    for file in out.iterdir():
        text = file.read_bytes()[:200_000].decode("utf-8", "replace")
        for needle in needles:
            assert needle not in text, (file.name, needle)
    GeoJEPA.from_pretrained(out)  # and it verifies without the file


def test_default_resolves_to_the_shipped_model(exported, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(hub_module, "default_model_path", lambda: tmp_path / "absent")
    with pytest.raises(InputError, match="default model is not shipped"):
        GeoJEPA.from_pretrained("default")
    shipped = shutil.copytree(exported[0], tmp_path / "shipped")
    monkeypatch.setattr(hub_module, "default_model_path", lambda: shipped)
    assert GeoJEPA.from_pretrained("default").directory.path == shipped
    out = tmp_path / "t.parquet"  # the CLI's embed takes the name too
    assert main(["embed", "default", str(exported[1].path), "-o", str(out), "-q"]) == 0
    assert out.is_file()


def test_the_shipped_model_is_package_data() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["geojepa"]
    for name in ("model.safetensors", "tag_table.safetensors", "config.json", "README.md"):
        assert any(Path("models/default", name).match(p) for p in patterns), name
    assert hub_module.default_model_path() == ROOT / "src" / "geojepa" / "models" / "default"


def test_a_hub_id_loads_through_huggingface_hub(exported, monkeypatch, tmp_path: Path) -> None:
    hf = pytest.importorskip("huggingface_hub")
    run, ds = exported
    calls = []

    def fake_download(repo_id, revision=None):
        calls.append((repo_id, revision))
        return str(run)

    monkeypatch.setattr(hf, "snapshot_download", fake_download)
    model = GeoJEPA.from_pretrained("someone/geojepa-town", revision="v1")
    assert calls == [("someone/geojepa-town", "v1")] and model.directory.path == run
    # the CLI's embed takes the same names
    out = tmp_path / "t.parquet"
    assert main(["embed", "someone/geojepa-town", str(ds.path), "-o", str(out), "-q"]) == 0
    assert out.is_file()


def test_a_hub_id_offline_is_one_line(exported, monkeypatch, tmp_path: Path, capsys) -> None:
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"),
                        raising=False)  # fmt: skip
    with pytest.raises(InputError, match="could not be fetched from the Hugging Face Hub") as err:
        GeoJEPA.from_pretrained("nobody/no-such-model")
    assert "\n" not in str(err.value)
    dataset = str(exported[1].path)
    assert main(["embed", "nobody/no-such-model", dataset, "-o", str(tmp_path / "o")]) != 0
    err_text = capsys.readouterr().err
    assert "Hugging Face Hub" in err_text and "Traceback" not in err_text


def test_a_hub_id_without_huggingface_hub_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(InputError, match=r"geojepa\[hub\]"):
        GeoJEPA.from_pretrained("someone/geojepa-town")
    with pytest.raises(InputError, match="model directory not found"):
        GeoJEPA.from_pretrained("no/such/dir")


def test_push_to_hub_uploads_a_shareable_directory(exported, monkeypatch) -> None:
    hf = pytest.importorskip("huggingface_hub")
    uploaded: dict[str, object] = {}

    class FakeApi:
        def __init__(self, token=None):
            uploaded["token"] = token

        def create_repo(self, repo_id, private, exist_ok, repo_type):
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, repo_id, folder_path, repo_type):
            folder = Path(folder_path)
            uploaded["files"] = sorted(p.name for p in folder.iterdir())
            uploaded["card"] = (folder / "README.md").read_text()
            GeoJEPA.from_pretrained(folder)  # what is uploaded verifies

    monkeypatch.setattr(hf, "HfApi", FakeApi)
    url = GeoJEPA.from_pretrained(exported[0]).push_to_hub("someone/town", token="t")
    assert url == "https://huggingface.co/someone/town" and uploaded["token"] == "t"
    assert "training_data.json" not in uploaded["files"] and "checksums.json" in uploaded["files"]
    assert 'from_pretrained("someone/town")' in str(uploaded["card"])


def test_push_to_hub_without_network_is_one_line(exported, monkeypatch) -> None:
    hf = pytest.importorskip("huggingface_hub")

    class OfflineApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, *args, **kwargs):
            raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(hf, "HfApi", OfflineApi)
    with pytest.raises(InputError, match=r"could not push .* name resolution"):
        GeoJEPA.from_pretrained(exported[0]).push_to_hub("someone/town")


# --- compact export --------------------------------------------------------------------------
@pytest.mark.parametrize("ema_scope", ["all", "encoder"])
def test_compact_export_embeds_as_the_full_model(exported, tmp_path: Path, ema_scope: str) -> None:
    _, ds = exported
    run = _export(tmp_path, ds, ema_scope=ema_scope)
    full = GeoJEPA.from_pretrained(run)
    compact = full.save_pretrained(tmp_path / "compact", compact=True)
    half = full.save_pretrained(tmp_path / "half", compact=True, dtype="float16")
    keys = set(safe_open(str(compact / "model.safetensors"), "pt").keys())
    assert not any(k.startswith(("predictor.", "encoder.")) for k in keys)
    assert any(k.startswith("target.encoder.") for k in keys)
    expected = _tiles(full, ds)
    np.testing.assert_array_equal(_tiles(GeoJEPA.from_pretrained(compact), ds), expected)
    got = _tiles(GeoJEPA.from_pretrained(half), ds)
    np.testing.assert_allclose(got, expected, atol=2e-2, rtol=0)  # float16 rounding only
    assert np.abs(got - expected).max() > 0  # it was rounded
    size = {p: sum(f.stat().st_size for f in p.glob("*.safetensors")) for p in (run, compact, half)}
    assert size[half] < 0.55 * size[compact] and size[compact] < 0.8 * size[run]
    with safe_open(str(half / "tag_table.safetensors"), "pt") as f:
        assert f.get_tensor("tag_table").dtype == torch.float16
        assert f.metadata()["contents"] == "embedding"
    assert "embedding only" in (half / "README.md").read_text()


def test_a_compact_export_still_checks_its_files(exported, tmp_path: Path) -> None:
    out = GeoJEPA.from_pretrained(exported[0]).save_pretrained(tmp_path / "c", compact=True)
    model = GeoJEPA.from_pretrained(out)
    assert model.directory.compact
    assert "predictor.out.weight" in model.state_dict()  # the network is whole (predictor unused)
    # the student starts as the teacher (as at initialisation), not from random weights
    torch.testing.assert_close(model.encoder.state_dict(), model.target["encoder"].state_dict())
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-10] ^= 0x01
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"model\.safetensors is damaged"):
        GeoJEPA.from_pretrained(out)


def test_a_tag_table_rebuilt_from_the_text_model_is_checked_and_cached(
    exported, tmp_path: Path, monkeypatch
) -> None:
    """``tag_table="text"`` ships a fingerprint instead of the table; a load rebuilds the table
    with the text model (once: then from the cache) and refuses one that differs."""
    import geojepa.tokenize.tags as tags

    run, ds = exported
    full = GeoJEPA.from_pretrained(run)
    out = full.save_pretrained(tmp_path / "slim", compact=True, tag_table="text")
    assert not (out / "tag_table.safetensors").exists()
    assert (out / "tag_table_check.safetensors").stat().st_size < 0.6 * (
        (run / "tag_table.safetensors").stat().st_size
    )
    monkeypatch.setenv("GEOJEPA_CACHE", str(tmp_path / "cache"))
    calls: list[int] = []

    def text_model(name: str, batch_size: int = 256):  # the export's table came from fake_embed
        calls.append(1)
        return fake_embed

    monkeypatch.setattr(tags, "sentence_transformer_embed", text_model)
    np.testing.assert_array_equal(_tiles(GeoJEPA.from_pretrained(out), ds), _tiles(full, ds))
    assert calls == [1] and list((tmp_path / "cache").glob("tag_table-*.safetensors"))
    GeoJEPA.from_pretrained(out)
    assert calls == [1]  # the second load reads the cached table

    # another text model (or version) gives another table: one line, never other embeddings
    shutil.rmtree(tmp_path / "cache")
    monkeypatch.setattr(
        tags,
        "sentence_transformer_embed",
        lambda name, batch_size=256: lambda t: 1.01 * fake_embed(t),
    )
    with pytest.raises(InputError, match="gives another tag table"):
        GeoJEPA.from_pretrained(out)
    with pytest.raises(Exception, match="stored"):
        full.save_pretrained(tmp_path / "bad", tag_table="fp8")
