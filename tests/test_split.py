"""The epoch's split over ranks and workers, and resume points (pure arithmetic)."""

from __future__ import annotations

import itertools

from lsio_torch._split import Share


def stream(
    rank: int, world: int, workers: int, total: int, start: int = 0, length: int | None = None
) -> list[int]:
    """A rank's batches as a DataLoader yields them: worker 0 first, then in turn."""
    parts = [
        list(Share(rank, world, w, workers).batches(total, start, length)) for w in range(workers)
    ]
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


def test_every_rank_runs_as_many_batches_the_short_ones_padded_with_the_first():
    for world, workers, total in [(2, 1, 13), (2, 2, 13), (3, 2, 17), (4, 3, 2), (3, 1, 9)]:
        n = -(-total // world)
        streams = []
        for rank in range(world):
            assert Share(rank, world).length(total) == n
            streams.append(stream(rank, world, workers, total, length=n))
            assert stream(rank, world, 1, total, length=n) == streams[-1]  # whatever its workers
        assert all(len(s) == n for s in streams), (world, workers, total)
        # Every batch once, then the pad: the epoch's first batches, in order.
        ordered = [s[p] for p in range(n) for s in streams]
        assert ordered == list(range(total)) + list(range(n * world - total))


def test_drop_last_cuts_the_epoch_to_a_multiple_of_the_world_size():
    for world, workers, total in [(2, 1, 13), (2, 2, 13), (3, 2, 17), (4, 1, 2)]:
        n = total // world
        streams = [
            stream(r, world, workers, total, length=Share(r, world).length(total, drop_last=True))
            for r in range(world)
        ]
        assert all(len(s) == n for s in streams)
        assert sorted(g for s in streams for g in s) == list(range(n * world))


def test_a_padded_stream_resumes_into_its_pad():
    whole = stream(1, 2, 2, 13, length=7)
    assert whole[-1] == 0  # rank 1's 7th batch: the epoch's first, again
    for k in range(8):
        assert stream(1, 2, 3, 13, k, length=7) == whole[k:]
