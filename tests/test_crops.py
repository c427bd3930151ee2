"""Every crop equals zarr-python's read of the same region, bit for bit."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from support import (
    DTYPES,
    FILL,
    LAYOUTS,
    check_batches,
    check_crops,
    crop_origins,
    cut_file,
    engine_threads,
    same_bits,
    smooth_field,
    write_zarr,
)

import lsio_torch

CROPS = [(4, 16, 10), (5, 23, 11), (13, 50, 37), (1, 1, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_read_crops_equal_zarr_python(arrays, layout, dtype, backend):
    written = arrays[(layout, dtype)]
    checked = 0
    for k, crop in enumerate(CROPS):
        origins = crop_origins(written.values.shape, crop, n=8, seed=k)
        out = lsio_torch.read_crops(written.path, origins, crop)
        assert out.shape == (len(origins), *crop)
        assert out.dtype == getattr(torch, dtype)
        checked += check_crops(out, origins, written.values, crop)
    assert checked == 32


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fill_value_where_nothing_was_written(arrays, layout):
    written = arrays[(layout, "int16")]
    # An empty shard slot (or missing chunk file), and a region of never-written shards.
    out = lsio_torch.read_crops(written.path, [(0, 16, 0), (9, 0, 0)], (4, 16, 10))
    assert (out == 7).all()
    chunks = written.path / "c"
    if layout.startswith("unsharded"):
        assert not (chunks / "0/1/0").exists() and not (chunks / "2/0/0").exists()
        assert (chunks / "0/0/0").exists()
    else:
        assert not (chunks / "1/0/0").exists() and (chunks / "0/0/0").exists()
        # The shard's index marks inner chunk (0, 1, 0) -- position 2 of 2x2x2 -- as empty.
        shard = (chunks / "0/0/0").read_bytes()
        index_len = 8 * 16 + 4
        raw = shard[-index_len:] if layout.startswith("shard-index-end") else shard[:index_len]
        entries = np.frombuffer(raw[:-4], dtype="<u8").reshape(8, 2)
        assert (entries[2] == 2**64 - 1).all() and (entries[0] != 2**64 - 1).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dataset_in_a_dataloader_equals_zarr_python(arrays, layout, dtype, backend):
    written = arrays[(layout, dtype)]
    crop = (3, 20, 17)
    ds = lsio_torch.ZarrCropDataset(
        written.path, crop, batch_size=8, samples_per_epoch=44, seed=3, return_origins=True
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=None)
    seen = 0
    for batch, origins in loader:
        assert batch.dtype == getattr(torch, dtype) and origins.dtype == torch.int64
        seen += check_crops(batch, origins.tolist(), written.values, crop)
    assert seen == 44
    assert lsio_torch.io_backend() == backend


def test_crops_cover_edges(arrays):
    """The sampler reaches the last valid origin in every dimension."""
    written = arrays[("unsharded", "uint8")]
    crop = (10, 40, 30)
    ds = lsio_torch.ZarrCropDataset(
        written.path, crop, batch_size=50, samples_per_epoch=400, return_origins=True
    )
    origins = torch.cat([o for _, o in ds])
    assert origins.min(0).values.tolist() == [0, 0, 0]
    assert origins.max(0).values.tolist() == [3, 10, 7]


def test_same_seed_same_batches_new_epoch_new_batches(arrays):
    written = arrays[("shard-index-end", "int16")]
    make = lambda: lsio_torch.ZarrCropDataset(  # noqa: E731
        written.path, (2, 8, 8), batch_size=4, samples_per_epoch=12, seed=11, threads=2
    )
    a, b = make(), make()
    b.threads = 1
    first = [t.clone() for t in a]
    assert all(torch.equal(x, y) for x, y in zip(first, b, strict=True))
    a.set_epoch(1)
    assert not all(torch.equal(x, y) for x, y in zip(first, a, strict=True))
    assert [t.shape[0] for t in first] == [4, 4, 4]


def test_last_batch_is_partial_and_len_counts_batches(arrays):
    written = arrays[("unsharded", "int32")]
    ds = lsio_torch.ZarrCropDataset(written.path, (1, 5, 5), batch_size=4, samples_per_epoch=10)
    assert len(ds) == 3
    assert [b.shape[0] for b in ds] == [4, 4, 2]


def test_endless_stream_keeps_going(arrays):
    written = arrays[("unsharded", "uint16")]
    ds = lsio_torch.ZarrCropDataset(written.path, (2, 2, 2), batch_size=2)
    it = iter(ds)
    batches = [next(it) for _ in range(25)]
    assert all(b.shape == (2, 2, 2, 2) for b in batches)
    with pytest.raises(TypeError, match="endless"):
        len(ds)


def test_zarr_python_reads_back_what_numpy_wrote_for_every_fixture(arrays):
    """Guards the fixture: the reference (zarr-python's read) is the numpy array written,
    so a test that compares with it compares with the data, not with a reader's mistake."""
    for written in arrays.values():
        assert same_bits(written.values, written.source), (written.layout, written.dtype)
        assert (written.source[8:] == FILL).all()  # the band never written reads as fill


@pytest.mark.parametrize("compressors", ["auto", None], ids=["zstd", "raw"])
@pytest.mark.parametrize("sharded", [False, True])
def test_chunks_that_fill_a_run_of_the_crop_decode_straight_into_it(
    tmp_path, sharded, compressors, backend
):
    """Chunks spanning the trailing dimensions are each one contiguous run of a crop: the
    engine decodes them straight into the batch (and the rest through scratch). Stored
    uncompressed, a chunk whose piece is one run is read straight into the batch even when
    the piece is only part of the chunk."""
    values = (np.arange(9 * 6 * 5, dtype="int32").reshape(9, 6, 5) * 7) % 1000
    values[3] = -1  # a missing chunk: the fill value
    kwargs = {"shards": (3, 6, 5)} if sharded else {}
    write_zarr(
        tmp_path / "a.zarr", values, chunks=(1, 6, 5), fill_value=-1, compressors=compressors,
        **kwargs,
    )  # fmt: skip
    origins = [(i, 0, 0) for i in range(7)] + [(2, 1, 1)]
    out = lsio_torch.read_crops(tmp_path / "a.zarr", origins[:7], (3, 6, 5))
    assert check_crops(out, origins[:7], values, (3, 6, 5)) == 7
    partial = lsio_torch.read_crops(tmp_path / "a.zarr", [origins[7]], (3, 5, 4))
    assert check_crops(partial, [origins[7]], values, (3, 5, 4)) == 1
    rows = lsio_torch.read_crops(tmp_path / "a.zarr", [(1, 2, 0), (5, 0, 0)], (3, 3, 5))
    assert check_crops(rows, [(1, 2, 0), (5, 0, 0)], values, (3, 3, 5)) == 2


def _direct_io_allowed(path) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("layout", LAYOUTS)
def test_direct_io_reads_equal_zarr_python(arrays, layout, backend):
    """With ``direct_io=True`` chunks are read with O_DIRECT, rounded out to the alignment the
    file system asks for; the tail of a file, which a rounded read would pass, through the
    page cache. Same bytes either way."""
    written = arrays[(layout, "int16")]
    if not _direct_io_allowed(next(p for p in written.path.rglob("*") if p.is_file())):
        pytest.skip("this file system refuses O_DIRECT")
    crop = (3, 20, 17)
    ds = lsio_torch.ZarrCropDataset(
        written.path, crop, batch_size=8, samples_per_epoch=44, seed=5, return_origins=True,
        direct_io=True,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(ds, batch_size=None)
    assert check_batches(loader, written.values, crop) == 44
    # Some small files may refuse it (ext4 keeps them inside the inode): those are read
    # through the page cache.
    assert 0 < ds.stats()["files_direct"] <= ds.stats()["files_opened"]


@pytest.mark.parametrize("io_threads", [1, 2])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_io_threads_read_equal_zarr_python(arrays, layout, io_threads, backend):
    """With ``io_threads`` the chunks are read by threads that only read and decoded by the
    others, a group at a time in a fixed set of buffers: the same crops, fill values included,
    for any thread count."""
    written = arrays[(layout, "int16")]
    crop = (5, 23, 11)
    ds = lsio_torch.ZarrCropDataset(
        written.path, crop, batch_size=8, samples_per_epoch=60, seed=3, return_origins=True,
        threads=2, io_threads=io_threads, prefetch=3,
    )  # fmt: skip
    seen, readers = 0, set()
    for batch, origins in torch.utils.data.DataLoader(ds, batch_size=None):
        readers.update(n for n in engine_threads() if n.startswith("lsio-io-"))
        seen += check_crops(batch, origins.tolist(), written.values, crop)
    assert seen == 60
    assert readers == {f"lsio-io-{i}" for i in range(io_threads)}
    assert engine_threads() == []


def test_large_zstd_chunks_decode_as_far_as_the_crops_need(tmp_path, backend):
    """Chunks of 1 MiB are several zstd blocks: a crop near a chunk's top is decoded from its
    first blocks only, and still equals zarr-python's read; a chunk cut short is an error
    even for such a crop."""
    values = smooth_field((3, 512, 512), "float32", 9)
    write_zarr(tmp_path / "a.zarr", values, chunks=(1, 512, 512))
    crop = (2, 40, 64)
    origins = [(0, 0, 0), (1, 3, 400), (0, 100, 17), (1, 472, 448), (0, 250, 250)]
    out = lsio_torch.read_crops(tmp_path / "a.zarr", origins, crop)
    assert check_crops(out, origins, values, crop) == 5
    cut_file(tmp_path / "a.zarr" / "c" / "1" / "0" / "0", 30)
    with pytest.raises(lsio_torch.LsioError, match=r"c/1/0/0: corrupt chunk \[1, 0, 0\]: zstd"):
        lsio_torch.read_crops(tmp_path / "a.zarr", [(0, 0, 0)], crop)
