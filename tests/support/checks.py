"""Crops compared with zarr-python's reads: the reference every test of the engine's output
uses, written once."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

Compare = Callable[[np.ndarray, np.ndarray], bool]


def crop_origins(shape: tuple[int, ...], crop: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    """n origins: the two extreme corners, then uniform positions."""
    rng = np.random.default_rng(seed)
    high = np.array(shape) - np.array(crop)
    origins = rng.integers(0, high + 1, size=(n, len(shape)))
    origins[0] = 0
    origins[1] = high
    return origins


def reference_crop(values: np.ndarray, origin, crop) -> np.ndarray:
    return values[tuple(slice(int(o), int(o) + c) for o, c in zip(origin, crop, strict=True))]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality (NaN equals NaN of the same bits)."""
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def same_values(got: np.ndarray, want: np.ndarray) -> bool:
    """Bit-for-bit equality, except that any NaN equals any NaN (writers differ in the NaN
    payloads they store)."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return False
    if want.dtype.kind not in "fc":
        return got.tobytes() == want.tobytes()
    if want.dtype.kind == "c":
        pairs = [(got.real, want.real), (got.imag, want.imag)]
    else:
        pairs = [(got, want)]
    for a, b in pairs:
        nan = np.isnan(b)
        if not np.array_equal(np.isnan(a), nan) or a[~nan].tobytes() != b[~nan].tobytes():
            return False
    return True


def _numpy(x: Any) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def check_crops(
    crops: Iterable[Any],
    origins: Iterable[Sequence[int]],
    values: np.ndarray,
    crop: Sequence[int],
    same: Compare = same_bits,
) -> int:
    """Asserts each crop equals ``values`` (zarr-python's read) at its origin; returns how
    many were compared."""
    n = 0
    for got, origin in zip(crops, origins, strict=True):
        origin = [int(o) for o in origin]
        want = reference_crop(values, origin, crop)
        assert same(_numpy(got), want), f"crop at {origin} differs from zarr-python's read"
        n += 1
    return n


def check_batches(
    batches: Iterable[tuple[Any, Any]],
    values: np.ndarray | Mapping[str, np.ndarray],
    crop: Sequence[int] | Mapping[str, Sequence[int]],
    same: Compare = same_bits,
) -> int:
    """Iterates ``(batch, origins)`` pairs (a dataset with ``return_origins=True``, or its
    DataLoader) and asserts every crop equals zarr-python's read; a batch of several arrays
    is a dict, checked name by name against ``values[name]``. Returns the crops compared
    (per array)."""
    n = 0
    for batch, origins in batches:
        origins = _numpy(origins).tolist()
        if isinstance(values, Mapping):
            assert set(batch) == set(values), (set(batch), set(values))
            for name, want in values.items():
                shape = crop[name] if isinstance(crop, Mapping) else crop
                check_crops(batch[name], origins, want, shape, same)
        else:
            assert not isinstance(crop, Mapping)
            check_crops(batch, origins, values, crop, same)
        n += len(origins)
    return n


def chunks_touched(
    origins: Iterable[Sequence[int]], crop: Sequence[int], chunks: Sequence[int]
) -> set[tuple[int, ...]]:
    """The grid coordinates of the chunks a batch of crops touches, counted from the crops'
    corners (independent of the engine's planner)."""
    touched: set[tuple[int, ...]] = set()
    for origin in origins:
        spans = [
            range(int(o) // c, (int(o) + n - 1) // c + 1)
            for o, n, c in zip(origin, crop, chunks, strict=True)
        ]
        touched.update(itertools.product(*spans))
    return touched
