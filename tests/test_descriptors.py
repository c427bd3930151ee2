"""The machine's limits: file descriptors shared by every array of the process within
``RLIMIT_NOFILE``, and shards replaced (written elsewhere, renamed over) while training."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import zarr
from support import smooth_field, write_zarr
from zarr.codecs import ZstdCodec

# The reading side runs in a child with its own descriptor limit; it compares every batch
# with zarr-python itself and prints what it checked.
GROUP_UNDER_A_LIMIT = """
import resource, sys
import numpy as np, zarr
from lsio_torch import ZarrCropDataset

limit, group, names = int(sys.argv[1]), sys.argv[2], sys.argv[3].split(",")
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
root = zarr.open_group(group, mode="r")
expected = {n: root[n][...] for n in names}
crop = expected[names[0]].shape
ds = ZarrCropDataset(group, crop, variables=names, batch_size=2, samples_per_epoch=4,
                     origins=[(0, 0)] * 4, threads=2)
batches = 0
for epoch in range(2):
    ds.set_epoch(epoch)
    for batch in ds:
        for n in names:
            for crop_values in batch[n].numpy():
                assert crop_values.tobytes() == expected[n].tobytes(), (n, epoch)
        batches += 1
print(batches, ds.stats()["files_opened"])
"""


def write_group(path: Path, arrays: int, shape, **kwargs) -> list[str]:
    root = zarr.open_group(path, mode="w", zarr_format=3)
    names = [f"v{i}" for i in range(arrays)]
    for i, name in enumerate(names):
        values = smooth_field(shape, "int16", i)
        root.create_array(name, shape=shape, dtype="int16", **kwargs)[...] = values
    return names


def read_under_limit(limit: int, group: Path, names: list[str]) -> tuple[int, int]:
    run = subprocess.run(
        [sys.executable, "-c", GROUP_UNDER_A_LIMIT, str(limit), str(group), ",".join(names)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    batches, files_opened = map(int, run.stdout.split())
    return batches, files_opened


def test_24_arrays_of_a_group_under_ulimit_64(tmp_path):
    """24 arrays of 8 chunk files each, every batch reading all 192 files, with 64
    descriptors for the whole process (Python and torch hold some of them)."""
    group = tmp_path / "group.zarr"
    names = write_group(group, 24, (16, 12), chunks=(2, 12), compressors=[ZstdCodec(level=1)])
    batches, files_opened = read_under_limit(64, group, names)
    assert batches == 4
    assert files_opened >= 24 * 8


def test_16_variables_of_128_shards_under_ulimit_1024(tmp_path):
    """16 arrays of 128 shards, every batch reading all 2,048 shards."""
    group = tmp_path / "group.zarr"
    names = write_group(
        group, 16, (256, 4), chunks=(1, 4), shards=(2, 4), compressors=[ZstdCodec(level=1)]
    )
    assert len(list((group / "v0" / "c").rglob("*"))) >= 128
    batches, files_opened = read_under_limit(1024, group, names)
    assert batches == 4
    assert files_opened >= 16 * 128


REPLACED_WHILE_READING = """
import os, resource, sys
import numpy as np, zarr
from lsio_torch import ZarrCropDataset

limit, old_path, new_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if limit:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
old = zarr.open_array(old_path, mode="r")[...]
new = zarr.open_array(new_path, mode="r")[...]
inner = 2
ds = ZarrCropDataset(old_path, (4, 6), batch_size=8, samples_per_epoch=400, seed=1,
                     return_origins=True, threads=2)
mixed_batches = seen_new = 0
for b, (batch, origins) in enumerate(ds):
    if b == 5:
        # What writers do: the new shard written elsewhere, then renamed over the old one.
        for shard in sorted(os.listdir(os.path.join(new_path, "c"))):
            os.replace(os.path.join(new_path, "c", shard, "0"),
                       os.path.join(old_path, "c", shard, "0"))
    for crop, (row, col) in zip(batch.numpy(), origins.tolist()):
        for r0 in range(0, 4):
            r = row + r0
            if (r % inner) and r0:
                continue  # checked with the first row of its inner chunk
            rows = slice(r0, min(4, r0 + inner - r % inner))
            got = crop[rows]
            window = (slice(r, r + got.shape[0]), slice(col, col + got.shape[1]))
            is_old = np.array_equal(got, old[window])
            is_new = np.array_equal(got, new[window])
            assert is_old or is_new, ("a mix, or neither", b, row, col, r0)
            seen_new += is_new and not is_old
print(seen_new)
"""


def test_shards_replaced_while_training_read_old_or_new_never_a_mix(tmp_path):
    # Old inner chunks compress to a few bytes, new ones not at all: the new shards' indexes
    # differ from the old ones.
    shape, shards = (400, 64), (4, 64)
    base = np.arange(400, dtype=np.int32)[:, None].repeat(64, axis=1)
    noise = np.random.default_rng(1).integers(1, 10**6, size=shape, dtype=np.int32)
    for name, values in [("old.zarr", base), ("new.zarr", base + noise)]:
        write_zarr(
            tmp_path / name, values, chunks=(2, 64), shards=shards, compressors=[ZstdCodec(level=1)]
        )
    for limit in [64, 0]:  # 64: files closed and opened again all the time; 0: as it is
        old, new = tmp_path / f"old-{limit}.zarr", tmp_path / f"new-{limit}.zarr"
        subprocess.run(["cp", "-r", str(tmp_path / "old.zarr"), str(old)], check=True)
        subprocess.run(["cp", "-r", str(tmp_path / "new.zarr"), str(new)], check=True)
        code = textwrap.dedent(REPLACED_WHILE_READING)
        run = subprocess.run(
            [sys.executable, "-c", code, str(limit), str(old), str(new)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        # Under the low limit the replaced shards are opened again within the epoch.
        if limit:
            assert int(run.stdout) > 0, run.stdout
