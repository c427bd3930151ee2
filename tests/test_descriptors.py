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


# One dataset of 24 arrays beside zarr-python: the process's threads, rings and files read
# at every step, while the loop opens a file and reads the group itself.
ONE_ENGINE_BESIDE_ZARR = """
import json, os, resource, sys
import numpy as np, zarr
from lsio_torch import ZarrCropDataset

limit, group, names = int(sys.argv[1]), sys.argv[2], sys.argv[3].split(",")
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
ds = ZarrCropDataset(group, (4, 32, 32), variables=names, batch_size=4, samples_per_epoch=32,
                     threads=2, return_origins=True)
most = {"lsio-decode": 0, "lsio-plan": 0, "lsio-net": 0, "rings": 0, "files": 0, "fds": 0}
steps = 0
for batch, origins in ds:
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    names_now = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/comm") as f:
            names_now.append(f.read().strip())
    seen = {
        "lsio-decode": sum(n.startswith("lsio-decode") for n in names_now),
        "lsio-plan": names_now.count("lsio-plan"),
        "lsio-net": sum(n.startswith("lsio-net") for n in names_now),
        "rings": sum("io_uring" in target for target in fds.values()),
        "files": sum(target.startswith(group) for target in fds.values()),
        "fds": len(fds),
    }
    most = {k: max(most[k], seen[k]) for k in most}
    # The training loop's own work: a file, and the same group read by zarr-python.
    with open(os.path.join(group, "zarr.json")) as f:
        json.load(f)
    name = names[steps % len(names)]
    t, y, x = origins[0].tolist()
    want = zarr.open_group(group, mode="r")[name][t : t + 4, y : y + 32, x : x + 32]
    assert np.array_equal(batch[name][0].numpy(), want), (name, steps)
    steps += 1
print(json.dumps({"steps": steps, **most}))
"""


def test_24_arrays_are_one_engine_within_the_descriptor_budget_beside_zarr_python(tmp_path):
    """Done-when of issue 23: 24 sharded arrays read with ``threads=2`` run 2 engine threads
    and one planner, at most 2 rings, and hold at most the budget (a quarter of 64) of the
    group's files at any step, while the loop opens a file and reads the group with
    zarr-python at every step under ``ulimit -n 64``."""
    import json

    group = tmp_path / "group.zarr"
    names = write_group(
        group,
        24,
        (32, 64, 64),
        chunks=(4, 16, 16),
        shards=(8, 32, 32),
        compressors=[ZstdCodec(level=1)],
    )
    run = subprocess.run(
        [sys.executable, "-c", ONE_ENGINE_BESIDE_ZARR, "64", str(group), ",".join(names)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    most = json.loads(run.stdout.splitlines()[-1])
    print(most)
    assert most["steps"] == 8
    assert most["lsio-decode"] <= 2 and most["lsio-plan"] <= 1 and most["lsio-net"] == 0
    assert most["rings"] <= 2
    assert 0 < most["files"] <= 64 // 4
