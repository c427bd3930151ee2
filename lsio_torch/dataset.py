"""The torch-facing side: `ZarrCropDataset` and `read_crops`.

Python decides *which* crops and allocates the output tensors; the Rust engine reads,
decodes, casts and writes every byte of them with the GIL released.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from lsio_torch import _lsio_torch
from lsio_torch._epochs import MAIN, Board
from lsio_torch._layout import build_layout
from lsio_torch._sources import (
    TORCH_DTYPES,
    Source,
    as_int,
    crop_shape,
    integer_rows,
    per_key,
    place,
    start_engine,
)
from lsio_torch._split import current_share

log = logging.getLogger("lsio_torch")

__all__ = ["TORCH_DTYPES", "ZarrCropDataset", "read_crops"]

#: What `ZarrCropDataset.stats` counts.
_COUNTERS = (
    "batches",
    "bytes_read",
    "chunks_decoded",
    "reads",
    "files_opened",
    "files_direct",
    "consumer_wait_s",
    "engine_wait_s",
)


#: The chunk cache's eviction policies, and the default.
CACHE_POLICIES = ("lru", "clock", "s3fifo")
DEFAULT_CACHE_POLICY = "clock"
#: ``cache_bytes="auto"`` keeps at most this share of the machine's (or the container's)
#: memory, split among the processes that each hold a cache (DataLoader workers, local ranks).
AUTO_CACHE_MEMORY_SHARE = 1 / 8
_EMPTY_CACHE_STATS = dict.fromkeys(
    (
        "cache_hits",
        "cache_waits",
        "cache_misses",
        "cache_evictions",
        "cache_bytes",
        "cache_chunks",
    ),
    0,
)


_EMPTY_DISK_CACHE_STATS = dict.fromkeys(
    (
        "disk_cache_hits",
        "disk_cache_misses",
        "disk_cache_bytes_read",
        "disk_cache_bytes_written",
        "disk_cache_evictions",
        "disk_cache_corrupt",
        "disk_cache_write_errors",
        "disk_cache_foreign",
        "disk_cache_bytes",
    ),
    0,
)


_FOREIGN_WARNED: set[str] = set()


def _warn_foreign_once(folder: str, foreign: int) -> None:
    """Says once per process and folder that files in ``cache_dir`` were not trusted."""
    if foreign and folder not in _FOREIGN_WARNED:
        _FOREIGN_WARNED.add(folder)
        log.warning(
            "cache_dir %s: %d cache file(s) owned by another user, writable by others or "
            "symlinked were ignored (neither read nor written); their chunks came from the "
            "store",
            folder,
            foreign,
        )


def _existing(path: str) -> str:
    """``path``, or the nearest folder above it that exists."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _log_backend_once() -> None:
    """Says once per process when io_uring could not be used."""
    reason = _lsio_torch.io_fallback_reason()
    if reason is not None:
        _warn_once(
            "backend", "lsio_torch: io_uring unavailable (%s); reading with pread threads", reason
        )


#: What this process has warned about, each once.
_warned: set[Any] = set()


def _warn_once(what: Any, message: str, *args: Any) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning(message, *args)


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _positive(name: str, value: int | None, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


#: More engine or I/O threads than this is a mistake, not a configuration.
_MAX_THREADS = 1024


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None


def _check_batch_memory(batch_bytes: int, batches: int, what: str) -> None:
    """Refuses, before anything is allocated, ``batches`` batches of ``batch_bytes`` that
    could never be in memory at once."""
    memory = _physical_memory()
    if memory is not None and batch_bytes * batches > memory:
        raise ValueError(
            f"{what}: {batches} batches of {batch_bytes} bytes in memory at once "
            f"({batch_bytes * batches} bytes) exceed this machine's {memory} bytes"
        )


def _thread_count(name: str, value: int | None, *, allow_zero: bool = False) -> int | None:
    if value is None:
        return None
    checked = _non_negative(name, value) if allow_zero else _positive(name, value)
    if checked > _MAX_THREADS:
        raise ValueError(f"{name} must be at most {_MAX_THREADS}, got {value!r}")
    return checked


def _memory_limit() -> int:
    """Bytes of memory this process may use: the machine's, or its cgroup's limit where that
    is lower (a container's)."""
    limit = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    folders = ["/sys/fs/cgroup"]
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    folders.append("/sys/fs/cgroup" + line[3:].strip())
    except OSError:
        pass
    files = [f"{d}/memory.max" for d in folders]
    files.append("/sys/fs/cgroup/memory/memory.limit_in_bytes")  # cgroup v1
    for name in files:
        try:
            with open(name) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            limit = min(limit, int(text))
    return limit


def _local_ranks() -> int:
    """The ranks on this machine, as torchrun says (``LOCAL_WORLD_SIZE``); 1 when unsaid."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _non_negative(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _batch_tensor(
    engine: _lsio_torch.Engine, part: int, shape: tuple[int, ...], dtype: torch.dtype, pin: bool
) -> torch.Tensor:
    """A batch's output: pinned by torch, or else the engine's own memory, which it reuses
    for later batches once this tensor is freed (a fresh ``torch.empty`` per batch fragments
    the heap epoch by epoch, or faults in zeroed pages every batch)."""
    if pin:
        return torch.empty(shape, dtype=dtype, pin_memory=True)
    return torch.from_dlpack(engine.batch_memory(part, list(shape)))


def _dtype(value: Any) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype):
        return getattr(torch, value)
    raise ValueError(f"dtype must be a torch.dtype or its name, got {value!r}")


def _origins_tensor(origins: Any, ndim: int) -> torch.Tensor:
    return torch.from_numpy(integer_rows(origins, ndim, "origins"))


def _valid_starts(valid: Any, shape: tuple[int, ...]) -> list[list[int]]:
    """``valid`` as a list of allowed starts of the leading dimensions: from a boolean mask
    over them, or from a list of indices (ints for the first dimension, tuples for more)."""
    if str(getattr(valid, "dtype", "")) in ("bool", "torch.bool"):  # numpy or torch mask
        mask = torch.as_tensor(valid)
        if mask.ndim == 0 or tuple(mask.shape) != shape[: mask.ndim]:
            raise ValueError(
                f"valid mask of shape {tuple(mask.shape)} must match the leading dimensions "
                f"of the array {shape}"
            )
        starts = mask.nonzero().tolist()
        if not starts:
            raise ValueError(
                f"valid mask of shape {tuple(mask.shape)} is all False: no crop may start anywhere"
            )
        return starts
    rows = valid
    if isinstance(rows, torch.Tensor):
        rows = rows.detach().cpu().numpy()
    rows = np.asarray(rows)
    if rows.ndim == 1:
        rows = rows.reshape(-1, 1)
    if rows.ndim != 2 or rows.shape[0] == 0 or not 1 <= rows.shape[1] <= len(shape):
        raise ValueError(
            f"valid must be a boolean mask or a non-empty list of start indices, got {valid!r}"
        )
    starts = integer_rows(rows, rows.shape[1], "valid start indices")
    if (starts < 0).any():
        raise ValueError("valid start indices must not be negative")
    return starts.tolist()


class ZarrCropDataset(IterableDataset):
    """Batches of random crops from Zarr arrays (v2 or v3), as torch tensors.

    Each item is a whole batch, ``[batch_size, *crop]``, so wrap it in
    ``DataLoader(ds, batch_size=None)``. The engine's threads start on the first iteration
    in the process that iterates (a dataset made before ``fork`` works in the child) and stop
    when the iteration ends, is abandoned, or fails.

    Args:
        source: path of a Zarr array (the directory holding ``zarr.json`` or ``.zarray``); or
            of a group when ``variables`` names arrays in it; or a mapping ``{name: path}``
            of arrays cropped jointly: one origin per sample, the same window on every array,
            a dict of tensors per batch. Wherever a path goes, a URL of an object store, a
            :class:`~lsio_torch.References` set, an :class:`~lsio_torch.Icechunk` repository
            or an ``icechunk.Session`` (or its store) goes too.
        crop: the crop shape: one int per dimension, or a mapping by dimension name
            (``{"time": 4, "lat": 128, "lon": 128}``) where a dimension left out is taken whole.
            By name, each array takes the dimensions it has: surface fields
            ``(time, lat, lon)`` beside fields on levels ``(time, level, lat, lon)``; arrays
            must agree on the length (times ``scale``) of the dimensions they share.
        variables: names of arrays in the group ``source``, cropped jointly.
        steps: indices along a dimension relative to each sample's origin, read instead of a
            crop there: ``{"time": [-1, 0, 4]}`` gives t-1 and t (inputs) and t+4 (a
            forecast target), in that order along the output's ``time``. Only the chunks of
            those steps are read; origins are drawn so that every step is inside the array.
            One mapping for all arrays, or ``{array: {dimension: steps}}``.
        select: fixed indices of a dimension, the same for every sample:
            ``{"level": [3, 7, 12]}``; per array as for ``steps``.
        scale: for joint arrays on coarser grids, the integer factor per dimension by which
            each array's grid is coarser (``{"nwp": (1, 4, 4)}``): the window, in units of the
            finest grid, maps onto ``crop // scale`` elements at ``origin // scale``. Origins
            are then drawn on multiples of the factors.
        batch_size: crops per batch.
        samples_per_epoch: crops per epoch; ``None`` streams without end (or, with an explicit
            list of ``origins``, its length). The last batch of an epoch may be smaller.
            Every rank yields as many batches (so that DDP's steps stay in step): where the
            batches do not divide among the ranks, those short of one repeat the epoch's first
            batches, as ``DistributedSampler`` pads.
        drop_last: instead, leave out the epoch's last batch when it is short, and the
            batches past the last multiple of the world size.
        seed: with the epoch and the sample's index, decides every crop's origin.
        origins: instead of uniform random origins: an ``[N, ndim]`` list (the epoch is these
            crops, in order) or a callable ``origins(epoch, index) -> origin`` (deterministic,
            so that workers, ranks and resumed runs agree).
        valid: where crops may start (or the steps' origin may be) along the leading
            dimensions of ``ds.dims``: a boolean mask over them (``valid=has_data`` for a
            ``[time]`` mask) or a list of start indices.
        dtype: the output type (``torch.float32``, ``float16``, ``bfloat16``, ``float64``),
            cast in the engine; one for all arrays or a mapping by name. ``None`` keeps each
            array's own type.
        mean, std: with ``dtype``, write ``(x - mean) / std``; a number, or a mapping by name.
        pin_memory: pin the batches; ``None`` pins exactly when CUDA is available (never
            inside DataLoader workers, where the DataLoader's own ``pin_memory`` applies).
        prefetch: batches being read while the consumer works on the current one; ``None``
            is 2, or up to 8 when an array is in an object store (where each batch waits a
            round trip, and more batches in flight keep more requests open): as many as fit
            in 256 MiB of batches, at least 2.
        return_origins: yield ``(batch, origins)``, ``origins`` an int64
            ``[batch, len(ds.dims)]``: per dimension of ``ds.dims`` the crop's start or the
            steps' origin, 0 for a dimension selected or taken whole.
        threads: engine threads (each reads and decodes); ``None`` is one per core.
        io_threads: threads that only read, each keeping its own queue of reads in flight,
            handing the chunks to the ``threads`` that decode them: for arrays on disk rather
            than in the page cache. ``0`` (the default) lets the decoding threads read their
            own chunks, which is fastest when the reads are copies from the page cache.
        direct_io: read chunks with ``O_DIRECT``, bypassing the page cache (for arrays much
            larger than memory, read once per epoch); files on file systems that refuse it
            are read through the page cache. ``stats()["files_direct"]`` counts the others.
        rank, world_size: this process's place among distributed ranks; ``None`` takes them
            from ``torch.distributed`` when it is initialised.
        storage_options: for arrays in object stores (``s3://``, ``gs://``, ``az://``,
            ``http(s)://``): the store's options as the ``object_store`` crate names them
            (``region``, ``endpoint``, ``skip_signature``, ``access_key_id``, ...), over those
            of the environment (``AWS_*``, ``GOOGLE_*``, ``AZURE_*``); and the engine's
            ``max_bytes_in_flight``, ``merge_gap``, ``part_bytes``, ``max_retries``,
            ``retry_timeout``, ``timeout``. Local arrays ignore them.
        max_requests: requests open at once for object stores, all the arrays together.
        cache_bytes: decoded chunks kept in memory across batches and epochs, up to this
            many bytes (``0``: none): a chunk found there is neither read nor decoded again.
            One cache per dataset and process, shared by its arrays; each DataLoader worker
            has its own. :meth:`close` frees it. The arrays are taken not to change while it
            holds their chunks. ``"auto"`` (the default): the decoded size of the arrays, at
            most an eighth of the memory of the machine (or of the container, where its
            cgroup sets a lower limit) shared among the processes that each keep a cache:
            the DataLoader workers and the ranks on the machine (``LOCAL_WORLD_SIZE``).
        cache_policy: which chunk the cache evicts when full: ``"lru"``, ``"clock"`` or
            ``"s3fifo"``.
        cache_dir: for arrays in object stores: a folder where the compressed bytes of the
            chunks fetched are kept, so that later epochs (and later runs, and other processes
            naming the same folder) read them from local disk instead of the store. Chunks are
            keyed by their object's ETag and size, so a changed object is fetched anew; a
            corrupt chunk is fetched again. Chunks of shards are checked against the version
            their shard's index names each epoch; chunks that are objects of their own are
            fetched once a run (their answer names their version) and read from the folder in
            later epochs of the run, during which they are taken not to change. Local arrays
            ignore it.
        cache_dir_bytes: the bound on ``cache_dir``: past it, the files written longest ago
            are deleted. ``None``: half the free space of its file system when first used.

    Attributes:
        dims: the dataset's dimensions: the union of its arrays' dimension names (each array's
            in its own order, a name new in a later array right after the one before it
            there), or ``dim_0, dim_1, ...`` for arrays without names cropped by position.
        shape: their lengths; crop: per dimension the output's extent (the crop, the number
            of steps or indices selected, or the length of a dimension taken whole).

    Raises:
        FileNotFoundError: no array at ``source``.
        ValueError: a crop that does not fit, arrays that do not line up, unsupported codecs
            or dtypes.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]],
        crop: Sequence[int] | Mapping[str, int],
        *,
        variables: Sequence[str] | None = None,
        steps: Mapping[str, Any] | None = None,
        select: Mapping[str, Any] | None = None,
        scale: Mapping[str, Sequence[int]] | None = None,
        batch_size: int = 1,
        samples_per_epoch: int | None = None,
        drop_last: bool = False,
        seed: int = 0,
        origins: Any = None,
        valid: Any = None,
        dtype: torch.dtype | str | Mapping[str, torch.dtype | str] | None = None,
        mean: float | Mapping[str, float] | None = None,
        std: float | Mapping[str, float] | None = None,
        pin_memory: bool | None = None,
        prefetch: int | None = None,
        return_origins: bool = False,
        threads: int | None = None,
        io_threads: int = 0,
        direct_io: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
        max_requests: int | None = None,
        cache_bytes: int | str = "auto",
        cache_policy: str = DEFAULT_CACHE_POLICY,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_dir_bytes: int | None = None,
    ) -> None:
        super().__init__()
        storage_options = _with_max_requests(storage_options, max_requests)
        if isinstance(source, Mapping):
            if variables is not None:
                raise ValueError("give either a mapping of arrays or a group with variables")
            if not source:
                raise ValueError("source mapping is empty")
            places = {str(k): (place(p), None) for k, p in source.items()}
            self.path = None
        elif variables is not None:
            if isinstance(variables, str) or not variables:
                raise ValueError(
                    f"variables must be a non-empty list of array names, got {variables!r}"
                )
            places = {v: (place(source), v) for v in variables}
            self.path = place(source)
        else:
            places = {None: (place(source), None)}
            self.path = place(source)
        keys = list(places)
        if scale is not None and None in keys:
            raise ValueError("scale applies to joint arrays: give source as a mapping")
        scales = per_key("scale", scale or {}, keys)
        dtypes = per_key("dtype", dtype, keys)
        means = per_key("mean", mean, keys)
        stds = per_key("std", std, keys)
        self._sources = []
        for k, (path, name) in places.items():
            self._sources.append(
                Source(
                    k,
                    path,
                    name,
                    None if scales[k] is None else tuple(scales[k]),
                    _dtype(dtypes[k]),
                    0.0 if means[k] is None else float(means[k]),
                    1.0 if stds[k] is None else float(stds[k]),
                    storage_options,
                )
            )
        self._layout = build_layout(self._sources, crop, steps, select)
        self.dims, self.shape = self._layout.dims, self._layout.shape
        self.crop, self._step = self._layout.crop, self._layout.step
        self.variables = None if keys == [None] else keys
        self.dtype = self._sources[0].out_dtype if self.variables is None else None

        self.batch_size = _positive("batch_size", batch_size)
        self.samples_per_epoch = _positive("samples_per_epoch", samples_per_epoch, allow_none=True)
        if not isinstance(drop_last, bool):
            raise ValueError(f"drop_last must be True or False, got {drop_last!r}")
        self.drop_last = drop_last
        batch_bytes = self.batch_size * sum(
            math.prod(self._layout.arrays[s.key].out_shape) * s.out_dtype.itemsize
            for s in self._sources
        )
        if prefetch is None:
            remote = any(source.remote for source in self._sources)
            prefetch = default_prefetch(batch_bytes, remote)
        self.prefetch = _positive("prefetch", prefetch)
        self.threads = _thread_count("threads", threads)
        self.io_threads = _thread_count("io_threads", io_threads, allow_zero=True)
        # The consumer's batch and the prefetched ones are in memory together.
        _check_batch_memory(
            batch_bytes, self.prefetch + 1, f"batch_size={batch_size}, prefetch={prefetch}"
        )
        self.direct_io = bool(direct_io)
        if cache_bytes != "auto" and (
            isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0
        ):
            raise ValueError(
                f'cache_bytes must be a non-negative integer or "auto", got {cache_bytes!r}'
            )
        self.cache_bytes = cache_bytes
        if cache_policy not in CACHE_POLICIES:
            raise ValueError(f"cache_policy must be one of {CACHE_POLICIES}, got {cache_policy!r}")
        self.cache_policy = cache_policy
        self._cache: _lsio_torch.ChunkCache | None = None
        self._cache_pid: int | None = None
        self.cache_dir = None if cache_dir is None else os.path.abspath(os.fspath(cache_dir))
        cache_dir_taken = self.cache_dir is not None and os.path.exists(self.cache_dir)
        if cache_dir_taken and not os.path.isdir(self.cache_dir):
            raise NotADirectoryError(f"cache_dir {self.cache_dir} is not a folder")
        self.cache_dir_bytes = (
            None if cache_dir_bytes is None else _non_negative("cache_dir_bytes", cache_dir_bytes)
        )
        self._disk_cache: _lsio_torch.DiskCache | None = None
        self._disk_cache_pid: int | None = None
        self._disk_chunk_cache()  # a folder it may not take is refused here, not at iteration
        self._pool: _lsio_torch.BatchPool | None = None  # this process's batch memory
        self._pool_pid: int | None = None
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        self.seed = seed
        self.pin_memory = pin_memory
        self.return_origins = return_origins
        self.rank, self.world_size = rank, world_size
        if (rank is None) != (world_size is None):
            raise ValueError("give rank and world_size together")
        self.epoch = 0

        self._origin_list: torch.Tensor | None = None
        self._origin_fn: Callable[[int, int], Sequence[int]] | None = None
        if origins is not None and valid is not None:
            raise ValueError("valid restricts random origins; with origins= choose them yourself")
        if callable(origins):
            self._origin_fn = origins
        elif origins is not None:
            self._origin_list = _origins_tensor(origins, len(self.shape))
            self._check_origins(self._origin_list.tolist(), "origins")
            n = len(self._origin_list)
            if self.samples_per_epoch is None:
                self.samples_per_epoch = n
            elif self.samples_per_epoch > n:
                raise ValueError(f"samples_per_epoch={samples_per_epoch} but only {n} origins")
        self._valid = None if valid is None else self._valid_window_starts(valid)
        self._sampler = self._make_sampler()

        self._position = 0  # where the live iteration would resume (`Share.batches`)
        self._board = Board()  # which epoch each iteration yields (lsio_torch._epochs)
        self._explicit = False  # the next iteration's epoch was chosen (set_epoch, a state)
        self._finished = False  # the last iteration ran to its end
        self._next_local = 0  # the next epoch as this copy alone knows it (no board)
        _LIVE.add(self)
        self._inherited_share: tuple[int, int] | None = None
        self._stats = dict.fromkeys(_COUNTERS, 0)
        self._iterators: weakref.WeakSet[Any] = weakref.WeakSet()
        self._engines: weakref.WeakSet[_lsio_torch.Engine] = weakref.WeakSet()
        self._backend: str | None = None

    def _make_sampler(self) -> _lsio_torch.Sampler:
        layout = self._layout
        return _lsio_torch.Sampler(
            list(layout.shape), list(layout.extent), self.seed, list(layout.step), self._valid
        )

    def _valid_window_starts(self, valid: Any) -> list[list[int]]:
        """``valid`` (allowed origins of the leading dimensions) as the starts of their
        windows; origins whose steps would reach before index 0 are left out."""
        starts = [
            row for row in self._layout.starts(_valid_starts(valid, self.shape)) if min(row) >= 0
        ]
        if not starts:
            raise ValueError(
                f"none of the valid origins leaves room for the steps before them "
                f"(origins from {[-lo for lo in self._layout.low]} on)"
            )
        return starts

    def _check_origins(self, origins: list[list[int]], what: str) -> list[list[int]]:
        """Origins given by the user, checked, as the starts of their windows."""
        layout = self._layout
        for origin in origins:
            if len(origin) != len(self.shape):
                raise IndexError(
                    f"{what}: origin {origin} has {len(origin)} dimensions, the arrays "
                    f"{list(self.dims)} have {len(self.shape)}"
                )
        starts = layout.starts(origins)
        for origin, start in zip(origins, starts, strict=True):
            if any(
                w < 0 or w + e > s for w, e, s in zip(start, layout.extent, self.shape, strict=True)
            ):
                raise IndexError(
                    f"{what}: crop {self.crop} at {origin} leaves the arrays' grid {self.shape}"
                )
            if any(w % k for w, k in zip(start, self._step, strict=True)):
                raise ValueError(
                    f"{what}: origin {origin} is not a multiple of the arrays' scales {self._step}"
                )
        return starts

    def __getstate__(self) -> dict[str, Any]:
        # What receives this copy (spawned DataLoader workers) counts this process's
        # iterations: the board must be this process's own.
        self._own_board()
        state = self.__dict__.copy()
        del state["_sampler"], state["_iterators"], state["_engines"]
        state["_cache"] = state["_cache_pid"] = None  # each process its own
        state["_disk_cache"] = state["_disk_cache_pid"] = None
        state["_pool"] = state["_pool_pid"] = None
        # A process that unpickles (a DataLoader worker under spawn) has no process group:
        # it takes the rank this process has.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            state["_inherited_share"] = (
                torch.distributed.get_rank(),
                torch.distributed.get_world_size(),
            )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._sampler = self._make_sampler()
        self._iterators = weakref.WeakSet()
        self._engines = weakref.WeakSet()
        _LIVE.add(self)
        if self._board.owner == os.getpid():
            # A copy in the process that made it (pickle, deepcopy): a count of its own.
            self._board = self._carried_board()

    def _own_board(self) -> Board:
        """The board of this process's iterations: in a DataLoader worker, its loader's; in
        a process that received the dataset from another (a rank started by ``ddp_spawn``), a
        board of its own, made now, that carries on the count."""
        board = self._board
        if board.owner == os.getpid() or torch.utils.data.get_worker_info() is not None:
            return board
        self._board = self._carried_board()
        return self._board

    def _carried_board(self) -> Board:
        """A new board that goes on from where this copy's board stands."""
        try:
            epoch, resume = self._board.next_epoch()
        except OSError:  # on another machine, or gone: from what this copy knows
            epoch, resume = self._next_local, None
        return Board(epoch, resume)

    def set_epoch(self, epoch: int) -> None:
        """Chooses the epoch whose crops the next iteration yields (and forgets a position
        loaded by :meth:`load_state_dict`). Without it, each iteration is the epoch after
        the previous one: the first is epoch 0."""
        _non_negative("epoch", epoch)
        self.epoch = self._next_local = epoch
        self._position = 0
        self._explicit, self._finished = True, False
        with contextlib.suppress(OSError):  # no shared count: this copy's own (see _begin)
            self._own_board().set_next(epoch)

    def current_epoch(self) -> int:
        """The epoch of this dataset's iteration in progress (or the last one begun), in this
        process or its DataLoader workers; before any, the epoch the first one yields."""
        try:
            return self._own_board().current()
        except OSError:
            return self.epoch

    def state_dict(self) -> dict[str, Any]:
        """Where this process is in the epoch: ``{"epoch", "batch", ...}``, ``batch`` being
        the number of this rank's batches already yielded; after an iteration that ran to its
        end, the next epoch at batch 0. In a DataLoader worker it is that
        worker's own resume point, for the same worker (torchdata's ``StatefulDataLoader``
        saves and restores one per worker)."""
        epoch, position = self.epoch, self._position
        if self._finished and torch.utils.data.get_worker_info() is None:
            # The iteration ran to its end: the run goes on with the next epoch. (A loop
            # broken after the last batch resumes into the rest of the epoch, which is empty,
            # as the uninterrupted loop would have ended it.)
            epoch, position = epoch + 1, 0
        return {
            "epoch": epoch,
            "batch": position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "samples_per_epoch": self.samples_per_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Makes the next iteration continue from ``state`` (from :meth:`state_dict`, or
        ``{"epoch": e, "batch": k}`` when ``k`` batches of epoch ``e`` are done)."""
        for key in ("seed", "batch_size", "samples_per_epoch"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"state is for {key}={state[key]!r}, this dataset has {getattr(self, key)!r}"
                )
        epoch, batch = state["epoch"], state["batch"]
        _non_negative("state batch", batch)
        _non_negative("state epoch", epoch)
        self.epoch, self._position, self._next_local = epoch, batch, epoch
        self._explicit, self._finished = True, False
        info = torch.utils.data.get_worker_info()
        with contextlib.suppress(OSError):  # no shared count: this copy's own (see _begin)
            if info is None:
                self._own_board().set_next(epoch, batch)
            else:  # restored by StatefulDataLoader: this worker's resume point
                self._board.reserve(_loader_key(info), f"w{info.id}", epoch, batch)

    def __len__(self) -> int:
        """Batches per epoch that this rank yields (all its DataLoader workers together), the
        same on every rank, as under ``DistributedSampler``: the epoch padded with its first
        batches, or with ``drop_last`` cut to a multiple of the world size."""
        share = current_share(self.rank, self.world_size, self._inherited_share)
        return share.length(self._epoch_batches(), self.drop_last)

    def _epoch_batches(self) -> int:
        """Batches in a whole epoch, over all ranks (with ``drop_last``, whole ones only)."""
        if self.samples_per_epoch is None:
            raise TypeError("an endless ZarrCropDataset (samples_per_epoch=None) has no len()")
        if self.drop_last:
            return self.samples_per_epoch // self.batch_size
        return math.ceil(self.samples_per_epoch / self.batch_size)

    def __repr__(self) -> str:
        arrays = "".join(
            f"\n    {s.key + ': ' if s.key else ''}{s.describe()}," for s in self._sources
        )
        if self._origin_list is not None:
            sampling = f"origins=<{len(self._origin_list)} given>"
        elif self._origin_fn is not None:
            sampling = f"origins={getattr(self._origin_fn, '__name__', 'callable')}"
        else:
            sampling = f"seed={self.seed}" + (
                f", valid=<{len(self._valid)} starts>" if self._valid is not None else ""
            )
        return (
            f"ZarrCropDataset({arrays}\n    crop={self.crop}, batch_size={self.batch_size}, "
            f"samples_per_epoch={self.samples_per_epoch}, {sampling}, epoch={self.epoch},\n)"
        )

    def stats(self) -> dict[str, Any]:
        """What this process's iterations have done: batches yielded, bytes read, chunks
        decoded, seconds the consumer waited for a batch, seconds the engine waited for the
        consumer; and the I/O backend. DataLoader workers count in their own processes."""
        out: dict[str, Any] = dict(self._stats)
        for engine in list(self._engines):
            for name, value in _engine_stats(engine).items():
                out[name] += value
        out["backend"] = self._backend or _lsio_torch.io_backend()
        if self.cache_bytes:
            cache = self._cache if self._cache_pid == os.getpid() else None
            out.update(cache.stats() if cache else _EMPTY_CACHE_STATS)
            out["cache_budget"] = cache.budget if cache else self.cache_budget()
        if self.cache_dir is not None:
            disk = self._disk_cache if self._disk_cache_pid == os.getpid() else None
            out.update(disk.stats() if disk else _EMPTY_DISK_CACHE_STATS)
        return out

    def close(self) -> None:
        """Stops every iteration of this dataset still running in this process, and frees
        its chunk cache and the batch memory it keeps between iterations."""
        for iterator in list(self._iterators):
            iterator.close()
        if self._cache is not None and self._cache_pid == os.getpid():
            self._cache.clear()
        self._cache = self._cache_pid = None
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.close()
        self._pool = self._pool_pid = None

    def _batch_pool(self) -> _lsio_torch.BatchPool:
        """This process's memory for batches that are not pinned, kept across iterations (a
        forked worker makes its own)."""
        if self._pool is None or self._pool_pid != os.getpid():
            # The batches in flight: those prefetched, the one being filled, and the one the
            # consumer holds (and a DataLoader's in hand).
            self._pool = _lsio_torch.BatchPool(len(self._sources), self.prefetch + 3)
            self._pool_pid = os.getpid()
        return self._pool

    def _chunk_cache(self) -> _lsio_torch.ChunkCache | None:
        """This process's chunk cache (a forked worker makes its own)."""
        if self._cache is None or self._cache_pid != os.getpid():
            budget = self.cache_budget()
            if not budget:
                return None
            self._cache = _lsio_torch.ChunkCache(budget, self.cache_policy)
            self._cache_pid = os.getpid()
        return self._cache

    def cache_budget(self) -> int:
        """The bytes of decoded chunks this process's cache may hold: ``cache_bytes``, or
        what ``"auto"`` makes of it here (in a DataLoader worker, a worker's share)."""
        if self.cache_bytes != "auto":
            return self.cache_bytes
        decoded = sum(s.decoded_bytes for s in self._sources)
        info = torch.utils.data.get_worker_info()
        processes = (info.num_workers if info is not None else 1) * _local_ranks()
        return min(decoded, int(_memory_limit() * AUTO_CACHE_MEMORY_SHARE) // processes)

    def _disk_chunk_cache(self) -> _lsio_torch.DiskCache | None:
        """This process's handle on ``cache_dir`` (the folder is shared; the handle's counters
        are this process's own); None where no array is in an object store (the folder is
        not even opened)."""
        if self.cache_dir is None or not any(s.remote for s in self._sources):
            return None
        if self._disk_cache is None or self._disk_cache_pid != os.getpid():
            bound = self.cache_dir_bytes
            if bound is None:
                bound = shutil.disk_usage(_existing(self.cache_dir)).free // 2
            # The engine makes the folder (0700, marked as its own) or checks it may take it.
            self._disk_cache = _lsio_torch.DiskCache(self.cache_dir, bound)
            self._disk_cache_pid = os.getpid()
        return self._disk_cache

    def _origins(self, epoch: int, first: int, count: int) -> list[list[int]]:
        """The starts of the windows of samples ``first..first + count`` of ``epoch``."""
        if self._origin_list is not None:
            return self._layout.starts(self._origin_list[first : first + count].tolist())
        if self._origin_fn is not None:
            origins = [
                [as_int(o, "origins") for o in self._origin_fn(epoch, i)]
                for i in range(first, first + count)
            ]
            return self._check_origins(origins, f"origins({epoch}, {first}..)")
        return self._sampler.origins(epoch, first, count)

    def __iter__(self) -> Iterator[Any]:
        iterator = self._iterate()
        self._iterators.add(iterator)
        return iterator

    def _begin(self) -> tuple[int, int]:
        """Joins the board as an iteration begins: its epoch, and the rank position it
        resumes from."""
        info = torch.utils.data.get_worker_info()
        if info is None:
            board, key, member = self._own_board(), MAIN, MAIN
        else:
            board, key, member = self._board, _loader_key(info), f"w{info.id}"
        explicit, self._explicit = self._explicit, False
        try:
            epoch, start = board.join(key, member)
        except OSError as e:
            # The board is gone (a cleaner emptied its folder): this copy's own count.
            epoch, start = self._next_local, (self._position if explicit else None)
            _warn_once(
                "board",
                "lsio_torch: the epoch count cannot be shared with DataLoader workers (%s): "
                "this process counts its own iterations; with workers started anew each "
                "epoch, call ds.set_epoch(n) before each epoch",
                e,
            )
        self.epoch, self._next_local = epoch, epoch + 1
        _note_epoch(self, epoch, explicit)
        return epoch, start or 0

    def _iterate(self) -> Iterator[Any]:
        share = current_share(self.rank, self.world_size, self._inherited_share)
        pin = self.pin_memory
        if pin is None:
            pin = torch.cuda.is_available() and not share.in_worker
        elif share.in_worker:
            pin = False
        _log_backend_once()
        threads = self.threads or _default_threads()
        epoch, start = self._begin()
        self._position, self._finished = start, False
        total = None if self.samples_per_epoch is None else self._epoch_batches()
        n = self.samples_per_epoch
        length = None if total is None else share.length(total, self.drop_last)
        batches = share.batches(total, start, length)
        cache, disk = self._chunk_cache(), self._disk_chunk_cache()
        layout = self._layout
        keys = [s.key for s in self._sources]
        engine = start_engine(
            [(s, layout.arrays[s.key].runs) for s in self._sources],
            threads,
            self.direct_io,
            self.io_threads,
            cache,
            disk,
            self._batch_pool(),
        )
        self._backend = engine.backend
        dtypes = [s.out_dtype for s in self._sources]
        pending: deque[tuple[int, torch.Tensor]] = deque()

        def submit_next() -> None:
            batch = next(batches, None)
            if batch is None:
                return
            g, position = batch
            first = g * self.batch_size
            count = self.batch_size if n is None else min(self.batch_size, n - first)
            starts = self._origins(epoch, first, count)
            parts = [layout.arrays[key] for key in keys]
            outs = [
                _batch_tensor(engine, i, (count, *own.out_shape), dtypes[i], pin)
                for i, own in enumerate(parts)
            ]
            engine.submit(outs, [own.origins(starts) for own in parts])
            origins = torch.tensor(layout.anchors(starts), dtype=torch.int64)
            pending.append((position, origins.reshape(count, len(self.dims))))

        self._engines.add(engine)
        try:
            for _ in range(self.prefetch):
                submit_next()
            while pending:
                outs = dict(zip(keys, engine.next(), strict=True))
                position, origins = pending.popleft()
                submit_next()
                self._position = position
                self._stats["batches"] += 1
                batch = outs[None] if self.variables is None else outs
                yield (batch, origins) if self.return_origins else batch
            self._finished = True
        finally:
            self._engines.discard(engine)
            for name, value in _engine_stats(engine).items():
                if name != "batches":
                    self._stats[name] += value
            engine.close()
            if disk is not None:
                _warn_foreign_once(self.cache_dir, disk.stats()["disk_cache_foreign"])


#: Every dataset of this process, for the fork hook below.
_LIVE: weakref.WeakSet[ZarrCropDataset] = weakref.WeakSet()


def _own_boards() -> None:
    """Before a fork (a DataLoader worker started under ``fork``): every dataset holds a
    board of this process, which the child will count on."""
    if torch.utils.data.get_worker_info() is None:
        for ds in list(_LIVE):
            # No folder for boards: the iterations say so.
            with contextlib.suppress(OSError):
                ds._own_board()


os.register_at_fork(before=_own_boards)


def _loader_key(info: Any) -> str:
    """What the workers of one DataLoader iteration share: its base seed."""
    return f"seed {info.seed - info.id}"


#: The epochs begun in this process, by what decides a dataset's crops.
_begun: dict[tuple[Any, ...], set[int]] = {}


def _note_epoch(ds: ZarrCropDataset, epoch: int, explicit: bool) -> None:
    """Warns (once per dataset) when an iteration repeats an epoch that another dataset of
    the same arrays and sampling began in this process, with no epoch chosen: a training loop that
    makes its dataset anew each epoch sees epoch 0 every time."""
    signature = (repr(ds._sources), repr(ds._layout), ds.seed, ds.batch_size, ds.samples_per_epoch)
    seen = _begun.setdefault(signature, set())
    if epoch in seen and not explicit:
        _warn_once(
            ("repeat", signature),
            "lsio_torch: epoch %d of this dataset was already iterated in this process: "
            "a dataset made anew starts at epoch 0; keep one dataset for the run, or call "
            "ds.set_epoch(n)",
            epoch,
        )
    seen.add(epoch)


def _engine_stats(engine: _lsio_torch.Engine) -> dict[str, float]:
    """The counters of one iteration's engine (all its arrays); nothing once it is closed."""
    out = dict.fromkeys(_COUNTERS, 0)
    try:
        s = engine.stats()
    except _lsio_torch.LsioError:  # closed
        return out
    for key in _COUNTERS[1:]:  # all but batches, which the dataset counts
        out[key] = s[key]
    return out


#: Batches in flight by default: from local files, and when an array is in an object store
#: (measured on sat-zstd over HTTP at 20 and 50 ms first-byte latency: 2 → 4 → 8 gave
#: 202 → 251 → 272 crops/s at 50 ms).
LOCAL_PREFETCH = 2
REMOTE_PREFETCH = 8
#: The memory that batches prefetched from an object store take at most by default: beyond
#: it, more batches ahead keep no more requests open (a batch that large holds enough of
#: them), and each is memory first touched (pinned, where CUDA is) that the process keeps.
REMOTE_PREFETCH_BYTES = 256 << 20


def default_prefetch(batch_bytes: int, remote: bool) -> int:
    """Batches read ahead when ``prefetch`` is not given: :data:`LOCAL_PREFETCH` on disk;
    from an object store, as many as fit in :data:`REMOTE_PREFETCH_BYTES`, between those two
    counts."""
    if not remote:
        return LOCAL_PREFETCH
    fit = REMOTE_PREFETCH_BYTES // max(batch_bytes, 1)
    return max(LOCAL_PREFETCH, min(REMOTE_PREFETCH, fit))


def _with_max_requests(
    storage_options: Mapping[str, Any] | None, max_requests: int | None
) -> dict[str, Any] | None:
    if max_requests is None:
        return None if storage_options is None else dict(storage_options)
    return {**(storage_options or {}), "max_requests": _positive("max_requests", max_requests)}


def read_crops(
    path: str | os.PathLike[str],
    origins: Any,
    crop: Sequence[int] | Mapping[str, int],
    *,
    threads: int | None = None,
    pin_memory: bool = False,
    dtype: torch.dtype | str | None = None,
    mean: float = 0.0,
    std: float = 1.0,
    storage_options: Mapping[str, Any] | None = None,
    max_requests: int | None = None,
) -> torch.Tensor:
    """Reads crops of shape ``crop`` at explicit ``origins`` with the same engine.

    Args:
        path: a Zarr array (v2 or v3): a directory, or a URL of an object store.
        origins: ``[N, ndim]`` crop starts: a list of tuples, a numpy array or a tensor.
        crop: the crop shape, as a tuple or a mapping by dimension name.
        threads: engine threads (each reads and decodes); ``None`` is one per core.
        pin_memory: allocate the result in pinned memory (needs CUDA).
        dtype, mean, std, storage_options, max_requests: as for :class:`ZarrCropDataset`.

    Returns:
        A tensor ``[N, *crop]`` of the array's dtype, or of ``dtype``.

    Raises:
        IndexError: an origin whose crop leaves the array.
    """
    options = _with_max_requests(storage_options, max_requests)
    source = Source(None, place(path), None, None, _dtype(dtype), float(mean), float(std), options)
    crop = crop_shape(source.array, crop)
    starts = _origins_tensor(origins, len(crop))
    threads = _thread_count("threads", threads) or _default_threads()
    _log_backend_once()
    out = torch.empty((starts.shape[0], *crop), dtype=source.out_dtype, pin_memory=pin_memory)
    if starts.shape[0] == 0:
        return out
    engine = start_engine([(source, [[(0, c)] for c in crop])], threads)
    try:
        engine.submit([out], [starts.tolist()])
        return engine.next()[0]
    finally:
        engine.close()
