"""The engine's contract with its host process: backends, fork safety, errors, lifecycle."""

from __future__ import annotations

import multiprocessing
import os
import shutil

import numpy as np
import pytest
import torch
import zarr
from support import (
    FILL,
    INNER,
    check_crops,
    cut_file,
    engine_threads,
    io_uring_refusal,
    junk_head,
    reference_crop,
    rewrite_shard_index,
    same_bits,
    shard_index,
    wait_until,
    write_array,
)

import lsio_torch


def test_default_backend_is_io_uring_and_lsio_io_switches(arrays, monkeypatch):
    if (refused := io_uring_refusal()) is not None:
        pytest.skip(f"io_uring is refused here: {refused}")
    monkeypatch.delenv("LSIO_IO", raising=False)
    assert lsio_torch.io_backend() == "io_uring", lsio_torch.io_fallback_reason()
    assert lsio_torch.io_fallback_reason() is None
    monkeypatch.setenv("LSIO_IO", "pread")
    assert lsio_torch.io_backend() == "pread"
    written = arrays[("shard-index-end", "int16")]
    out = lsio_torch.read_crops(written.path, [(1, 2, 3)], (4, 5, 6))
    assert same_bits(out[0].numpy(), reference_crop(written.values, (1, 2, 3), (4, 5, 6)))
    monkeypatch.setenv("LSIO_IO", "uring")
    assert lsio_torch.io_backend() == "io_uring"
    monkeypatch.setenv("LSIO_IO", "mmap")
    with pytest.raises(ValueError, match="LSIO_IO=mmap"):
        lsio_torch.io_backend()


def _iterate_in_child(ds, queue):
    try:
        queue.put(("ok", [b.numpy().tobytes() for b in ds]))
    except Exception as e:  # reported to the parent, which fails the test
        queue.put(("error", repr(e)))


def test_dataset_made_before_fork_iterates_in_the_child(arrays):
    written = arrays[("shard-index-start", "uint16")]
    ds = lsio_torch.ZarrCropDataset(written.path, (2, 9, 9), batch_size=3, samples_per_epoch=9)
    assert engine_threads() == []  # constructing starts no thread
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_iterate_in_child, args=(ds, queue))
    child.start()
    status, batches = queue.get(timeout=60)
    child.join(timeout=60)
    assert status == "ok", batches
    assert child.exitcode == 0
    mine = list(ds)
    assert len(batches) == 3
    assert batches == [b.numpy().tobytes() for b in mine]


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nowhere.zarr"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.zarr"):
        lsio_torch.ZarrCropDataset(missing, (1,))
    with pytest.raises(FileNotFoundError, match=r"nowhere\.zarr"):
        lsio_torch.read_crops(missing, [(0,)], (1,))


def test_crop_larger_than_the_array_names_path_and_dimension(arrays):
    written = arrays[("unsharded", "uint8")]
    with pytest.raises(
        ValueError, match=r"unsharded-uint8.zarr: crop .* larger .*dimension 1: 51 > 50"
    ):
        lsio_torch.ZarrCropDataset(written.path, (1, 51, 1))
    with pytest.raises(ValueError, match=r"crop \(1, 1\) has 2 dimensions, the array .* has 3"):
        lsio_torch.read_crops(written.path, [(0, 0)], (1, 1))


def test_origin_outside_the_array_is_an_index_error(arrays):
    written = arrays[("unsharded", "uint8")]
    with pytest.raises(IndexError, match=r"crop 1 at origin \[0, 41, 0\]"):
        lsio_torch.read_crops(written.path, [(0, 0, 0), (0, 41, 0)], (1, 10, 1))
    with pytest.raises(IndexError, match="negative"):
        lsio_torch.read_crops(written.path, [(-1, 0, 0)], (1, 10, 1))


@pytest.mark.parametrize("layout", ["unsharded", "shard-index-end"])
def test_corrupt_chunk_is_an_error_naming_file_and_chunk(tmp_path, layout, backend):
    written = write_array(tmp_path / "a.zarr", layout, "int16")
    junk_head(written.path / "c/0/0/0")  # the first (inner) chunk's zstd frame header
    with pytest.raises(lsio_torch.LsioError, match=r"c/0/0/0: corrupt chunk \[0, 0, 0\]"):
        lsio_torch.read_crops(written.path, [(0, 0, 0)], (2, 2, 2))
    ds = lsio_torch.ZarrCropDataset(written.path, (13, 50, 37), batch_size=1, samples_per_epoch=2)
    with pytest.raises(lsio_torch.LsioError, match="corrupt"):
        list(torch.utils.data.DataLoader(ds, batch_size=None))


def test_truncated_chunk_is_an_error_not_zeros(tmp_path, backend):
    written = write_array(tmp_path / "a.zarr", "unsharded", "float32")
    cut_file(written.path / "c/1/0/0", 20)
    with pytest.raises(lsio_torch.LsioError, match=r"c/1/0/0: corrupt chunk \[1, 0, 0\]: zstd"):
        lsio_torch.read_crops(written.path, [(4, 0, 0)], (2, 2, 2))


@pytest.mark.parametrize("layout", ["unsharded-raw", "shard-index-end-raw"])
def test_truncated_uncompressed_chunk_is_an_error_not_zeros(tmp_path, backend, layout):
    written = write_array(tmp_path / "a.zarr", layout, "float32")
    if layout == "unsharded-raw":
        cut_file(written.path / "c/1/0/0", 20)
        where = r"c/1/0/0: corrupt chunk \[1, 0, 0\]"
    else:  # an inner chunk's slot made shorter in the shard index

        def shorter(index):
            index[0, 1] -= 8  # the first inner chunk's length

        rewrite_shard_index(written.path / "c/0/0/0", 8, shorter)
        where = r"c/0/0/0: corrupt chunk \[0, 0, 0\]"
    with pytest.raises(lsio_torch.LsioError, match=where + ".*uncompressed chunk of"):
        lsio_torch.read_crops(written.path, [(4, 0, 0), (0, 0, 0)], (2, 2, 2))


def test_truncated_shard_is_an_error_not_zeros(tmp_path, backend):
    written = write_array(tmp_path / "a.zarr", "shard-index-end", "int16")
    cut_file(written.path / "c/0/0/0", 50)
    with pytest.raises(lsio_torch.LsioError, match=r"c/0/0/0: corrupt shard index"):
        lsio_torch.read_crops(written.path, [(0, 0, 0)], (2, 2, 2))


@pytest.mark.parametrize("io_threads", [0, 2])
def test_chunk_cut_short_in_a_read_of_adjacent_chunks_is_named(tmp_path, backend, io_threads):
    """Adjacent chunks of a shard are read in one request; when that request fails, the error
    names the chunk at fault, not the first of the run (read by a decode thread, or by an
    I/O thread)."""
    written = write_array(tmp_path / "a.zarr", "shard-index-end", "int16")
    shard = written.path / "c/0/0/0"
    index = shard_index(shard, 8).reshape(2, 2, 2, 2)
    written_slots = [(c, *index[c]) for c in np.ndindex(2, 2, 2) if index[c][0] != 2**64 - 1]
    last, offset, length = max(written_slots, key=lambda slot: slot[1])
    first_chunk = [(0, 0, 0)] * 8
    every_chunk = [(4 * t, 16 * y, 10 * x) for t, y, x in np.ndindex(2, 2, 2)]
    ds = lsio_torch.ZarrCropDataset(
        written.path, (4, 16, 10), batch_size=8, prefetch=1, io_threads=io_threads,
        origins=first_chunk + first_chunk + every_chunk,
    )  # fmt: skip
    batches = iter(ds)
    next(batches)  # the shard index is read and kept
    os.truncate(shard, offset + length // 2)  # cuts the last chunk in the file, in place
    next(batches)  # submitted before the cut
    with pytest.raises(
        lsio_torch.LsioError, match=rf"c/0/0/0: reading chunk \[{', '.join(map(str, last))}\]"
    ):
        next(batches)
    # One request for the first chunk in each of the first two batches; fewer requests than
    # chunks in the third.
    assert ds.stats()["reads"] < 2 + len(written_slots)


def test_corrupt_chunk_with_io_threads_is_named_and_threads_exit(tmp_path, backend):
    """A chunk that does not decode (found on a decode thread, after an I/O thread read it)
    is an error naming it, as without I/O threads; and the engine's threads all exit."""
    written = write_array(tmp_path / "a.zarr", "unsharded", "int16")
    junk_head(written.path / "c/0/0/0")  # the zstd frame header
    ds = lsio_torch.ZarrCropDataset(
        written.path, (4, 16, 10), batch_size=4, io_threads=1, threads=2,
        origins=[(4, 0, 0)] * 4 + [(0, 0, 0)] * 4,
    )  # fmt: skip
    batches = iter(ds)
    assert same_bits(next(batches)[0].numpy(), written.values[4:8, :16, :10])
    with pytest.raises(lsio_torch.LsioError, match=r"c/0/0/0: corrupt chunk \[0, 0, 0\]"):
        next(batches)
    del batches
    ds.close()
    assert engine_threads() == []


def test_io_threads_must_be_a_non_negative_integer(arrays):
    written = arrays[("unsharded", "int16")]
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="io_threads must be a non-negative integer"):
            lsio_torch.ZarrCropDataset(written.path, (2, 2, 2), io_threads=bad)


def test_chunks_deleted_mid_run_read_as_old_values_or_fill_never_garbage(tmp_path):
    """A store whose chunk files are deleted while a loop runs: each crop (one whole chunk)
    is either what was there (its file was open before) or the fill value, as zarr-python
    reads a missing chunk; never an error, a mix or garbage. The next epoch opens the files
    again and reads what zarr-python reads now: the fill value everywhere."""
    written = write_array(tmp_path / "a.zarr", "unsharded", "int16")
    origins = [(t, y, x) for t in (0, 4) for y in (0, 16, 32) for x in (0, 10, 20)]
    ds = lsio_torch.ZarrCropDataset(
        written.path, INNER, batch_size=2, origins=origins * 3, return_origins=True,
        prefetch=1, cache_bytes=0,
    )  # fmt: skip
    batches = iter(ds)
    first, first_origins = next(batches)
    check_crops(first, first_origins, written.values, INNER)
    shutil.rmtree(written.path / "c")
    fill = np.full(INNER, FILL, dtype="int16")
    kinds = set()
    for batch, at in batches:
        for got, origin in zip(batch.numpy(), at.tolist(), strict=True):
            old = reference_crop(written.values, origin, INNER)
            kinds.add("fill" if same_bits(got, fill) else "old" if same_bits(got, old) else "bad")
    assert "bad" not in kinds and "fill" in kinds, kinds
    assert (zarr.open_array(written.path)[...] == FILL).all()
    ds.set_epoch(1)
    for batch, _ in ds:
        assert (batch == FILL).all()


def test_abandoned_loops_leave_no_threads_or_files(arrays):
    written = arrays[("shard-index-end", "float32")]
    fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        ds = lsio_torch.ZarrCropDataset(written.path, (2, 8, 8), batch_size=4, threads=2)
        it = iter(ds)
        next(it)
        assert engine_threads() != []
        del it  # abandon mid-stream: the generator's finally closes the engine
    # rayon workers leave asynchronously after their pool is dropped.
    wait_until(lambda: not engine_threads(), what="the engine threads exit")
    assert len(os.listdir("/proc/self/fd")) <= fds_before


@pytest.mark.parametrize("workers", [0, 2])
def test_pinned_batches_copy_to_cuda_correctly(arrays, workers):
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine: pinned memory needs it")
    written = arrays[("shard-index-start", "float32")]
    ds = lsio_torch.ZarrCropDataset(
        written.path, (3, 20, 17), batch_size=8, samples_per_epoch=64, return_origins=True
    )
    # In workers the dataset does not pin (CUDA cannot start in a forked child): the
    # DataLoader's own pin_memory does.
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=workers, pin_memory=workers > 0
    )
    n = 0
    for batch, origins in loader:
        assert batch.is_pinned()
        on_gpu = batch.to("cuda", non_blocking=True)
        torch.cuda.synchronize()
        for got, origin in zip(on_gpu.cpu(), origins, strict=True):
            assert same_bits(
                got.numpy(), reference_crop(written.values, origin.tolist(), (3, 20, 17))
            )
            n += 1
    assert n == 64
