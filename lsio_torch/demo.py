"""Writes the demo dataset: a satellite-like sharded Zarr v3 array, written by zarr-python.

    python -m lsio_torch.demo [--path data/demo-sat.zarr] [--frames 96] [--size 512]

The array is ``(time, y, x)`` int16 "brightness": drifting smooth cloud fields plus sensor
noise, so it compresses like real imagery. Inner chunks ``(1, 128, 128)``, shards
``(16, 512, 512)``, ``bytes`` + ``zstd`` level 3, dimension names ``time, y, x``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DEFAULT_PATH = Path("data/demo-sat.zarr")


def frame(t: int, size: int, rng: np.random.Generator, waves: np.ndarray) -> np.ndarray:
    """One frame: a sum of drifting plane waves (cloud fields) plus noise, as int16."""
    y, x = np.ogrid[0:size, 0:size]
    field = np.zeros((size, size), dtype=np.float32)
    for ky, kx, speed, phase, amplitude in waves:
        field += amplitude * np.sin(ky * y + kx * x + speed * t + phase, dtype=np.float32)
    field += rng.normal(0.0, 0.01, size=(size, size)).astype(np.float32)
    return (field * 2000 + 8000).astype(np.int16)


def write_demo(path: Path = DEFAULT_PATH, frames: int = 96, size: int = 512, seed: int = 0) -> Path:
    """Writes the demo array at ``path`` (replacing it) and returns the path."""
    import zarr  # the demo's one extra dependency: pip install 'lsio-torch[zarr]'
    from zarr.codecs import ZstdCodec

    rng = np.random.default_rng(seed)
    waves = np.stack(
        [
            rng.uniform(-0.06, 0.06, 12),  # ky
            rng.uniform(-0.06, 0.06, 12),  # kx
            rng.uniform(-0.3, 0.3, 12),  # drift per frame
            rng.uniform(0, 2 * np.pi, 12),  # phase
            rng.uniform(0.1, 0.5, 12),  # amplitude
        ],
        axis=1,
    )
    shard_t = min(16, frames)
    array = zarr.create_array(
        path,
        shape=(frames, size, size),
        dtype="int16",
        chunks=(1, min(128, size), min(128, size)),
        shards=(shard_t, size, size),
        compressors=ZstdCodec(level=3),
        fill_value=0,
        dimension_names=("time", "y", "x"),
        attributes={"description": "lsio_torch demo: synthetic satellite brightness"},
        overwrite=True,
        zarr_format=3,
    )
    for start in range(0, frames, shard_t):
        block = np.stack(
            [frame(t, size, rng, waves) for t in range(start, min(start + shard_t, frames))]
        )
        array[start : start + len(block)] = block
    return path


def ensure_demo(path: Path = DEFAULT_PATH, frames: int = 96, size: int = 512) -> Path:
    """Writes the demo array unless one of the same shape is already there."""
    meta = path / "zarr.json"
    if meta.exists() and json.loads(meta.read_text()).get("shape") == [frames, size, size]:
        return path
    return write_demo(path, frames, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    start = time.perf_counter()
    write_demo(args.path, args.frames, args.size)
    stored = sum(f.stat().st_size for f in args.path.rglob("*") if f.is_file())
    raw = args.frames * args.size * args.size * 2
    print(
        f"wrote {args.path}: ({args.frames}, {args.size}, {args.size}) int16, "
        f"{raw / 1e6:.0f} MB raw, {stored / 1e6:.0f} MB stored, "
        f"in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
