"""Applying a spec: the mutation it describes, made to a copy of a seed array. Positions
wrap around the data's length, and an edit whose target an earlier step took away is
skipped, so that a spec applies to any store (a regression case, or a step of a "multi")."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

from .formats import (
    crc32c,
    delete_path,
    inner_chunk,
    rebuild_shard,
    set_path,
    shard_entries,
    with_index,
)
from .seeds import Seed


def apply_bytes_op(data: bytes, op: dict[str, Any]) -> bytes:
    """One edit of a byte string. Positions wrap around the data's length, so that a spec
    still applies to data of another length."""
    kind = op["op"]
    n = len(data)
    out = bytearray(data)
    if kind == "flip":
        for bit in op["bits"]:
            if n:
                bit %= 8 * n
                out[bit // 8] ^= 1 << (bit % 8)
    elif kind == "truncate":
        del out[min(op["length"], n) :]
    elif kind == "insert":
        at = op["at"] % (n + 1)
        out[at:at] = bytes.fromhex(op["hex"])
    elif kind == "word":
        size = op["size"]
        fmt = {4: "I", 8: "Q"}[size]
        word = struct.pack(op["endian"] + fmt, op["value"] % 2 ** (8 * size))
        if n >= size:
            at = op["at"] % (n - size + 1)
            out[at : at + size] = word
    elif kind == "byte":
        if n:
            out[op["at"] % n] = op["value"]
    elif kind == "append":
        out += bytes.fromhex(op["hex"])
    elif kind == "replace":
        out = bytearray(bytes.fromhex(op["hex"]))
    else:
        raise ValueError(f"unknown bytes op {kind!r}")
    return bytes(out)


def _edit_with_crc(data: bytes, op: dict[str, Any], crc: bool) -> bytes:
    """Applies `op`; with `crc`, to the data before its trailing crc32c, which is then
    recomputed, so that the decoder behind the checksum sees the edit."""
    if crc and len(data) >= 4:
        body = apply_bytes_op(data[:-4], op)
        return body + crc32c(body)
    return apply_bytes_op(data, op)


def _edit_doc(doc: Any, spec: dict[str, Any]) -> Any:
    if spec["kind"] == "meta_set":
        return set_path(doc, spec["path"], spec["value"])
    if spec["kind"] == "meta_delete":
        return delete_path(doc, spec["path"])
    node = doc
    for key in spec["path"]:
        node = node[key]
    node.insert(spec["index"], spec["value"])
    return doc


def apply_spec(spec: dict[str, Any], store: Path, seeds: dict[str, Seed], seed: Seed) -> None:
    """Applies a mutation `spec` to `store`, a copy of `seed`'s array."""
    kind = spec["kind"]
    if kind == "multi":
        for step in spec["steps"]:
            apply_spec(step, store, seeds, seed)
        return
    target = store / spec["file"] if "file" in spec else None
    if kind in ("meta_set", "meta_delete", "meta_insert"):
        assert target is not None
        try:
            doc = json.loads(target.read_text())
            doc = _edit_doc(doc, spec)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return  # an earlier step of a "multi" took the node (or the JSON) away
        target.write_text(json.dumps(doc))
    elif kind == "meta_raw":
        assert target is not None
        if "text" in spec:
            target.write_text(spec["text"])
        else:
            target.write_bytes(apply_bytes_op(target.read_bytes(), spec["op"]))
    elif kind in ("index_set", "index_swap", "index_copy"):
        assert target is not None and seed.shard_entries and seed.index_location
        data = target.read_bytes()
        entries = shard_entries(data, seed.shard_entries, seed.index_location)
        if entries is None:
            return
        if kind == "index_set":
            entries[spec["entry"]][spec["field"]] = spec["value"]
        elif kind == "index_swap":
            a, b = spec["a"], spec["b"]
            entries[a], entries[b] = entries[b], entries[a]
        else:
            entries[spec["dst"]] = list(entries[spec["src"]])
        target.write_bytes(with_index(data, entries, seed.index_location, spec["crc"]))
    elif kind == "index_bytes":
        # An edit of the index's bytes (the crc32c recomputed, or not).
        assert target is not None and seed.shard_entries and seed.index_location
        data = target.read_bytes()
        k = seed.index_len
        if len(data) < k:
            return
        start = 0 if seed.index_location == "start" else len(data) - k
        index = _edit_with_crc(data[start : start + k], spec["op"], spec["crc"])
        target.write_bytes(data[:start] + index + data[start + k :])
    elif kind == "bytes":
        assert target is not None
        if not target.exists():
            return
        data = target.read_bytes()
        inner = spec.get("inner")
        if inner is None:
            target.write_bytes(_edit_with_crc(data, spec["op"], spec["crc"]))
        else:
            chunk = inner_chunk(data, seed, inner)
            if chunk is not None:
                chunk = _edit_with_crc(chunk, spec["op"], spec["crc"])
                target.write_bytes(rebuild_shard(data, seed, inner, chunk))
    elif kind == "file_delete":
        assert target is not None
        target.unlink(missing_ok=True)
    elif kind == "file_empty":
        assert target is not None
        target.write_bytes(b"")
    elif kind == "file_swap":
        a, b = store / spec["a"], store / spec["b"]
        data_a, data_b = a.read_bytes(), b.read_bytes()
        a.write_bytes(data_b)
        b.write_bytes(data_a)
    elif kind == "file_copy":
        dst = store / spec["dst"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store / spec["src"], dst)
    elif kind == "file_foreign":
        dst = store / spec["dst"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(seeds[spec["seed"]].path / spec["src"], dst)
    else:
        raise ValueError(f"unknown mutation kind {kind!r}")
