"""Starting and stopping: abandoned loops, exceptions, Ctrl-C, many epochs; and what a
dataset tells about itself (stats, repr), and that it pickles."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from support import chunks_touched, engine_threads, rss_bytes, smooth_field, write_zarr
from torch.utils.data import DataLoader

import lsio_torch


def threads_and_fds() -> set[str]:
    """This process's threads and open files (a file by descriptor and target)."""
    found = {f"thread {t}" for t in os.listdir("/proc/self/task")}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own, closed again
            found.add(f"fd {fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
    return found


def settled(baseline: set[str], seconds: float = 30.0) -> set[str]:
    """What this process has that `baseline` did not, once that is nothing or time is up."""
    deadline = time.monotonic() + seconds
    while (extra := threads_and_fds() - baseline) and time.monotonic() < deadline:
        time.sleep(0.05)
    return extra


class StepFailed(Exception):
    pass


def _train_until_it_fails(ds) -> None:
    for i, _ in enumerate(ds):
        if i == 1:
            raise StepFailed("the training step failed")


def _abandon(path, way: int, io_threads: int = 0) -> None:
    """Starts an iteration and leaves it one of five ways."""
    ds = lsio_torch.ZarrCropDataset(path, (2, 8, 8), batch_size=4, threads=2, io_threads=io_threads)
    if way == 0:  # break out of the loop
        for i, _ in enumerate(ds):
            if i == 2:
                break
    elif way == 1:  # drop the iterator mid-stream
        it = iter(ds)
        next(it)
        del it
    elif way == 2:  # an exception in the training step, caught further up
        with pytest.raises(StepFailed):
            _train_until_it_fails(ds)
    elif way == 3:  # close() stops iterations still referenced
        it = iter(ds)
        next(it)
        assert engine_threads() != []
        ds.close()
        assert engine_threads() == []
        with pytest.raises(StopIteration):
            next(it)
    else:  # a DataLoader with a worker process, abandoned
        loader_it = iter(DataLoader(ds, batch_size=None, num_workers=1))
        next(loader_it)
        del loader_it


def test_200_abandoned_iterations_leave_no_thread_or_file(arrays):
    written = arrays[("shard-index-end", "float32")]
    for way in range(5):  # whatever torch starts once per process, started before counting
        _abandon(written.path, way)
    baseline = threads_and_fds()
    for cycle in range(200):
        _abandon(written.path, cycle % 5, io_threads=cycle // 5 % 2)  # each way, each stage
        assert engine_threads() == [], cycle
    # Threads of other tests may end meanwhile; none may be added. The DataLoader's own queue
    # feeder thread and pipes close asynchronously after its workers are joined: give them
    # a moment.
    assert settled(baseline) == set()


def test_ctrl_c_while_waiting_for_a_batch_stops_the_engine(arrays):
    written = arrays[("unsharded", "float64")]
    ds = lsio_torch.ZarrCropDataset(written.path, (13, 50, 37), batch_size=64, threads=1)
    before = threads_and_fds()
    main = threading.get_ident()
    timer = threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT))
    # An interrupt lost anyway fails the test below instead of leaving it looping for ever.
    watchdog = threading.Timer(120, signal.pthread_kill, (main, signal.SIGINT))
    # Ctrl-C raises KeyboardInterrupt, as in a terminal, even where this process was started
    # with SIGINT ignored (a background job of a script: Python then installs no handler).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        started = time.monotonic()
        timer.start()
        watchdog.start()
        with pytest.raises(KeyboardInterrupt):
            for _ in ds:  # endless: only the signal stops it
                pass
        elapsed = time.monotonic() - started
        watchdog.cancel()
    finally:
        signal.signal(signal.SIGINT, previous)
    # It ends within a wait slice of the signal; 120 s would be the watchdog's (a lost signal).
    assert elapsed < 60, f"the first interrupt was lost: stopped after {elapsed:.0f} s"
    timer.join()
    watchdog.join()
    assert engine_threads() == []
    assert threads_and_fds() - before == set()


def test_memory_is_flat_over_20_epochs(tmp_path):
    values = smooth_field((32, 256, 256), "int16", 0)
    write_zarr(tmp_path / "a.zarr", values, chunks=(1, 64, 64), shards=(8, 256, 256))
    ds = lsio_torch.ZarrCropDataset(
        tmp_path / "a.zarr", (4, 96, 96), batch_size=16, samples_per_epoch=256, dtype=torch.float32
    )
    rss = []
    for epoch in range(20):
        ds.set_epoch(epoch)
        for batch in ds:
            assert batch.shape == (16, 4, 96, 96)
        rss.append(rss_bytes())
    assert max(rss) <= 1.10 * rss[0], [f"{r / 2**20:.0f} MiB" for r in rss]


def test_stats_count_what_was_read_and_decoded(tmp_path):
    values = smooth_field((6, 40, 40), "uint16", 0)
    write_zarr(tmp_path / "a.zarr", values, chunks=(2, 10, 10))
    ds = lsio_torch.ZarrCropDataset(
        tmp_path / "a.zarr", (3, 12, 12), batch_size=4, samples_per_epoch=20, seed=3,
        cache_bytes=0, return_origins=True,
    )  # fmt: skip
    assert ds.stats()["batches"] == 0
    origins = [o.tolist() for _, o in ds]
    stats = ds.stats()
    assert stats["batches"] == 5
    # Counted here from the crops and the files on disk: each batch reads and decodes each
    # chunk its crops touch once (one chunk file, read whole).
    touched_chunks = [chunks_touched(batch, (3, 12, 12), (2, 10, 10)) for batch in origins]
    chunk_file = tmp_path / "a.zarr" / "c" / "{}" / "{}" / "{}"
    assert stats["chunks_decoded"] == sum(len(c) for c in touched_chunks)
    assert stats["reads"] == sum(len(c) for c in touched_chunks)
    assert stats["bytes_read"] == sum(
        Path(str(chunk_file).format(*chunk)).stat().st_size for c in touched_chunks for chunk in c
    )
    # Each chunk file is opened once for the iteration, however many batches read it.
    distinct = set().union(*touched_chunks)
    assert len(distinct) < stats["reads"]
    assert stats["files_opened"] == len(distinct)
    # The consumer waits for the first batch (its files are read after it asks); the engine
    # waits for a consumer once its queue of batches is full or the epoch is planned.
    assert stats["consumer_wait_s"] > 0 and stats["engine_wait_s"] > 0
    assert stats["backend"] == lsio_torch.io_backend()


@pytest.mark.parametrize(
    "dtype", ["bool", "int8", "uint16", "uint32", "uint64", "int64", "float16", "complex64"]
)
def test_batches_are_engine_memory_reused_once_freed(tmp_path, dtype):
    """Batches that are not pinned are the engine's own memory (through DLPack), of every
    element type; a freed batch's memory carries a later batch, and a batch kept past the end
    of its iteration stays valid."""
    if dtype == "bool":
        values = smooth_field((12, 20, 16), "float32", 3) > 0
    elif dtype == "complex64":
        values = smooth_field((12, 20, 16), "float32", 3) * (1 - 2j)
    else:
        values = smooth_field((12, 20, 16), dtype, 3)
    write_zarr(tmp_path / "a.zarr", values.astype(dtype), chunks=(2, 8, 8))
    crop = (3, 8, 5)
    ds = lsio_torch.ZarrCropDataset(
        tmp_path / "a.zarr", crop, batch_size=4, samples_per_epoch=40, return_origins=True,
        pin_memory=False,
    )  # fmt: skip
    pointers, kept = [], None
    for batch, origins in DataLoader(ds, batch_size=None):
        for got, origin in zip(batch, origins, strict=True):
            region = tuple(slice(o, o + c) for o, c in zip(origin.tolist(), crop, strict=True))
            assert np.array_equal(got.numpy(), values.astype(dtype)[region])
        pointers.append(batch.data_ptr())
        kept = (batch.clone(), batch) if kept is None else kept
    assert len(pointers) == 10
    assert len(set(pointers)) <= 5, "the memory of freed batches carries later ones"
    ds.close()
    assert torch.equal(kept[0], kept[1]), "a batch outlives its iteration"


def test_batch_memory_is_kept_from_one_epoch_to_the_next_and_freed_by_close(tmp_path):
    """A later epoch's batches reuse the memory of an earlier one's (one mapping per array of
    a batch, for a dataset of several arrays), instead of faulting in new pages; ``close``
    lets it go."""
    values = smooth_field((12, 20, 16), "int16", 4)
    for name in ("a", "b"):
        write_zarr(tmp_path / f"{name}.zarr", values, chunks=(2, 8, 8))
    arrays = {name: tmp_path / f"{name}.zarr" for name in ("a", "b")}
    ds = lsio_torch.ZarrCropDataset(
        arrays, (3, 8, 5), batch_size=4, samples_per_epoch=16, pin_memory=False
    )
    seen = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        seen.append({t.data_ptr() for batch in ds for t in batch.values()})
    assert seen[1] <= seen[0], "epoch 1's batches are in epoch 0's memory"
    assert ds._pool.idle > 0
    pool = ds._pool
    ds.close()
    assert pool.idle == 0


def test_the_batch_pool_keeps_the_memory_of_every_batch_in_flight(tmp_path):
    """With ``prefetch`` batches ahead (8 by default for object stores), the pool keeps the
    mappings of all of them, not of a fixed few: otherwise every later epoch maps and faults
    in fresh pages for the batches past those few (over HTTP, later epochs ran at half the
    speed of local ones from the same chunk cache)."""
    values = smooth_field((12, 20, 16), "int16", 4)
    for name in ("a", "b"):
        write_zarr(tmp_path / f"{name}.zarr", values, chunks=(2, 8, 8))
    arrays = {name: tmp_path / f"{name}.zarr" for name in ("a", "b")}
    ds = lsio_torch.ZarrCropDataset(
        arrays, (3, 8, 5), batch_size=2, samples_per_epoch=48, prefetch=8, pin_memory=False
    )
    for epoch in range(2):
        ds.set_epoch(epoch)
        assert sum(1 for _ in ds) == 24
    # More than a fixed 4 batches' per array: up to prefetch + 3 (those in flight).
    assert 2 * 4 < ds._pool.idle <= 2 * (8 + 3), ds._pool.idle
    ds.close()


def test_repr_shows_arrays_shapes_dtypes_chunking_and_crop(arrays):
    written = arrays[("shard-index-start", "int16")]
    ds = lsio_torch.ZarrCropDataset(
        {"a": written.path, "b": written.path}, (2, 8, 8), dtype={"b": torch.float16}
    )
    text = repr(ds)
    assert (
        f"a: '{written.path}' v3 (13, 50, 37) int16, chunks=(4, 16, 10), shards=(8, 32, 20)" in text
    )
    assert "b: " in text and "int16 -> float16" in text
    assert "crop=(2, 8, 8)" in text and "seed=0" in text


def test_a_pickled_dataset_yields_the_same_batches(arrays):
    written = arrays[("shard-index-end", "uint8")]
    valid = np.array([True, False] * 6 + [True])
    ds = lsio_torch.ZarrCropDataset(
        written.path, (1, 8, 8), valid=valid, batch_size=3, samples_per_epoch=9, seed=9
    )
    ds.set_epoch(3)
    again = pickle.loads(pickle.dumps(ds))
    assert all(torch.equal(a, b) for a, b in zip(ds, again, strict=True))


_FEW_DESCRIPTORS = """
import os, resource, sys
import numpy as np, zarr
import lsio_torch

path, limit = sys.argv[1], int(sys.argv[2])
values = zarr.open_array(path, mode="r")[...]
ds = lsio_torch.ZarrCropDataset(path, (2, 4, 4), batch_size=1, samples_per_epoch=300, seed=1,
                                return_origins=True)
resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + limit,
                                            resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
for crops, origins in ds:
    t, y, x = origins[0].tolist()
    assert np.array_equal(crops[0].numpy(), values[t:t + 2, y:y + 4, x:x + 4])
"""


def test_out_of_file_descriptors_the_open_files_are_closed_and_reading_goes_on(tmp_path):
    """Files stay open between batches, up to 64 per array; where the process may not have
    that many, the engine closes the ones it keeps and goes on (in a subprocess, whose
    descriptor limit is lowered)."""
    values = smooth_field((8, 24, 24), "int16", 5)
    # 4 x 6 x 6 = 144 chunk files; a crop touches at most 2 x 2 x 2 = 8 of them.
    write_zarr(tmp_path / "a.zarr", values, chunks=(2, 4, 4))
    script = tmp_path / "few.py"
    script.write_text(_FEW_DESCRIPTORS)
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "a.zarr"), "40"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
