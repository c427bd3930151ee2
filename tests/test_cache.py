"""The chunk cache: decoded chunks kept across batches and epochs under ``cache_bytes``. Every
cached read equals the uncached one and zarr-python's; the budget holds under pressure; a
chunk being decoded is waited for; a failed batch leaves no one waiting; workers each have a
cache of their own; ``close()`` frees it."""

from __future__ import annotations

import collections
import math
import os

import numpy as np
import pytest
import torch
from support import (
    FILL,
    INNER,
    LAYOUTS,
    check_batches,
    chunks_touched,
    engine_threads,
    epochs_of,
    reference_crop,
    same_bits,
    write_zarr,
)
from zarr.codecs import ZstdCodec

import lsio_torch
from lsio_torch import _lsio_torch
from lsio_torch.bench.cache import predicted_hit_rate

CROP = (4, 20, 15)
#: A decoded inner chunk of INNER, per byte of element.
CHUNK_ELEMENTS = math.prod(INNER)
POLICIES = ["lru", "clock", "s3fifo"]


def dataset(path, **kw):
    return lsio_torch.ZarrCropDataset(
        path, CROP, batch_size=4, samples_per_epoch=24, seed=3, return_origins=True, **kw
    )


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cached_reads_equal_uncached_reads_and_zarr_python(arrays, layout, policy):
    written = arrays[(layout, "int16")]
    uncached = epochs_of(dataset(written.path, cache_bytes=0), 3)
    # Room for a few chunks: hits, waits and evictions all happen.
    budget = 6 * CHUNK_ELEMENTS * 2
    ds = dataset(written.path, cache_bytes=budget, cache_policy=policy)
    cached = epochs_of(ds, 3)
    assert len(cached) == len(uncached) == 18
    for (a, origins_a), (b, origins_b) in zip(cached, uncached, strict=True):
        assert torch.equal(origins_a, origins_b)
        assert same_bits(a.numpy(), b.numpy())
        check_batches([(a, origins_a)], written.values, CROP)
    s = ds.stats()
    if layout.endswith("-raw"):
        # Local chunks stored as their elements are copies out of the page cache: not kept.
        assert s["cache_hits"] == s["cache_misses"] == s["cache_bytes"] == 0
        return
    assert s["cache_hits"] + s["cache_waits"] > 0
    assert s["cache_evictions"] > 0
    assert 0 < s["cache_bytes"] <= budget


@pytest.mark.parametrize("dtype", ["uint8", "float64"])
def test_a_cache_that_holds_the_array_reads_nothing_again(arrays, dtype):
    written = arrays[("shard-index-end", dtype)]
    ds = dataset(written.path, cache_bytes=written.values.nbytes * 2)
    epochs_of(ds, 3)
    before = ds.stats()
    later = epochs_of(ds, 3)  # the same three epochs again: every chunk is held
    after = ds.stats()
    assert after["bytes_read"] == before["bytes_read"]
    assert after["cache_misses"] == before["cache_misses"]
    assert after["cache_evictions"] == 0
    assert check_batches(later, written.values, CROP) == 72


def test_a_cached_chunk_is_cast_and_normalised_like_a_decoded_one(arrays):
    written = arrays[("shard-index-end", "int16")]
    kw = dict(dtype=torch.float32, mean=3.0, std=2.0)
    uncached = epochs_of(dataset(written.path, cache_bytes=0, **kw), 2)
    ds = dataset(written.path, cache_bytes=1 << 30, **kw)
    cached = epochs_of(ds, 2)
    assert ds.stats()["cache_hits"] > 0  # the second epoch's chunks come from the cache
    for (a, _), (b, _) in zip(cached, uncached, strict=True):
        assert a.dtype == torch.float32
        assert same_bits(a.numpy(), b.numpy())
    batch, origins = cached[-1]
    for got, origin in zip(batch.numpy(), origins.tolist(), strict=True):
        want = (reference_crop(written.values, origin, CROP).astype("float32") - 3.0) / 2.0
        assert np.allclose(got, want, rtol=1e-6, atol=0)


def test_joint_arrays_share_one_cache_without_mixing_their_chunks(arrays):
    # Two arrays of the same layout: the same chunk coordinates, different values.
    a = arrays[("shard-index-end", "int16")]
    b = arrays[("unsharded", "int16")]
    ds = lsio_torch.ZarrCropDataset(
        {"a": a.path, "b": b.path}, CROP, batch_size=4, samples_per_epoch=16, seed=1,
        return_origins=True, cache_bytes=1 << 30,
    )  # fmt: skip
    assert check_batches(epochs_of(ds, 2), {"a": a.values, "b": b.values}, CROP) == 32
    assert ds.stats()["cache_hits"] > 0


def test_chunks_never_written_read_as_fill_with_a_cache(arrays):
    written = arrays[("shard-index-end", "int16")]
    # The last row of shards along axis 0 was never written.
    ds = lsio_torch.ZarrCropDataset(
        written.path, (4, 20, 15), batch_size=2, origins=[(9, 0, 0), (9, 1, 1)] * 4,
        cache_bytes=1 << 30,
    )  # fmt: skip
    for batch in epochs_of(ds, 1):
        assert bool((batch == FILL).all())
    first = ds.stats()
    for batch in epochs_of(ds, 2):
        assert bool((batch == FILL).all())
    s = ds.stats()
    # Known as never written, the chunks are neither looked for again nor held as data.
    assert s["cache_misses"] == first["cache_misses"] > 0
    assert s["files_opened"] == first["files_opened"]
    assert s["cache_bytes"] == 64 * s["cache_chunks"]


def test_close_frees_the_cache_and_the_next_iteration_refills_it(arrays):
    written = arrays[("shard-index-end", "int16")]
    ds = dataset(written.path, cache_bytes=1 << 30)
    epochs_of(ds, 1)
    assert ds.stats()["cache_bytes"] > 0
    ds.close()
    assert ds.stats()["cache_bytes"] == 0
    again = epochs_of(ds, 1)
    assert ds.stats()["cache_bytes"] > 0
    assert check_batches(again, written.values, CROP) == 24


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_workers_each_have_their_own_cache(arrays, method):
    written = arrays[("shard-index-end", "int16")]
    ds = dataset(written.path, cache_bytes=1 << 30)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=2, multiprocessing_context=method,
        persistent_workers=True,
    )  # fmt: skip
    seen = 0
    for epoch in range(2):
        ds.set_epoch(epoch)
        seen += check_batches(loader, written.values, CROP)
    assert seen == 48
    # The workers' caches are theirs: this process's holds nothing.
    assert ds.stats()["cache_bytes"] == 0


def test_a_corrupt_chunk_is_an_error_with_a_cache_and_no_batch_waits_forever(tmp_path):
    values = np.arange(8 * 16 * 16, dtype="int16").reshape(8, 16, 16)
    write_zarr(tmp_path / "a.zarr", values, chunks=(1, 16, 16), compressors=ZstdCodec(level=3))
    (tmp_path / "a.zarr" / "c" / "3" / "0" / "0").write_bytes(b"not zstd at all")
    # Every crop touches chunk 3: later batches wait for the first one's decode of it.
    ds = lsio_torch.ZarrCropDataset(
        tmp_path / "a.zarr", (4, 16, 16), batch_size=1, origins=[(0, 0, 0), (1, 0, 0)] * 8,
        cache_bytes=1 << 20, prefetch=6,
    )  # fmt: skip
    with pytest.raises(lsio_torch.LsioError, match=r"chunk \[3, 0, 0\]"):
        list(ds)
    assert not engine_threads()


def test_an_abandoned_cached_loop_leaves_no_threads(arrays):
    ds = lsio_torch.ZarrCropDataset(
        arrays[("shard-index-end", "int16")].path, CROP, batch_size=2, samples_per_epoch=None,
        cache_bytes=1 << 20,
    )  # fmt: skip
    for _ in range(3):
        it = iter(ds)
        next(it)
        del it
    assert not engine_threads()


@pytest.mark.parametrize("layout", ["shard-index-end", "unsharded-raw"])
def test_remote_epochs_after_the_first_make_no_requests(tmp_path, arrays, object_server, layout):
    import shutil

    written = arrays[(layout, "int16")]
    shutil.copytree(written.path, tmp_path / "a.zarr")
    server = object_server(tmp_path)
    ds = dataset(f"{server.url}/a.zarr", cache_bytes=1 << 30)
    epochs_of(ds, 2)
    requests = server.requests
    assert check_batches(epochs_of(ds, 2), written.values, CROP) == 48
    assert server.requests == requests


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"cache_bytes": -1}, "cache_bytes"),
        ({"cache_bytes": 1.5}, "cache_bytes"),
        ({"cache_bytes": "big"}, 'non-negative integer or "auto"'),
        ({"cache_policy": "arc"}, "cache_policy"),
    ],
)
def test_cache_arguments_are_checked(arrays, kw, message):
    with pytest.raises(ValueError, match=message):
        dataset(arrays[("shard-index-end", "int16")].path, **kw)


def test_the_policy_alone_replays_the_engine_s_lookups():
    # A cache of two chunks, looked up 0 1 | 0 2 | 1 0: LRU hits 0 in the second batch and
    # 0 in the third (1 was evicted by 2).
    hits = _lsio_torch.cache_replay(20, "lru", 10, [[0, 1], [0, 2], [1, 0]])
    assert hits == {"hits": 2, "lookups": 6, "evictions": 2}


def test_the_prediction_follows_the_geometry():
    shape, chunks, crop = (40, 64, 64), (1, 16, 16), (4, 16, 16)
    # Everything fits: every lookup after the first epoch hits.
    assert predicted_hit_rate(shape, chunks, crop, 4, 40 * 16) == 1.0
    assert predicted_hit_rate(shape, chunks, crop, 4, 0) == 0.0
    rates = [predicted_hit_rate(shape, chunks, crop, 4, c) for c in (80, 160, 320)]
    assert rates == sorted(rates) and 0 < rates[0] < rates[-1] < 1


def lru_hit_rate(batches: list[set[tuple[int, ...]]], capacity: int, warm: int) -> float:
    """A textbook LRU of ``capacity`` chunks, looked up once per chunk a batch touches (a
    batch's misses enter once all its chunks are looked up, as decoded chunks enter after
    their batch's lookups): the hit rate over the batches after the first ``warm``. Written
    here, independent of the engine's policies."""
    held: collections.OrderedDict[tuple[int, ...], None] = collections.OrderedDict()
    hits = lookups = 0
    for i, chunks in enumerate(batches):
        missed = []
        for chunk in sorted(chunks):
            if chunk in held:
                held.move_to_end(chunk)
                hits += i >= warm
            else:
                missed.append(chunk)
            lookups += i >= warm
        for chunk in missed:
            held[chunk] = None
            if len(held) > capacity:
                held.popitem(last=False)
    return hits / lookups


def test_the_engine_s_hit_rate_is_bounded_by_textbook_lrus(tmp_path):
    """Under uniform crops, the engine finds chunks in its cache at least as often as an LRU
    of its size looked up batch after batch, and no more often than one that also holds the
    chunks of every batch in flight (LRU's hits only grow with its size); whatever the
    timing, its lookups are exactly the chunks each batch touches, counted from the crops."""
    shape, chunks, crop = (64, 64, 64), (1, 16, 16), (4, 16, 16)
    values = np.random.default_rng(0).integers(0, 100, shape, dtype="int16")
    write_zarr(tmp_path / "a.zarr", values, chunks=chunks, compressors=ZstdCodec(level=1))
    chunk_bytes = math.prod(chunks) * 2
    capacity = math.prod(s // c for s, c in zip(shape, chunks, strict=True)) // 4
    n, batch, epochs, prefetch = 400, 8, 3, 2
    ds = lsio_torch.ZarrCropDataset(
        tmp_path / "a.zarr", crop, batch_size=batch, samples_per_epoch=n, seed=0,
        cache_bytes=capacity * chunk_bytes, cache_policy="lru", return_origins=True,
        prefetch=prefetch,
    )  # fmt: skip
    touched = []
    before = None
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch_values, origins in ds:
            assert same_bits(batch_values[0].numpy(), reference_crop(values, origins[0], crop))
            touched.append(chunks_touched(origins.tolist(), crop, chunks))
        if epoch == 0:
            before = ds.stats()
    after = ds.stats()
    counted = {k: after[k] - before[k] for k in ("cache_hits", "cache_waits", "cache_misses")}
    warm = n // batch
    assert sum(counted.values()) == sum(len(t) for t in touched[warm:])
    measured = (counted["cache_hits"] + counted["cache_waits"]) / sum(counted.values())
    # The consumer's batch, the prefetched ones and the one being planned.
    in_flight = (prefetch + 2) * max(len(t) for t in touched)
    low = lru_hit_rate(touched, capacity, warm)
    high = lru_hit_rate(touched, capacity + in_flight, warm)
    assert 0.1 < low < high < 0.9
    assert low - 0.01 <= measured <= high, (low, measured, high)


def test_the_default_cache_holds_an_array_that_fits_and_reads_nothing_again(arrays):
    written = arrays[("shard-index-end", "int16")]
    ds = dataset(written.path)
    source = ds._sources[0]
    chunks = math.prod(-(-s // c) * c for s, c in zip(written.values.shape, INNER, strict=True))
    assert source.decoded_bytes == chunks * 2
    # An eighth of this machine's memory holds the test array: the budget is its size.
    assert ds.cache_budget() == source.decoded_bytes
    first = epochs_of(ds, 1)
    read = ds.stats()["bytes_read"]
    ds.set_epoch(0)  # (a new iteration is the next epoch otherwise)
    second = list(ds)  # epoch 0 again: every chunk it needs is held
    s = ds.stats()
    assert s["bytes_read"] == read and s["cache_budget"] == source.decoded_bytes
    assert check_batches(first + second, written.values, CROP) == 48


def test_auto_shares_an_eighth_of_memory_among_workers_and_local_ranks(arrays, monkeypatch):
    from lsio_torch import dataset as module

    written = arrays[("shard-index-end", "int16")]
    ds = dataset(written.path)
    decoded = ds._sources[0].decoded_bytes
    limit = decoded * 8  # an eighth of it is the whole array, for one process
    monkeypatch.setattr(module, "_memory_limit", lambda: limit)
    assert ds.cache_budget() == decoded
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert ds.cache_budget() == decoded // 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    budgets = torch.multiprocessing.get_context("fork").Queue()

    def report(_):
        budgets.put(torch.utils.data.get_worker_info().dataset.cache_budget())

    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=2, multiprocessing_context="fork", worker_init_fn=report
    )
    assert sum(len(b) for b, _ in loader) == 24
    assert sorted(budgets.get(timeout=10) for _ in range(2)) == [decoded // 2] * 2
    # Too little memory for anything (a chunk, or a mark of one never written): the default
    # keeps nothing.
    monkeypatch.setattr(module, "_memory_limit", lambda: 8 * 32)
    small = dataset(written.path)
    epochs_of(small, 1)
    assert small.stats()["cache_budget"] == 32
    assert small.stats()["cache_bytes"] == 0


def test_the_memory_limit_is_the_machine_s_or_a_lower_cgroup_s():
    from lsio_torch.dataset import _memory_limit

    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < _memory_limit() <= physical
