"""Which batches of an epoch a process yields, over ranks and DataLoader workers; resuming.

An epoch is a sequence of batches ``0, 1, 2, ...`` (batch ``g`` holds samples
``g * batch_size ...``). Ranks take them in turn (rank ``r`` of ``R``: batches ``r, r + R,
...``, its *stream*), and a rank's DataLoader workers take turns along its stream. A
DataLoader asks its workers in turn, so each rank yields its stream in order whatever its
number of workers; a *position* in the stream is what a checkpoint records.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import get_worker_info


@dataclass(frozen=True)
class Share:
    """One process's part of an epoch."""

    rank: int = 0
    world: int = 1
    worker: int = 0
    workers: int = 1
    #: In a DataLoader worker process (which must not pin memory).
    in_worker: bool = False

    def length(self, total: int, drop_last: bool = False) -> int:
        """Batches in this rank's stream of an epoch of ``total``: the same on every rank,
        as ``DistributedSampler`` makes it: the epoch padded with batches from its start, or
        with ``drop_last`` cut to a multiple of the world size."""
        return total // self.world if drop_last else -(-total // self.world)

    def batches(
        self, total: int | None, start: int = 0, length: int | None = None
    ) -> Iterator[tuple[int, int]]:
        """``(global batch, resume point after it)`` for each batch this share yields, from
        rank position ``start`` on; ``total`` batches per epoch, ``None`` without end; the
        rank's stream ``length`` positions long (by default, the epoch's batches that fall to
        it: :meth:`length` pads). A position past the epoch's last batch wraps around to its
        first ones.

        Worker ``w`` takes positions ``start + w, start + w + workers, ...``, so a DataLoader
        (which asks worker 0 first) yields positions ``start, start + 1, ...`` in order. The
        resume point is the ``start`` from which this worker would take its next position.
        """
        if total is not None and length is None:
            length = len(range(self.rank, total, self.world))
        w, nw = self.worker, self.workers
        p = start + w
        while length is None or p < length:
            g = p * self.world + self.rank
            if total is not None:
                if total == 0:
                    return
                g %= total
            yield g, p + nw - w
            p += nw


def current_share(
    rank: int | None, world_size: int | None, inherited: tuple[int, int] | None
) -> Share:
    """This process's share: ranks from the arguments, else the process group, else what the
    process that pickled the dataset saw (DataLoader workers under spawn); workers from
    ``get_worker_info``."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            found = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            found = inherited or (0, 1)
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in range for world_size {world_size}")
    info = get_worker_info()
    if info is None:
        return Share(rank, world_size)
    return Share(rank, world_size, info.id, info.num_workers, in_worker=True)
