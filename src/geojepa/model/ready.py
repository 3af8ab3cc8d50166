"""A model ready to read a dataset: loaded, in eval mode on a usable device, checked against
the data it was trained on, and (open vocabulary) given vectors for the dataset's unseen tags.

`geojepa.embed` and the SRAI embedder start here; the directory itself is read by
`model.directory` (through `GeoJEPA.from_pretrained`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from geojepa.data.reader import TileDataset
from geojepa.errors import ConfigError, InputError
from geojepa.model.jepa import GeoJEPA


def model_on_device(model: GeoJEPA | str | Path, device: str | torch.device = "cpu") -> GeoJEPA:
    """A model directory path, ``"default"`` or a Hub id (loaded with
    `GeoJEPA.from_pretrained`) or an in-memory GeoJEPA that came from one, in eval mode on
    ``device`` (InputError for a GeoJEPA without its
    directory's vocabulary)."""
    device = check_device(device)
    if not isinstance(model, GeoJEPA):
        model = GeoJEPA.from_pretrained(model)
    model.require_directory()
    return model.to(device).eval()


def model_for(
    model: GeoJEPA | str | Path,
    ds: TileDataset,
    device: str | torch.device = "cpu",
    open_vocabulary: bool = True,
) -> GeoJEPA:
    """The model ready to read ``ds``: loaded, checked against the data it was trained on, and
    (``open_vocabulary``) given text vectors for the tags of ``ds`` it has never seen, instead
    of reading them through their key or as UNKNOWN (see `model.open_vocab`)."""
    net = model_on_device(model, device)
    check_compatible(net, ds)
    if open_vocabulary:
        from geojepa.model.open_vocab import open_vocabulary as add_unseen

        add_unseen(net, ds)
    return net


def check_device(device: str | torch.device) -> torch.device:
    """A usable torch device, or one ConfigError line (a typo, or CUDA on a CPU-only build)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but this torch has no usable CUDA GPU")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r} does not exist ({torch.cuda.device_count()} GPUs)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' asked for, but MPS is not available here")
    return dev


def check_compatible(model: GeoJEPA, ds: TileDataset) -> None:
    """Refuse a dataset the model cannot read the way it was trained."""
    directory = model.require_directory()
    trained = directory.dataset_config
    if trained is not None:
        mine = ds.config
        if trained.zoom != mine.zoom:
            raise InputError(
                f"{ds.path} has zoom {mine.zoom}, the model was trained on zoom {trained.zoom} "
                f"tiles: re-run `geojepa prepare --zoom {trained.zoom}`"
            )
        if (trained.tag_filter, trained.drop_keys, trained.key_only) != (
            mine.tag_filter,
            mine.drop_keys,
            mine.key_only,
        ):
            raise InputError(
                f"{ds.path} was built with other tag-filter settings than the model's training "
                "data: re-run `geojepa prepare` with the same tag filter"
            )
    tok = directory.spec.tokenizer
    if tok.use_image and ds.config.image_size != tok.image_size:
        raise InputError(
            f"{ds.path} has {ds.config.image_size}px images, the model expects {tok.image_size}px"
        )
