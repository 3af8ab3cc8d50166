"""Progress of a long loop: a tqdm bar on a terminal, plain lines anywhere else.

Piped or redirected (``2>&1 | cat``, nohup, SLURM, CI logs), a tqdm bar leaves ``\\r``-joined
redraws in the log. There, as ``pretrain`` does (``train/progress.py``), the same counts go out
as a plain line every ``every`` seconds and once at the end. tqdm is imported only when a bar
is shown (``tqdm.auto`` costs ~35 ms of start-up).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

#: Lightning's loggers that print start-up tips and "GPU available" style messages.
_NOISY_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")


class NoProgress:
    """Shows nothing (``progress=False``, ``--quiet``)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PlainProgress(NoProgress):
    """``embed 120/320 tiles (38%) · 41.2 tiles/s · elapsed 0:03`` every ``every`` seconds,
    and a last line with the total when closed; never a carriage return."""

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        initial: int = 0,
        unit: str = "it",
        stream: TextIO | None = None,
        every: float = 10.0,
    ) -> None:
        self.desc, self.total, self.unit = desc, total, unit.strip() or "it"
        self.n = self.first = initial
        self.stream = stream or sys.stderr
        self.every = every
        self.start = self.shown = time.perf_counter()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.shown >= self.every:
            self.shown = now
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        """The last line: ``done`` unless the loop stopped short of a known total (an error)."""
        if not self.closed:
            self.closed = True
            done = self.total is None or self.n >= self.total
            print(self.line(done=done), file=self.stream, flush=True)

    def line(self, done: bool = False) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        count += f" {self.unit}"
        if self.total and not done:
            count += f" ({100 * self.n / self.total:.0f}%)"
        rate = (self.n - self.first) / elapsed
        minutes, seconds = divmod(int(elapsed), 60)
        state = f"{self.desc} done" if done else self.desc
        return f"{state} · {count} · {rate:.1f} {self.unit}/s · elapsed {minutes}:{seconds:02d}"


def progress_bar(
    enabled: bool,
    *,
    desc: str,
    total: int | None = None,
    initial: int = 0,
    unit: str = "it",
    stream: TextIO | None = None,
) -> Any:
    """A tqdm bar when ``stream`` (stderr) is a terminal, plain lines otherwise, nothing when
    not ``enabled``. All three have ``update(n)``, ``close()`` and work as context managers."""
    if not enabled:
        return NoProgress()
    stream = stream or sys.stderr
    if not stream.isatty():
        return PlainProgress(desc, total, initial, unit, stream)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, desc=desc, file=stream, leave=False)


class StageClock:
    """Wall time of the stages of a start-up (``pretrain -v``): each stage's seconds, printed
    as it ends when ``show``, and the total since the clock started."""

    def __init__(
        self,
        name: str,
        show: bool = False,
        stream: TextIO | None = None,
        start: float | None = None,
    ) -> None:
        self.name, self.show = name, show
        self.stream = stream or sys.stderr
        self.start = self.mark = time.perf_counter() if start is None else start
        self.seconds: dict[str, float] = {}

    @classmethod
    def from_process_start(
        cls, name: str, show: bool = False, stream: TextIO | None = None
    ) -> StageClock:
        """A clock whose first stage, ``start Python, import torch and geojepa``, began when this
        process did (a command line's start-up; Linux, else the clock starts now)."""
        age = process_age()
        clock = cls(name, show, stream, None if age is None else time.perf_counter() - age)
        if age is not None:
            clock.lap("start Python, import torch and geojepa")
        return clock

    def lap(self, stage: str) -> float:
        """End ``stage`` now (it began at the previous lap); returns its seconds."""
        now = time.perf_counter()
        seconds, self.mark = now - self.mark, now
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        if self.show:
            print(f"{self.name} start-up · {stage}: {seconds:.1f} s "
                  f"(total {now - self.start:.1f} s)", file=self.stream, flush=True)  # fmt: skip
        return seconds


def process_age() -> float | None:
    """Seconds since this process started (``/proc``; None where there is none)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time, in ticks
    return max(uptime - started, 0.0)


@contextmanager
def quiet_dependencies() -> Iterator[None]:
    """Silence Lightning's info messages (tips, accelerator summary, "fit stopped"), the text
    model's "Loading weights" bar and the deprecation chatter of dependencies for the duration
    of a run; errors still show."""
    saved = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    hf_logging = None
    if importlib.util.find_spec("transformers") is not None:
        import transformers.utils.logging as hf_logging

        hf_bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r".*weights_only.*")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        if hf_logging is not None and hf_bars:
            hf_logging.enable_progress_bar()
