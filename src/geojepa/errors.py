"""Errors a user can cause. The CLI prints them as one line and exits non-zero.

The exit status follows the command-line convention (click's, grep's): **2** for a usage
mistake, the command line or its configuration (an invalid option or config value:
`ConfigError`, and click's own usage errors), **1** for a failure at run time (an input that is
missing, unreadable or unsuitable: `InputError`; an output that cannot be written:
`OutputError`). An interrupt is 130 (Ctrl-C) or 143 (SIGTERM), see `geojepa.interrupt`.

Anything that is *not* a GeojepaError is a bug in geojepa and keeps its traceback.
"""


class GeojepaError(Exception):
    """Base class for user-facing errors (bad input, bad config, bad state on disk)."""

    #: a failure at run time; usage mistakes (`ConfigError`) exit 2
    exit_code = 1


class InputError(GeojepaError):
    """An input file or argument is missing, unreadable, corrupt or unsuitable."""


class ConfigError(GeojepaError):
    """A configuration value is invalid or unknown (e.g. a typo in a key)."""

    exit_code = 2


class OutputError(GeojepaError):
    """The output location cannot be used (it holds something else, or is not writable)."""
