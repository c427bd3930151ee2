"""Test arrays, written by zarr-python (the reference reader and writer)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import zarr

# The object stores (moto's S3, the HTTP object server) the remote tests read from.
from object_stores import object_server, s3  # noqa: F401
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
    """An array on disk and the values zarr-python reads back from it."""

    path: Path
    layout: str
    dtype: str
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


def write_array(path: Path, layout: str, dtype: str, seed: int = 0) -> Written:
    """Writes SHAPE with holes: an inner chunk of fill values (an empty shard slot, or a
    missing chunk file) and a band of whole shards/chunks that are never written."""
    values = smooth_field(SHAPE, dtype, seed)
    values[0:4, 16:32, 0:10] = FILL  # one whole inner chunk
    values[8:13, :, :] = FILL  # the last row of shards along axis 0
    common = dict(shape=SHAPE, dtype=dtype, fill_value=FILL, overwrite=True, zarr_format=3)
    compressed = [] if layout.endswith("-raw") else [ZstdCodec(level=3)]
    if layout.startswith("unsharded"):
        array = zarr.create_array(path, chunks=INNER, compressors=compressed or None, **common)
    else:
        sharding = ShardingCodec(
            chunk_shape=INNER,
            codecs=[BytesCodec(endian="little"), *compressed],
            index_codecs=[BytesCodec(endian="little"), Crc32cCodec()],
            index_location="start" if layout == "shard-index-start" else "end",
        )
        array = zarr.create_array(
            path, chunks=SHARD, serializer=sharding, compressors=None, filters=None, **common
        )
    array[...] = values
    return Written(path, layout, dtype, zarr.open_array(path, mode="r")[...])


@pytest.fixture(scope="session")
def arrays(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Written]:
    root = tmp_path_factory.mktemp("arrays")
    return {
        (layout, dtype): write_array(root / f"{layout}-{dtype}.zarr", layout, dtype, seed=i)
        for i, (layout, dtype) in enumerate(
            (layout, dtype) for layout in LAYOUTS for dtype in DTYPES
        )
    }


@pytest.fixture(params=["io_uring", "pread"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per I/O backend."""
    monkeypatch.setenv("LSIO_IO", "uring" if request.param == "io_uring" else "pread")
    return request.param


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
