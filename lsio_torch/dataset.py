"""The torch-facing side: `ZarrCropDataset` and `read_crops`.

Python decides *which* crops and allocates the output tensors; the Rust engine reads,
decodes and writes every byte of them with the GIL released.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from lsio_torch import _lsio_torch

log = logging.getLogger("lsio_torch")

TORCH_DTYPES: dict[str, torch.dtype] = {
    "bool": torch.bool,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint8": torch.uint8,
    "uint16": torch.uint16,
    "uint32": torch.uint32,
    "uint64": torch.uint64,
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
    "complex64": torch.complex64,
    "complex128": torch.complex128,
}

_fallback_logged = False


def _log_backend_once() -> None:
    """Says once per process when io_uring could not be used."""
    global _fallback_logged
    if not _fallback_logged:
        _fallback_logged = True
        reason = _lsio_torch.io_fallback_reason()
        if reason is not None:
            log.warning("lsio_torch: io_uring unavailable (%s); reading with pread threads", reason)


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


def _checked(array: _lsio_torch.Array) -> _lsio_torch.Array:
    if array.dtype not in TORCH_DTYPES:
        raise ValueError(f"{array.path}: data type {array.dtype} has no torch equivalent")
    return array


def _open(path: str | os.PathLike[str]) -> _lsio_torch.Array:
    return _checked(_lsio_torch.Array(os.fspath(path)))


def _open_variables(
    group: str | os.PathLike[str], variables: Sequence[str]
) -> dict[str, _lsio_torch.Array]:
    """Opens arrays of a group by name; they must share one shape (one crop fits all)."""
    if isinstance(variables, str) or not variables:
        raise ValueError(f"variables must be a non-empty list of array names, got {variables!r}")
    arrays = {
        name: _checked(_lsio_torch.Array.in_group(os.fspath(group), name)) for name in variables
    }
    shapes = {name: tuple(a.shape) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{os.fspath(group)}: variables differ in shape: {shapes}")
    return arrays


def _crop_shape(
    array: _lsio_torch.Array, crop: Sequence[int] | Mapping[str, int]
) -> tuple[int, ...]:
    """The crop as one extent per dimension. A mapping names dimensions (``dimension_names``
    or xarray's ``_ARRAY_DIMENSIONS``); dimensions it leaves out are taken whole."""
    shape = tuple(array.shape)
    if isinstance(crop, Mapping):
        names = array.dimension_names
        if not names or any(n is None for n in names):
            raise ValueError(
                f"{array.path}: the array has no dimension names {names}; give crop as a tuple"
            )
        unknown = set(crop) - set(names)
        if unknown:
            raise ValueError(
                f"{array.path}: crop names {sorted(unknown)}, not dimensions of the array {names}"
            )
        crop = tuple(crop.get(n, s) for n, s in zip(names, shape, strict=True))
    try:
        crop = tuple(int(c) for c in crop)
    except TypeError:
        raise TypeError(f"crop must be a sequence of ints or a mapping, got {crop!r}") from None
    if len(crop) != len(shape):
        raise ValueError(
            f"{array.path}: crop {crop} has {len(crop)} dimensions, "
            f"the array {shape} has {len(shape)}"
        )
    for d, (c, s) in enumerate(zip(crop, shape, strict=True)):
        if not 1 <= c <= s:
            raise ValueError(
                f"{array.path}: crop {crop} is larger than the array {shape} "
                f"(dimension {d}: {c} > {s})"
                if c > s
                else f"{array.path}: crop {crop} has a non-positive extent in dimension {d}"
            )
    return crop


def _split() -> tuple[int, int, bool]:
    """This process's share of an epoch: (index, count, in a DataLoader worker)."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    info = get_worker_info()
    if info is None:
        return rank, world, False
    return rank * info.num_workers + info.id, world * info.num_workers, True


class ZarrCropDataset(IterableDataset):
    """Batches of random crops from a Zarr array (v2 or v3), as torch tensors.

    Each item is a whole batch, ``[batch_size, *crop]`` in the array's dtype, so wrap it in
    ``DataLoader(ds, batch_size=None)``. The engine's threads start on the first iteration
    in the process that iterates (a dataset made before ``fork`` works in the child).

    Args:
        source: path of a Zarr array (the directory holding ``zarr.json`` or ``.zarray``), or
            of a group when ``variables`` names arrays in it.
        crop: the crop shape: one int per dimension, or a mapping by dimension name
            (``{"time": 4, "lat": 128, "lon": 128}``) where a dimension left out is taken whole.
        variables: names of arrays in the group ``source``, all of one shape; each batch is
            then a dict of tensors, one per name, cropped at the same origins.
        batch_size: crops per batch.
        samples_per_epoch: crops per epoch; ``None`` streams without end. The last batch of
            an epoch may be smaller.
        seed: with the epoch and the sample's index, decides every crop's origin.
        pin_memory: pin the batches; ``None`` pins exactly when CUDA is available (never
            inside DataLoader workers, where the DataLoader's own ``pin_memory`` applies).
        prefetch: batches being read while the consumer works on the current one.
        return_origins: yield ``(batch, origins)``, ``origins`` an int64 ``[batch, ndim]``.
        threads: engine threads (each reads and decodes); ``None`` is one per core.

    Raises:
        FileNotFoundError: no array at ``source``.
        ValueError: a crop that does not fit, unsupported codecs or dtypes.
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        crop: Sequence[int] | Mapping[str, int],
        *,
        variables: Sequence[str] | None = None,
        batch_size: int = 1,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        pin_memory: bool | None = None,
        prefetch: int = 2,
        return_origins: bool = False,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        if variables is None:
            self._arrays = {None: _open(source)}
        else:
            self._arrays = _open_variables(source, variables)
        first = next(iter(self._arrays.values()))
        self.path = os.fspath(source)
        self.variables = None if variables is None else list(variables)
        self.shape = tuple(first.shape)
        self.crop = _crop_shape(first, crop)
        self.dtype = TORCH_DTYPES[first.dtype] if variables is None else None
        self.batch_size = _positive("batch_size", batch_size)
        self.samples_per_epoch = _positive("samples_per_epoch", samples_per_epoch, allow_none=True)
        self.prefetch = _positive("prefetch", prefetch)
        self.threads = _positive("threads", threads, allow_none=True)
        if not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        self.seed = seed
        self.pin_memory = pin_memory
        self.return_origins = return_origins
        self.epoch = 0
        self._sampler = _lsio_torch.Sampler(list(self.shape), list(self.crop), seed)

    def set_epoch(self, epoch: int) -> None:
        """Chooses the epoch whose crops the next iteration yields."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches per epoch (all ranks and workers together)."""
        if self.samples_per_epoch is None:
            raise TypeError("an endless ZarrCropDataset (samples_per_epoch=None) has no len()")
        return math.ceil(self.samples_per_epoch / self.batch_size)

    def __repr__(self) -> str:
        arrays = ", ".join(
            f"{name + ': ' if name else ''}{a.dtype} chunks={tuple(a.chunk_shape)}"
            f"{f' shards={tuple(a.shard_shape)}' if a.shard_shape else ''} v{a.zarr_format}"
            for name, a in self._arrays.items()
        )
        return (
            f"ZarrCropDataset({self.path!r}, shape={self.shape}, {arrays}, crop={self.crop}, "
            f"batch_size={self.batch_size}, samples_per_epoch={self.samples_per_epoch}, "
            f"seed={self.seed}, epoch={self.epoch})"
        )

    def _batches(self, share: int, shares: int) -> Iterator[tuple[int, int]]:
        """(first sample, count) of each batch this process yields."""
        n = self.samples_per_epoch
        k = share
        while n is None or k * self.batch_size < n:
            first = k * self.batch_size
            count = self.batch_size if n is None else min(self.batch_size, n - first)
            yield first, count
            k += shares

    def __iter__(self) -> Iterator[Any]:
        share, shares, in_worker = _split()
        pin = self.pin_memory
        if pin is None:
            pin = torch.cuda.is_available() and not in_worker
        elif in_worker:
            pin = False
        _log_backend_once()
        threads = self.threads or _default_threads()
        engines = {
            name: _lsio_torch.Engine(array, list(self.crop), threads)
            for name, array in self._arrays.items()
        }
        epoch = self.epoch
        batches = self._batches(share, shares)
        origins_queue: deque[torch.Tensor] = deque()

        def submit_next() -> None:
            batch = next(batches, None)
            if batch is None:
                return
            first, count = batch
            origins = self._sampler.origins(epoch, first, count)
            for name, engine in engines.items():
                dtype = TORCH_DTYPES[self._arrays[name].dtype]
                out = torch.empty((count, *self.crop), dtype=dtype, pin_memory=pin)
                engine.submit(out, origins)
            origins_queue.append(torch.tensor(origins, dtype=torch.int64))

        try:
            for _ in range(self.prefetch):
                submit_next()
            while origins_queue:
                outs = {name: engine.next() for name, engine in engines.items()}
                origins = origins_queue.popleft()
                submit_next()
                batch = outs[None] if self.variables is None else outs
                yield (batch, origins) if self.return_origins else batch
        finally:
            for engine in engines.values():
                engine.close()


def read_crops(
    path: str | os.PathLike[str],
    origins: Any,
    crop: Sequence[int] | Mapping[str, int],
    *,
    threads: int | None = None,
    pin_memory: bool = False,
) -> torch.Tensor:
    """Reads crops of shape ``crop`` at explicit ``origins`` with the same engine.

    Args:
        path: a Zarr array (v2 or v3).
        origins: ``[N, ndim]`` crop starts: a list of tuples, a numpy array or a tensor.
        crop: the crop shape, as a tuple or a mapping by dimension name.
        threads: engine threads (each reads and decodes); ``None`` is one per core.
        pin_memory: allocate the result in pinned memory (needs CUDA).

    Returns:
        A tensor ``[N, *crop]`` of the array's dtype.

    Raises:
        IndexError: an origin whose crop leaves the array.
    """
    array = _open(path)
    crop = _crop_shape(array, crop)
    starts = torch.as_tensor(origins, dtype=torch.int64)
    if starts.numel() == 0:
        starts = starts.reshape(0, len(crop))
    if starts.ndim != 2 or starts.shape[1] != len(crop):
        raise ValueError(f"origins must have shape [N, {len(crop)}], got {tuple(starts.shape)}")
    threads = _positive("threads", threads, allow_none=True) or _default_threads()
    _log_backend_once()
    out = torch.empty(
        (starts.shape[0], *crop), dtype=TORCH_DTYPES[array.dtype], pin_memory=pin_memory
    )
    if starts.shape[0] == 0:
        return out
    engine = _lsio_torch.Engine(array, list(crop), threads)
    try:
        engine.submit(out, starts.tolist())
        return engine.next()
    finally:
        engine.close()
