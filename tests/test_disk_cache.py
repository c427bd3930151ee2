"""The disk cache (``cache_dir=``): a remote array's fetched chunk bytes kept on local disk.
Later epochs, later runs and other processes read them from there, equal bit for bit to
zarr-python; a changed object is fetched anew, never served stale; a corrupt file is detected
and fetched again; the folder stays within its bound."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from support import (
    FILL,
    INNER,
    SHARD,
    check_batches,
    chunks_touched,
    engine_threads,
    flip_bit,
    same_bits,
    write_array,
)

import lsio_torch
from lsio_torch import _lsio_torch

CROP = (4, 20, 15)
#: A shard's index: 16 bytes per inner chunk, and its CRC-32C.
INDEX_BYTES = 16 * math.prod(s // i for s, i in zip(SHARD, INNER, strict=True)) + 4
SHARDED = ["shard-index-end", "shard-index-start", "shard-index-end-raw"]


def dataset(url, cache_dir, **kw):
    # No memory cache (unless asked): every chunk an epoch needs comes from the folder or the store.
    kw = {"batch_size": 4, "samples_per_epoch": 24, "seed": 3, "return_origins": True,
          "cache_bytes": 0, **kw}  # fmt: skip
    return lsio_torch.ZarrCropDataset(url, CROP, cache_dir=cache_dir, **kw)


def check_epochs(ds, values, epochs=(0,)) -> int:
    """Iterates ``epochs`` and checks every crop against zarr-python's values; returns the
    crops read."""
    n = 0
    for epoch in epochs:
        ds.set_epoch(epoch)
        n += check_batches(ds, values, CROP)
    return n


def cached_files(folder: Path) -> list[Path]:
    """The ``.data`` files of the folder: one per object (shard) some of whose chunks it holds."""
    return sorted(folder.rglob("*.data"))


def records(folder: Path) -> int:
    """The chunks the folder's logs record (32 bytes a record)."""
    return sum(f.stat().st_size for f in folder.rglob("*.log")) // 32


def folder_bytes(folder: Path) -> int:
    """What the folder's objects take on disk (holes in ``.data`` files take nothing)."""
    return sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.suffix in (".data", ".log"))


def first_record(log: Path) -> tuple[int, int]:
    """The offset and length of the first chunk a log records."""
    head = log.read_bytes()[:16]
    return int.from_bytes(head[:8], "little"), int.from_bytes(head[8:16], "little")


def served_copy(tmp_path, layout, seed=0):
    """A fresh array in ``tmp_path/served/a.zarr``, and zarr-python's values of it."""
    written = write_array(tmp_path / "served" / "a.zarr", layout, "int16", seed=seed)
    return written.values


@pytest.mark.parametrize("layout", SHARDED)
def test_later_epochs_and_runs_read_chunks_from_disk_and_fetch_only_shard_indexes(
    tmp_path, object_server, layout
):
    values = served_copy(tmp_path, layout)
    server = object_server(tmp_path / "served")
    url, folder = f"{server.url}/a.zarr", tmp_path / "cache"
    ds = dataset(url, folder)
    check_epochs(ds, values)
    first = ds.stats()
    # Later batches of the first epoch find chunks that earlier ones kept; a chunk two
    # batches in flight together both fetched is kept once (or recorded twice).
    assert first["disk_cache_misses"] >= records(folder) >= len(cached_files(folder)) > 0, first
    # What the folder takes, as a process opening it counts it.
    assert _lsio_torch.DiskCache(str(folder), 1 << 30).stats()["disk_cache_bytes"] == (
        folder_bytes(folder)
    )
    reads_per_epoch = first["disk_cache_hits"] + first["disk_cache_misses"]

    # The same crops again, in this run and in a new one (a restart): only shard indexes
    # are fetched, each chunk read from the folder.
    for again in (ds, dataset(url, folder)):
        before = len(server.log)
        seen = again.stats()
        check_epochs(again, values)
        index_ranges = {f"bytes=-{INDEX_BYTES}", f"bytes=0-{INDEX_BYTES - 1}"}
        asked = [entry[2] for entry in server.log[before:]]
        assert asked and set(asked) <= index_ranges, asked
        s = again.stats()
        assert s["disk_cache_hits"] - seen["disk_cache_hits"] == reads_per_epoch, s
        assert s["disk_cache_misses"] == seen["disk_cache_misses"], s
        assert s["disk_cache_corrupt"] == 0
    assert not engine_threads()


@pytest.mark.parametrize("layout", ["unsharded", "unsharded-raw"])
def test_chunks_that_are_objects_of_their_own_are_fetched_once_a_run(
    tmp_path, object_server, layout
):
    # No index tells such a chunk's version before it is fetched; the answer does, and later
    # epochs of the run read the folder's copy of that version.
    values = served_copy(tmp_path, layout)
    server = object_server(tmp_path / "served")
    url, folder = f"{server.url}/a.zarr", tmp_path / "cache"
    ds = dataset(url, folder)
    check_epochs(ds, values)
    first = ds.stats()
    assert first["disk_cache_misses"] > 0 and records(folder) > 0, first
    reads_per_epoch = first["disk_cache_hits"] + first["disk_cache_misses"]
    before = len(server.log)
    check_epochs(ds, values)
    # Nothing fetched (chunks never written are asked for each epoch: 404, their fill value).
    assert [entry for entry in server.log[before:] if entry[3] != 404] == []
    s = ds.stats()
    assert s["disk_cache_hits"] - first["disk_cache_hits"] == reads_per_epoch, s
    assert s["disk_cache_misses"] == first["disk_cache_misses"], s
    # A new run knows no version: it fetches each chunk once again (a changed object is
    # never served from an older copy), then reads the folder.
    again = dataset(url, folder)
    check_epochs(again, values)
    s = again.stats()
    # Each object fetched at least once (a later batch of the epoch may find a chunk an
    # earlier one fetched: a hit).
    assert s["disk_cache_misses"] >= len(cached_files(folder)) > 0, s
    assert s["disk_cache_hits"] + s["disk_cache_misses"] == reads_per_epoch, s
    changed = served_copy(tmp_path, layout, seed=9)
    assert not same_bits(changed, values)
    check_epochs(dataset(url, folder), changed)


def test_through_s3_a_second_epoch_reads_from_disk(tmp_path, s3):
    written = write_array(tmp_path / "a.zarr", "shard-index-end", "int16", seed=5)
    url = s3.upload(written.path, "disk-cache", "a.zarr")
    ds = dataset(url, tmp_path / "cache", storage_options=s3.storage_options)
    check_epochs(ds, written.values)
    first = ds.stats()
    assert first["disk_cache_misses"] > 0, first
    check_epochs(ds, written.values)
    s = ds.stats()
    assert s["disk_cache_misses"] == first["disk_cache_misses"], s
    reads = first["disk_cache_hits"] + first["disk_cache_misses"]
    assert s["disk_cache_hits"] - first["disk_cache_hits"] == reads, s


def test_a_changed_object_is_never_served_from_the_folder(tmp_path, object_server):
    values = served_copy(tmp_path, "shard-index-end", seed=1)
    server = object_server(tmp_path / "served")
    url, folder = f"{server.url}/a.zarr", tmp_path / "cache"
    ds = dataset(url, folder)
    check_epochs(ds, values)
    kept = len(cached_files(folder))
    # Rewritten with other values: every shard is a new object (a new ETag), so every chunk
    # is fetched again, and the crops are the new values.
    changed = served_copy(tmp_path, "shard-index-end", seed=2)
    assert not same_bits(changed, values)
    misses = ds.stats()["disk_cache_misses"]
    check_epochs(ds, changed)
    assert ds.stats()["disk_cache_misses"] - misses >= kept
    assert len(cached_files(folder)) == 2 * kept


def test_a_changed_object_in_s3_is_never_served_from_the_folder(tmp_path, s3):
    first = write_array(tmp_path / "one.zarr", "shard-index-start", "int16", seed=3)
    url = s3.upload(first.path, "disk-cache", "changing.zarr")
    folder = tmp_path / "cache"
    ds = dataset(url, folder, storage_options=s3.storage_options)
    check_epochs(ds, first.values)
    second = write_array(tmp_path / "two.zarr", "shard-index-start", "int16", seed=4)
    s3.upload(second.path, "disk-cache", "changing.zarr")
    misses = ds.stats()["disk_cache_misses"]
    check_epochs(ds, second.values)
    assert ds.stats()["disk_cache_misses"] > misses


@pytest.mark.parametrize("damage", ["flip", "truncate", "log"])
def test_a_corrupt_file_is_detected_and_its_chunk_fetched_again(tmp_path, object_server, damage):
    values = served_copy(tmp_path, "shard-index-end")
    server = object_server(tmp_path / "served")
    url, folder = f"{server.url}/a.zarr", tmp_path / "cache"
    check_epochs(dataset(url, folder), values)
    files = cached_files(folder)
    for path in files:
        log = path.with_suffix(".log")
        offset, length = first_record(log)
        if damage == "flip":  # a bit of a chunk's bytes
            flip_bit(path, offset + length // 2)
        elif damage == "truncate":  # the object's bytes cut inside its first chunk
            os.truncate(path, offset + length // 2)
        else:  # a record damaged: it is skipped
            flip_bit(log, 3, 0x01)
    ds = dataset(url, folder)
    check_epochs(ds, values)
    s = ds.stats()
    # Chunks read and refused (a batch planned while another refetched the chunk may refuse
    # it too); a damaged record is not even tried.
    if damage == "log":
        assert s["disk_cache_corrupt"] == 0, s
    else:
        assert s["disk_cache_corrupt"] >= len(files), s
    assert s["disk_cache_misses"] >= len(files), s
    # Fetched again and kept again, whole: the next run reads them all from the folder.
    ds = dataset(url, folder)
    check_epochs(ds, values)
    s = ds.stats()
    assert s["disk_cache_hits"] > 0, s
    assert (s["disk_cache_misses"], s["disk_cache_corrupt"]) == (0, 0), s


def test_the_folder_stays_within_its_bound(tmp_path, object_server):
    values = served_copy(tmp_path, "shard-index-end")
    server = object_server(tmp_path / "served")
    url = f"{server.url}/a.zarr"
    whole = tmp_path / "whole"
    check_epochs(dataset(url, whole, samples_per_epoch=96), values)
    everything = folder_bytes(whole)
    bound = everything // 3
    folder = tmp_path / "bounded"
    ds = dataset(url, folder, samples_per_epoch=96, cache_dir_bytes=bound)
    check_epochs(ds, values, epochs=(0, 1, 2))
    held = folder_bytes(folder)
    s = ds.stats()
    assert 0 < held <= bound, (held, bound)
    assert s["disk_cache_evictions"] > 0 and s["disk_cache_bytes"] <= bound, s
    assert s["disk_cache_hits"] > 0, s


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_workers_share_one_folder(tmp_path, object_server, method):
    values = served_copy(tmp_path, "shard-index-end")
    server = object_server(tmp_path / "served")
    url, folder = f"{server.url}/a.zarr", tmp_path / "cache"
    ds = dataset(url, folder, samples_per_epoch=48)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=2, multiprocessing_context=method
    )
    for _ in range(2):
        assert check_batches(loader, values, CROP) == 48
    # What the workers wrote is whole: this process reads every chunk from the folder.
    check_epochs(ds, values)
    s = ds.stats()
    assert s["disk_cache_hits"] > 0 and s["disk_cache_misses"] == 0, s
    assert s["disk_cache_corrupt"] == 0
    assert not list(folder.rglob("*.tmp.*"))


def test_with_the_memory_cache_both_levels_agree(tmp_path, object_server):
    values = served_copy(tmp_path, "shard-index-end-raw")
    server = object_server(tmp_path / "served")
    url, folder = f"{server.url}/a.zarr", tmp_path / "cache"
    check_epochs(dataset(url, folder), values)
    ds = dataset(url, folder, cache_bytes=1 << 30)
    check_epochs(ds, values, epochs=(0, 0, 0))
    s = ds.stats()
    assert s["disk_cache_hits"] > 0 and s["disk_cache_misses"] == 0, s
    assert s["cache_hits"] > 0, s


def test_a_local_array_ignores_cache_dir(tmp_path):
    written = write_array(tmp_path / "a.zarr", "shard-index-end", "int16")
    folder = tmp_path / "cache"
    ds = dataset(written.path, folder)
    check_epochs(ds, written.values)
    assert cached_files(folder) == []
    assert ds.stats()["disk_cache_misses"] == 0


def test_cache_dir_arguments_are_checked(tmp_path, object_server):
    with pytest.raises(ValueError, match="cache_dir_bytes"):
        lsio_torch.ZarrCropDataset(
            write_array(tmp_path / "a.zarr", "unsharded", "int16").path,
            CROP,
            cache_dir=tmp_path / "c",
            cache_dir_bytes=-1,
        )
    in_the_way = tmp_path / "a-file"
    in_the_way.write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="a-file"):
        dataset(f"{object_server(tmp_path).url}/a.zarr", in_the_way)
    with pytest.raises(ValueError, match=r"cache_dir .*a-file: not a folder"):
        _lsio_torch.DiskCache(str(in_the_way), 1 << 20)


def test_the_disk_cache_counts_what_it_holds(tmp_path):
    cache = _lsio_torch.DiskCache(str(tmp_path / "c"), 1 << 20)
    assert cache.max_bytes == 1 << 20 and Path(cache.path) == tmp_path / "c"
    assert cache.stats() == {
        "disk_cache_hits": 0,
        "disk_cache_misses": 0,
        "disk_cache_bytes_read": 0,
        "disk_cache_bytes_written": 0,
        "disk_cache_evictions": 0,
        "disk_cache_corrupt": 0,
        "disk_cache_write_errors": 0,
        "disk_cache_foreign": 0,
        "disk_cache_bytes": 0,
    }


def test_a_filled_folder_counts_its_blocks_and_what_was_written(tmp_path, object_server):
    """After an epoch, the folder holds what its files take on disk (counted here from their
    blocks), and one record per stored chunk the crops touched (counted with numpy)."""
    values = served_copy(tmp_path, "shard-index-end")
    url, folder = f"{object_server(tmp_path / 'served').url}/a.zarr", tmp_path / "cache"
    ds = dataset(url, folder)
    batches = list(ds)
    assert check_batches(batches, values, CROP) == 24
    # The chunks stored (not all fill) that the crops touch, counted with numpy.
    touched = set().union(*(chunks_touched(o.tolist(), CROP, INNER) for _, o in batches))
    stored = {
        chunk
        for chunk in touched
        if (
            values[tuple(slice(i * c, (i + 1) * c) for i, c in zip(chunk, INNER, strict=True))]
            != FILL
        ).any()
    }
    s = ds.stats()
    # Counted as written from the growth of each file's blocks (the file system may still
    # settle them), then exactly by the scan a new cache of the folder makes.
    assert s["disk_cache_bytes"] > 0
    rescanned = _lsio_torch.DiskCache(str(folder), 1 << 30).stats()
    assert rescanned["disk_cache_bytes"] == folder_bytes(folder) > 0
    # Each stored chunk is recorded at its offset in its shard's file (two batches in flight
    # may both fetch and record one chunk: the same offset twice).
    recorded = set()
    for log in folder.rglob("*.log"):
        data = log.read_bytes()
        recorded.update(
            (log, int.from_bytes(data[i : i + 8], "little")) for i in range(0, len(data), 32)
        )
    assert len(recorded) == len(stored)
    assert len(stored) <= records(folder) <= s["disk_cache_misses"]
    # What was written is the chunks the records name, each as long as its record says.
    lengths = 0
    for log in folder.rglob("*.log"):
        data = log.read_bytes()
        lengths += sum(
            int.from_bytes(data[i + 8 : i + 16], "little") for i in range(0, len(data), 32)
        )
    assert s["disk_cache_bytes_written"] == lengths > 0
