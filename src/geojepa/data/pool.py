"""Where `prepare`'s steps run: in-process for small inputs, else a fork-based process pool
whose workers die with their parent; and a bounded `map` so memory stays bounded by what is in
flight, not by the input.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from geojepa.data.config import PrepareConfig


class InlineExecutor(Executor):
    """Runs tasks in the calling process (workers=1): simpler to debug, no pickling."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            fut.set_exception(exc)
        return fut


#: inputs estimated below this many elements are built in-process when ``workers`` is 0: a
#: pool's start-up, per-worker imports (pyarrow loads pandas on first use: ~0.4 s of CPU per
#: process) and the Arrow IPC hand-over cost more than two cores save on such inputs
INLINE_MAX_ELEMENTS = 250_000
#: rough bytes per tagged element, to estimate an OSM file's work from its size
_OSM_BYTES_PER_ELEMENT = {"pbf": 30, "o5m": 30, "bz2": 30, "gz": 30, "other": 200}


def estimated_elements(kind: str, path: Path | None, source: Any) -> int:
    """A cheap estimate of the number of input elements (decides in-process vs pool)."""
    try:
        if kind == "osm" and path is not None:
            suffix = path.name.lower().rsplit(".", 1)[-1]
            per = _OSM_BYTES_PER_ELEMENT.get(suffix, _OSM_BYTES_PER_ELEMENT["other"])
            return path.stat().st_size // per
        if kind == "features" and path is not None:
            return pq.read_metadata(path).num_rows
        if kind == "geodataframe":
            return len(source)
    except (OSError, pa.ArrowException, TypeError):
        pass
    return INLINE_MAX_ELEMENTS  # unknown: assume big


def worker_count(config: PrepareConfig, estimated_elements: int | None = None) -> int:
    """``config.workers`` if set; else 1 (in-process) for small inputs, else all cores."""
    if config.workers:
        return config.workers
    if estimated_elements is not None and estimated_elements < INLINE_MAX_ELEMENTS:
        return 1
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def make_executor(n: int) -> Executor:
    if n <= 1:
        return InlineExecutor()
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else None)
    pool = ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=die_with_parent,
                               initargs=(os.getpid(),))  # fmt: skip
    # the first submit forks the workers (all at once with "fork"): do it now, before
    # pyosmium's reader threads exist; not waiting lets their warm-up overlap the reading
    pool.submit(os.getpid)
    return pool


def die_with_parent(parent: int) -> None:
    """Pool initializer: a SIGKILLed `prepare` must not leave its workers running.

    On Linux the kernel sends the worker SIGKILL when its parent dies (``PR_SET_PDEATHSIG``);
    elsewhere a daemon thread polls the parent pid. Either way the parent's death ends the worker.
    Workers ignore SIGINT: Ctrl-C reaches the whole process group, and the parent alone decides
    what is kept (it shuts the pool down). SIGTERM ends a worker quietly (the default), not
    through the parent's handler inherited by the fork, which would print a traceback per worker;
    the parent handles it as Ctrl-C. (Ignoring it would hang a broken pool, whose clean-up
    terminates its workers with SIGTERM and joins them.)
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)
            return
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def bounded_map(
    executor: Executor, fn: Callable, items: Iterable, limit: int, *args: Any
) -> Iterator[Any]:
    """Submit ``fn(item, *args)`` keeping at most ``limit`` in flight; yield results in order."""
    pending: list[Future] = []
    for item in items:
        pending.append(executor.submit(fn, item, *args))
        while len(pending) >= limit:
            yield pending.pop(0).result()
    while pending:
        yield pending.pop(0).result()
