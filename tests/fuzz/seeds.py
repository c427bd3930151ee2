"""The seed arrays: small arrays of every layout and codec the engine reads, written by
zarr-python 3 with partial edge chunks and unwritten chunks (and shards, and inner chunks),
and what the mutators need to know of each one's layout (``Seed``)."""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SHAPE = (6, 20, 13)  # no chunk or shard shape below divides it: edge chunks are partial
CHUNKS = (4, 7, 5)
SHARD = (4, 8, 6)
INNER = (2, 4, 3)

METADATA_FILES = ("zarr.json", ".zarray", ".zattrs", ".zgroup")


def _values(dtype: str, seed: int) -> np.ndarray:
    """Smooth waves plus noise in `dtype`: compresses like data, not like zeros."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 3, n) for n in SHAPE], indexing="ij")
    field = sum(np.sin(g * (i + 1)) for i, g in enumerate(grids)) + 0.1 * rng.normal(size=SHAPE)
    kind = np.dtype(dtype).kind
    if kind == "b":
        return field > 0.5
    if kind == "c":
        return (field + 1j * field[::-1]).astype(dtype)
    if kind == "f":
        return field.astype(dtype)
    info = np.iinfo(np.dtype(dtype).newbyteorder("="))
    span = min(int(info.max) - int(info.min), 60000)
    scaled = (field - field.min()) / (np.ptp(field) + 1e-9) * span
    return (scaled + max(int(info.min), -30000)).astype(dtype)


def _with_holes(
    values: np.ndarray, fill: Any, block: tuple[int, ...], first: bool = True
) -> np.ndarray:
    """The first (unless not `first`) and the last block (chunk, or shard) set to the fill
    value: zarr-python leaves them unwritten, so they read as missing chunks (or shards, or
    empty shard slots)."""
    values = values.copy()
    if first:
        values[tuple(slice(0, b) for b in block)] = fill
    last = tuple(slice((s - 1) // b * b, s) for s, b in zip(SHAPE, block, strict=True))
    values[last] = fill
    return values


def _write_v3(path: Path, dtype: str, fill: Any, seed: int, **kwargs: Any) -> None:
    import zarr

    sharded = "serializer" in kwargs and kwargs.get("chunks") == SHARD
    array = zarr.create_array(
        str(path),
        shape=SHAPE,
        dtype=dtype,
        fill_value=fill,
        zarr_format=3,
        overwrite=True,
        **{"chunks": CHUNKS, **kwargs},
    )
    values = _with_holes(_values(dtype, seed), fill, INNER if sharded else CHUNKS)
    if sharded:  # and a whole shard never written
        values = _with_holes(values, fill, SHARD, first=False)
    array[...] = values


def _write_v2(path: Path, dtype: str, fill: Any, seed: int, compressor: Any, **kwargs) -> None:
    import zarr

    array = zarr.create_array(
        str(path),
        shape=SHAPE,
        chunks=CHUNKS,
        dtype=dtype,
        fill_value=fill,
        zarr_format=2,
        compressors=compressor,
        overwrite=True,
        **kwargs,
    )
    array[...] = _with_holes(_values(dtype, seed), fill, CHUNKS)


def _sharded(index_location: str, inner: list[Any]) -> dict[str, Any]:
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

    codec = ShardingCodec(
        chunk_shape=INNER,
        codecs=inner,
        index_codecs=[BytesCodec(endian="little"), Crc32cCodec()],
        index_location=index_location,
    )
    return dict(chunks=SHARD, serializer=codec, compressors=None, filters=None)


def _seed_writers() -> dict[str, Callable[[Path, int], None]]:
    import numcodecs
    from zarr.codecs import (
        BloscCodec,
        BytesCodec,
        Crc32cCodec,
        GzipCodec,
        ShardingCodec,
        TransposeCodec,
        ZstdCodec,
    )

    blosc = numcodecs.Blosc
    return {
        "v3-shard-end": lambda p, s: _write_v3(
            p, "int16", 3, s, **_sharded("end", [BytesCodec(), ZstdCodec(level=3)])
        ),
        "v3-shard-start": lambda p, s: _write_v3(
            p, "float32", 1.5, s, **_sharded("start", [BytesCodec(), ZstdCodec(level=3)])
        ),
        "v3-shard-crc": lambda p, s: _write_v3(
            p,
            "uint16",
            7,
            s,
            **_sharded("end", [BytesCodec(), ZstdCodec(level=1), Crc32cCodec()]),
        ),
        "v3-shard-nested": lambda p, s: _write_v3(
            p,
            "float32",
            -0.5,
            s,
            chunks=SHARD,
            serializer=ShardingCodec(
                chunk_shape=INNER,
                codecs=[ShardingCodec(chunk_shape=(1, 2, 3), codecs=[BytesCodec(), ZstdCodec()])],
                index_location="start",
            ),
            compressors=None,
            filters=None,
        ),
        "v3-zstd": lambda p, s: _write_v3(p, "int32", -5, s, compressors=ZstdCodec(level=3)),
        "v3-zstd-crc": lambda p, s: _write_v3(
            p, "float64", 0.25, s, compressors=[ZstdCodec(level=1, checksum=True), Crc32cCodec()]
        ),
        "v3-blosc": lambda p, s: _write_v3(
            p, "float32", 0, s, compressors=BloscCodec(cname="lz4", shuffle="shuffle")
        ),
        "v3-blosc-zstd-bitshuffle": lambda p, s: _write_v3(
            p, "int16", 2, s, compressors=BloscCodec(cname="zstd", shuffle="bitshuffle")
        ),
        "v3-gzip": lambda p, s: _write_v3(p, "int32", 9, s, compressors=GzipCodec(level=5)),
        "v3-raw": lambda p, s: _write_v3(p, "uint8", 4, s, compressors=None),
        "v3-transpose-big": lambda p, s: _write_v3(
            p,
            "int32",
            -1,
            s,
            filters=[TransposeCodec(order=(2, 0, 1))],
            serializer=BytesCodec(endian="big"),
            compressors=ZstdCodec(level=3),
        ),
        "v3-bool": lambda p, s: _write_v3(p, "bool", False, s, compressors=ZstdCodec(level=3)),
        "v2-blosc": lambda p, s: _write_v2(p, "float32", 0.5, s, blosc("lz4", 5, blosc.SHUFFLE)),
        "v2-blosc-zstd-noshuffle": lambda p, s: _write_v2(
            p, "uint8", 1, s, blosc("zstd", 3, blosc.NOSHUFFLE)
        ),
        "v2-zstd": lambda p, s: _write_v2(p, "int16", 6, s, numcodecs.Zstd(level=3)),
        "v2-zlib": lambda p, s: _write_v2(p, "uint16", 8, s, numcodecs.Zlib(level=5)),
        "v2-order-F": lambda p, s: _write_v2(p, "int32", 2, s, numcodecs.Zstd(level=3), order="F"),
        "v2-none": lambda p, s: _write_v2(p, "float64", -2.0, s, None),
        "v2-big-endian": lambda p, s: _write_v2(p, ">i4", 5, s, numcodecs.Zlib(level=3)),
        "v2-complex": lambda p, s: _write_v2(p, "complex64", 0, s, None),
    }


@dataclasses.dataclass(frozen=True)
class Seed:
    """A seed array on disk and what the mutators need to know of its layout."""

    name: str
    path: Path
    zarr_format: int
    meta_file: str  # "zarr.json" or ".zarray"
    chunk_files: tuple[str, ...]  # relative POSIX paths, sorted
    block: tuple[int, ...]  # the chunk grid's chunk shape (a shard's, when sharded)
    grid: tuple[int, ...]  # the (inner) chunk shape
    shard_entries: int | None  # inner chunks per shard, when sharded
    index_location: str | None  # "start" or "end", when sharded
    inner_crc: bool  # the inner chunks end with a crc32c
    chunk_crc: bool  # the (unsharded) chunks end with a crc32c
    compressor: str  # "blosc", "zstd", "gzip", "zlib" or "none"

    @property
    def sharded(self) -> bool:
        return self.shard_entries is not None

    @property
    def index_len(self) -> int:
        assert self.shard_entries is not None
        return 16 * self.shard_entries + 4


def _codec_name(codec: dict[str, Any]) -> str:
    return str(codec.get("name") or codec.get("id"))


def _compressor_of(names: list[str]) -> str:
    for name in names:
        for known in ("blosc", "zstd", "gzip", "zlib"):
            if known in name:
                return known
    return "none"


def describe_seed(name: str, path: Path) -> Seed:
    files = tuple(
        sorted(
            p.relative_to(path).as_posix()
            for p in path.rglob("*")
            if p.is_file() and p.name not in METADATA_FILES
        )
    )
    common = dict(name=name, path=path, chunk_files=files)
    if (path / "zarr.json").exists():
        meta = json.loads((path / "zarr.json").read_text())
        codecs = meta["codecs"]
        chunk_shape = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        sharding = next((c for c in codecs if c["name"] == "sharding_indexed"), None)
        if sharding is not None:
            config = sharding["configuration"]
            inner = tuple(config["chunk_shape"])
            inner_names = [_codec_name(c) for c in config["codecs"]]
            return Seed(
                **common,
                zarr_format=3,
                meta_file="zarr.json",
                block=chunk_shape,
                grid=inner,
                shard_entries=math.prod(s // i for s, i in zip(chunk_shape, inner, strict=True)),
                index_location=config.get("index_location", "end"),
                inner_crc=inner_names[-1] == "crc32c",
                chunk_crc=False,
                compressor=_compressor_of(inner_names),
            )
        names = [_codec_name(c) for c in codecs]
        return Seed(
            **common,
            zarr_format=3,
            meta_file="zarr.json",
            block=chunk_shape,
            grid=chunk_shape,
            shard_entries=None,
            index_location=None,
            inner_crc=False,
            chunk_crc=names[-1] == "crc32c",
            compressor=_compressor_of(names),
        )
    meta = json.loads((path / ".zarray").read_text())
    compressor = meta.get("compressor")
    return Seed(
        **common,
        zarr_format=2,
        meta_file=".zarray",
        block=tuple(meta["chunks"]),
        grid=tuple(meta["chunks"]),
        shard_entries=None,
        index_location=None,
        inner_crc=False,
        chunk_crc=False,
        compressor=_compressor_of([_codec_name(compressor)] if compressor else []),
    )


def write_seeds(root: Path, names: list[str] | None = None) -> dict[str, Seed]:
    """Writes every seed array (or those named) under `root` with zarr-python."""
    import warnings

    writers = _seed_writers()
    seeds = {}
    for name in sorted(writers):
        if names is not None and name not in names:
            continue
        path = root / f"{name}.zarr"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            writers[name](path, zlib.crc32(name.encode()))  # a seed array's values: its own
        seeds[name] = describe_seed(name, path)
    return seeds
