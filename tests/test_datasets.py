"""Datasets, not arrays: a WeatherBench2-shaped group written by xarray (surface fields
``(time, latitude, longitude)`` beside fields on levels ``(time, level, latitude,
longitude)``), cropped by dimension name, with ``steps`` along time and a ``select``ion of
levels; every crop compared with xarray's ``isel`` of the same indices, locally, over
``http://`` (the project's object server) and ``s3://`` (moto)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support import same_values

import lsio_torch

SURFACE = ("2m_temperature", "10m_u_component_of_wind")
LEVELS = ("geopotential", "specific_humidity")
SIZES = {"time": 12, "level": 5, "latitude": 16, "longitude": 20}
CROP = {"latitude": 8, "longitude": 6}
STEPS = [-1, 0, 4]
SELECT = [3, 0, 2]


def write_wb2(path: Path, fmt: int):
    """An xarray-written group as WeatherBench2 publishes: one time step a chunk (and here one
    level a chunk, so that a selection reads only its levels), blosc lz4 in v2."""
    import xarray as xr

    rng = np.random.default_rng(fmt)
    coords = {d: np.arange(n) for d, n in SIZES.items()}
    data = {}
    for name in SURFACE:
        shape = (SIZES["time"], SIZES["latitude"], SIZES["longitude"])
        data[name] = (("time", "latitude", "longitude"), rng.normal(size=shape).astype("f4"))
    for name, dtype in zip(LEVELS, ("f4", "i2"), strict=True):
        shape = tuple(SIZES.values())
        values = rng.normal(size=shape) * (1 if dtype == "f4" else 1000)
        data[name] = (("time", "level", "latitude", "longitude"), values.astype(dtype))
    ds = xr.Dataset(data, coords=coords)
    encoding = {}
    for name in SURFACE:
        encoding[name] = {"chunks": (1, SIZES["latitude"], SIZES["longitude"])}
    for name in LEVELS:
        encoding[name] = {"chunks": (1, 1, SIZES["latitude"], SIZES["longitude"])}
    if fmt == 2:
        import numcodecs

        for name in encoding:
            encoding[name]["compressors"] = numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE)
    ds.to_zarr(path, zarr_format=fmt, encoding=encoding, mode="w", consolidated=fmt == 2)
    return ds


@pytest.fixture(scope="module", params=[2, 3], ids=["v2", "v3"])
def wb2(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"wb2-v{request.param}")
    path = root / "wb2.zarr"
    return request.param, path, write_wb2(path, request.param)


def expected(values, anchor, dims, steps=STEPS, select=SELECT, crop=CROP):
    """xarray's ``isel`` of the same indices: the reference crop of one variable."""
    at = dict(zip(dims, anchor, strict=True))
    index = {"time": [at["time"] + s for s in steps]}
    if "level" in values.dims:
        index["level"] = select
    for d, c in crop.items():
        index[d] = slice(at[d], at[d] + c)
    return values.isel(index).values


def check_dataset(ds, reference, variables, batches=None) -> int:
    """Compares every crop of every variable with xarray's; returns the crops compared."""
    compared = 0
    for batch, origins in batches or ds:
        for name in variables:
            for i, anchor in enumerate(origins.tolist()):
                got = batch[name][i].numpy()
                want = expected(reference[name], anchor, ds.dims)
                assert same_values(got, want), (name, anchor)
                compared += 1
    return compared


def dataset(source, **options):
    return lsio_torch.ZarrCropDataset(
        source,
        CROP,
        variables=list(SURFACE + LEVELS),
        steps={"time": STEPS},
        select={"level": SELECT},
        batch_size=4,
        samples_per_epoch=12,
        return_origins=True,
        **options,
    )


def test_mixed_dimensions_open_with_all_variables(wb2):
    _, path, _reference = wb2
    ds = lsio_torch.ZarrCropDataset(
        path, {"time": 2}, variables=list(SURFACE + LEVELS), batch_size=3, samples_per_epoch=6
    )
    assert ds.dims == ("time", "level", "latitude", "longitude")
    assert ds.shape == tuple(SIZES.values())
    batch = next(iter(ds))
    assert tuple(batch["2m_temperature"].shape) == (3, 2, 16, 20)
    assert tuple(batch["geopotential"].shape) == (3, 2, 5, 16, 20)
    assert batch["specific_humidity"].dtype == torch.int16


def test_steps_and_select_equal_xarray(wb2):
    _, path, reference = wb2
    ds = dataset(path, cache_bytes=0)
    assert ds.crop == (3, 3, 8, 6)
    first, origins = next(iter(ds))
    assert tuple(first["2m_temperature"].shape) == (4, 3, 8, 6)
    assert tuple(first["geopotential"].shape) == (4, 3, 3, 8, 6)
    # Origins leave room for every step: t - 1 >= 0 and t + 4 < 12; level is 0 (selected).
    assert ((origins[:, 0] >= 1) & (origins[:, 0] <= 7)).all() and (origins[:, 1] == 0).all()
    assert check_dataset(ds, reference, SURFACE + LEVELS) == 12 * 4


def test_only_the_chunks_of_the_steps_and_levels_are_read(wb2):
    """``bytes_read`` is the size of the chunk files of the steps and selected levels of each
    batch, each once per batch, and nothing of the times or levels between them."""
    fmt, path, _reference = wb2
    ds = dataset(path, cache_bytes=0)
    want = 0
    for _, origins in ds:
        chunks = set()
        for t, *_ in origins.tolist():
            for s in STEPS:
                for name in SURFACE:
                    chunks.add((name, t + s))
                for name in LEVELS:
                    chunks.update((name, t + s, level) for level in SELECT)
        for name, *at in chunks:
            at = [*at, 0, 0]
            key = "/".join(["c", *map(str, at)]) if fmt == 3 else ".".join(map(str, at))
            want += (path / name / key).stat().st_size
    assert ds.stats()["bytes_read"] == want
    # Reading the whole window (t - 1 .. t + 4, every level) reads much more.
    window = lsio_torch.ZarrCropDataset(
        path,
        {"time": 6, **CROP},
        variables=list(SURFACE + LEVELS),
        batch_size=4,
        samples_per_epoch=12,
        cache_bytes=0,
    )
    for _ in window:
        pass
    assert window.stats()["bytes_read"] > 1.5 * want


def test_steps_and_select_with_dataloader_workers(wb2):
    _, path, reference = wb2
    ds = dataset(path)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    assert check_dataset(ds, reference, SURFACE + LEVELS, loader) == 12 * 4


def test_steps_and_select_over_http(wb2, object_server):
    _, path, reference = wb2
    server = object_server(path.parent)
    ds = dataset(f"{server.url}/{path.name}")
    assert check_dataset(ds, reference, SURFACE + LEVELS) == 12 * 4
    assert server.requests > 0


def test_steps_and_select_over_s3(wb2, s3):
    fmt, path, reference = wb2
    url = s3.upload(path, "datasets", f"wb2-v{fmt}.zarr")
    ds = dataset(url, storage_options=s3.storage_options)
    assert check_dataset(ds, reference, SURFACE + LEVELS) == 12 * 4


def test_per_array_steps_and_given_origins(wb2):
    """Steps per array (inputs at t-1 and t, the target at t+4 only for one field), and
    origins given as the steps' origins."""
    _, path, reference = wb2
    given = [(1, 0, 0, 0), (7, 0, 8, 14)]
    ds = lsio_torch.ZarrCropDataset(
        path,
        CROP,
        variables=["2m_temperature", "geopotential"],
        steps={"2m_temperature": {"time": [-1, 0]}, "geopotential": {"time": [4]}},
        select={"geopotential": {"level": [4]}},
        origins=given,
        batch_size=2,
        return_origins=True,
    )
    batch, origins = next(iter(ds))
    assert origins.tolist() == [list(o) for o in given]
    for i, anchor in enumerate(given):
        t2m = expected(reference["2m_temperature"], anchor, ds.dims, steps=[-1, 0])
        z = expected(reference["geopotential"], anchor, ds.dims, steps=[4], select=[4])
        assert same_values(batch["2m_temperature"][i].numpy(), t2m)
        assert same_values(batch["geopotential"][i].numpy(), z)
    with pytest.raises(IndexError, match=r"at \[0, 0, 0\] leaves the arrays' grid"):
        lsio_torch.ZarrCropDataset(
            path, CROP, variables=["2m_temperature"], steps={"time": [-1, 0]}, origins=[(0,) * 3]
        )


def test_valid_names_the_steps_origins(wb2):
    _, path, _ = wb2
    ds = lsio_torch.ZarrCropDataset(
        path,
        CROP,
        variables=list(SURFACE),
        steps={"time": STEPS},
        valid=[0, 1, 5, 8],  # 0 (t - 1 < 0) and 8 (t + 4 > 11) leave no room for the steps
        batch_size=8,
        samples_per_epoch=32,
        return_origins=True,
    )
    times = {t for _, origins in ds for t in origins[:, 0].tolist()}
    assert times == {1, 5}


def test_datasets_that_do_not_line_up_are_refused_naming_array_and_dimension(wb2, tmp_path):
    import xarray as xr

    _, path, _ = wb2
    variables = list(SURFACE + LEVELS)
    with pytest.raises(ValueError, match="need crop as a mapping by dimension name"):
        lsio_torch.ZarrCropDataset(path, (1, 8, 6), variables=variables)
    with pytest.raises(ValueError, match=r"the steps along 'time' reach over 13 indices"):
        lsio_torch.ZarrCropDataset(path, CROP, variables=variables, steps={"time": [-1, 11]})
    with pytest.raises(ValueError, match=r"geopotential: select\['level'\] index 5 is outside"):
        lsio_torch.ZarrCropDataset(path, CROP, variables=variables, select={"level": [5]})
    with pytest.raises(ValueError, match=r"dimension 'time' is given both steps and crop"):
        lsio_torch.ZarrCropDataset(
            path, {"time": 2, **CROP}, variables=variables, steps={"time": [0]}
        )
    with pytest.raises(ValueError, match=r"steps names \['step'\], not dimensions"):
        lsio_torch.ZarrCropDataset(path, CROP, variables=variables, steps={"step": [0]})
    other = tmp_path / "other.zarr"
    xr.Dataset({"u": (("time", "latitude"), np.zeros((12, 15), "f4"))}).to_zarr(other)
    both = {"z": path / "geopotential", "u": other / "u"}
    with pytest.raises(
        ValueError, match=r"do not line up along 'latitude'.*geopotential: 16.*u: 15"
    ):
        lsio_torch.ZarrCropDataset(both, {"time": 1})


@pytest.mark.parametrize("max_requests", [4, None])
def test_one_request_budget_for_all_variables_over_http(tmp_path, object_server, max_requests):
    """16 variables, no cache, over a server 20 ms away: an epoch completes, and the server
    never sees more requests open at once than the dataset's one budget (``max_requests``,
    whatever the number of arrays)."""
    import zarr

    group = zarr.open_group(tmp_path / "g.zarr", mode="w", zarr_format=3)
    names = [f"v{i}" for i in range(16)]
    values = {}
    for i, name in enumerate(names):
        values[name] = np.random.default_rng(i).integers(-999, 999, (8, 32, 32), dtype="i2")
        group.create_array(name, shape=(8, 32, 32), chunks=(1, 16, 16), dtype="i2")[...] = values[
            name
        ]
    server = object_server(tmp_path, latency_ms=20)
    ds = lsio_torch.ZarrCropDataset(
        f"{server.url}/g.zarr",
        (2, 16, 16),
        variables=names,
        batch_size=8,
        samples_per_epoch=32,
        cache_bytes=0,
        max_requests=max_requests,
        return_origins=True,
    )
    before = server.requests
    crops = 0
    for batch, origins in ds:
        for name in names:
            for i, (t, y, x) in enumerate(origins.tolist()):
                want = values[name][t : t + 2, y : y + 16, x : x + 16]
                assert np.array_equal(batch[name][i].numpy(), want)
                crops += 1
    assert crops == 16 * 32
    budget = max_requests or 128
    print(f"requests {server.requests - before}, most open at once {server.most_open}")
    assert server.requests - before > budget  # the budget was what bounded them
    assert server.most_open <= budget
