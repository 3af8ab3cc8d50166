"""Optional dependencies imported lazily, with the install hint, in one place (as SRAI does).

An extra (``geojepa[hub]``, ``[imagery]``, ``[srai]``…) is imported only where it is used, so a
plain install stays light and fast to import; when it is missing, the user reads one line that
names the package and the command that installs it, instead of a bare ImportError.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from geojepa.errors import ConfigError, GeojepaError


def install_hint(extra: str) -> str:
    """The command that installs geojepa's optional ``extra``."""
    return f"pip install 'geojepa[{extra}]'"


def missing_message(purpose: str, package: str, extra: str | None = None) -> str:
    """ "<purpose> needs the optional package <package>: <pip command>" (the extra's, else the
    package's own)."""
    hint = install_hint(extra) if extra is not None else f"pip install {package}"
    return f"{purpose} needs the optional package {package}: {hint}"


def require(
    module: str,
    purpose: str,
    extra: str | None = None,
    *,
    package: str | None = None,
    error: type[GeojepaError] = ConfigError,
) -> ModuleType:
    """``import module``, or ``error`` with `missing_message` (``package``: the name pip knows,
    when it is not the module's)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        name = package or module.split(".")[0]
        raise error(missing_message(purpose, name, extra)) from None
