"""The epoch's split over ranks and workers, and resume points (pure arithmetic)."""

from __future__ import annotations

import itertools

from lsio_torch._split import Share


def stream(rank: int, world: int, workers: int, total: int, start: int = 0) -> list[int]:
    """A rank's batches as a DataLoader yields them: worker 0 first, then in turn."""
    parts = [list(Share(rank, world, w, workers).batches(total, start)) for w in range(workers)]
    return [g for row in itertools.zip_longest(*parts) for g, _ in filter(None, row)]


def test_ranks_and_workers_cover_the_epoch_once_in_order():
    for world, workers, total in [(1, 1, 7), (1, 3, 8), (2, 2, 8), (3, 2, 17), (2, 3, 1)]:
        seen = []
        for rank in range(world):
            mine = stream(rank, world, workers, total)
            assert mine == sorted(mine)
            seen += mine
        assert sorted(seen) == list(range(total)), (world, workers, total)


def test_a_rank_sees_the_same_batches_whatever_its_workers():
    for world, total in [(1, 9), (2, 13), (3, 20)]:
        one = stream(world - 1, world, 1, total)
        assert stream(world - 1, world, 2, total) == one
        assert stream(world - 1, world, 3, total) == one


def test_resuming_after_k_batches_yields_the_rest_with_any_number_of_workers():
    for world, workers, total in [(1, 1, 9), (1, 2, 9), (1, 3, 10), (2, 2, 13), (3, 2, 20)]:
        whole = stream(world - 1, world, workers, total)
        for k in range(len(whole) + 1):
            for again in (1, 2, 3):
                resumed = stream(world - 1, world, again, total, k)
                assert resumed == whole[k:], (world, workers, k)


def test_a_workers_resume_point_continues_that_worker():
    share = Share(0, 1, 1, 3)
    batches = list(share.batches(20))
    for i, (_, resume) in enumerate(batches):
        assert [g for g, _ in share.batches(20, resume)] == [g for g, _ in batches[i + 1 :]]
