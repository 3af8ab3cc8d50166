"""A folder of XYZ tiles ``ROOT/{z}/{x}/{y}.{png,jpg,jpeg,webp}``: the requested zoom, filled
from children (mosaicked, downsampled) and then from a parent (cropped, upsampled)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from geojepa.data.imagery.base import (
    MAX_CHILD_LEVELS,
    MAX_PARENT_LEVELS,
    Imagery,
    Layer,
    fill_layer,
    first_line,
)
from geojepa.data.tiling import tile_bounds_lonlat
from geojepa.errors import InputError


class XYZImagery(Imagery):
    """A folder of XYZ tiles ``ROOT/{z}/{x}/{y}.{png,jpg,jpeg,webp}`` (Web-Mercator, y from north).

    Opening scans the folder once for its zoom levels and the tile range of each (nothing is
    kept per tile, so huge pyramids cost no memory); reads then look files up by name.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.levels: dict[int, tuple[int, int, int, int]] = {}  # z -> x0, x1, y0, y1 inclusive
        suffix_counts: dict[str, int] = {}
        name = re.compile(r"^(\d+)(\.(?:png|jpe?g|webp))$", re.IGNORECASE)
        for z_dir in _numeric_dirs(self.root):
            z = int(z_dir.name)
            if z > 30:
                continue
            xs, ys = [], []
            for x_dir in _numeric_dirs(z_dir):
                x = int(x_dir.name)
                if x >= 1 << z:
                    continue
                for entry in os.scandir(x_dir):
                    match = name.match(entry.name)
                    if match and int(match[1]) < 1 << z and entry.is_file():
                        xs.append(x)
                        ys.append(int(match[1]))
                        suffix_counts[match[2]] = suffix_counts.get(match[2], 0) + 1
            if xs:
                self.levels[z] = (min(xs), max(xs), min(ys), max(ys))
        if not self.levels:
            raise InputError(
                f"{self.root}: no XYZ tiles found (expected {self.root}/Z/X/Y.png|jpg|jpeg|webp)"
            )
        self.suffixes = tuple(sorted(suffix_counts, key=suffix_counts.__getitem__, reverse=True))
        west, south, east, north = 180.0, 90.0, -180.0, -90.0
        for z, (x0, x1, y0, y1) in self.levels.items():
            w, _, _, n = _tile_lonlat(z, x0, y0)
            _, s, e, _ = _tile_lonlat(z, x1, y1)
            west, south, east, north = min(west, w), min(south, s), max(east, e), max(north, n)
        self._set_bounds(west, south, east, north)

    def __repr__(self) -> str:
        return f"XYZImagery({str(self.root)!r}, zooms={sorted(self.levels)})"

    def _find(self, z: int, x: int, y: int) -> Path | None:
        level = self.levels.get(z)
        if level is None or not (level[0] <= x <= level[1] and level[2] <= y <= level[3]):
            return None
        for suffix in self.suffixes:
            path = self.root / str(z) / str(x) / f"{y}{suffix}"
            if path.is_file():
                return path
        return None

    def _read_layer(self, z: int, x: int, y: int, size: int) -> Layer | None:
        rgb = np.zeros((size, size, 3), np.uint8)
        valid = np.zeros((size, size), bool)
        # this zoom, then finer levels (more detail), then coarser ones; > 0 = children
        depths = [0]
        depths += [d for d in range(1, MAX_CHILD_LEVELS + 1) if z + d in self.levels]
        depths += [-d for d in range(1, MAX_PARENT_LEVELS + 1) if z - d in self.levels]
        for depth in depths:
            if depth >= 0:
                layer = self._from_children(z, x, y, depth, size)
            else:
                layer = self._from_parent(z, x, y, -depth, size)
            if layer is not None:
                fill_layer(rgb, valid, *layer)
                if valid.all():
                    break
        return (rgb, valid) if valid.any() else None

    def _from_children(self, z: int, x: int, y: int, depth: int, size: int) -> Layer | None:
        """Mosaic the 4**depth descendants at ``z + depth`` (depth 0: the tile itself)."""
        n = 1 << depth
        found = [
            (i, j, path)
            for j in range(n)
            for i in range(n)
            if (path := self._find(z + depth, x * n + i, y * n + j)) is not None
        ]
        if not found:
            return None
        if depth == 0:
            return _to_layer(_resize(_load(found[0][2]), size))
        first = _load(found[0][2])
        cell = first.size[0]
        canvas = Image.new("RGBA", (n * cell, n * cell))
        for k, (i, j, path) in enumerate(found):
            image = first if k == 0 else _load(path)
            if image.size != (cell, cell):
                image = image.resize((cell, cell), Image.Resampling.BILINEAR)
            canvas.paste(image, (i * cell, j * cell))
        return _to_layer(_resize(canvas, size))

    def _from_parent(self, z: int, x: int, y: int, depth: int, size: int) -> Layer | None:
        """Crop the ancestor at ``z - depth`` to this tile and upsample it."""
        path = self._find(z - depth, x >> depth, y >> depth)
        if path is None:
            return None
        image = _load(path)
        n = 1 << depth
        cw, ch = image.size[0] / n, image.size[1] / n
        i, j = x - ((x >> depth) << depth), y - ((y >> depth) << depth)
        box = (i * cw, j * ch, (i + 1) * cw, (j + 1) * ch)
        return _to_layer(image.resize((size, size), Image.Resampling.BILINEAR, box=box))


def _tile_lonlat(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    west, south, east, north = tile_bounds_lonlat(z, np.array(x), np.array(y))
    return float(west), float(south), float(east), float(north)


def _numeric_dirs(folder: Path) -> list[Path]:
    return [Path(e.path) for e in os.scandir(folder) if e.name.isdigit() and e.is_dir()]


def _load(path: Path) -> Image.Image:
    """The tile as RGB, or RGBA when it can be transparent (opaque tiles skip alpha work)."""
    try:
        with Image.open(path) as image:
            transparent = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            return image.convert("RGBA" if transparent else "RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"{path}: unreadable image tile ({first_line(exc)})") from None


def _resize(image: Image.Image, size: int) -> Image.Image:
    # Pillow resizes RGBA premultiplied, so transparent pixels do not darken their neighbours.
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.BILINEAR)


def _to_layer(image: Image.Image) -> Layer:
    array = np.asarray(image)
    if image.mode == "RGB":
        return np.array(array), np.ones(array.shape[:2], bool)
    return np.array(array[..., :3]), array[..., 3] >= 128
