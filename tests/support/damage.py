"""Stores damaged on purpose, the way disks, networks and careless writers damage them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np

#: A shard index entry of a chunk never written: both words all ones.
EMPTY_SLOT = 2**64 - 1


def junk_head(path: Path, n: int = 4) -> Path:
    """Overwrites the first ``n`` bytes of a file (a chunk's compression frame header)."""
    data = bytearray(path.read_bytes())
    data[:n] = (b"junk" * (n // 4 + 1))[:n]
    path.write_bytes(bytes(data))
    return path


def flip_bit(path: Path, at: int, mask: int = 0x40) -> Path:
    """Flips the bits of ``mask`` in the byte at ``at``: damage a length check cannot see."""
    data = bytearray(path.read_bytes())
    data[at] ^= mask
    path.write_bytes(bytes(data))
    return path


def cut_file(path: Path, drop: int) -> Path:
    """Drops the last ``drop`` bytes of a file."""
    path.write_bytes(path.read_bytes()[:-drop])
    return path


def shard_index(path: Path, chunks: int, at_end: bool = True) -> np.ndarray:
    """A shard's index (little-endian with a CRC-32C, as zarr-python writes it): one
    ``(offset, length)`` row per inner chunk, in C order."""
    data = path.read_bytes()
    size = 16 * chunks
    raw = data[-(size + 4) : -4] if at_end else data[:size]
    return np.frombuffer(raw, dtype="<u8").reshape(chunks, 2).copy()


def rewrite_shard_index(
    path: Path, chunks: int, edit: Callable[[np.ndarray], None], at_end: bool = True
) -> None:
    """Applies ``edit`` to a shard's index and writes it back with a valid CRC-32C: damage
    the checksum does not catch."""
    index = shard_index(path, chunks, at_end)
    edit(index)
    raw = index.astype("<u8").tobytes()
    crc = google_crc32c.value(raw).to_bytes(4, "little")
    data = bytearray(path.read_bytes())
    if at_end:
        data[-(len(raw) + 4) :] = raw + crc
    else:
        data[: len(raw) + 4] = raw + crc
    path.write_bytes(bytes(data))


def rewrite_json(path: Path, edit: Callable[[Any], Any]) -> Path:
    """Applies ``edit`` to the JSON document at ``path`` (in place, or returning a new one)
    and writes it back."""
    document = json.loads(path.read_text())
    edited = edit(document)
    path.write_text(json.dumps(document if edited is None else edited))
    return path
