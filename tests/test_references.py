"""Archives read by reference: NetCDF4 files (chunked, zlib + shuffle, as archives are)
written by netCDF4 and h5netcdf, referenced by kerchunk, read by lsio_torch locally, from
moto's S3 and from the object server; every crop equal to xarray's read of the file."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from support.checks import check_batches, same_values

import lsio_torch
from lsio_torch import References, ZarrCropDataset, read_crops

netCDF4 = pytest.importorskip("netCDF4")
pytest.importorskip("kerchunk")

SHAPE = (6, 30, 40)
VARIABLES = ("t2m", "u10")
CROP = {"lat": 8, "lon": 8}


def write_netcdf4(path: Path, writer: str) -> dict[str, np.ndarray]:
    """A NetCDF4 file of two chunked fields (one with a fill value and NaNs, both zlib with
    shuffle) and a small coordinate; returns each field's stored values."""
    rng = np.random.default_rng(len(writer))
    t2m = rng.normal(size=SHAPE).astype("f4")
    t2m[0, :3, :3] = np.nan
    t2m[1, 5, 5] = -9999.0  # the fill value, stored as it is
    u10 = (rng.integers(-300, 300, size=SHAPE)).astype("i2")
    lat = np.linspace(-90, 90, SHAPE[1])
    if writer == "netCDF4":
        with netCDF4.Dataset(path, "w") as d:
            for name, n in zip(("time", "lat", "lon"), SHAPE, strict=True):
                d.createDimension(name, n)
            dims = ("time", "lat", "lon")
            v = d.createVariable(
                "t2m", "f4", dims, zlib=True, shuffle=True, chunksizes=(1, 16, 16),
                fill_value=-9999.0,
            )  # fmt: skip
            v.set_auto_maskandscale(False)
            v[:] = t2m
            w = d.createVariable("u10", "i2", dims, zlib=True, shuffle=True, chunksizes=(2, 30, 40))
            w[:] = u10
            d.createVariable("lat", "f8", ("lat",))[:] = lat
    else:
        import h5netcdf

        with h5netcdf.File(path, "w") as d:
            d.dimensions = dict(zip(("time", "lat", "lon"), SHAPE, strict=True))
            dims = ("time", "lat", "lon")
            opts = {"compression": "gzip", "shuffle": True}
            d.create_variable("t2m", dims, "f4", data=t2m, chunks=(1, 16, 16), **opts)
            d.create_variable("u10", dims, "i2", data=u10, chunks=(2, 30, 40), **opts)
            d.create_variable("lat", ("lat",), "f8", data=lat)
    return {"t2m": t2m, "u10": u10}


def xarray_values(path: Path) -> dict[str, np.ndarray]:
    """What xarray reads from the file, as stored (no masking or scaling)."""
    import xarray as xr

    with xr.open_dataset(path, mask_and_scale=False, decode_times=False) as ds:
        return {name: ds[name].values for name in VARIABLES}


def kerchunk_refs(path: Path, url: str, inline: int = 0) -> dict:
    """kerchunk's references (version 1) for the file at ``path``, its targets named ``url``."""
    from kerchunk.hdf import SingleHdf5ToZarr

    with open(path, "rb") as f:
        refs = SingleHdf5ToZarr(f, url, inline_threshold=inline).translate()
    assert refs.get("version") == 1
    return refs


def write_refs(refs: dict, at: Path, version: int) -> Path:
    """Writes ``refs`` as version 1, or flattened to version 0 (every key at the top)."""
    at.write_text(json.dumps(refs if version == 1 else refs["refs"]))
    return at


def epoch(source, values, options=None, workers: int = 0, method: str | None = None) -> int:
    """One epoch of every variable through a DataLoader, each crop checked."""
    ds = ZarrCropDataset(
        source, CROP, variables=list(VARIABLES), batch_size=3, samples_per_epoch=6,
        return_origins=True, storage_options=options,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=workers, multiprocessing_context=method,
        timeout=60 if workers else 0,
    )  # fmt: skip
    crop = (SHAPE[0], CROP["lat"], CROP["lon"])
    return check_batches(loader, values, crop, same_values)


def some_crops(source, values, name: str, options=None) -> None:
    origins = [(0, 0, 0), (1, 3, 5), (5, 14, 24), (2, 22, 32)]
    member = dataclasses.replace(source, path=name)
    got = read_crops(member, origins, (1, 8, 8), storage_options=options)
    for crop, (t, y, x) in zip(got.numpy(), origins, strict=True):
        assert same_values(crop, values[name][t : t + 1, y : y + 8, x : x + 8]), (name, t, y, x)


@pytest.mark.parametrize("writer", ["netCDF4", "h5netcdf"])
@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("inline", [0, 400])
def test_local_references_read_what_xarray_reads(tmp_path, writer, version, inline):
    nc = tmp_path / "archive.nc"
    written = write_netcdf4(nc, writer)
    values = xarray_values(nc)
    for name in VARIABLES:
        assert same_values(values[name], written[name])
    refs = kerchunk_refs(nc, str(nc), inline)
    if inline:
        assert any(isinstance(v, str) for k, v in refs["refs"].items() if "/." not in k)
    source = References(write_refs(refs, tmp_path / "refs.json", version))
    for name in VARIABLES:
        some_crops(source, values, name)
    assert epoch(source, values) == 6


def test_relative_targets_resolve_against_the_reference_files_folder(tmp_path, monkeypatch):
    nc = tmp_path / "data" / "archive.nc"
    nc.parent.mkdir()
    values = xarray_values(nc) if write_netcdf4(nc, "netCDF4") else None
    refs = kerchunk_refs(nc, "archive.nc")
    source = References(write_refs(refs, nc.parent / "refs.json", 1))
    monkeypatch.chdir(tmp_path)  # not the folder of the targets
    assert epoch(source, values) == 6


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_read_references(tmp_path, method):
    nc = tmp_path / "archive.nc"
    write_netcdf4(nc, "netCDF4")
    source = References(write_refs(kerchunk_refs(nc, str(nc)), tmp_path / "refs.json", 1))
    assert epoch(source, xarray_values(nc), workers=2, method=method) == 6


def test_references_over_http_and_s3(tmp_path, object_server, s3):
    nc = tmp_path / "archive.nc"
    write_netcdf4(nc, "netCDF4")
    values = xarray_values(nc)
    server = object_server(tmp_path)
    refs = kerchunk_refs(nc, f"{server.url}/archive.nc")
    write_refs(refs, tmp_path / "http.json", 1)
    source = References(f"{server.url}/http.json")
    for name in VARIABLES:
        some_crops(source, values, name)
    assert epoch(source, values) == 6
    assert epoch(source, values, workers=2, method="spawn") == 6

    s3.put("archive", "nc/archive.nc", nc.read_bytes())
    refs = kerchunk_refs(nc, "s3://archive/nc/archive.nc")
    s3.put("archive", "nc/refs.json", json.dumps(refs).encode())
    source = References("s3://archive/nc/refs.json")
    for name in VARIABLES:
        some_crops(source, values, name, s3.storage_options)
    assert epoch(source, values, s3.storage_options) == 6
    ds = ZarrCropDataset(
        source, CROP, variables=["t2m"], batch_size=2, storage_options=s3.storage_options
    )
    assert "s3://archive/nc/refs.json/t2m" in repr(ds)


def test_only_the_referenced_bytes_are_read(tmp_path):
    nc = tmp_path / "archive.nc"
    write_netcdf4(nc, "netCDF4")
    refs = kerchunk_refs(nc, str(nc))
    source = References(write_refs(refs, tmp_path / "refs.json", 1))
    ds = ZarrCropDataset(
        source, {"time": 1, "lat": 16, "lon": 16}, variables=["t2m"], batch_size=1,
        origins=[(2, 0, 16)], cache_bytes=0,
    )  # fmt: skip
    list(ds)
    assert ds.stats()["bytes_read"] == refs["refs"]["t2m/2.0.1"][2]


def write_sharded(root: Path, index_location: str) -> np.ndarray:
    """A sharded Zarr v3 array that zarr-python writes at ``root / "x.zarr"`` (zstd inner
    chunks, the shard index at ``index_location``), one shard never written; returns what
    zarr-python reads."""
    codecs = zarr.codecs
    sharding = codecs.ShardingCodec(
        chunk_shape=(2, 8, 8), index_location=index_location,
        codecs=[codecs.BytesCodec(), codecs.ZstdCodec(level=3)],
    )  # fmt: skip
    array = zarr.create_array(
        root / "x.zarr", shape=(8, 32, 32), chunks=(4, 16, 16), dtype="f4",
        serializer=sharding, compressors=None, dimension_names=("time", "lat", "lon"),
    )  # fmt: skip
    values = np.random.default_rng(11).normal(size=array.shape).astype("f4")
    array[0:4] = values[0:4]
    array[4:8, 0:16] = values[4:8, 0:16]  # shards (1, 1, *) never written
    return zarr.open_array(root / "x.zarr")[...]


def sharded_refs(root: Path, base: str) -> dict:
    """A reference set (kerchunk's JSON, version 1) of the array :func:`write_sharded` wrote
    under ``root``, its shards at ``base``: alternately whole files (``[url]``) and ranges
    (``[url, offset, length]``)."""
    refs = {
        "zarr.json": json.dumps({"zarr_format": 3, "node_type": "group"}),
        "x/zarr.json": (root / "x.zarr" / "zarr.json").read_text(),
    }
    shards = sorted(f for f in (root / "x.zarr" / "c").rglob("*") if f.is_file())
    for i, shard in enumerate(shards):
        key = shard.relative_to(root / "x.zarr").as_posix()
        url = f"{base}/x.zarr/{key}"
        refs[f"x/{key}"] = [url] if i % 2 else [url, 0, shard.stat().st_size]
    return {"version": 1, "refs": refs}


@pytest.mark.parametrize("index_location", ["end", "start"])
def test_a_sharded_array_by_reference_locally_over_http_and_s3(
    tmp_path, object_server, s3, index_location
):
    """Each chunk the set lists is a shard: its index, read from its bytes (a whole file's
    end or start, or a range's), places the inner chunks the crops need."""
    values = write_sharded(tmp_path, index_location)
    layout = json.loads((tmp_path / "x.zarr" / "zarr.json").read_text())["codecs"][0]
    assert layout["configuration"]["index_location"] == index_location
    origins = [(0, 0, 0), (1, 7, 9), (3, 12, 20), (5, 22, 22), (4, 14, 6)]

    def check(source, options=None) -> None:
        got = read_crops(source, origins, (3, 10, 10), storage_options=options).numpy()
        for crop, (t, y, x) in zip(got, origins, strict=True):
            assert same_values(crop, values[t : t + 3, y : y + 10, x : x + 10]), (t, y, x)

    check(References(write_refs(sharded_refs(tmp_path, str(tmp_path)), tmp_path / "refs.json", 1),
                     path="x"))  # fmt: skip
    server = object_server(tmp_path)
    write_refs(sharded_refs(tmp_path, server.url), tmp_path / "http.json", 1)
    check(References(f"{server.url}/http.json", path="x"))
    for shard in (tmp_path / "x.zarr" / "c").rglob("*"):
        if shard.is_file():
            key = f"{index_location}/x.zarr/{shard.relative_to(tmp_path / 'x.zarr').as_posix()}"
            s3.put("archive", key, shard.read_bytes())
    refs = sharded_refs(tmp_path, f"s3://archive/{index_location}")
    s3.put("archive", f"{index_location}.json", json.dumps(refs).encode())
    check(References(f"s3://archive/{index_location}.json", path="x"), s3.storage_options)


def test_targets_outside_the_authorized_places_are_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    nc = elsewhere / "archive.nc"
    write_netcdf4(nc, "netCDF4")
    refs_dir = tmp_path / "refs"
    refs_dir.mkdir()
    at = write_refs(kerchunk_refs(nc, str(nc)), refs_dir / "refs.json", 1)
    with pytest.raises(ValueError, match="outside the places") as e:
        ZarrCropDataset(References(at), CROP, variables=["t2m"])
    assert str(nc) in str(e.value) and "authorize" in str(e.value)
    # Authorized, the same set opens; a place that is only a prefix of the name does not.
    with pytest.raises(ValueError, match="outside the places"):
        ZarrCropDataset(References(at, authorize=[str(tmp_path / "else")]), CROP, variables=["t2m"])
    assert epoch(References(at, authorize=[elsewhere]), xarray_values(nc)) == 6
    # A set that points at a file outside, by a relative path, is refused the same way.
    refs = kerchunk_refs(nc, "../elsewhere/archive.nc")
    with pytest.raises(ValueError, match="outside the places"):
        ZarrCropDataset(References(write_refs(refs, at, 1)), CROP, variables=["t2m"])


def test_a_deleted_or_changed_target_is_an_error_naming_it(tmp_path, object_server):
    nc = tmp_path / "archive.nc"
    write_netcdf4(nc, "netCDF4")
    original = nc.read_bytes()
    server = object_server(tmp_path)
    local = References(write_refs(kerchunk_refs(nc, str(nc)), tmp_path / "local.json", 1))
    write_refs(kerchunk_refs(nc, f"{server.url}/archive.nc"), tmp_path / "remote.json", 1)
    remote = References(f"{server.url}/remote.json")
    for source in (local, remote):
        nc.unlink()
        with pytest.raises(lsio_torch.LsioError, match=r"archive\.nc") as e:
            list(ZarrCropDataset(source, CROP, variables=["t2m"], batch_size=2, cache_bytes=0))
        assert "missing" in str(e.value)
        # Cut short: the last chunks' bytes are no longer there.
        nc.write_bytes(original[: len(original) // 2])
        with pytest.raises(lsio_torch.LsioError, match=r"archive\.nc"):
            ds = ZarrCropDataset(
                source, {"time": 1, "lat": 30, "lon": 40}, variables=["t2m", "u10"],
                batch_size=1, origins=[(5, 0, 0)], cache_bytes=0,
            )  # fmt: skip
            list(ds)
        nc.write_bytes(original)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{", "not a JSON reference set"),
        ('{"version": 7}', "version 7"),
        ('{"t2m/0.0.0": ["archive.nc", "x", 4]}', "t2m/0.0.0"),
        ('{"t2m/0.0.0": "base64:@@"}', "bad base64"),
    ],
)
def test_a_corrupt_reference_file_names_itself(tmp_path, text, says):
    at = tmp_path / "refs.json"
    at.write_text(text)
    with pytest.raises(ValueError, match=r"refs\.json") as e:
        read_crops(References(at, path="t2m"), [(0, 0, 0)], (1, 1, 1))
    assert says in str(e.value)


@pytest.mark.parametrize("cache_bytes", [0, 1 << 20])
def test_an_inline_chunk_that_does_not_decode_names_itself(tmp_path, cache_bytes):
    nc = tmp_path / "archive.nc"
    write_netcdf4(nc, "netCDF4")
    refs = kerchunk_refs(nc, str(nc))
    refs["refs"]["t2m/0.0.0"] = "base64:AAECAwQ="  # five bytes: no chunk of t2m
    source = References(write_refs(refs, tmp_path / "refs.json", 1), path="t2m")
    ds = ZarrCropDataset(
        source, (1, 8, 8), batch_size=1, origins=[(0, 0, 0)], cache_bytes=cache_bytes
    )
    with pytest.raises(lsio_torch.LsioError, match=r"refs\.json") as e:
        list(ds)
    assert "chunk [0, 0, 0] (inline in the references)" in str(e.value)


def test_a_missing_reference_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.json"):
        read_crops(References(tmp_path / "nothing.json", path="t2m"), [(0, 0, 0)], (1, 1, 1))


def test_a_chunk_the_set_does_not_list_is_the_fill_value(tmp_path):
    nc = tmp_path / "archive.nc"
    write_netcdf4(nc, "netCDF4")
    refs = kerchunk_refs(nc, str(nc))
    del refs["refs"]["t2m/0.0.0"]
    source = References(write_refs(refs, tmp_path / "refs.json", 1), path="t2m")
    (crop,) = read_crops(source, [(0, 0, 0)], (1, 16, 16)).numpy()
    assert (crop == -9999.0).all()


def kerchunk_parquet(refs: dict, at: Path, record_size: int) -> Path:
    """``refs`` as a parquet set (fsspec's layout, written by kerchunk)."""
    pytest.importorskip("fastparquet")
    from kerchunk.df import refs_to_dataframe

    refs_to_dataframe(refs, str(at), record_size=record_size)
    return at


def virtualizarr_refs(nc: Path, at: Path, fmt: str) -> Path:
    """VirtualiZarr's kerchunk references for the file at ``nc`` (``fmt``: json or parquet)."""
    pytest.importorskip("virtualizarr")
    from obspec_utils.registry import ObjectStoreRegistry
    from obstore.store import LocalStore
    from virtualizarr import open_virtual_dataset
    from virtualizarr.parsers import HDFParser

    registry = ObjectStoreRegistry({"file://": LocalStore(prefix="/")})
    vds = open_virtual_dataset(f"file://{nc}", registry=registry, parser=HDFParser())
    options = {"record_size": 5} if fmt == "parquet" else {}
    vds.vz.to_kerchunk(str(at), format=fmt, **options)
    return at


@pytest.mark.parametrize("record_size", [5, 1000])
def test_parquet_references_read_what_xarray_reads(tmp_path, record_size):
    nc = tmp_path / "archive.nc"
    write_netcdf4(nc, "h5netcdf")
    values = xarray_values(nc)
    refs = kerchunk_refs(nc, str(nc), inline=400)
    source = References(kerchunk_parquet(refs, tmp_path / "refs.parq", record_size))
    for name in VARIABLES:
        some_crops(source, values, name)
    assert epoch(source, values) == 6
    assert epoch(source, values, workers=2, method="fork") == 6


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_virtualizarr_references_read_what_xarray_reads(tmp_path, fmt):
    nc = tmp_path / "archive.nc"
    write_netcdf4(nc, "netCDF4")
    values = xarray_values(nc)
    source = References(virtualizarr_refs(nc, tmp_path / f"refs.{fmt}", fmt))
    for name in VARIABLES:
        some_crops(source, values, name)
    assert epoch(source, values) == 6


def test_parquet_references_over_http_and_s3(tmp_path, object_server, s3):
    nc = tmp_path / "archive.nc"
    write_netcdf4(nc, "netCDF4")
    values = xarray_values(nc)
    server = object_server(tmp_path)
    kerchunk_parquet(kerchunk_refs(nc, f"{server.url}/archive.nc"), tmp_path / "http.parq", 5)
    source = References(f"{server.url}/http.parq")
    for name in VARIABLES:
        some_crops(source, values, name)
    assert epoch(source, values, workers=2, method="spawn") == 6

    local = kerchunk_parquet(kerchunk_refs(nc, "s3://archive/pq/archive.nc"), tmp_path / "s3", 5)
    s3.put("archive", "pq/archive.nc", nc.read_bytes())
    url = s3.upload(local, "archive", "pq/refs.parq")
    source = References(url)
    for name in VARIABLES:
        some_crops(source, values, name, s3.storage_options)
    assert epoch(source, values, s3.storage_options) == 6


def test_parquet_record_files_are_read_as_their_chunks_are_needed(tmp_path):
    """A record file is read when a chunk of it is first needed: one that is garbage spoils
    only the crops that need it, with an error naming it."""
    nc = tmp_path / "archive.nc"
    write_netcdf4(nc, "netCDF4")
    values = xarray_values(nc)
    at = kerchunk_parquet(kerchunk_refs(nc, str(nc)), tmp_path / "refs.parq", 6)
    (at / "t2m" / "refs.5.parq").write_bytes(b"PAR1 not a record file PAR1")
    source = References(at, path="t2m")
    # t2m's chunks (1, 16, 16): 6 a time step, so time step 5 is record file 5.
    got = read_crops(source, [(0, 0, 0), (4, 10, 10)], (1, 16, 16)).numpy()
    assert same_values(got[1], values["t2m"][4:5, 10:26, 10:26])
    with pytest.raises(ValueError, match=r"refs\.5\.parq") as e:
        read_crops(source, [(5, 0, 0)], (1, 16, 16))
    assert "not a record file" in str(e.value)


def test_a_corrupt_parquet_set_names_itself(tmp_path):
    nc = tmp_path / "archive.nc"
    write_netcdf4(nc, "netCDF4")
    at = kerchunk_parquet(kerchunk_refs(nc, str(nc)), tmp_path / "refs.parq", 6)
    (at / ".zmetadata").write_text('{"metadata": {}}')
    with pytest.raises(ValueError, match=r"refs\.parq/\.zmetadata") as e:
        read_crops(References(at, path="t2m"), [(0, 0, 0)], (1, 1, 1))
    assert "record_size" in str(e.value)


def test_an_icechunk_repository_given_as_a_path_is_named(tmp_path):
    """A repository written by the icechunk package, given as a plain path, is refused as one
    (pointing to lsio_torch.Icechunk), not reported as a folder with no array."""
    icechunk = pytest.importorskip("icechunk")
    import xarray as xr

    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    session = repo.writable_session("main")
    ds = xr.Dataset({"t2m": (("time", "lat", "lon"), np.zeros(SHAPE, "f4"))})
    ds.to_zarr(session.store, zarr_format=3, consolidated=False)
    session.commit("first")
    for variables in (None, ["t2m"]):
        with pytest.raises(ValueError, match="Icechunk repository") as e:
            ZarrCropDataset(tmp_path / "repo", CROP, variables=variables)
        assert "lsio_torch.Icechunk(" in str(e.value)


def test_a_stateful_loader_over_references_resumes_mid_epoch(tmp_path):
    """StatefulDataLoader's state of a dataset read by reference resumes where it stopped, in
    a new dataset (and worker processes) opened from the same references."""
    pytest.importorskip("torchdata.stateful_dataloader", reason="torchdata is not installed")
    from torchdata.stateful_dataloader import StatefulDataLoader

    nc = tmp_path / "archive.nc"
    write_netcdf4(nc, "netCDF4")
    values = xarray_values(nc)
    at = kerchunk_parquet(kerchunk_refs(nc, str(nc)), tmp_path / "refs.parq", 5)

    def loader():
        ds = ZarrCropDataset(
            References(at), CROP, variables=list(VARIABLES), batch_size=2,
            samples_per_epoch=8, return_origins=True,
        )  # fmt: skip
        return StatefulDataLoader(
            ds, batch_size=None, num_workers=2, multiprocessing_context="fork"
        )

    whole = [origins.tolist() for _, origins in loader()]
    first = loader()
    taken = []
    for batch in first:
        taken.append(batch)
        if len(taken) == 2:
            break
    state = first.state_dict()
    again = loader()
    again.load_state_dict(state)
    rest = list(again)
    assert [o.tolist() for _, o in taken + rest] == whole
    crop = (SHAPE[0], CROP["lat"], CROP["lon"])
    assert check_batches(taken + rest, values, crop, same_values) == 8


def test_ranks_split_a_reference_set(tmp_path):
    nc = tmp_path / "archive.nc"
    write_netcdf4(nc, "netCDF4")
    at = write_refs(kerchunk_refs(nc, str(nc)), tmp_path / "refs.json", 1)
    seen = []
    for rank in (0, 1):
        ds = ZarrCropDataset(
            References(at), CROP, variables=["t2m"], batch_size=2, samples_per_epoch=8,
            return_origins=True, rank=rank, world_size=2,
        )  # fmt: skip
        seen.append([tuple(o) for _, origins in ds for o in origins.tolist()])
    assert len(seen[0]) == len(seen[1]) == 4
    whole = ZarrCropDataset(
        References(at), CROP, variables=["t2m"], batch_size=2, samples_per_epoch=8,
        return_origins=True,
    )  # fmt: skip
    assert sorted(seen[0] + seen[1]) == sorted(tuple(o) for _, b in whole for o in b.tolist())


WRITER = Path(__file__).with_name("virtual_icechunk_writer.py")


@pytest.fixture(scope="module")
def icechunk_pythons(tmp_path_factory) -> dict[str, str]:
    """The Pythons that write virtual Icechunk stores: ours (the icechunk 1 line, format 1)
    and a Python >= 3.12 venv with the icechunk 2 line (format 2), where one can be made."""
    pytest.importorskip("icechunk")
    pytest.importorskip("virtualizarr")
    from lsio_torch.bench.venv312 import venv_with

    pythons = {"icechunk1": sys.executable}
    venv = tmp_path_factory.mktemp("icechunk2") / "venv"
    packages = ["icechunk>=2,<3", "virtualizarr", "h5py", "xarray", "obstore"]
    python, why = venv_with(venv, packages)
    pythons["icechunk2"] = python or why
    return pythons


def virtualizarr_icechunk(python: str, nc: Path, repo: Path, prefix: str, container) -> str:
    """A VirtualiZarr virtual Icechunk store of the archive at ``nc``, written at ``repo`` by
    ``python`` (see the writer); returns the icechunk version that wrote it."""
    args = {"nc": str(nc), "repo": str(repo), "prefix": prefix, "container": container}
    run = subprocess.run(
        [python, str(WRITER), json.dumps(args)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])["icechunk"]


@pytest.mark.parametrize(
    "writer, place",
    [
        ("icechunk1", "local"),
        ("icechunk1", "s3"),
        ("icechunk2", "local"),
        ("icechunk2", "http"),
        ("icechunk2", "s3"),
    ],
)
def test_a_virtualizarr_icechunk_store_reads_what_xarray_reads(
    tmp_path, icechunk_pythons, writer, place, request
):
    """VirtualiZarr writes the archive's chunks as virtual references into an Icechunk
    repository; read through lsio_torch.Icechunk, with the archive's place authorized (and
    refused without it): locally, from the object server, and from moto's S3 (the repository
    and the archive in one bucket), each with an epoch through workers. Both icechunk lines
    write: the 1 line (format 1) drops a URL's port, so it cannot reference the object
    server's archive (icechunk#2223, fixed in the 2 line)."""
    python = icechunk_pythons[writer]
    if not Path(python).exists():
        pytest.skip(f"the icechunk 2 writer is {python}")
    archive = tmp_path / "archive"
    archive.mkdir()
    nc = archive / "archive.nc"
    write_netcdf4(nc, "netCDF4")
    values = xarray_values(nc)
    repo, options = tmp_path / "repo", None
    if place == "local":
        prefix = f"file://{archive}/"
        wrote = virtualizarr_icechunk(python, nc, repo, prefix, {"local": str(archive)})
        url, authorize = repo, [archive]
    elif place == "http":
        server = request.getfixturevalue("object_server")(tmp_path)
        prefix = f"{server.url}/archive/"
        wrote = virtualizarr_icechunk(python, nc, repo, prefix, {"http": True})
        url, authorize = f"{server.url}/repo", [prefix]
    else:
        s3 = request.getfixturevalue("s3")
        prefix = f"s3://virtual/{writer}/archive/"
        wrote = virtualizarr_icechunk(python, nc, repo, prefix, {"s3": s3.endpoint})
        s3.put("virtual", f"{writer}/archive/archive.nc", nc.read_bytes())
        url, authorize = s3.upload(repo, "virtual", f"{writer}/repo"), [prefix]
        options = s3.storage_options
    assert wrote.startswith(writer[-1] + "."), wrote
    source = lsio_torch.Icechunk(url, authorize=authorize)
    for name in VARIABLES:
        some_crops(source, values, name, options)
    assert epoch(source, values, options) == 6
    method = "fork" if place == "local" else "spawn"
    assert epoch(source, values, options, workers=2, method=method) == 6
    with pytest.raises(ValueError, match="outside the places"):
        refused = lsio_torch.Icechunk(url, path="t2m")
        read_crops(refused, [(0, 0, 0)], (1, 1, 1), storage_options=options)


def test_targets_in_other_stores_than_the_sets_own(tmp_path, icechunk_pythons, object_server, s3):
    """A set's targets may lie in other buckets and servers than the set itself, each read
    with its place's own storage options: a repository in one bucket whose archive is in
    another; a local repository whose archive is served over HTTP; a reference file in S3
    whose archive is on an HTTP server."""
    archive = tmp_path / "archive"
    archive.mkdir()
    nc = archive / "archive.nc"
    write_netcdf4(nc, "netCDF4")
    values = xarray_values(nc)
    server = object_server(tmp_path)
    http_prefix = f"{server.url}/archive/"

    # A repository in bucket "repos", its archive in bucket "archives" (the same credentials).
    virtualizarr_icechunk(
        icechunk_pythons["icechunk1"], nc, tmp_path / "repo1", "s3://archives/nc/",
        {"s3": s3.endpoint},
    )  # fmt: skip
    s3.put("archives", "nc/archive.nc", nc.read_bytes())
    url = s3.upload(tmp_path / "repo1", "repos", "two-buckets")
    source = lsio_torch.Icechunk(url, authorize=["s3://archives/nc/"])
    for name in VARIABLES:
        some_crops(source, values, name, s3.storage_options)
    assert epoch(source, values, s3.storage_options, workers=2, method="spawn") == 6

    # A reference file in S3, its archive on the HTTP server: the server's place has options
    # of its own (none), as S3's keys are no options of an HTTP store.
    s3.put(
        "repos",
        "refs/http.json",
        json.dumps(kerchunk_refs(nc, f"{http_prefix}archive.nc")).encode(),
    )
    with pytest.raises(ValueError, match="not an option of HTTP stores"):
        refs = References("s3://repos/refs/http.json", authorize=[http_prefix])
        some_crops(refs, values, "t2m", s3.storage_options)
    refs = References("s3://repos/refs/http.json", authorize={http_prefix: {}})
    assert "http" in repr(refs) and s3.storage_options["secret_access_key"] not in repr(refs)
    for name in VARIABLES:
        some_crops(refs, values, name, s3.storage_options)
    assert epoch(refs, values, s3.storage_options, workers=2, method="fork") == 6

    # A local repository (the icechunk 2 line, which keeps the server's port) whose archive is
    # on the HTTP server: local files and fetched objects in one array.
    python = icechunk_pythons["icechunk2"]
    if not Path(python).exists():
        pytest.skip(f"the icechunk 2 writer is {python}")
    virtualizarr_icechunk(python, nc, tmp_path / "repo2", http_prefix, {"http": True})
    source = lsio_torch.Icechunk(tmp_path / "repo2", authorize={http_prefix: None})
    for name in VARIABLES:
        some_crops(source, values, name)
    assert epoch(source, values, workers=2, method="fork") == 6


def test_a_process_keeps_a_bounded_number_of_sets_opened(tmp_path):
    """Each set is parsed once for all the datasets of a process, but a process that makes
    datasets over many sets keeps only the latest few (those still read stay with their
    arrays)."""
    from lsio_torch import references

    nc = tmp_path / "archive.nc"
    values = write_netcdf4(nc, "netCDF4")
    refs = kerchunk_refs(nc, str(nc))
    first = None
    for i in range(references.MAX_OPENED + 8):
        source = References(write_refs(refs, tmp_path / f"refs{i}.json", 1), path="u10")
        ds = ZarrCropDataset(source, (1, 8, 8), batch_size=2, samples_per_epoch=2)
        if first is None:
            first = ds
    assert len(references._opened) <= references.MAX_OPENED
    # The first dataset's set left the process's table, not the dataset.
    got = [b for b in first]
    assert len(got) == 1 and got[0].shape == (2, 1, 8, 8)
    assert np.isin(got[0].numpy(), values["u10"]).all()
