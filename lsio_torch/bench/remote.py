"""The object-store half of ``python -m lsio_torch.bench --store http``: the standard datasets
served by the project's object server in a process of its own, with a first-byte latency and
a per-connection bandwidth injected, and every system reading the same crops from it.

Systems:
  lsio         ZarrCropDataset on the http:// URL (``max_requests`` from ``--max-requests``)
  zarr         zarr-python 3 on obstore's HTTPStore, a batch's crops read by threads at once
               (``async.concurrency`` the best of ``--concurrency``)
  zarrs        the same with the zarrs codec pipeline
  tensorstore  tensorstore's http kvstore, all crops of a batch in flight at once
  xbatcher     xbatcher's BatchGenerator over xarray (dask chunks from zarr-python on obstore's
               HTTPStore), its torch MapDataset in a DataLoader with a worker per core: what
               training scripts run today. Its crops come from its own grid (see
               ``XbatcherCrops``), each touching as many chunks as a random crop does
  disk         lsio_torch with ``cache_dir``: epoch 1 from the server into an empty folder,
               epoch 2 (other crops) with the folder holding what epoch 1 fetched, and epoch
               2's crops read from the local files the server serves (the local-disk rate)
  get          the GET bound: the requests lsio_torch makes (its chunk ranges, merged as it
               merges them; shard indexes left out), fetched by obstore at the best of
               ``--concurrency``, nothing decoded
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from lsio_torch._stopwatch import Stopwatch
from lsio_torch.dataset import ZarrCropDataset


class ServedFolder:
    """The object server over ``root`` in a child process; ``url`` while it runs."""

    def __init__(self, root: Path, latency_ms: float, bandwidth: float | None) -> None:
        command = [sys.executable, "-m", "lsio_torch.bench.server", str(root)]
        command += ["--latency-ms", str(latency_ms)]
        if bandwidth:
            command += ["--bandwidth", str(bandwidth)]
        # The server reads its standard input until it ends: when this process dies, so does
        # it.
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        line = self.process.stdout.readline().strip() if self.process.stdout else ""
        if not line.startswith("http://"):
            self.close()
            raise RuntimeError(f"the object server did not start: {line!r}")
        self.url = line

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)

    def __enter__(self) -> ServedFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def regions(origins, crop) -> list[tuple[slice, ...]]:
    return [tuple(slice(o, o + c) for o, c in zip(origin, crop, strict=True)) for origin in origins]


def run_lsio(url, crop, batches, threads, max_requests, options, consume) -> float:
    n = sum(len(b) for b in batches)
    ds = ZarrCropDataset(
        url, crop, batch_size=len(batches[0]), samples_per_epoch=n, seed=0, threads=threads,
        max_requests=max_requests, storage_options=options, cache_bytes=0,
    )  # fmt: skip
    return consume(torch.utils.data.DataLoader(ds, batch_size=None), "lsio_torch", n)


def evict_from_page_cache(root: Path) -> None:
    """Drops the pages of every file under ``root`` from the page cache (no root needed), so
    that the next read comes from the disk and the kernel's readahead fills the cache again,
    as it does for files not written moments ago."""
    for f in root.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def run_lsio_disk_cache(
    url, local: Path, crop, n, batch, threads, options, consume, folder: Path, repeats=2
) -> tuple[float, dict[str, float], dict]:
    """lsio_torch with ``cache_dir=folder`` (emptied first), as a training run meets it: the
    seconds of epoch 1 (from the server); of epoch 2 (other crops; the folder holds what
    epoch 1 fetched) and of epoch 2's crops read from the local files, each twice: as they
    are (the folder just written by epoch 1, the local files as the bench left them), then
    each read from the disk again into the page cache (evicted first). Each pair alternates
    ``repeats`` times, the best of each kept. Also the disk cache's counters over the first
    epoch-2 run."""
    shutil.rmtree(folder, ignore_errors=True)
    kw = {"batch_size": batch, "samples_per_epoch": n, "seed": 0, "threads": threads,
          "cache_bytes": 0}  # fmt: skip
    remote = ZarrCropDataset(url, crop, cache_dir=folder, storage_options=options, **kw)
    local_ds = ZarrCropDataset(str(local), crop, **kw)

    def epoch(ds, e, label) -> float:
        ds.set_epoch(e)
        return consume(torch.utils.data.DataLoader(ds, batch_size=None), label, n)

    try:
        first = epoch(remote, 0, "lsio_torch, cache_dir, epoch 1")
        seconds: dict[str, list[float]] = {}
        counters: dict = {}
        for state in ("as written", "read from disk"):
            if state == "read from disk":
                evict_from_page_cache(folder)
                evict_from_page_cache(local)
            for _ in range(repeats):
                before = remote.stats()
                s = epoch(remote, 1, f"lsio_torch, cache_dir, epoch 2, {state}")
                seconds.setdefault(f"cache_dir, {state}", []).append(s)
                after = remote.stats()
                s = epoch(local_ds, 1, f"lsio_torch, local files, {state}")
                seconds.setdefault(f"local, {state}", []).append(s)
                counters = counters or {
                    k: after[k] - before[k] for k in after if k.startswith("disk_cache_")
                }
        return first, {k: min(v) for k, v in seconds.items()}, counters
    finally:
        remote.close()
        local_ds.close()
        shutil.rmtree(folder, ignore_errors=True)


def _batches_read(read_batch: Callable, batches, label, touch, progress) -> float:
    total = sum(len(b) for b in batches)
    done = 0
    watch = Stopwatch()
    for group in batches:
        tensor = read_batch(group)
        touch(tensor)
        done += len(group)
        progress(label, done, total)
    return watch.stop()


def run_zarr(url, crop, batches, concurrency, label, touch, progress, pipeline=None) -> float:
    import obstore.store
    import zarr

    config = {"async.concurrency": concurrency}
    if pipeline:
        config["codec_pipeline.path"] = pipeline
    with zarr.config.set(config):
        store = zarr.storage.ObjectStore(
            obstore.store.HTTPStore.from_url(url, client_options={"allow_http": True}),
            read_only=True,
        )
        array = zarr.open_array(store, mode="r")
        with ThreadPoolExecutor(len(batches[0])) as pool:

            def read_batch(group):
                crops = list(pool.map(lambda r: array[r], regions(group, crop)))
                return torch.from_numpy(np.stack(crops))

            return _batches_read(read_batch, batches, label, touch, progress)


def run_tensorstore(url, crop, batches, v3: bool, label, touch, progress) -> float:
    import tensorstore as ts

    store = ts.open(
        {"driver": "zarr3" if v3 else "zarr", "kvstore": {"driver": "http", "base_url": url}},
        read=True,
    ).result()

    def read_batch(group):
        futures = [store[r].read() for r in regions(group, crop)]
        return torch.from_numpy(np.stack([f.result() for f in futures]))

    return _batches_read(read_batch, batches, label, touch, progress)


class XbatcherCrops(torch.utils.data.Dataset):
    """``n`` patches of xbatcher's grid over the array at ``url``, drawn at random (seed 0),
    through xbatcher's torch ``MapDataset``. xbatcher cuts patches on a regular grid, not at
    given origins; the grid starts one element in and strides half a crop and one, so that a
    patch, like a random crop, straddles chunk edges rather than lining up with them. Each
    worker opens the array itself (lazily), as it would under any start method."""

    def __init__(self, url: str, shape, crop, n: int) -> None:
        self.url, self.crop = url, tuple(crop)
        self.start = tuple(1 if s > c else 0 for s, c in zip(shape, crop, strict=True))
        self.stride = tuple(c // 2 + 1 for c in crop)
        self.per_dim = [
            (s - o - c) // t + 1
            for s, o, c, t in zip(shape, self.start, crop, self.stride, strict=True)
        ]
        self.patches = int(np.prod(self.per_dim))
        self.indexes = np.random.default_rng(0).choice(self.patches, n, replace=False).tolist()
        self.map = None

    def origins(self) -> list[tuple[int, ...]]:
        """The origins of the chosen patches in the array (C order over xbatcher's grid)."""
        return [
            tuple(
                int(o + i * t)
                for o, i, t in zip(
                    self.start, np.unravel_index(k, self.per_dim), self.stride, strict=True
                )
            )
            for k in self.indexes
        ]

    def __len__(self) -> int:
        return len(self.indexes)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.map is None:
            self.map = self._open()
        return self.map[self.indexes[i]]

    def _open(self):
        import dask.array
        import obstore.store
        import xarray as xr
        import xbatcher
        import zarr
        from xbatcher.loaders.torch import MapDataset

        store = zarr.storage.ObjectStore(
            obstore.store.HTTPStore.from_url(self.url, client_options={"allow_http": True}),
            read_only=True,
        )
        array = zarr.open_array(store, mode="r")
        dims = [f"d{i}" for i in range(array.ndim)]
        data = xr.DataArray(dask.array.from_zarr(array), dims=dims)
        data = data.isel({d: slice(o, None) for d, o in zip(dims, self.start, strict=True)})
        generator = xbatcher.BatchGenerator(
            data,
            input_dims=dict(zip(dims, self.crop, strict=True)),
            input_overlap={d: c - t for d, c, t in zip(dims, self.crop, self.stride, strict=True)},
        )
        if len(generator) != self.patches:
            raise RuntimeError(f"xbatcher made {len(generator)} patches, not {self.patches}")
        return MapDataset(generator)


def chunks_touched(origins, crop, chunks) -> float:
    """The mean number of chunks (of shape ``chunks``) a crop at each origin touches."""
    o = np.asarray(origins)
    last = o + np.asarray(crop) - 1
    return float(np.prod(last // chunks - o // chunks + 1, axis=1).mean())


class _WarmFirst:
    """A DataLoader's batch sampler: one batch per worker first (each worker starts, imports
    and opens the array), then every batch."""

    def __init__(self, n: int, batch: int, workers: int) -> None:
        self.batches = [list(range(i, min(i + batch, n))) for i in range(0, n, batch)]
        self.warm = self.batches[:workers]

    def __iter__(self):
        batches, self.warm = (self.warm or self.batches), None
        return iter(batches)

    def __len__(self) -> int:
        return len(self.warm or self.batches)


def run_xbatcher(url, shape, crop, n, batch, workers, chunks, consume) -> tuple[float, str]:
    """xbatcher's crops in a DataLoader of ``workers`` spawned workers, timed once they are
    up. Spawned, not forked: the bench has run obstore's runtime and zarr-python's event loop
    in this process, and a forked worker that reads through them hangs."""
    crops = XbatcherCrops(url, shape, crop, n)
    sampler = _WarmFirst(n, batch, workers)
    loader = torch.utils.data.DataLoader(
        crops, batch_sampler=sampler, num_workers=workers, multiprocessing_context="spawn",
        persistent_workers=True,
    )  # fmt: skip
    for tensor in loader:
        tensor.sum()
    seconds = consume(loader, "xbatcher", n)
    touched = chunks_touched(crops.origins(), crop, chunks)
    return seconds, f"{workers} spawned workers; {touched:.2f} chunks a crop"


def run_get_bound(server_url, root: Path, ranges: Sequence, concurrency: int) -> float:
    """Fetches every ``(path, offset, length)`` of ``ranges`` (all batches'), ``concurrency``
    at a time, with obstore; returns the seconds."""
    import obstore
    import obstore.store

    store = obstore.store.HTTPStore.from_url(server_url, client_options={"allow_http": True})
    keys = [(str(Path(p).relative_to(root)), o, n) for batch in ranges for p, o, n in batch]

    async def fetch_all() -> None:
        limit = asyncio.Semaphore(concurrency)

        async def one(key, offset, length):
            async with limit:
                await obstore.get_range_async(store, key, start=offset, length=length)

        await asyncio.gather(*(one(*k) for k in keys))

    watch = Stopwatch()
    asyncio.run(fetch_all())
    return watch.stop()
