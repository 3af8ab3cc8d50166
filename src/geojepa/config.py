"""Typed configuration objects shared by every stage.

Every run (dataset build, pretraining) is described by one frozen pydantic model that is saved
as JSON beside its output. Unknown keys are rejected with a suggestion, so a typo in a config
file fails loudly instead of silently falling back to a default.
"""

from __future__ import annotations

import difflib
import json
import threading
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from geojepa.errors import ConfigError

C = TypeVar("C", bound="Config")


_depth = threading.local()


class Config(BaseModel):
    """Base class: frozen, strict about unknown keys, round-trips through JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    def __init__(self, **data: Any) -> None:
        # Direct construction (`PrepareConfig(zooom=16)`) fails like from_dict: ConfigError.
        # Pydantic calls this for nested sections too; only the outermost call translates, so
        # the message keeps the full location (`optim.learning_rat`).
        _depth.value = getattr(_depth, "value", 0) + 1
        try:
            super().__init__(**data)
        except ValidationError as exc:
            if _depth.value > 1:
                raise
            raise ConfigError(_describe(type(self), exc)) from None
        finally:
            _depth.value -= 1

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Validate ``data``; raise ConfigError with a one-line, human message on failure."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe(cls, exc)) from None

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object, not {type(data).__name__}")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write the config as indented JSON, atomically."""
        from geojepa.io.atomic import write_text_atomic

        write_text_atomic(path, self.model_dump_json(indent=2) + "\n")

    def replace(self: C, **changes: Any) -> C:
        """A validated copy with some fields changed."""
        return type(self).from_dict({**self.model_dump(), **changes})


def _describe(cls: type[BaseModel], exc: ValidationError) -> str:
    messages = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            known = list(_model_at(cls, err["loc"][:-1]).model_fields)
            close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"
            messages.append(f"unknown config key '{loc}'{hint}")
        else:
            messages.append(f"invalid config value for '{loc}': {err['msg']}")
    return f"{cls.__name__}: " + "; ".join(messages)


def _model_at(cls: type[BaseModel], path: tuple) -> type[BaseModel]:
    """The (nested) config class that a validation error location points into."""
    for part in path:
        field = cls.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        cls = annotation
    return cls
