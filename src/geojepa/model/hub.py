"""Where a model name points: a local directory, the model shipped in the package, or the Hub.

``GeoJEPA.from_pretrained(name)`` and ``geojepa embed MODEL`` resolve ``name`` here, one way:

1. an existing directory → that directory;
2. ``"default"`` → the model shipped inside the package (``geojepa/models/default/``);
3. ``owner/name`` (one slash, no such local path) → a Hugging Face Hub snapshot, through the
   optional ``huggingface_hub`` (``pip install 'geojepa[hub]'``), cached, offline-safe: without
   the package or the network, one InputError line says so.

`push_to_hub` uploads a directory written by `GeoJEPA.save_pretrained` (without
``training_data.json``, which holds a local path).
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path
from typing import Any

from geojepa.errors import InputError
from geojepa.optional import install_hint, require

DEFAULT_NAME = "default"
HUB_HINT = install_hint("hub")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def default_model_path() -> Path:
    """The directory of the model shipped with geojepa (it may be absent in this build)."""
    return Path(str(files("geojepa"))) / "models" / DEFAULT_NAME


def is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a Hub repository id (``owner/name``)."""
    return bool(_HUB_ID.match(name))


def resolve_model(name: str | Path, revision: str | None = None) -> Path:
    """The local model directory ``name`` stands for (see the module docstring); InputError
    when it is none of them."""
    path = Path(name)
    if path.is_dir():
        return path
    text = str(name)
    if text == DEFAULT_NAME:
        shipped = default_model_path()
        if not (shipped / "config.json").is_file():
            raise InputError(
                "the default model is not shipped in this geojepa installation "
                f"({shipped} holds no model): pass a model directory or a Hub id (owner/name)"
            )
        return shipped
    if isinstance(name, str) and is_hub_id(text) and not path.exists():
        return download(text, revision)
    raise InputError(f"model directory not found: {name}")


def _hub() -> Any:
    return require("huggingface_hub", "a Hub model", "hub", error=InputError)


def download(repo_id: str, revision: str | None = None) -> Path:
    """A local snapshot of Hub model ``repo_id`` (from the cache when offline)."""
    hub = _hub()
    try:
        return Path(hub.snapshot_download(repo_id, revision=revision))
    except Exception as exc:  # network, missing repo, offline without a cached copy, …
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise InputError(
            f"model directory not found: {repo_id}, and it could not be fetched from the "
            f"Hugging Face Hub ({type(exc).__name__}: {reason}); check the id and the network, "
            "or pass a local model directory"
        ) from None


def upload(folder: Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create (if needed) Hub model repository ``repo_id`` and upload ``folder`` to it; the
    repository's URL."""
    hub = _hub()
    try:
        api = hub.HfApi(token=token)
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model")
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise InputError(
            f"could not push to the Hugging Face Hub repository {repo_id} "
            f"({type(exc).__name__}: {reason}); check the network and your token"
        ) from None
    return str(url)
