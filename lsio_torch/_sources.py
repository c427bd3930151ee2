"""The arrays a dataset reads: opening them, their crops on their own grids, output types."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lsio_torch import _lsio_torch
from lsio_torch.references import (
    Icechunk,
    Indexed,
    References,
    is_icechunk_session,
    open_in,
    string_pairs,
)

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

#: Output types the engine casts to.
CAST_DTYPES: dict[torch.dtype, str] = {
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.float64: "float64",
}


def as_int(value: Any, what: str) -> int:
    """``value`` as an int: Python and numpy integers and one-element integer tensors; a
    float (``2.5``, or ``2.0``), a bool or anything else is refused, as numpy refuses them as
    indices, rather than truncated."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be integers, got {value!r}")
    return int(value)


def integer_rows(values: Any, ndim: int, what: str) -> np.ndarray:
    """``values`` as an int64 array ``[N, ndim]`` (a list of tuples, a numpy array, a tensor).
    Non-integers are refused; a start past ``2**63 - 1`` (a uint64 ``2**64 - 1``, say) is an
    ``IndexError``, never wrapped around to a negative one."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        # Python ints as they are: numpy would make [(2**64 - 1, 0)] floats.
        rows = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    except ValueError:
        raise ValueError(f"{what} must be an [N, {ndim}] array of integers") from None
    if rows.size == 0:
        rows = rows.reshape(rows.shape[0] if rows.ndim == 2 else 0, ndim).astype(np.int64)
    if rows.dtype.kind == "O":
        flat = [as_int(v, what) for v in rows.reshape(-1)]
        rows = np.array(flat, dtype=object).reshape(rows.shape)
    elif rows.dtype.kind not in "iu":
        bad = rows.reshape(-1)[0] if rows.size else rows
        raise ValueError(f"{what} must be integers, got {bad!r} ({rows.dtype})")
    if rows.ndim != 2 or rows.shape[1] != ndim:
        raise ValueError(f"{what} must have shape [N, {ndim}], got {tuple(rows.shape)}")
    too_far = [r for r in rows.tolist() if any(v > 2**63 - 1 for v in r)]
    if too_far:
        raise IndexError(f"{what}: origin {too_far[0]} lies past the end of any array")
    return rows.astype(np.int64)


def checked(array: _lsio_torch.Array) -> _lsio_torch.Array:
    if array.dtype not in TORCH_DTYPES:
        raise ValueError(f"{array.path}: data type {array.dtype} has no torch equivalent")
    return array


URL_SCHEMES = (
    "s3://",
    "s3a://",
    "gs://",
    "gcs://",
    "az://",
    "abfs://",
    "abfss://",
    "http://",
    "https://",
)


def is_url(path: str) -> bool:
    """Whether ``path`` names an object store rather than a local file."""
    return path.lower().startswith(URL_SCHEMES)


def option_pairs(path: str, options: Mapping[str, Any] | None) -> list[tuple[str, str]] | None:
    """``storage_options`` as the engine takes them, for a URL (a local path takes none):
    strings, booleans as ``"true"``/``"false"``."""
    if not options or not is_url(path):
        return None
    return list(string_pairs(options))


def place(
    path: str | os.PathLike[str] | References | Icechunk,
) -> str | References | Icechunk:
    """Where a dataset reads: a path or URL as a string, a reference set or repository as it
    is, and an ``icechunk.Session`` (or its store) as the repository at its snapshot."""
    if is_icechunk_session(path):
        return Icechunk(path)
    return path if isinstance(path, Indexed) else os.fspath(path)


def open_array(
    path: str | os.PathLike[str] | References | Icechunk,
    name: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> _lsio_torch.Array:
    """The array at ``path`` (a directory, a URL or a reference set), or array ``name`` of the
    group there."""
    path = place(path)
    if isinstance(path, Icechunk):
        storage_options = path.options(storage_options)
    if isinstance(path, Indexed):
        return checked(open_in(path, name, option_pairs(path.url, storage_options)))
    options = option_pairs(path, storage_options)
    if name is None:
        return checked(_lsio_torch.Array(path, options))
    return checked(_lsio_torch.Array.in_group(path, name, options))


def crop_shape(
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
        crop = tuple(as_int(c, "crop extents") for c in crop)
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


def per_key(name: str, value: Any, keys: Sequence[str | None]) -> dict[str | None, Any]:
    """A per-array option: one value for all arrays, or a mapping by array name."""
    if isinstance(value, Mapping):
        unknown = set(value) - set(keys)
        if unknown:
            raise ValueError(f"{name} names {sorted(unknown)}, not among the arrays {list(keys)}")
        return {k: value.get(k) for k in keys}
    return dict.fromkeys(keys, value)


@dataclass
class Source:
    """One array of a dataset and how it is cropped and written.

    ``scale`` is the array's grid step in units of the dataset's grid: an array at 1/4 of the
    resolution in the last two dimensions has scale ``(1, 4, 4)``; its crop and origins are
    the dataset's divided by it.
    """

    key: str | None
    path: str | References | Icechunk
    name: str | None
    scale: tuple[int, ...] | None = None
    dtype: torch.dtype | None = None
    mean: float = 0.0
    std: float = 1.0
    storage_options: Mapping[str, Any] | None = None
    array: _lsio_torch.Array = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.open()

    def open(self) -> None:
        self.array = open_array(self.path, self.name, self.storage_options)
        if self.scale is None:
            self.scale = (1,) * len(self.array.shape)
        if len(self.scale) != len(self.array.shape) or any(
            isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in self.scale
        ):
            raise ValueError(
                f"{self.label}: scale {self.scale} must be one positive int per dimension "
                f"of {tuple(self.array.shape)}"
            )
        if self.dtype is None:
            if (self.mean, self.std) != (0.0, 1.0):
                raise ValueError(f"{self.label}: mean and std need a floating dtype=")
        elif self.dtype not in CAST_DTYPES:
            raise ValueError(
                f"{self.label}: dtype {self.dtype} is not an output type; "
                f"use one of {[str(d) for d in CAST_DTYPES]}"
            )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["array"]  # reopened from its path in the process that unpickles
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.open()

    @property
    def label(self) -> str:
        label = str(self.path) if self.name is None else f"{self.path}/{self.name}"
        return _lsio_torch.redact(label)  # a token in a URL's query is never shown

    @property
    def remote(self) -> bool:
        """Whether the array's chunks come from an object store."""
        return self.array.is_remote

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """The array's shape in units of the dataset's grid."""
        return tuple(s * f for s, f in zip(self.array.shape, self.scale, strict=True))

    @property
    def out_dtype(self) -> torch.dtype:
        return self.dtype if self.dtype is not None else TORCH_DTYPES[self.array.dtype]

    @property
    def decoded_bytes(self) -> int:
        """The bytes of every chunk decoded (edge chunks whole): what a cache holding the
        whole array holds."""
        a = self.array
        chunks = math.prod(-(-s // c) * c for s, c in zip(a.shape, a.chunk_shape, strict=True))
        return chunks * np.dtype(a.dtype).itemsize

    @property
    def cast(self) -> str | None:
        """The engine's name of the output type, or ``None`` for the array's own."""
        return None if self.dtype is None else CAST_DTYPES[self.dtype]

    def describe(self) -> str:
        a = self.array
        shards = f", shards={tuple(a.shard_shape)}" if a.shard_shape else ""
        cast = "" if self.dtype is None else f" -> {str(self.dtype).removeprefix('torch.')}"
        norm = "" if (self.mean, self.std) == (0.0, 1.0) else f" (x-{self.mean})/{self.std}"
        scale = "" if all(f == 1 for f in self.scale) else f", scale={self.scale}"
        return (
            f"{self.label!r} v{a.zarr_format} {tuple(a.shape)} {a.dtype}{cast}{norm}"
            f", chunks={tuple(a.chunk_shape)}{shards}{scale}"
        )


def joint_grid(sources: Sequence[Source]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shape of the grid all arrays share, and the step origins must keep so that every
    array's window starts on one of its own elements."""
    grids = {s.label: s.grid_shape for s in sources}
    if len(set(grids.values())) > 1:
        raise ValueError(
            "arrays do not line up (shape times scale, per array): "
            + ", ".join(f"{label}: {g}" for label, g in grids.items())
        )
    grid = next(iter(grids.values()))
    step = tuple(math.lcm(*dims) for dims in zip(*(s.scale for s in sources), strict=True))
    return grid, step


def start_engine(
    parts: Sequence[tuple[Source, Sequence[Sequence[tuple[int, int]]]]],
    threads: int,
    direct_io: bool = False,
    io_threads: int = 0,
    cache: _lsio_torch.ChunkCache | None = None,
    disk_cache: _lsio_torch.DiskCache | None = None,
    memory: _lsio_torch.BatchPool | None = None,
) -> _lsio_torch.Engine:
    """One engine for every array of a dataset: ``parts`` pairs each array with the runs its
    samples read (per dimension, ``(offset, length)`` past the sample's origin in the array,
    written out one after the other). Its ``threads`` serve all of them; part ``i``'s chunks
    are number ``i`` in ``cache``."""
    return _lsio_torch.Engine(
        [(s.array, [list(dim) for dim in runs], s.cast, s.mean, s.std) for s, runs in parts],
        threads,
        direct_io=direct_io,
        io_threads=io_threads,
        cache=cache,
        disk_cache=disk_cache,
        memory=memory,
    )
