"""Outputs that are either complete or absent, and never written by two runs at once.

Every file geojepa writes goes through :func:`atomic_path`: the data lands in a temporary file
with a name unique to this process, in the target's own directory (so the final rename never
crosses a file system), and is renamed over the target only when it is complete. An error or an
interrupt removes the temporary file and leaves whatever was at the target untouched.

The result looks like a file ``open()`` wrote: the umask's mode, or the mode of the file it
replaces. :func:`output_path` decides what is written: a symlink's target (the link stays), never
a device node or FIFO (a rename would replace it). A killed run's temporary is removed by the
next run writing the same output (see :class:`TempFile`).

:class:`OutputLock` is an advisory ``flock`` on a sibling ``.<name>.lock`` file. A second run
that targets the same output fails at once with the holder's pid, host and command, instead of
interleaving its writes with the first. The lock dies with its process (the kernel releases a
``flock`` when the descriptor closes), so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import glob
import json
import os
import secrets
import socket
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
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


def output_path(path: str | Path) -> Path:
    """The file an output at ``path`` really is: a symlink is followed (its target is locked and
    written, the link stays); a device node, FIFO or socket is refused with one line, because
    the final rename would replace it (``-o /dev/null`` run as root would destroy the device)."""
    path = Path(path)
    if path.is_symlink():
        try:
            path = path.resolve(strict=False)
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise OutputError(f"cannot follow the symlink {path}: {exc}") from None
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return path  # not there yet (or unreadable: the write says why)
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise OutputError(
            f"{path} is not a regular file (a device, FIFO or socket): geojepa writes a file "
            "and renames it into place, which would replace it; give the path of a file"
        )
    return path


class TempFile:
    """A new temporary file beside ``final``, named ``.NAME.*.tmp``, that no other run can pick.

    Created as ``open()`` would create ``final`` (mode 0o666 less the umask). The owner holds a
    ``flock`` on it until it is committed or discarded: a temporary nobody holds belongs to a
    killed run, and is removed by the next run writing the same output (:func:`_clean_stale`).
    """

    def __init__(self, final: Path, suffix: str = "") -> None:
        self.final = final
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            _clean_stale(final)
            self.path, self._fd = _create_locked(final, suffix)
            self._mode = stat.S_IMODE(os.fstat(self._fd).st_mode)  # 0o666 less the umask
        except OSError as exc:
            raise OutputError(describe_os_error(exc, final)) from None

    def commit(self) -> None:
        """Rename onto ``final``; a file already there keeps its mode, a new one gets the
        umask's, even where the writer replaced the temporary (safetensors writes 0600 files)
        (OSError if it fails)."""
        mode = self._mode
        with suppress(FileNotFoundError):
            mode = stat.S_IMODE(os.stat(self.final).st_mode)
        os.chmod(self.path, mode)
        os.replace(self.path, self.final)
        self._close()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _create_locked(final: Path, suffix: str) -> tuple[Path, int]:
    """A fresh file, locked; retried if a cleaning run took it as stale before we locked it."""
    while True:
        name = final.parent / f".{final.name}.{secrets.token_hex(4)}.tmp{suffix}"
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(fd, name):
            return name, fd
        os.close(fd)


def _clean_stale(final: Path) -> None:
    """Remove the temporaries of ``final`` that no live run holds (their run was killed)."""
    for path in final.parent.glob(f".{glob.escape(final.name)}.*.tmp*"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(fd, path):
                path.unlink()
        except OSError:  # held: a live run's
            pass
        finally:
            os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not unlinked or replaced meanwhile)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
    except FileNotFoundError:
        return False


@contextmanager
def atomic_path(final: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a fresh temporary path beside ``final``; rename it onto ``final`` on success.

    ``suffix`` keeps an extension on the temporary name for writers that choose their format
    from it (matplotlib's ``savefig``). On any exception (``KeyboardInterrupt`` included) the
    temporary file is removed and ``final`` is left as it was.
    """
    final = output_path(final)
    tmp = TempFile(final, suffix)
    try:
        yield tmp.path
        tmp.commit()
    except OSError as exc:
        tmp.discard()
        raise OutputError(describe_os_error(exc, final)) from None
    except BaseException:
        tmp.discard()
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
        self.target = output_path(target)
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
