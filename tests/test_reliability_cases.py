"""The last cases of issue 19 (docs/reliability.md): an unwritable output, a geographic CRS other
than EPSG:4326, a `demo -o` folder that is not ours, and an `evaluate` that fails on input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from geojepa.cli import main


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch) -> Path:
    """An existing directory nobody may write into. Root ignores the mode, so for root the
    refusal the kernel would give is simulated at `Path.mkdir`."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if folder in Path(self).parents:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    yield folder
    folder.chmod(0o755)


def test_prepare_into_a_read_only_directory_is_one_line(finland_test_pbf, read_only_dir, capsys):
    assert main(["prepare", str(finland_test_pbf), "-o", str(read_only_dir)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(read_only_dir) in err and "Permission denied" in err
    assert list(read_only_dir.iterdir()) == []
