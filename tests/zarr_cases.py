"""The conformance cases: Zarr arrays written by zarr-python 3, xarray and tensorstore,
covering every format feature lsio_torch reads. Each case writes one array and returns its
path; zarr-python's read of that path is the reference."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import google_crc32c
import numcodecs
import numpy as np
from support import smooth_field, write_zarr
from zarr.codecs import (
    BloscCodec,
    BytesCodec,
    Crc32cCodec,
    GzipCodec,
    ShardingCodec,
    TransposeCodec,
    ZstdCodec,
)

SHAPE = (11, 13, 7)
CHUNKS = (4, 5, 3)
SHARD = (4, 10, 6)
INNER = (2, 5, 3)


def field(dtype: str, seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Smooth data plus noise in `dtype` (bool: a threshold; complex: two fields)."""
    kind = np.dtype(dtype).kind
    if kind == "b":
        return smooth_field(shape, "float32", seed) > 0.5
    if kind == "c":
        real = smooth_field(shape, "float64", seed)
        imag = smooth_field(shape, "float64", seed + 1)
        return (real + 1j * imag).astype(dtype)
    return smooth_field(shape, np.dtype(dtype).newbyteorder("=").name, seed).astype(dtype)


def with_holes(values: np.ndarray, fill) -> np.ndarray:
    """Sets the first chunk (and so, sharded, an inner chunk) to the fill value, so it is
    never written: the reader must produce the fill value there."""
    if fill is not None:
        values = values.copy()
        values[: CHUNKS[0], : CHUNKS[1], : CHUNKS[2]] = fill
    return values


def write(path: Path, values: np.ndarray, fill=0, **kwargs) -> Path:
    kwargs.setdefault("chunks", CHUNKS)
    return write_zarr(path, with_holes(values, fill), fill_value=fill, **kwargs)


def v2(compressor=None, dtype="float32", fill=0, **kwargs) -> Callable[[Path], Path]:
    return lambda p: write(
        p, field(dtype), fill, zarr_format=2, compressors=compressor, dtype=dtype, **kwargs
    )


def v3(dtype="float32", fill=0, **kwargs) -> Callable[[Path], Path]:
    return lambda p: write(p, field(dtype), fill, zarr_format=3, dtype=dtype, **kwargs)


def sharded(index_location="end", inner_codecs=None, dtype="int16", **kwargs):
    codec = ShardingCodec(
        chunk_shape=INNER,
        codecs=inner_codecs or [BytesCodec(), ZstdCodec(level=3)],
        index_codecs=[BytesCodec(), Crc32cCodec()],
        index_location=index_location,
    )
    return v3(dtype, chunks=SHARD, serializer=codec, compressors=None, filters=None, **kwargs)


def edited_v3(base: Callable[[Path], Path], edit: Callable[[dict], None]):
    """A v3 case whose zarr.json is then edited (fields zarr-python does not write)."""

    def make(path: Path) -> Path:
        base(path)
        meta_path = path / "zarr.json"
        meta = json.loads(meta_path.read_text())
        edit(meta)
        meta_path.write_text(json.dumps(meta))
        return path

    return make


def rewrite_chunks(base: Callable[[Path], Path], rewrite: Callable[[bytes], bytes]):
    """A case whose chunk files are rewritten byte for byte by `rewrite`."""

    def make(path: Path) -> Path:
        base(path)
        for chunk in (path / "c").rglob("*"):
            if chunk.is_file():
                chunk.write_bytes(rewrite(chunk.read_bytes()))
        return path

    return make


def zstd_without_content_size(chunk: bytes) -> bytes:
    import zstandard

    raw = zstandard.ZstdDecompressor().decompress(chunk)
    return zstandard.ZstdCompressor(level=3, write_content_size=False).compress(raw)


def shuffled_shard(shard: bytes) -> bytes:
    """The same shard with its inner chunks stored in reverse order, with gaps between."""
    per_shard = int(np.prod([s // i for s, i in zip(SHARD, INNER, strict=True)]))
    index_len = 16 * per_shard + 4
    entries = np.frombuffer(shard[-index_len:-4], dtype="<u8").reshape(-1, 2).copy()
    body = bytearray(b"\xab" * 7)  # leading gap
    for i in reversed(range(per_shard)):
        offset, length = entries[i]
        if offset == 2**64 - 1:
            continue
        entries[i] = (len(body), length)
        body += shard[offset : offset + length] + b"\xcd" * (i % 5)
    index = entries.astype("<u8").tobytes()
    return bytes(body) + index + google_crc32c.value(index).to_bytes(4, "little")


def tensorstore_v3(path: Path) -> Path:
    import tensorstore as ts

    codecs = [
        {
            "name": "sharding_indexed",
            "configuration": {
                "chunk_shape": list(INNER),
                "codecs": [
                    {"name": "bytes", "configuration": {"endian": "little"}},
                    {"name": "zstd", "configuration": {"level": 3}},
                ],
                "index_codecs": [
                    {"name": "bytes", "configuration": {"endian": "little"}},
                    {"name": "crc32c"},
                ],
                "index_location": "start",
            },
        }
    ]
    spec = {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": str(path)},
        "metadata": {
            "shape": list(SHAPE),
            "data_type": "int32",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(SHARD)}},
            "codecs": codecs,
            "fill_value": -7,
            "dimension_names": ["t", "y", "x"],
        },
    }
    store = ts.open(spec, create=True, delete_existing=True).result()
    store.write(with_holes(field("int32", 5), -7)).result()
    return path


def tensorstore_v2(compressor: dict, dtype: str) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        import tensorstore as ts

        spec = {
            "driver": "zarr",
            "kvstore": {"driver": "file", "path": str(path)},
            "metadata": {
                "shape": list(SHAPE),
                "chunks": list(CHUNKS),
                "dtype": dtype,
                "compressor": compressor,
                "order": "F",
            },
        }
        store = ts.open(spec, create=True, delete_existing=True).result()
        store.write(field(dtype, 6)).result()
        return path

    return make


def xarray_case(zarr_format: int) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        import xarray as xr

        dims = ("time", "lat", "lon")
        temperature = field("float32", 7)
        temperature[0, :3, :3] = np.nan  # xarray's _FillValue for floats is NaN
        ds = xr.Dataset({"t2m": (dims, temperature), "u10": (dims, field("float32", 8))})
        ds.to_zarr(path, zarr_format=zarr_format, consolidated=True, mode="w")
        return path / "t2m"

    return make


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Path], Path]


Blosc = numcodecs.Blosc
CASES = [
    # Zarr v2: every compressor, blosc's codecs and shuffles.
    *[
        Case(f"v2-blosc-{cname}-{name}", v2(Blosc(cname, 5, shuffle)))
        for cname in ["lz4", "lz4hc", "zstd", "zlib", "blosclz"]
        for name, shuffle in [("shuffle", Blosc.SHUFFLE)]
    ],
    Case("v2-blosc-lz4-noshuffle", v2(Blosc("lz4", 5, Blosc.NOSHUFFLE), "int16")),
    Case("v2-blosc-lz4-bitshuffle", v2(Blosc("lz4", 5, Blosc.BITSHUFFLE), "int16")),
    Case("v2-blosc-zstd-bitshuffle-f8", v2(Blosc("zstd", 3, Blosc.BITSHUFFLE), "float64")),
    Case("v2-zstd", v2(numcodecs.Zstd(level=3))),
    Case("v2-zlib", v2(numcodecs.Zlib(level=5))),
    Case("v2-gzip", v2(numcodecs.GZip(level=5))),
    Case("v2-none", v2(None, "int32")),
    # v2 layout: order F, both separators.
    Case("v2-order-F", v2(numcodecs.Zstd(), "int16", order="F")),
    Case("v2-order-F-none", v2(None, "float64", order="F")),
    Case(
        "v2-separator-slash",
        v2(numcodecs.Zstd(), chunk_key_encoding={"name": "v2", "separator": "/"}),
    ),
    Case(
        "v2-separator-dot",
        v2(numcodecs.Zstd(), chunk_key_encoding={"name": "v2", "separator": "."}),
    ),
    # v2 fill values.
    Case("v2-fill-NaN", v2(numcodecs.Zstd(), "float32", np.nan)),
    Case("v2-fill-Infinity", v2(numcodecs.Zstd(), "float64", np.inf)),
    Case("v2-fill--Infinity", v2(numcodecs.Zstd(), "float32", -np.inf)),
    Case("v2-fill-null", v2(numcodecs.Zstd(), "int16", None)),
    Case("v2-fill-number", v2(numcodecs.Zstd(), "int32", -5)),
    # v2 byte orders.
    Case("v2-big-endian-i4", v2(numcodecs.Zstd(), ">i4", 3)),
    Case("v2-big-endian-f8", v2(numcodecs.Zlib(), ">f8", 1.5)),
    Case("v2-big-endian-c16", v2(None, ">c16", 0)),
    Case("v2-no-byte-order-u1", v2(numcodecs.Zstd(), "|u1", 9)),
    # v2 dtypes.
    *[
        Case(f"v2-dtype-{d}", v2(numcodecs.Zstd(), d, fill))
        for d, fill in [
            ("bool", False),
            ("int8", -3),
            ("int64", 11),
            ("uint16", 4),
            ("uint32", 5),
            ("uint64", 6),
            ("float16", 0.5),
            ("complex64", 0),
            ("complex128", 0),
        ]
    ],
    # Zarr v3 codecs.
    Case("v3-bytes-big", v3("int32", serializer=BytesCodec(endian="big"))),
    Case("v3-bytes-big-f8", v3("float64", serializer=BytesCodec(endian="big"), compressors=None)),
    Case("v3-transpose-201", v3("int16", filters=[TransposeCodec(order=(2, 0, 1))])),
    Case("v3-transpose-102", v3("float32", filters=[TransposeCodec(order=(1, 0, 2))])),
    Case(
        "v3-transpose-021-big",
        v3(
            "uint16", filters=[TransposeCodec(order=(0, 2, 1))], serializer=BytesCodec(endian="big")
        ),
    ),
    Case("v3-zstd-checksum", v3(compressors=ZstdCodec(level=3, checksum=True))),
    Case(
        "v3-zstd-no-content-size",
        rewrite_chunks(v3("int16", compressors=ZstdCodec(level=3)), zstd_without_content_size),
    ),
    Case(
        "v3-blosc-lz4-shuffle",
        v3("float32", compressors=BloscCodec(cname="lz4", shuffle="shuffle")),
    ),
    Case(
        "v3-blosc-zstd-bitshuffle",
        v3("int16", compressors=BloscCodec(cname="zstd", shuffle="bitshuffle")),
    ),
    Case(
        "v3-blosc-zlib-noshuffle",
        v3("float64", compressors=BloscCodec(cname="zlib", shuffle="noshuffle")),
    ),
    Case("v3-gzip", v3("int32", compressors=GzipCodec(level=5))),
    Case("v3-crc32c", v3("float32", compressors=[ZstdCodec(level=1), Crc32cCodec()])),
    Case("v3-uncompressed", v3("uint8", compressors=None)),
    # v3 sharding.
    Case("v3-shard-index-end", sharded("end")),
    Case("v3-shard-index-start", sharded("start", dtype="float32")),
    Case(
        "v3-shard-inner-transpose-crc32c",
        sharded(
            "end",
            [TransposeCodec(order=(2, 1, 0)), BytesCodec(), GzipCodec(), Crc32cCodec()],
            "float64",
        ),
    ),
    Case(
        "v3-shard-nested",
        v3(
            "float32",
            chunks=(8, 10, 6),
            serializer=ShardingCodec(
                chunk_shape=SHARD,
                codecs=[ShardingCodec(chunk_shape=INNER, codecs=[BytesCodec(), ZstdCodec()])],
            ),
            compressors=None,
            filters=None,
        ),
    ),
    Case(
        "v3-shard-shuffled-with-gaps",
        rewrite_chunks(sharded("end", dtype="uint16"), shuffled_shard),
    ),
    # v3 chunk keys.
    Case("v3-keys-default-dot", v3(chunk_key_encoding={"name": "default", "separator": "."})),
    Case("v3-keys-v2-dot", v3(chunk_key_encoding={"name": "v2", "separator": "."})),
    Case("v3-keys-v2-slash", v3(chunk_key_encoding={"name": "v2", "separator": "/"})),
    # v3 fill values.
    Case("v3-fill-NaN", v3("float32", np.nan)),
    Case("v3-fill-Infinity", v3("float64", np.inf)),
    Case("v3-fill--Infinity", v3("float32", -np.inf)),
    Case(
        "v3-fill-hex",
        edited_v3(v3("float32", 0), lambda m: m.update(fill_value="0x7fc00001")),
    ),
    Case(
        "v3-ignorable-field",
        edited_v3(v3("int16"), lambda m: m.update(lsio_note={"must_understand": False, "x": 1})),
    ),
    # v3 dtypes.
    *[
        Case(f"v3-dtype-{d}", v3(d, fill))
        for d, fill in [
            ("bool", True),
            ("int8", -1),
            ("int16", 2),
            ("int32", -3),
            ("int64", 4),
            ("uint8", 5),
            ("uint16", 6),
            ("uint32", 7),
            ("uint64", 8),
            ("float16", -0.25),
            ("float32", 0.5),
            ("float64", 1e300),
            ("complex64", 0),
            ("complex128", 0),
        ]
    ],
    # Other writers.
    Case("tensorstore-v3-sharded", tensorstore_v3),
    Case(
        "tensorstore-v2-blosc-F",
        tensorstore_v2({"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1}, "<f4"),
    ),
    Case("tensorstore-v2-zlib-be", tensorstore_v2({"id": "zlib", "level": 4}, ">i2")),
    Case("xarray-v2", xarray_case(2)),
    Case("xarray-v3", xarray_case(3)),
]
