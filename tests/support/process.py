"""The test process itself: the engine's threads, memory, and waiting on a condition."""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any


def engine_threads() -> list[str]:
    """Names of this process's threads that belong to an lsio engine."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                names.append(f.read().strip())
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread exited while we listed, or while we read its name
    return [n for n in names if n.startswith("lsio-")]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def wait_until(condition: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    """Polls ``condition`` until it is true and returns its value; fails after ``timeout``
    seconds. For what ends asynchronously (threads exiting), with a limit no loaded machine
    reaches: a synchronisation, not a speed check."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or condition}")
        threading.Event().wait(0.02)


def epochs_of(ds, epochs: int) -> list[Any]:
    """Every batch of epochs 0 .. ``epochs - 1`` of a dataset, in order."""
    out = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        out.extend(ds)
    return out


@functools.cache
def io_uring_refusal() -> str | None:
    """Why this kernel (or its sandbox) refuses io_uring, or None where it gives a ring.
    Asked in a child process with ``LSIO_IO`` unset, so that this process's choice is not
    fixed by the asking."""
    probe = "import lsio_torch; print(lsio_torch.io_fallback_reason() or '')"
    env = {k: v for k, v in os.environ.items() if k != "LSIO_IO"}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip() or None


@contextlib.contextmanager
def gloo_group(rank: int, world: int, rendezvous: str):
    """A gloo process group for one rank of a ``torch.multiprocessing.spawn`` test. The ranks
    meet at a barrier before it is destroyed: a rank that tears its group down while the other
    still talks to it can abort in gloo's threads (SIGABRT, "terminate called without an
    active exception"). A rank that failed skips the barrier, and the other's waits end after
    the timeout instead of CI's."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()
