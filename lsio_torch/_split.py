"""Which batches of an epoch a process yields, over ranks and DataLoader workers; resuming.

An epoch is a sequence of batches ``0, 1, 2, ...`` (batch ``g`` holds samples
``g * batch_size ...``). Ranks and workers take them in turn: with ``W`` workers per rank,
share ``rank * W + worker`` takes batches ``share, share + world * W, ...``. A DataLoader
yields its workers' batches in turn, so each rank sees its batches in increasing order; a
*position* counts the batches a rank has yielded, which is what a checkpoint records.
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

    def batches(self, total: int | None, start: int = 0) -> Iterator[tuple[int, int]]:
        """``(global batch, position after it)`` for each batch this share yields from rank
        position ``start`` on; ``total`` batches per epoch, ``None`` without end."""
        w, nw = self.worker, self.workers
        j = max(0, -(-(start - w) // nw))  # this worker's first batch at or after `start`
        while True:
            g = j * self.world * nw + self.rank * nw + w
            if total is not None and g >= total:
                return
            yield g, (j + 1) * nw + w
            j += 1


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
