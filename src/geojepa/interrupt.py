"""Ctrl-C that is never lost and never reported as success.

SIGTERM (what ``kill``, systemd, Slurm and Kubernetes send) is handled exactly as SIGINT; the
CLI then exits with 143 instead of 130 (128 + the signal number, as a shell reports it).

The CLI installs :func:`sigint_handler` for the whole command: the first SIGINT both records the
request and raises ``KeyboardInterrupt``, so even an interrupt swallowed somewhere deep (a
``__del__`` or a library that catches it) still makes the command exit with status 130.
Long loops that must stop at a clean point (a training step) run inside :func:`deferred`, where
the first SIGINT only records the request; the loop polls :func:`requested`, saves its state and
raises :class:`Interrupted`. A second SIGINT always stops at once.

Each command sets :func:`set_message` to one line saying what was kept and how to resume.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

DEFAULT_MESSAGE = "interrupted: no output was written under its final name; run the command again"

#: The signals handled as Ctrl-C.
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested = threading.Event()
_deferring = False
_message = DEFAULT_MESSAGE
_signal = signal.SIGINT


class Interrupted(KeyboardInterrupt):
    """A run stopped on request after saving what it could (the message says what)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        set_message(message)


def requested() -> bool:
    """Whether SIGINT arrived since the handler was installed."""
    return _requested.is_set()


def set_message(text: str) -> None:
    """The line the CLI prints if this command is interrupted (what is kept, how to resume)."""
    global _message
    _message = text


def message() -> str:
    return _message


def exit_status() -> int:
    """128 + the number of the signal that interrupted the command (130 Ctrl-C, 143 SIGTERM)."""
    return 128 + int(_signal)


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _signal
    first = not _requested.is_set()
    if first:
        _signal = signal.Signals(signum)
    _requested.set()
    if _deferring and first:
        return  # the running loop stops at its next clean point
    raise KeyboardInterrupt


@contextmanager
def sigint_handler() -> Iterator[None]:
    """Install the recording handler of SIGINT and SIGTERM for a CLI command (main thread
    only)."""
    global _message, _signal
    _requested.clear()
    _message = DEFAULT_MESSAGE
    _signal = signal.SIGINT
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _on_sigint) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Within, the first SIGINT only sets :func:`requested` (see the module docstring).

    Outside the CLI (a notebook, a script) the recording handler is installed for the duration,
    so the same clean stop works from the Python API.
    """
    global _deferring
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    installed = signal.getsignal(signal.SIGINT) is not _on_sigint
    previous = {s: signal.signal(s, _on_sigint) for s in SIGNALS} if installed else {}
    if installed:
        _requested.clear()
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
        for s, handler in previous.items():
            signal.signal(s, handler)
