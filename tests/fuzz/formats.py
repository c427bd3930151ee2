"""The formats the mutations edit: JSON metadata documents (nodes by path) and shards (the
index's (offset, length) entries, inner chunks, crc32c)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import google_crc32c

from .seeds import Seed

EMPTY = 2**64 - 1  # a shard index's offset and length of an inner chunk never written


# ---------------------------------------------------------------------------------------
# JSON documents


def walk(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every node of a JSON document with its path (keys and list indices)."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, (*path, i))


def _parent(doc: Any, path: list[Any]) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


def set_path(doc: Any, path: list[Any], value: Any) -> Any:
    """`doc` with the node at `path` replaced (the whole document for an empty path)."""
    if not path:
        return value
    _parent(doc, path)[path[-1]] = value
    return doc


def delete_path(doc: Any, path: list[Any]) -> Any:
    del _parent(doc, path)[path[-1]]
    return doc


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def last_key(path: tuple[Any, ...]) -> Any:
    """The nearest dict key on the path (for a list element, the key holding the list)."""
    return next((k for k in reversed(path) if isinstance(k, str)), None)


def numeric_paths(doc: Any) -> list[tuple[Any, ...]]:
    """Paths of every number and boolean in a document (in lists too: shape, chunks, ...)."""
    return [p for p, v in walk(doc) if is_number(v) or isinstance(v, bool)]


# ---------------------------------------------------------------------------------------
# Shards


def crc32c(data: bytes) -> bytes:
    return google_crc32c.value(bytes(data)).to_bytes(4, "little")


def shard_entries(data: bytes, n: int, location: str) -> list[list[int]] | None:
    """The (offset, length) entries of a shard's index, or None when it has none."""
    index_len = 16 * n + 4
    if len(data) < index_len:
        return None
    index = data[:index_len] if location == "start" else data[len(data) - index_len :]
    words = struct.unpack(f"<{2 * n}Q", index[:-4])
    return [[words[2 * i], words[2 * i + 1]] for i in range(n)]


def with_index(data: bytes, entries: list[list[int]], location: str, crc: bool) -> bytes:
    """`data` with its index replaced by `entries` (the crc32c recomputed, or kept)."""
    n = len(entries)
    index_len = 16 * n + 4
    old = data[:index_len] if location == "start" else data[len(data) - index_len :]
    words = struct.pack(f"<{2 * n}Q", *(w % 2**64 for e in entries for w in e))
    index = words + (crc32c(words) if crc else old[-4:])
    if location == "start":
        return index + data[index_len:]
    return data[: len(data) - index_len] + index


def inner_chunk(data: bytes, seed: Seed, i: int) -> bytes | None:
    assert seed.shard_entries is not None and seed.index_location is not None
    entries = shard_entries(data, seed.shard_entries, seed.index_location)
    if entries is None or entries[i] == [EMPTY, EMPTY]:
        return None
    offset, length = entries[i]
    return data[offset : offset + length]


def rebuild_shard(data: bytes, seed: Seed, i: int, chunk: bytes) -> bytes:
    """The shard with inner chunk `i` replaced by `chunk`, the others kept in index order,
    and a fresh, valid index."""
    assert seed.shard_entries is not None and seed.index_location is not None
    n, location = seed.shard_entries, seed.index_location
    entries = shard_entries(data, n, location)
    assert entries is not None
    chunks = [inner_chunk(data, seed, j) for j in range(n)]
    chunks[i] = chunk
    base = seed.index_len if location == "start" else 0
    body = b""
    new_entries = []
    for c in chunks:
        if c is None:
            new_entries.append([EMPTY, EMPTY])
        else:
            new_entries.append([base + len(body), len(c)])
            body += c
    placeholder = b"\0" * seed.index_len
    shard = placeholder + body if location == "start" else body + placeholder
    return with_index(shard, new_entries, location, crc=True)
