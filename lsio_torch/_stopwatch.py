"""Times one run of the bench: its wall seconds, and how busy the machine's cores were
meanwhile (every process's time from ``/proc/stat``: the bench's own threads, DataLoader
workers, the object server, the kernel). A share near 1 says the run was held by the cores,
not by the data path it measured."""

from __future__ import annotations

import time
from pathlib import Path


def cpu_ticks() -> tuple[int, int] | None:
    """(busy, all) clock ticks of every core since boot; None where ``/proc/stat`` is not."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal (guest time is counted within user).
    ticks = [int(v) for v in first[1:9]]
    idle = ticks[3] + ticks[4]
    return sum(ticks) - idle, sum(ticks)


class Stopwatch:
    """``watch = Stopwatch()`` starts; ``watch.stop()`` returns the seconds and keeps the
    share of the cores that were busy, which the bench's table takes once with ``take()``."""

    _last_busy: float | None = None

    def __init__(self) -> None:
        self.ticks = cpu_ticks()
        self.start = time.perf_counter()

    def stop(self) -> float:
        seconds = time.perf_counter() - self.start
        now = cpu_ticks()
        busy = None
        if self.ticks and now and now[1] > self.ticks[1]:
            busy = (now[0] - self.ticks[0]) / (now[1] - self.ticks[1])
        Stopwatch._last_busy = busy
        return seconds

    @staticmethod
    def take() -> float | None:
        """The busy share of the run stopped last, once (None after, until the next)."""
        busy, Stopwatch._last_busy = Stopwatch._last_busy, None
        return busy

    @staticmethod
    def keep(busy: float | None) -> None:
        """Makes ``busy`` the share ``take()`` returns (the best of several runs)."""
        Stopwatch._last_busy = busy
