"""Arrays in object stores: the stores zarr-python, xarray and tensorstore write, uploaded to a
real S3 API (moto, on 127.0.0.1) and served over HTTP by the project's object server, read
through ``s3://`` and ``http://`` and compared with zarr-python reading the local copy."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import zarr
from support import (
    check_batches,
    check_crops,
    crop_origins,
    engine_threads,
    same_values,
)
from zarr_cases import CASES, SHAPE

import lsio_torch

BY_ID = {c.id: c for c in CASES}
#: What moto serves (it answers about 25 requests a second: the stores that differ in how
#: their chunks are found, not every codec).
S3_CASES = [
    "v3-shard-index-end",
    "v3-shard-index-start",
    "v3-shard-nested",
    "v3-shard-shuffled-with-gaps",
    "v2-order-F",
    "v2-blosc-lz4-shuffle",
    "tensorstore-v3-sharded",
    "xarray-v2",
    "xarray-v3",
]
CROPS = [(4, 5, 3), SHAPE]


def check_remote_crops(url: str, local, options=None, n: int = 5) -> int:
    """Reads crops of the array at ``url`` and compares each with zarr-python's read of the
    same region of the local copy; returns how many were compared."""
    reference = zarr.open_array(local, mode="r")[...]
    reference = reference.astype(reference.dtype.newbyteorder("="))
    checked = 0
    for k, crop in enumerate(CROPS):
        origins = crop_origins(SHAPE, crop, n=n, seed=k)
        out = lsio_torch.read_crops(url, origins, crop, storage_options=options)
        checked += check_crops(out, origins, reference, crop, same_values)
    return checked


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_http_crops_equal_zarr_python(case, tmp_path, object_server):
    path = case.make(tmp_path / f"{case.id}.zarr")
    server = object_server(tmp_path)
    assert check_remote_crops(f"{server.url}/{path.relative_to(tmp_path)}", path) == 2 * 5
    assert server.requests > 0


@pytest.mark.parametrize("case_id", S3_CASES)
def test_s3_crops_equal_zarr_python(case_id, tmp_path, s3):
    path = BY_ID[case_id].make(tmp_path / f"{case_id}.zarr")
    url = s3.upload(path, "conformance", f"{case_id}.zarr")
    assert check_remote_crops(url, path, s3.storage_options, n=3) == 2 * 3


def xarray_group(path, fmt: int, consolidated: bool):
    import xarray as xr

    dims = ("time", "lat", "lon")
    rng = np.random.default_rng(fmt)
    ds = xr.Dataset({name: (dims, rng.normal(size=SHAPE).astype("f4")) for name in ("t2m", "u10")})
    ds.to_zarr(path, zarr_format=fmt, consolidated=consolidated, mode="w")
    return ds


def check_group(url: str, ds, options=None) -> int:
    loader = lsio_torch.ZarrCropDataset(
        url,
        {"lat": 4, "lon": 4},
        variables=["t2m", "u10"],
        batch_size=3,
        samples_per_epoch=6,
        return_origins=True,
        storage_options=options,
    )
    batches = torch.utils.data.DataLoader(loader, batch_size=None)
    values = {name: ds[name].values for name in ("t2m", "u10")}
    return check_batches(batches, values, (SHAPE[0], 4, 4), same_values)


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("consolidated", [True, False])
def test_groups_with_variables_over_s3_and_http(tmp_path, s3, object_server, fmt, consolidated):
    path = tmp_path / "g.zarr"
    ds = xarray_group(path, fmt, consolidated)
    url = s3.upload(path, "groups", f"{fmt}-{consolidated}/g.zarr")
    assert check_group(url, ds, s3.storage_options) == 6
    server = object_server(tmp_path)
    assert check_group(f"{server.url}/g.zarr", ds) == 6


def test_consolidated_metadata_alone_opens_remote_arrays(tmp_path, object_server):
    """With the arrays' own metadata gone from the server, the group's .zmetadata opens them."""
    path = BY_ID["xarray-v2"].make(tmp_path / "ds.zarr")
    reference = zarr.open_array(path)[...]
    (path / ".zarray").unlink()
    (path / ".zattrs").unlink()
    server = object_server(tmp_path)
    ds = lsio_torch.ZarrCropDataset(
        f"{server.url}/ds.zarr", {"time": SHAPE[0]}, variables=["t2m"], batch_size=1,
        samples_per_epoch=1,
    )  # fmt: skip
    (batch,) = list(ds)
    assert same_values(batch["t2m"][0].numpy(), reference)


def test_joint_crops_of_a_local_and_a_remote_array(tmp_path, s3):
    local = BY_ID["v3-shard-index-end"].make(tmp_path / "local.zarr")
    remote = BY_ID["v3-shard-index-start"].make(tmp_path / "remote.zarr")
    url = s3.upload(remote, "joint", "remote.zarr")
    ds = lsio_torch.ZarrCropDataset(
        {"here": local, "there": url},
        (4, 5, 3),
        batch_size=4,
        samples_per_epoch=8,
        return_origins=True,
        storage_options=s3.storage_options,
    )
    values = {"here": zarr.open_array(local)[...], "there": zarr.open_array(remote)[...]}
    assert check_batches(ds, values, (4, 5, 3), same_values) == 8


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_dataloader_workers_read_remote_arrays(tmp_path, object_server, method):
    path = BY_ID["v3-shard-index-end"].make(tmp_path / "a.zarr")
    reference = zarr.open_array(path)[...]
    server = object_server(tmp_path)
    ds = lsio_torch.ZarrCropDataset(
        f"{server.url}/a.zarr",
        (4, 5, 3),
        batch_size=2,
        samples_per_epoch=8,
        return_origins=True,
    )
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=2, multiprocessing_context=method, timeout=60
    )
    assert check_batches(loader, reference, (4, 5, 3), same_values) == 8


def test_storage_options_are_checked(tmp_path, s3):
    path = BY_ID["v3-shard-index-end"].make(tmp_path / "a.zarr")
    url = s3.upload(path, "options", "a.zarr")
    with pytest.raises(ValueError, match="regoin"):
        lsio_torch.ZarrCropDataset(url, (2, 2, 2), storage_options={"regoin": "x"})
    with pytest.raises(ValueError, match="max_requests"):
        lsio_torch.ZarrCropDataset(url, (2, 2, 2), max_requests=0)
    with pytest.raises(ValueError, match=r"not a URL|object store"):
        lsio_torch.read_crops("s3://", [(0, 0, 0)], (1, 1, 1))


def test_a_missing_remote_array_is_file_not_found(tmp_path, s3, object_server):
    s3.upload(BY_ID["v2-zstd"].make(tmp_path / "x.zarr"), "conformance", "x.zarr")
    with pytest.raises(FileNotFoundError, match=r"s3://conformance/nothing\.zarr"):
        lsio_torch.ZarrCropDataset(
            "s3://conformance/nothing.zarr", (1, 1, 1), storage_options=s3.storage_options
        )
    server = object_server(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nothing\.zarr"):
        lsio_torch.read_crops(f"{server.url}/nothing.zarr", [(0, 0, 0)], (1, 1, 1))


# Failures -----------------------------------------------------------------------------------

#: Short timeouts, so that a server gone silent ends the test in seconds.
FAST = {"timeout": "1s", "connect_timeout": "1s", "retry_timeout": "2s", "max_retries": "3"}


def sharded(tmp_path, object_server, case="v3-shard-index-end"):
    path = BY_ID[case].make(tmp_path / "a.zarr")
    return path, object_server(tmp_path)


def test_server_errors_are_retried_and_the_data_is_exact(tmp_path, object_server):
    path, server = sharded(tmp_path, object_server)
    server.fail(503, times=3, match="/c/")
    server.fail(500, times=2, match="/c/")
    assert check_remote_crops(f"{server.url}/a.zarr", path) == 10
    failed = [entry for entry in server.log if entry[3] >= 500]
    assert len(failed) == 5


def test_a_truncated_body_is_fetched_again(tmp_path, object_server):
    path, server = sharded(tmp_path, object_server)
    server.truncate(times=2, match="/c/")
    assert check_remote_crops(f"{server.url}/a.zarr", path) == 10
    assert server.truncated == 2


def test_forbidden_names_the_url_and_the_status(tmp_path, object_server):
    _, server = sharded(tmp_path, object_server)
    url = f"{server.url}/a.zarr"
    ds = lsio_torch.ZarrCropDataset(url, (4, 5, 3), batch_size=2, samples_per_epoch=2)
    server.fail(403, times=1000, match="/c/")
    # A shard's index is its first request: the error is the index's.
    with pytest.raises(lsio_torch.LsioError, match=r"a\.zarr/c/[0-9/]+: .*shard index.*403"):
        list(ds)


def test_a_missing_shard_reads_as_the_fill_value(tmp_path, object_server):
    path, server = sharded(tmp_path, object_server)
    reference = zarr.open_array(path)
    fill = reference.fill_value
    shard = path / "c" / "1" / "0" / "0"  # rows 4-7 of the first shard column
    region = (slice(4, 8), slice(0, 10), slice(0, 6))
    assert shard.is_file() and (reference[region] != fill).any()
    shard.unlink()
    after = zarr.open_array(path)[...]  # zarr-python reads the missing shard as the fill too
    assert (after[region] == fill).all()
    out = lsio_torch.read_crops(f"{server.url}/a.zarr", [(0, 0, 0)], SHAPE)
    assert same_values(out[0].numpy(), after)


def test_a_missing_chunk_reads_as_the_fill_value(tmp_path, object_server):
    path = BY_ID["v2-zstd"].make(tmp_path / "a.zarr")
    server = object_server(tmp_path)
    chunk = path / "1.1.1"
    region = (slice(4, 8), slice(5, 10), slice(3, 6))
    assert chunk.is_file() and (zarr.open_array(path)[region] != 0).any()
    chunk.unlink()
    after = zarr.open_array(path)[...]
    assert (after[region] == 0).all()
    out = lsio_torch.read_crops(f"{server.url}/a.zarr", [(0, 0, 0)], SHAPE)
    assert same_values(out[0].numpy(), after)


def test_a_server_gone_silent_ends_in_an_error_not_a_hang(tmp_path, object_server):
    _, server = sharded(tmp_path, object_server)
    url = f"{server.url}/a.zarr"
    ds = lsio_torch.ZarrCropDataset(
        url, (4, 5, 3), batch_size=2, samples_per_epoch=4, storage_options=FAST
    )
    server.stall(match="/c/")
    import time

    started = time.monotonic()
    with pytest.raises(lsio_torch.LsioError, match=r"a\.zarr"):
        list(ds)
    assert time.monotonic() - started < 30
    server.unstall()
    assert not [t for t in engine_threads() if t.startswith("lsio-net")]


def test_a_server_killed_mid_epoch_ends_in_an_error(tmp_path, object_server):
    _, server = sharded(tmp_path, object_server)
    ds = lsio_torch.ZarrCropDataset(
        f"{server.url}/a.zarr",
        (4, 5, 3),
        batch_size=2,
        samples_per_epoch=None,
        prefetch=2,
        storage_options=FAST,
    )
    import time

    it = iter(ds)
    next(it)
    server.kill()
    started = time.monotonic()
    with pytest.raises(lsio_torch.LsioError, match=r"a\.zarr"):
        for _ in range(1000):
            next(it)
    assert time.monotonic() - started < 30
    del it
    assert not engine_threads()


def test_abandoned_remote_loops_leave_no_threads(tmp_path, object_server):
    _, server = sharded(tmp_path, object_server)
    ds = lsio_torch.ZarrCropDataset(
        f"{server.url}/a.zarr", (4, 5, 3), batch_size=2, samples_per_epoch=None
    )
    for _ in range(3):
        it = iter(ds)
        next(it)
        del it
    assert not engine_threads()
    shutil.rmtree(tmp_path / "a.zarr")


def test_remote_arrays_keep_more_batches_in_flight(tmp_path, object_server):
    path, server = sharded(tmp_path, object_server)
    assert lsio_torch.ZarrCropDataset(path, (4, 5, 3)).prefetch == 2
    assert lsio_torch.ZarrCropDataset(f"{server.url}/a.zarr", (4, 5, 3)).prefetch == 8
    assert lsio_torch.ZarrCropDataset(f"{server.url}/a.zarr", (4, 5, 3), prefetch=3).prefetch == 3
    # Batches so large that 8 of them would take gigabytes: as many as fit in 256 MiB, at
    # least 2 (one such batch keeps every request it can open in flight).
    itemsize = torch.empty((), dtype=lsio_torch.ZarrCropDataset(path, (4, 5, 3)).dtype).itemsize
    crop_bytes = 4 * 5 * 3 * itemsize
    for batch_bytes, prefetch in [(32 << 20, 8), (64 << 20, 4), (100 << 20, 2), (1 << 30, 2)]:
        big = lsio_torch.ZarrCropDataset(
            f"{server.url}/a.zarr", (4, 5, 3), batch_size=batch_bytes // crop_bytes
        )
        assert big.prefetch == prefetch, batch_bytes
    big = lsio_torch.ZarrCropDataset(path, (4, 5, 3), batch_size=(1 << 30) // crop_bytes)
    assert big.prefetch == 2


def test_a_shard_replaced_mid_iteration_is_never_read_as_a_mix(tmp_path, s3):
    """Chunk reads ask for the version of the shard whose index was read (If-Match): a shard
    replaced while an iteration reads it is an error naming it, never bytes of the new shard
    decoded at the old index's offsets; the next iteration reads the new shard."""
    old = BY_ID["v3-shard-index-end"].make(tmp_path / "old.zarr")
    url = s3.upload(old, "replaced", "a.zarr")
    new = tmp_path / "new.zarr"
    shutil.copytree(old, new)
    array = zarr.open_array(new, mode="r+")
    array[...] = array[...] + 1  # same shape and chunks, other bytes in every shard
    values = {"old": zarr.open_array(old)[...], "new": array[...]}
    origins = [(0, 0, 0)] * 20
    # No memory cache: it would keep serving the old chunks (arrays are taken not to change
    # while it holds them).
    ds = lsio_torch.ZarrCropDataset(
        url, SHAPE, origins=origins, batch_size=1, prefetch=1, storage_options=s3.storage_options,
        cache_bytes=0,
    )  # fmt: skip
    it = iter(ds)
    first = next(it)
    assert same_values(first[0].numpy(), values["old"])
    for shard in sorted((new / "c").rglob("*")):
        if shard.is_file():
            key = "a.zarr/" + str(shard.relative_to(new))
            s3.put("replaced", key, shard.read_bytes())
    with pytest.raises(lsio_torch.LsioError, match=r"changed\) after its shard index was read"):
        for batch in it:
            assert same_values(batch[0].numpy(), values["old"])
    (again,) = list(
        lsio_torch.ZarrCropDataset(
            url, SHAPE, origins=origins[:1], batch_size=1, storage_options=s3.storage_options
        )
    )
    assert same_values(again[0].numpy(), values["new"])
