"""Errors a user can cause. The CLI prints them as one line and exits non-zero.

Anything that is *not* a GeojepaError is a bug in geojepa and keeps its traceback.
"""


class GeojepaError(Exception):
    """Base class for user-facing errors (bad input, bad config, bad state on disk)."""

    exit_code = 2


class InputError(GeojepaError):
    """An input file or argument is missing, unreadable, corrupt or unsuitable."""


class ConfigError(GeojepaError):
    """A configuration value is invalid or unknown (e.g. a typo in a key)."""


class OutputError(GeojepaError):
    """The output location cannot be used (it holds something else, or is not writable)."""
