"""What a hostile server, another user of a shared machine, or a mistyped option can do, and
what lsio_torch does about it: a response never holds more than the bytes asked for, a cache
folder is its own and private, no credential or token appears in a message, credentials never
follow a redirect to another origin, and member names never leave the store.

The hostile server is a small real one on 127.0.0.1 (``support.hostile``); another user's files
are made by the test as root with ``chown``. Reads that could kill the process run in a child
process, so a regression fails one test, not the run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from support import write_zarr
from support.hostile import Hostile
from zarr.codecs import BytesCodec, ShardingCodec, ZstdCodec

import lsio_torch

TB = 10**12


def in_a_child(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs ``code`` (which imports what it needs) in a child Python; what it printed and how
    it ended."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def small_array(path: Path, sharded: bool = False) -> np.ndarray:
    values = np.arange(8 * 12, dtype="int16").reshape(8, 12)
    if sharded:
        sharding = ShardingCodec(chunk_shape=(4, 4), codecs=[BytesCodec()])
        write_zarr(path, values, chunks=(8, 12), serializer=sharding, compressors=None)
    else:
        # Compressed: a chunk is fetched whole, as its size is not known before it lands.
        write_zarr(path, values, chunks=(4, 4), compressors=ZstdCodec(), zarr_format=3)
    return values


# 1 and 2. A response never holds more than the bytes asked for.


def read_in_child(url: str) -> subprocess.CompletedProcess:
    return in_a_child(
        f"""
        import lsio_torch
        try:
            lsio_torch.read_crops({url!r}, [(0, 0)], (8, 12))
        except Exception as e:
            print(type(e).__name__, e)
        else:
            print("read")
        """
    )


@pytest.mark.parametrize("lied_about", ["zarr.json", "c/0/0"])
def test_a_whole_object_declared_1_tb_long_is_refused_before_its_body(tmp_path, lied_about):
    small_array(tmp_path / "a.zarr")
    with Hostile(tmp_path) as server:
        server.lie(f"a.zarr/{lied_about}", declare=TB)
        done = read_in_child(f"{server.url}/a.zarr")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"declared a body of {TB} bytes" in done.stdout, done.stdout
    assert lied_about in done.stdout, done.stdout


def test_a_suffix_range_answered_with_1_tb_costs_at_most_the_range(tmp_path):
    small_array(tmp_path / "a.zarr", sharded=True)
    with Hostile(tmp_path) as server:
        server.lie("a.zarr/c/0/0", declare=TB)
        start = time.monotonic()
        done = read_in_child(f"{server.url}/a.zarr")
        seconds = time.monotonic() - start
        written = server.written
        asked = [r.headers.get("range") for r in server.seen if r.path.endswith("c/0/0")]
    # The shard index: 6 inner chunks' offsets and lengths and a CRC-32C, 100 bytes.
    assert asked == ["bytes=-100"], asked
    assert done.returncode == 0, done.stderr[-2000:]
    assert "reading the shard index" in done.stdout, done.stdout
    assert "more than the 100 asked for" in done.stdout, done.stdout
    # The client hung up after the first pieces, long before a timeout.
    assert written < 64 << 20, written
    assert seconds < 20, seconds


def test_honest_objects_still_read_through_the_caps(tmp_path):
    values = small_array(tmp_path / "a.zarr", sharded=True)
    small_array(tmp_path / "b.zarr")
    with Hostile(tmp_path) as server:
        for name in ("a.zarr", "b.zarr"):
            out = lsio_torch.read_crops(f"{server.url}/{name}", [(2, 3)], (4, 5))
            np.testing.assert_array_equal(out[0].numpy(), values[2:6, 3:8])
            np.testing.assert_array_equal(
                out[0].numpy(), zarr.open_array(tmp_path / name, mode="r")[2:6, 3:8]
            )
