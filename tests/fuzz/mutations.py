"""Drawing specs: the boundary values and replacement strings, and a random edit of a seed
array's metadata, shard index, chunk payload or chunk files (or several at once), plus the
systematic list of every numeric metadata field at every boundary value."""

from __future__ import annotations

import json
import random
from typing import Any

from .formats import inner_chunk, is_number, last_key, numeric_paths, shard_entries, walk
from .seeds import SHAPE, Seed

#: Values every numeric metadata field is set to, one at a time.
BOUNDARY_NUMBERS: list[Any] = [
    0,
    1,
    -1,
    2,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**31),
    -(2**63),
    2.5,
    -0.0,
    1e300,
]
#: Offsets and lengths written into shard indexes (plus values relative to the shard).
BOUNDARY_U64 = [0, 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1]
BOUNDARY_U32 = [0, 1, 16, 2**31 - 1, 2**31, 2**32 - 1]
#: Values that replace a metadata node of another type.
OTHER_TYPES: list[Any] = [None, True, False, "x", "", [], {}, [0], [2**64], {"name": "x"}, 0, -1]

#: Replacement strings, by the key that holds the string.
STRINGS: dict[str, list[str]] = {
    "data_type": [
        "bool",
        "int8",
        "uint64",
        "float16",
        "float64",
        "complex128",
        "r16",
        "r0",
        "string",
        "bytes",
        "int4",
        "float8_e4m3",
        "numpy.datetime64",
        "INT16",
        "",
    ],
    "dtype": [
        "<i8",
        ">f4",
        "|b1",
        "<c16",
        "<f2",
        ">u8",
        "i2",
        "<U4",
        "|S3",
        "<M8[ns]",
        "<m8[s]",
        "|V2",
        "|O",
        "<i0",
        "<i3",
        "",
    ],
    "name": [
        "bytes",
        "zstd",
        "blosc",
        "gzip",
        "crc32c",
        "transpose",
        "sharding_indexed",
        "vlen-utf8",
        "numcodecs.zlib",
        "regular",
        "rectilinear",
        "default",
        "v2",
        "nosuchcodec",
        "",
    ],
    "endian": ["big", "little", "middle", ""],
    "order": ["C", "F", "K", ""],
    "index_location": ["start", "end", "middle", ""],
    "cname": ["lz4", "lz4hc", "zstd", "zlib", "blosclz", "snappy", "nosuch"],
    "shuffle": ["shuffle", "noshuffle", "bitshuffle", "bad"],
    "separator": ["/", ".", "", "..", "\\"],
    "dimension_separator": ["/", ".", "", "x"],
    "id": ["blosc", "zstd", "zlib", "gzip", "lz4", "bz2", "lzma", "nosuch"],
    "node_type": ["array", "group", ""],
    "fill_value": [
        "NaN",
        "Infinity",
        "-Infinity",
        "0x7fc00001",
        "0xffffffffffffffff",
        "0x",
        "0x7f",
        "",
        "1",
        "abc",
    ],
}
GENERIC_STRINGS = ["", "x", "NaN", "0", "\u0000", "\u00e9\u00e9", "a" * 5000]

#: Whole metadata documents that replace the file.
RAW_DOCUMENTS = ["", "null", "[]", "{}", "1", "\ufeff{}", "[" * 5000 + "]" * 5000, "{" * 300]


def _rand_hex(rng: random.Random, n: int) -> str:
    return bytes(rng.getrandbits(8) for _ in range(n)).hex()


def _meta_doc(seed: Seed) -> Any:
    return json.loads((seed.path / seed.meta_file).read_text())


def gen_meta(rng: random.Random, seed: Seed) -> dict[str, Any]:
    """A structural edit of the metadata document."""
    doc = _meta_doc(seed)
    nodes = list(walk(doc))
    file = seed.meta_file
    choice = rng.random()
    if choice < 0.3:  # a number (or boolean) to a boundary value, or off by a little
        path = rng.choice(numeric_paths(doc))
        original = dict(nodes)[path]
        values = list(BOUNDARY_NUMBERS)
        if is_number(original) and isinstance(original, int):
            values += [original + 1, original - 1, 2 * original, original // 2, 64, 1000, 65536]
        return dict(kind="meta_set", file=file, path=list(path), value=rng.choice(values))
    if choice < 0.45:  # a string to another one
        strings = [(p, v) for p, v in nodes if isinstance(v, str)]
        path, _ = rng.choice(strings)
        options = STRINGS.get(last_key(path), GENERIC_STRINGS)
        return dict(kind="meta_set", file=file, path=list(path), value=rng.choice(options))
    if choice < 0.6:  # any node to a value of another type
        path, _ = rng.choice(nodes[1:])
        return dict(kind="meta_set", file=file, path=list(path), value=rng.choice(OTHER_TYPES))
    if choice < 0.72:  # a key or list element deleted
        path, _ = rng.choice(nodes[1:])
        return dict(kind="meta_delete", file=file, path=list(path))
    if choice < 0.82:  # a list one longer
        lists = [(p, v) for p, v in nodes if isinstance(v, list)]
        if lists:
            path, value = rng.choice(lists)
            extra = rng.choice([*value, *BOUNDARY_NUMBERS[:8]]) if value else 1
            index = rng.randint(0, len(value))
            return dict(kind="meta_insert", file=file, path=list(path), index=index, value=extra)
    if choice < 0.9:  # an unknown field, ignorable or not
        dicts = [p for p, v in nodes if isinstance(v, dict)]
        path = rng.choice(dicts)
        value = rng.choice([{"must_understand": False}, {"must_understand": True}, 1, None])
        return dict(kind="meta_set", file=file, path=[*path, "lsio_fuzz"], value=value)
    # The shape, or the (inner) chunk shape, all to one boundary value.
    lists = [
        p
        for p, v in nodes
        if isinstance(v, list) and v and all(is_number(x) for x in v) and len(v) == len(SHAPE)
    ]
    path = rng.choice(lists)
    value = rng.choice(BOUNDARY_NUMBERS[:14])
    return dict(kind="meta_set", file=file, path=list(path), value=[value] * len(SHAPE))


def gen_meta_raw(rng: random.Random, seed: Seed) -> dict[str, Any]:
    """Broken JSON: truncated, a bit flipped, bytes inserted, or another document."""
    file = seed.meta_file
    n = (seed.path / file).stat().st_size
    choice = rng.random()
    if choice < 0.3:
        op = dict(op="truncate", length=rng.randint(0, n - 1))
    elif choice < 0.6:
        op = dict(op="flip", bits=[rng.randrange(8 * n)])
    elif choice < 0.8:
        data = rng.choice([_rand_hex(rng, rng.randint(1, 4)), b'"'.hex(), b"\xff\xfe".hex()])
        op = dict(op="insert", at=rng.randrange(n + 1), hex=data)
    elif choice < 0.9:
        # A digit run made very long: numbers past every integer type.
        op = dict(op="insert", at=rng.randrange(n + 1), hex=(b"9" * rng.randint(20, 400)).hex())
    else:
        return dict(kind="meta_raw", file=file, text=rng.choice(RAW_DOCUMENTS))
    return dict(kind="meta_raw", file=file, op=op)


def _shard_files(seed: Seed) -> list[str]:
    return [f for f in seed.chunk_files if f.startswith("c/")]


def gen_index(rng: random.Random, seed: Seed) -> dict[str, Any]:
    """An edit of a shard's index, the crc32c recomputed (mostly)."""
    assert seed.shard_entries is not None and seed.index_location is not None
    file = rng.choice(_shard_files(seed))
    data = (seed.path / file).read_bytes()
    entries = shard_entries(data, seed.shard_entries, seed.index_location)
    assert entries is not None
    n = seed.shard_entries
    crc = rng.random() < 0.9
    choice = rng.random()
    if choice < 0.6:
        entry = rng.randrange(n)
        field = rng.randrange(2)
        original = entries[entry][field]
        relative = [len(data), len(data) - 1, len(data) + 1, seed.index_len, original + 1]
        relative += [len(data) - seed.index_len, len(data) - seed.index_len - 1]
        relative += [original - 1, 2 * original, 2**64 - original, 2**64 - len(data)]
        value = rng.choice(BOUNDARY_U64 + relative) % 2**64
        return dict(kind="index_set", file=file, entry=entry, field=field, value=value, crc=crc)
    if choice < 0.75:
        a, b = rng.sample(range(n), 2)
        return dict(kind="index_swap", file=file, a=a, b=b, crc=crc)
    if choice < 0.85:
        src, dst = rng.sample(range(n), 2)
        return dict(kind="index_copy", file=file, src=src, dst=dst, crc=crc)
    # Raw bytes of the index.
    k = seed.index_len
    if rng.random() < 0.5:
        op = dict(op="flip", bits=[rng.randrange(8 * (k - 4)) for _ in range(rng.randint(1, 3))])
    else:
        op = dict(op="word", at=rng.randrange(k - 11) // 8 * 8, size=8, endian="<", value=0)
        op["value"] = rng.choice(BOUNDARY_U64)
    return dict(kind="index_bytes", file=file, op=op, crc=crc)


def _header_positions(compressor: str, n: int) -> list[int]:
    """Where the numeric fields of a codec's header (and trailer) lie."""
    if compressor == "blosc":  # nbytes, blocksize, cbytes, the first block start
        return [4, 8, 12, 16, 20]
    if compressor == "zstd":  # frame header: descriptor, window, content size
        return [4, 5, 6, 8]
    if compressor in ("gzip", "zlib"):  # gzip: the trailer's crc32 and size; zlib: adler32
        return [max(0, n - 4), max(0, n - 8), 0]
    return [0]


def gen_payload_op(rng: random.Random, data: bytes, compressor: str) -> dict[str, Any]:
    n = max(1, len(data))
    choice = rng.random()
    if choice < 0.3:
        return dict(op="flip", bits=[rng.randrange(8 * n) for _ in range(rng.randint(1, 4))])
    if choice < 0.45:
        lengths = [0, 1, 4, 16, n // 2, n - 1, rng.randrange(n)]
        return dict(op="truncate", length=rng.choice(lengths))
    if choice < 0.57:
        return dict(op="insert", at=rng.randrange(n + 1), hex=_rand_hex(rng, rng.randint(1, 16)))
    if choice < 0.8:  # a numeric field of the codec's header to a boundary value
        size = rng.choice([4, 4, 8])
        values = [*BOUNDARY_U32, n, n + 1, n - 1, 2 * n] if size == 4 else BOUNDARY_U64
        at = rng.choice([*_header_positions(compressor, n), rng.randrange(n)])
        endian = "<" if compressor != "gzip" or at < n - 8 else rng.choice("<>")
        return dict(op="word", at=at, size=size, endian=endian, value=rng.choice(values) % 2**64)
    if choice < 0.88:  # one header byte: blosc's flags and typesize, zstd's descriptor
        at = rng.choice([0, 1, 2, 3, 4, rng.randrange(n)])
        return dict(op="byte", at=at, value=rng.choice([0, 1, 0x02, 0x10, 0x80, 0xFF]))
    if choice < 0.94:
        return dict(op="append", hex=_rand_hex(rng, rng.choice([1, 7, 64])))
    return dict(op="replace", hex=_rand_hex(rng, rng.choice([0, 1, 16, n])))


def gen_payload(rng: random.Random, seed: Seed) -> dict[str, Any]:
    """An edit of a chunk's bytes (of an inner chunk of a shard, or of the shard file)."""
    file = rng.choice(seed.chunk_files)
    data = (seed.path / file).read_bytes()
    if seed.sharded and rng.random() < 0.75:
        present = [i for i in range(seed.shard_entries or 0) if inner_chunk(data, seed, i)]
        if present:
            inner = rng.choice(present)
            chunk = inner_chunk(data, seed, inner) or b""
            crc = seed.inner_crc and rng.random() < 0.85
            op = gen_payload_op(rng, chunk, seed.compressor)
            return dict(kind="bytes", file=file, inner=inner, op=op, crc=crc)
    crc = seed.chunk_crc and rng.random() < 0.85
    compressor = "none" if seed.sharded else seed.compressor
    return dict(kind="bytes", file=file, op=gen_payload_op(rng, data, compressor), crc=crc)


def gen_file(rng: random.Random, seed: Seed, seeds: dict[str, Seed]) -> dict[str, Any]:
    """A chunk file deleted, emptied, swapped with another, or taken from another array."""
    files = seed.chunk_files
    choice = rng.random()
    if choice < 0.25:
        return dict(kind="file_delete", file=rng.choice(files))
    if choice < 0.45:
        return dict(kind="file_empty", file=rng.choice(files))
    if choice < 0.7 and len(files) > 1:
        a, b = rng.sample(files, 2)
        return dict(kind="file_swap", a=a, b=b)
    if choice < 0.8 and len(files) > 1:
        src, dst = rng.sample(files, 2)
        return dict(kind="file_copy", src=src, dst=dst)
    other = seeds[rng.choice(sorted(seeds))]
    return dict(
        kind="file_foreign",
        seed=other.name,
        src=rng.choice(other.chunk_files),
        dst=rng.choice(files),
    )


def gen_one(rng: random.Random, seed: Seed, seeds: dict[str, Seed]) -> dict[str, Any]:
    kinds = [("meta", 30), ("meta_raw", 8), ("payload", 32), ("file", 8), ("multi", 6)]
    if seed.sharded:
        kinds.append(("index", 40))
    kind = rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
    if kind == "meta":
        return gen_meta(rng, seed)
    if kind == "meta_raw":
        return gen_meta_raw(rng, seed)
    if kind == "index":
        return gen_index(rng, seed)
    if kind == "payload":
        return gen_payload(rng, seed)
    if kind == "file":
        return gen_file(rng, seed, seeds)
    steps = []
    for _ in range(rng.randint(2, 3)):
        step = rng.choice([gen_meta, gen_payload, gen_index if seed.sharded else gen_payload])
        steps.append(step(rng, seed))
    return dict(kind="multi", steps=steps)


def systematic_meta(seeds: dict[str, Seed]) -> list[tuple[str, dict[str, Any]]]:
    """Every numeric field of every seed's metadata set to every boundary value."""
    cases = []
    for name in sorted(seeds):
        seed = seeds[name]
        for path in numeric_paths(_meta_doc(seed)):
            for value in BOUNDARY_NUMBERS:
                spec = dict(kind="meta_set", file=seed.meta_file, path=list(path), value=value)
                cases.append((name, spec))
    return cases
