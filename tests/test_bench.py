"""The shipped benchmark, ``python -m lsio_torch.bench``, end to end on a small array: every
system measured on the same crops, missing peers reported missing, the bounds consistent
with what the engine does."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from support import chunks_touched, smooth_field, wait_until, write_zarr
from zarr.codecs import BytesCodec, ShardingCodec, ZstdCodec

import lsio_torch
from lsio_torch.bench import Result, table

CROP, BATCH, N = (2, 16, 16), 4, 32
INNER, SHARD = (1, 16, 16), (4, 32, 32)
PEERS = {"zarr-python": "zarr", "zarr-python+zarrs": "zarrs", "tensorstore": "tensorstore"}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> str:
    """A small v3 array of zstd inner chunks in shards, as the standard `sat-zstd` is."""
    path = tmp_path_factory.mktemp("bench") / "sat.zarr"
    values = smooth_field((8, 64, 64), "int16", 0)
    sharding = ShardingCodec(chunk_shape=INNER, codecs=[BytesCodec(), ZstdCodec(level=3)])
    write_zarr(path, values, chunks=SHARD, serializer=sharding, compressors=None, filters=None)
    return str(path)


def bench(*args: str, hide: tuple[str, ...] = ()) -> dict | list:
    """Runs the bench in a process of its own (it sets torch's thread count) for its JSON;
    the modules in ``hide`` cannot be imported there, as on a machine without them."""
    code = (
        "import runpy, sys\n"
        f"for name in {list(hide)!r}: sys.modules[name] = None\n"
        "runpy.run_module('lsio_torch.bench', run_name='__main__', alter_sys=True)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_every_system_is_measured_or_reported_missing(sharded):
    crop = ",".join(map(str, CROP))
    report = bench(
        "--data", sharded, "--crop", crop, "--batch", str(BATCH), "--n", str(N),
        "--threads", "2", "--systems", "lsio,zarr,zarrs,tensorstore,decode,read",
    )  # fmt: skip
    rows = {row["system"]: row for row in report["data"][sharded]}
    assert list(rows) == [
        "lsio_torch",
        *PEERS,
        "decode bound",
        "read bound",
        "read + decode",
    ]
    assert report["threads"] == 2 and report["cold"] is False
    for row in rows.values():
        assert row["seconds"] > 0, row
        assert row["crops_per_s"] == pytest.approx(N / row["seconds"])
        crop_mb = np.prod(CROP) * 2 / 1e6
        assert row["mb_per_s"] == pytest.approx(row["crops_per_s"] * crop_mb)

    # The bounds are of the chunks the seeded crops touch, counted here with numpy: every
    # chunk of this array is stored and each batch decodes each chunk it touches once. Its
    # reads are the engine's (chunks side by side in a shard are one request): at least one
    # per shard a batch touches, at most one per chunk.
    ds = lsio_torch.ZarrCropDataset(
        sharded, CROP, batch_size=BATCH, samples_per_epoch=N, seed=0, cache_bytes=0,
        return_origins=True,
    )  # fmt: skip
    chunks = shards = 0
    for _, origins in ds:
        chunks += len(chunks_touched(origins.tolist(), CROP, INNER))
        shards += len(chunks_touched(origins.tolist(), CROP, SHARD))
    assert rows["decode bound"]["note"] == f"{chunks} chunk decodes"
    reads = int(rows["read bound"]["note"].split()[0])
    assert shards <= reads < chunks
    assert reads == ds.stats()["reads"]
    both = rows["read + decode"]["seconds"]
    assert both == pytest.approx(rows["read bound"]["seconds"] + rows["decode bound"]["seconds"])

    printed = table("sat", [Result(**row) for row in report["data"][sharded]], cold=False)
    assert "| lsio_torch |" in printed and "| read + decode |" in printed
    decode_line = next(line for line in printed.splitlines() if "| decode bound |" in line)
    assert "| 1.00 |" in decode_line  # the warm ceiling


@pytest.mark.parametrize("hidden", sorted(set(PEERS.values()) - {"zarr"}))
def test_a_peer_that_is_not_installed_is_reported_missing(sharded, hidden):
    report = bench(
        "--data", sharded, "--crop", ",".join(map(str, CROP)), "--batch", str(BATCH),
        "--n", str(N), "--threads", "2", "--systems", "lsio,zarrs,tensorstore", hide=(hidden,),
    )  # fmt: skip
    rows = {row["system"]: row for row in report["data"][sharded]}
    for system, module in PEERS.items():
        if system not in rows:
            continue
        row = rows[system]
        if module == hidden:
            assert row["crops_per_s"] is None and row["seconds"] is None
            assert row["note"] == f"not installed (pip install {module})"
        else:
            assert row["seconds"] > 0 and row["crops_per_s"] > 0, row
    assert rows["lsio_torch"]["crops_per_s"] > 0


def test_memory_reports_each_epoch(sharded):
    (report,) = bench(
        "--data", sharded, "--crop", ",".join(map(str, CROP)), "--batch", str(BATCH),
        "--n", str(N), "--memory", "--epochs", "3",
    )  # fmt: skip
    assert report["data"] == sharded
    assert report["batch_mb"] == pytest.approx(BATCH * np.prod(CROP) * 2 / 2**20)
    assert report["budget_mb"] == pytest.approx(1.5 * 2 * report["batch_mb"] + 200)
    assert [e["epoch"] for e in report["epochs"]] == [0, 1, 2]
    for epoch in report["epochs"]:
        assert 0 < epoch["first_batch_s"] < 60
        # What the epoch added to the process at its peak, within the budget the bench states.
        assert 0 <= epoch["peak_rss_mb"] <= report["budget_mb"]
    # The first epoch starts the engine (its threads, its batch buffers): the process grows.
    assert report["epochs"][0]["peak_rss_mb"] > 0


def test_the_disk_cache_bench_measures_epoch_2_against_the_local_files(sharded):
    report = bench(
        "--data", sharded, "--crop", ",".join(map(str, CROP)), "--batch", str(BATCH),
        "--n", str(N), "--threads", "2", "--store", "http", "--latency-ms", "0",
        "--systems", "disk",
    )  # fmt: skip
    [rows] = report["data"].values()
    by_system = {row["system"]: row for row in rows}
    assert list(by_system) == [
        "lsio_torch, cache_dir, epoch 1",
        "lsio_torch, cache_dir, epoch 2, as written",
        "lsio_torch, local files, as written",
        "lsio_torch, cache_dir, epoch 2, read from disk",
        "lsio_torch, local files, read from disk",
    ]
    for row in rows:
        assert row["seconds"] > 0 and row["crops_per_s"] == pytest.approx(N / row["seconds"])
    written = by_system["lsio_torch, cache_dir, epoch 2, as written"]
    local = by_system["lsio_torch, local files, as written"]
    ratio = float(written["note"].split(" x ")[0])
    assert ratio == pytest.approx(written["crops_per_s"] / local["crops_per_s"], abs=0.01)
    # Epoch 2's chunks come from the folder; only chunks epoch 1 never touched are fetched.
    hits = int(written["note"].split("chunks from disk ")[1].split(",")[0])
    assert hits > 0


def test_memory_through_the_object_server_reports_the_disk_cache_folder(sharded):
    (report,) = bench(
        "--data", sharded, "--crop", ",".join(map(str, CROP)), "--batch", str(BATCH),
        "--n", str(N), "--memory", "--epochs", "2", "--store", "http", "--latency-ms", "0",
        "--cache-dir-bytes", "100%",
    )  # fmt: skip
    assert [e["epoch"] for e in report["epochs"]] == [0, 1]
    # The folder holds what the epochs fetched (on disk: the blocks of its shard files),
    # within its bound (the stored array: a small one, in whole blocks, overflows it and is
    # trimmed; each process may pass the bound by 1/16 of it before it rescans).
    bound = report["disk_cache_bound_mb"]
    held = [e["disk_cache_mb"] for e in report["epochs"]]
    assert all(0 < h <= bound * (1 + 1 / 16) for h in held), (held, bound)


def test_the_bench_s_object_server_ends_with_the_bench():
    # A bench killed mid-run (its pipe to the server closed) leaves no server behind.
    code = (
        "import os; from pathlib import Path; from lsio_torch.bench.remote import ServedFolder;"
        "s = ServedFolder(Path('.'), 0, None); print(s.process.pid, flush=True); os._exit(1)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    pid = int(done.stdout.strip())

    def gone() -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return True
        return state == "Z"  # exited, waiting to be reaped by init

    wait_until(gone, what=f"the object server {pid} exits")


def test_the_object_store_bench_measures_xbatcher_and_the_get_bound(sharded):
    report = bench(
        "--data", sharded, "--crop", ",".join(map(str, CROP)), "--batch", str(BATCH),
        "--n", str(N), "--threads", "2", "--store", "http", "--latency-ms", "0",
        "--systems", "lsio,zarr,xbatcher,get", "--concurrency", "4",
    )  # fmt: skip
    [rows] = report["data"].values()
    by_system = {row["system"]: row for row in rows}
    # zarr-python on obstore runs first: xbatcher's workers must not inherit its runtime.
    assert list(by_system) == ["lsio_torch", "zarr-python (obstore)", "xbatcher", "GET bound"]
    for row in rows:
        assert row["seconds"] > 0 and row["crops_per_s"] == pytest.approx(N / row["seconds"])
        # The whole machine's cores, every process: busy some of the time, never over all.
        assert 0 < row["cpu_busy"] <= 1
    assert by_system["xbatcher"]["note"].startswith("2 spawned workers; ")

    def touched(row) -> float:
        return float(row["note"].split(" chunks a crop")[0].split()[-1])

    # xbatcher's grid straddles chunk edges as the random crops do: no cheaper crops.
    assert touched(by_system["xbatcher"]) >= 0.95 * touched(by_system["lsio_torch"])


def test_xbatcher_s_patches_are_the_crops_the_bench_names(sharded):
    from lsio_torch.bench.remote import ServedFolder, XbatcherCrops

    path = Path(sharded)
    expected = zarr.open_array(path, mode="r")
    with ServedFolder(path.parent, 0, None) as server:
        crops = XbatcherCrops(f"{server.url}/{path.name}", expected.shape, CROP, 12)
        origins = crops.origins()
        assert len(set(origins)) == 12
        for i, origin in enumerate(origins):
            region = tuple(slice(o, o + c) for o, c in zip(origin, CROP, strict=True))
            np.testing.assert_array_equal(crops[i].numpy(), expected[region])


def test_the_dataset_bench_measures_epochs_and_bounds(tmp_path, monkeypatch):
    """``--data wb2`` on its small group (xarray-written, surface and level fields) and
    ``same-bytes``: lsio_torch and zarr-python measured epoch by epoch on the same steps, the
    bounds once, a peer not asked for not run; 1 array against 16 measured side by side."""
    monkeypatch.setenv("LSIO_BENCH_CACHE", str(tmp_path))
    report = bench(
        "--data", "wb2", "same-bytes", "--small", "--steps", "0,4", "--n", "8", "--batch", "4",
        "--threads", "2", "--epochs", "2", "--systems", "lsio,zarr,xbatcher,decode,copy",
    )  # fmt: skip
    wb2, same = report["data"]
    assert wb2["steps"] == [0, 4] and wb2["samples"] == 8
    rows = {row["system"]: row for row in wb2["results"]}
    expected = {"lsio_torch", "zarr-python", "xbatcher", "consumer touch", "decode bound"}
    assert set(rows) == {*expected, "copy bound"}
    for system in ("lsio_torch", "zarr-python"):
        assert len(rows[system]["per_epoch"]) == 2 and min(rows[system]["per_epoch"]) > 0
    xbatcher = rows["xbatcher"]
    if importlib.util.find_spec("xbatcher") is None:
        assert xbatcher["per_epoch"] == [] and xbatcher["note"].startswith("missing")
    else:
        assert len(xbatcher["per_epoch"]) == 2 and min(xbatcher["per_epoch"]) > 0
    assert rows["decode bound"]["per_epoch"][0] > 0 and rows["copy bound"]["per_epoch"][0] > 0
    # The bounds with the consumer's touch added are below the bounds alone.
    touch = rows["consumer touch"]["per_epoch"][0]
    assert touch > 0 and "and the touch: " in rows["copy bound"]["note"]
    with_touch = float(rows["copy bound"]["note"].rsplit(": ", 1)[1])
    assert 0 < with_touch < rows["copy bound"]["per_epoch"][0]
    assert set(same["per_epoch"]) == {"1 array", "16 arrays"}
    assert all(len(rates) == 2 and min(rates) > 0 for rates in same["per_epoch"].values())
