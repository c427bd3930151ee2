"""Which epoch each iteration of a dataset yields, in its process and its DataLoader workers.

Each new iteration of a dataset is the next epoch, whoever iterates it: the process itself
(``num_workers=0``) or its DataLoader workers, persistent or started anew for every epoch
under ``fork``, ``spawn`` or ``forkserver``. Workers started anew hold a fresh copy of the
dataset each epoch, so the count cannot live in the copy: it lives in a small file, the
*board*, that the process and its workers share (``flock`` makes each update whole).

The board lists the iterations that began, in order. Iteration ``i`` yields epoch
``base + i``. An iteration is known by a *key* that all its members share and a *member*
name per process taking part: the process itself is the member ``"main"`` under the key
``"main"``; a worker is the member ``"w<id>"`` under the key of its loader's iteration (the
DataLoader's base seed, the same for all workers of one iteration, and constant across the
epochs of persistent workers). A member joins the first iteration of its key that it has not
joined yet, or begins a new one: so the workers of one iteration agree on it whatever order
they start in, and persistent workers move on one iteration per epoch.

``set_epoch(e)`` and ``load_state_dict`` write the board's ``base`` so that the next
iteration to begin yields ``e``. A worker restored by ``StatefulDataLoader`` reserves, when
it loads its state, the iteration its loader restores (its key, its own resume point): the
restored iteration is that epoch whether or not its workers get to run before the loader
moves on to the next one.

A board belongs to one process (and that process's workers): a process that received the
dataset from another (a rank started by ``ddp_spawn``) makes its own before it iterates or
starts workers, carrying on the count.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import weakref
from typing import Any

#: The member name and key of the process's own iterations.
MAIN = "main"


def _folder() -> str:
    """Where boards are kept: memory-backed where the system has it."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return tempfile.gettempdir()


def _remove(path: str, owner: int) -> None:
    if os.getpid() == owner:  # a worker that exits does not take its parent's board along
        with contextlib.suppress(OSError):
            os.unlink(path)


class Board:
    """The shared count of a dataset's iterations (see the module's docstring)."""

    def __init__(self, base: int = 0, resume: int | None = None) -> None:
        self.owner = os.getpid()
        try:
            fd, path = tempfile.mkstemp(prefix="lsio_torch-epochs-", dir=_folder())
        except OSError as e:
            # No folder to share a count in: every use says so (the dataset counts alone).
            self.path, self.error = None, e
            return
        self.path, self.error = path, None
        with os.fdopen(fd, "w") as f:
            json.dump(_fresh(base, resume), f)
        self._finalizer = weakref.finalize(self, _remove, path, self.owner)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "owner": self.owner, "error": self.error}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.owner, self.error = state["path"], state["owner"], state["error"]

    def _update(self, change: Any, write: bool = True) -> Any:
        """Runs ``change(state)`` on the board's state under its lock, writes the state back
        (unless ``write`` is off: a read), and returns what ``change`` returned.

        Raises:
            OSError: the board could not be made, or is gone.
        """
        if self.path is None:
            raise OSError(f"no folder for the epoch count: {self.error}")
        fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW)
        with os.fdopen(fd, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            state = json.load(f)
            out = change(state)
            if not write:
                return out
            f.seek(0)
            f.truncate()
            json.dump(state, f)
            return out

    def next_epoch(self) -> tuple[int, int | None]:
        """The epoch the next iteration to begin yields, and its resume point."""

        def read(state: dict[str, Any]) -> tuple[int, int | None]:
            i = len(state["iterations"])
            resume = state["resume"]
            return state["base"] + i, resume[1] if resume and resume[0] == i else None

        return self._update(read, write=False)

    def current(self) -> int:
        """The epoch of the iteration that began last, or, where none began since the epoch
        was set, the epoch the next one yields."""

        def read(state: dict[str, Any]) -> int:
            begun = len(state["iterations"])
            return state["base"] + (begun - 1 if begun > state["set_at"] else begun)

        return self._update(read, write=False)

    def set_next(self, epoch: int, resume: int | None = None) -> None:
        """Makes the next iteration to begin yield ``epoch``, from ``resume`` (a rank's
        position) when given."""

        def change(state: dict[str, Any]) -> None:
            i = len(state["iterations"])
            state["base"] = epoch - i
            state["resume"] = None if resume is None else [i, resume]
            state["set_at"] = i

        self._update(change)

    def reserve(self, key: str, member: str, epoch: int, position: int) -> None:
        """A restored worker's state: the iteration of ``key`` that no member joined yet (or
        a new one) yields ``epoch``, and ``member`` resumes it from ``position``."""

        def change(state: dict[str, Any]) -> None:
            iterations = state["iterations"]
            i = next(
                (
                    i
                    for i, it in enumerate(iterations)
                    if it["key"] == key and not it["joined"] and it["positions"]
                ),
                None,
            )
            if i is None:
                iterations.append({"key": key, "joined": [], "positions": {}})
                i = len(iterations) - 1
            iterations[i]["positions"][member] = position
            state["base"] = epoch - i
            state["set_at"] = i

        self._update(change)

    def join(self, key: str, member: str) -> tuple[int, int | None]:
        """``member`` begins an iteration of ``key``: its epoch, and where it resumes (a
        position, or ``None`` for the start)."""

        def change(state: dict[str, Any]) -> tuple[int, int | None]:
            iterations = state["iterations"]
            i = next(
                (
                    i
                    for i, it in enumerate(iterations)
                    if it["key"] == key and member not in it["joined"]
                ),
                None,
            )
            if i is None:
                iterations.append({"key": key, "joined": [], "positions": {}})
                i = len(iterations) - 1
            it = iterations[i]
            it["joined"].append(member)
            position = it["positions"].get(member)
            resume = state["resume"]
            if position is None and resume and resume[0] == i:
                position = resume[1]
            return state["base"] + i, position

        return self._update(change)


def _fresh(base: int, resume: int | None) -> dict[str, Any]:
    resume_at = None if resume is None else [0, resume]
    return {"base": base, "resume": resume_at, "iterations": [], "set_at": 0}
