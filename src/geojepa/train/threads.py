"""How many torch threads a CPU run uses: the cores that other processes leave idle.

torch's OpenMP threads spin-wait for each other at the end of every parallel op. When another
process holds one of the cores, one of our threads is descheduled in the middle of an op and the
other spins until it comes back: on a shared 2-core machine (load ~5) a ``cpu-small`` step took
1.2-14.6 s with two threads against 0.4-2.1 s with one, every step, not only the first; at load
~11 the first step of ``pretrain`` took 9.7-41.6 s against 2.4-2.7 s (``benchmarks/startup.py``).
``OMP_WAIT_POLICY=PASSIVE`` (0.4-1.7 s) must be set before torch starts and still lost to one
thread. On an idle machine two threads are ~25% faster than one (``train_step-cpu.json``).
Too many threads cost 3-30x, too few ~25%: a run counts the cores that were busy with other
work while it started up, and keeps a core only when others used less than a third of it.

``OMP_NUM_THREADS`` set by the user, or fewer threads set with ``torch.set_num_threads``, are
kept as they are. Linux only (``/proc/stat``); elsewhere torch's default stays.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

#: a core counts as free when other processes use less than this share of it
FREE_BELOW = 1 / 3


@dataclass(frozen=True)
class CoreSample:
    """All cores' busy and total time (``/proc/stat`` ticks), this process's CPU seconds, and
    the wall clock, at one moment."""

    busy_ticks: int
    total_ticks: int
    own_cpu_s: float
    wall_s: float

    @classmethod
    def now(cls, stat: Path = Path("/proc/stat")) -> CoreSample | None:
        """None where ``/proc/stat`` cannot be read (not Linux)."""
        try:
            first = stat.read_text().split("\n", 1)[0].split()
        except OSError:
            return None
        if not first or first[0] != "cpu" or len(first) < 5:
            return None
        ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
        idle = ticks[3] + ticks[4]
        return cls(sum(ticks) - idle, sum(ticks), time.process_time(), time.perf_counter())

    def others_busy(self, later: CoreSample, cores: int) -> float | None:
        """Cores kept busy by other processes between ``self`` and ``later`` (this process's
        own CPU time taken out); None when too little time passed to tell."""
        total = later.total_ticks - self.total_ticks
        wall = later.wall_s - self.wall_s
        if total <= 0 or wall < 0.2:
            return None
        busy = cores * (later.busy_ticks - self.busy_ticks) / total
        own = (later.own_cpu_s - self.own_cpu_s) / wall
        return max(busy - own, 0.0)


def idle_threads(cores: int, others_busy: float, current: int) -> int:
    """Threads for a run: the cores other processes leave free (a core whose use by others is
    below `FREE_BELOW` counts as free), never more than ``current`` and at least one."""
    free = int(cores - others_busy + FREE_BELOW)
    return max(1, min(current, free))


@dataclass(frozen=True)
class ThreadChoice:
    """What `choose_threads` decided, and why (for ``pretrain -v``)."""

    threads: int
    before: int
    reason: str


#: wall seconds of the load sample taken when the start-up was too short to tell (a run
#: started where Lightning was imported already)
SAMPLE_S = 0.25


def choose_threads(since: CoreSample | None) -> ThreadChoice:
    """Set torch's intra-op threads for a CPU run from the load seen since ``since`` (or, when
    that was too short a time, over the next `SAMPLE_S`)."""
    import torch

    before = torch.get_num_threads()
    if os.environ.get("OMP_NUM_THREADS"):
        return ThreadChoice(before, before, "OMP_NUM_THREADS is set")
    cores = os.cpu_count() or 1
    now = CoreSample.now()
    busy = since.others_busy(now, cores) if since is not None and now is not None else None
    if busy is None and now is not None:
        time.sleep(SAMPLE_S)
        later = CoreSample.now()
        busy = now.others_busy(later, cores) if later is not None else None
    if busy is None:
        return ThreadChoice(before, before, "the load of the cores is unknown here")
    threads = idle_threads(cores, busy, before)
    if threads != before:
        torch.set_num_threads(threads)
    return ThreadChoice(threads, before, f"{cores} cores, {busy:.1f} kept busy by other processes")
