"""Outputs that are either complete or absent, and never written by two runs at once.

Every file geojepa writes goes through :func:`atomic_path`: the data lands in a temporary file
with a name unique to this process, in the target's own directory (so the final rename never
crosses a file system), and is renamed over the target only when it is complete. An error or an
interrupt removes the temporary file and leaves whatever was at the target untouched.

:class:`OutputLock` is an advisory ``flock`` on a sibling ``.<name>.lock`` file. A second run
that targets the same output fails at once with the holder's pid, host and command, instead of
interleaving its writes with the first. The lock dies with its process (the kernel releases a
``flock`` when the descriptor closes), so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from geojepa.errors import OutputError


def describe_os_error(exc: OSError, path: str | Path) -> str:
    """One line for an OS error while writing ``path`` (a full disk says so, and what to do)."""
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device while writing {path}: free some space and re-run"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: permission denied (choose another output location)"
    return f"cannot write {path}: {exc.strerror or exc}"


def unique_temp(final: Path, suffix: str = "") -> Path:
    """A new empty file beside ``final`` whose name no other run can pick (OutputError if the
    directory cannot be written)."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}",
                                    dir=final.parent)  # fmt: skip
    except OSError as exc:
        raise OutputError(describe_os_error(exc, final)) from None
    os.close(fd)
    return Path(name)


@contextmanager
def atomic_path(final: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a fresh temporary path beside ``final``; rename it onto ``final`` on success.

    ``suffix`` keeps an extension on the temporary name for writers that choose their format
    from it (matplotlib's ``savefig``). On any exception (``KeyboardInterrupt`` included) the
    temporary file is removed and ``final`` is left as it was.
    """
    final = Path(final)
    tmp = unique_temp(final, suffix)
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(describe_os_error(exc, final)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(final: str | Path, write: Callable[[Path], Any], suffix: str = "") -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``final`` (see :func:`atomic_path`)."""
    with atomic_path(final, suffix) as tmp:
        write(tmp)
    return Path(final)


def write_text_atomic(final: str | Path, text: str) -> Path:
    return write_atomic(final, lambda p: p.write_text(text, encoding="utf-8"))


def write_json_atomic(final: str | Path, data: Any) -> Path:
    return write_text_atomic(final, json.dumps(data, indent=2, default=str) + "\n")


def lock_path(target: str | Path) -> Path:
    """The lock file of ``target``: a hidden sibling, so it works before the target exists."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


class OutputLock:
    """Exclusive advisory lock on an output path, held for the life of a run.

    Use as a context manager. Two locks on one path conflict even within one process.
    """

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target)
        self.path = lock_path(self.target)
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        fd = self._lock_fresh_inode()
        os.ftruncate(fd, 0)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv[:4])[:200],
        }
        os.write(fd, (json.dumps(info) + "\n").encode())
        self._fd = fd
        return self

    def _lock_fresh_inode(self) -> int:
        """Lock the file now at ``self.path`` (retry if a releasing run unlinked it under us)."""
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(describe_os_error(exc, self.target)) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputError(
                    f"{self.target} is being written by another geojepa run ({holder}); wait "
                    "for it to finish or choose another output"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still holding the lock: a waiting run then locks a fresh inode.
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder unknown"
    return (
        f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}: "
        f"{info.get('command', '?')}"
    )
