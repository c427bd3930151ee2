"""Test arrays, written by zarr-python (the reference writer and reader)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec

DTYPES = ["uint8", "int16", "uint16", "int32", "float32", "float64"]
# "-raw": chunks stored uncompressed, which the engine reads straight into the batch.
LAYOUTS = [
    "shard-index-end",
    "shard-index-start",
    "unsharded",
    "shard-index-end-raw",
    "unsharded-raw",
]

SHAPE = (13, 50, 37)  # not a multiple of any chunk shape: edge chunks are partial
INNER = (4, 16, 10)
SHARD = (8, 32, 20)
FILL = 7


@dataclasses.dataclass(frozen=True)
class Written:
    """An array on disk: the numpy array written into it (``source``), and what zarr-python
    reads back from it (``values``, the reference every crop is compared with)."""

    path: Path
    layout: str
    dtype: str
    source: np.ndarray
    values: np.ndarray


def smooth_field(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    """Smooth waves plus noise: compresses like real data, not like zeros."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 3, n) for n in shape], indexing="ij")
    field = sum(np.sin(g * (i + 1)) for i, g in enumerate(grids)) + 0.1 * rng.normal(size=shape)
    if np.dtype(dtype).kind == "f":
        return field.astype(dtype)
    info = np.iinfo(dtype)
    scaled = (field - field.min()) / (np.ptp(field) + 1e-9) * min(info.max - info.min, 60000)
    return (scaled + max(info.min, -30000)).astype(dtype)


def write_zarr(path: Path, values: np.ndarray, **options: Any) -> Path:
    """Writes ``values`` as a new array at ``path`` with zarr-python (``options``: those of
    ``zarr.create_array``; the fill value is 0 unless given); returns the path."""
    options.setdefault("fill_value", 0)
    options.setdefault("dtype", values.dtype)
    array = zarr.create_array(path, shape=values.shape, overwrite=True, **options)
    array[...] = values
    return Path(path)


def write_array(path: Path, layout: str, dtype: str, seed: int = 0) -> Written:
    """Writes SHAPE with holes: an inner chunk of fill values (an empty shard slot, or a
    missing chunk file) and a band of whole shards/chunks that are never written."""
    values = smooth_field(SHAPE, dtype, seed)
    values[0:4, 16:32, 0:10] = FILL  # one whole inner chunk
    values[8:13, :, :] = FILL  # the last row of shards along axis 0
    common: dict[str, Any] = dict(fill_value=FILL, zarr_format=3)
    compressed = [] if layout.endswith("-raw") else [ZstdCodec(level=3)]
    if layout.startswith("unsharded"):
        write_zarr(path, values, chunks=INNER, compressors=compressed or None, **common)
    else:
        sharding = ShardingCodec(
            chunk_shape=INNER,
            codecs=[BytesCodec(endian="little"), *compressed],
            index_codecs=[BytesCodec(endian="little"), Crc32cCodec()],
            index_location="start" if layout == "shard-index-start" else "end",
        )
        write_zarr(
            path, values, chunks=SHARD, serializer=sharding, compressors=None, filters=None,
            **common,
        )  # fmt: skip
    return Written(path, layout, dtype, values, zarr.open_array(path, mode="r")[...])
