"""Conformance: every Zarr feature we claim, written by zarr-python, xarray and tensorstore,
read crop by crop and compared with zarr-python's reads; and every feature we lack refused at
open time with a message that names it."""

from __future__ import annotations

import json

import numcodecs
import numpy as np
import pytest
import torch
import zarr
from support import check_batches, check_crops, crop_origins, rewrite_json, same_values
from zarr_cases import CASES, CHUNKS, SHAPE, Case, v2, v3

import lsio_torch

CROPS = [(4, 5, 3), (5, 6, 4), SHAPE, (1, 1, 1), (3, 13, 2)]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_crops_equal_zarr_python(case: Case, tmp_path):
    path = case.make(tmp_path / f"{case.id}.zarr")
    reference = zarr.open_array(path, mode="r")[...]
    reference = reference.astype(reference.dtype.newbyteorder("="))  # torch is native-endian
    checked = 0
    for k, crop in enumerate(CROPS):
        origins = crop_origins(SHAPE, crop, n=10, seed=k)
        out = lsio_torch.read_crops(path, origins, crop)
        checked += check_crops(out, origins, reference, crop, same_values)
    assert checked == 50


def test_same_values_can_fail():
    a = np.array([1.0, np.nan], dtype="f4")
    assert same_values(a, a.copy())
    assert not same_values(a, np.array([1.0, 2.0], dtype="f4"))
    assert not same_values(np.array([0.0], "f8"), np.array([-0.0], "f8"))
    assert not same_values(np.array([1 + 1j], "c8"), np.array([1 + 2j], "c8"))


@pytest.mark.parametrize("fmt", [2, 3])
def test_crop_by_dimension_name_takes_the_rest_whole(tmp_path, fmt):
    path = next(c for c in CASES if c.id == f"xarray-v{fmt}").make(tmp_path / "ds.zarr")
    ds = lsio_torch.ZarrCropDataset(
        path, {"time": 2, "lat": 5}, batch_size=4, samples_per_epoch=8, return_origins=True
    )
    assert ds.crop == (2, 5, 7)
    reference = zarr.open_array(path)[...]
    assert check_batches(ds, reference, ds.crop, same_values) == 8
    with pytest.raises(ValueError, match=r"crop names \['level'\], not dimensions"):
        lsio_torch.ZarrCropDataset(path, {"level": 1})


def test_crop_by_name_needs_names(tmp_path):
    path = v3()(tmp_path / "a.zarr")
    with pytest.raises(ValueError, match="has no dimension names"):
        lsio_torch.ZarrCropDataset(path, {"x": 1})


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("consolidated", [True, False])
def test_variables_of_a_group(tmp_path, fmt, consolidated):
    import xarray as xr

    dims = ("time", "lat", "lon")
    rng = np.random.default_rng(0)
    ds = xr.Dataset({name: (dims, rng.normal(size=SHAPE).astype("f4")) for name in ("t2m", "u10")})
    ds.to_zarr(tmp_path / "g.zarr", zarr_format=fmt, consolidated=consolidated, mode="w")
    loader = lsio_torch.ZarrCropDataset(
        tmp_path / "g.zarr",
        {"lat": 4, "lon": 4},
        variables=["t2m", "u10"],
        batch_size=3,
        samples_per_epoch=6,
        return_origins=True,
    )
    batches = torch.utils.data.DataLoader(loader, batch_size=None)
    values = {name: ds[name].values for name in ("t2m", "u10")}
    assert check_batches(batches, values, (11, 4, 4), same_values) == 6


def test_consolidated_metadata_is_used(tmp_path):
    """With the arrays' own metadata files gone, the group's .zmetadata still opens them."""
    path = next(c for c in CASES if c.id == "xarray-v2").make(tmp_path / "ds.zarr")
    reference = zarr.open_array(path)[...]
    (path / ".zarray").unlink()
    (path / ".zattrs").unlink()
    ds = lsio_torch.ZarrCropDataset(
        path.parent, {"time": 11}, variables=["t2m"], batch_size=1, samples_per_epoch=1
    )
    (batch,) = list(ds)
    assert same_values(batch["t2m"][0].numpy(), reference)


def test_variables_must_share_a_shape(tmp_path):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    group.create_array("a", shape=(4, 4), chunks=(2, 2), dtype="f4")
    group.create_array("b", shape=(4, 5), chunks=(2, 2), dtype="f4")
    with pytest.raises(ValueError, match="arrays do not line up"):
        lsio_torch.ZarrCropDataset(tmp_path / "g.zarr", (1, 1), variables=["a", "b"])
    with pytest.raises(FileNotFoundError, match=r"g\.zarr/c"):
        lsio_torch.ZarrCropDataset(tmp_path / "g.zarr", (1, 1), variables=["c"])
    with pytest.raises(ValueError, match="is a Zarr group, not an array"):
        lsio_torch.ZarrCropDataset(tmp_path / "g.zarr", (1, 1))


def _edit(path, **fields):
    rewrite_json(path / "zarr.json", lambda meta: meta.update(fields))
    return path


UNSUPPORTED = {
    "irregular chunk grid": (
        lambda p: _edit(
            v3()(p),
            chunk_grid={
                "name": "rectilinear",
                "configuration": {"kind": "inline", "chunk_shapes": [[4, 7], [13], [7]]},
            },
        ),
        r"unsupported chunk grid rectilinear",
    ),
    "variable-length strings v3": (
        lambda p: zarr.create_array(p, shape=(4,), chunks=(2,), dtype=str) and p,
        r"unsupported data type string",
    ),
    "variable-length strings v2": (
        lambda p: zarr.create_array(p, shape=(4,), chunks=(2,), dtype=str, zarr_format=2) and p,
        r"unsupported data type string",
    ),
    "structured dtype v2": (
        lambda p: (
            zarr.create_array(
                p, shape=(4,), chunks=(2,), dtype=[("a", "i4"), ("b", "f4")], zarr_format=2
            )
            and p
        ),
        r"unsupported structured data type",
    ),
    "codec v2": (
        lambda p: v2(numcodecs.CRC32())(p),
        r"codec crc32 is not supported",
    ),
    "codec v3": (
        lambda p: v3(compressors=zarr.codecs.numcodecs.CRC32())(p),
        r"codec numcodecs.crc32 is not supported",
    ),
    "must-understand field": (
        lambda p: _edit(v3()(p), lsio_future={"must_understand": True}),
        r"lsio_future",
    ),
    "storage transformer": (
        lambda p: _edit(v3()(p), storage_transformers=[{"name": "lsio_cache"}]),
        r"unsupported storage transformer lsio_cache",
    ),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("feature", list(UNSUPPORTED))
def test_unsupported_features_are_refused_at_open(tmp_path, feature):
    make, message = UNSUPPORTED[feature]
    path = make(tmp_path / "a.zarr")
    meta = path / ("zarr.json" if (path / "zarr.json").exists() else ".zarray")
    ndim = len(json.loads(meta.read_text())["shape"])
    with pytest.raises(ValueError, match=message) as raised:
        lsio_torch.ZarrCropDataset(path, (1,) * ndim)
    assert "a.zarr" in str(raised.value)


def test_a_deleted_v2_chunk_reads_as_the_fill_value(tmp_path):
    path = v2(numcodecs.Zstd())(tmp_path / "a.zarr")
    chunk = path / "1.1.1"  # written: with_holes leaves only chunk 0.0.0 unstored
    before = lsio_torch.read_crops(path, [(4, 5, 3)], CHUNKS)[0].numpy()
    assert chunk.is_file() and (before != 0).any()
    chunk.unlink()
    out = lsio_torch.read_crops(path, [(4, 5, 3)], CHUNKS)[0].numpy()
    assert (out == 0).all()
    assert same_values(out, zarr.open_array(path)[4:8, 5:10, 3:6])


@pytest.mark.parametrize("meta", [".zarray", "zarr.json"])
def test_a_missing_array_is_file_not_found_naming_the_path(tmp_path, meta):
    path = (v2(numcodecs.Zstd()) if meta == ".zarray" else v3())(tmp_path / "a.zarr")
    (path / meta).unlink()
    with pytest.raises(FileNotFoundError, match=r"a\.zarr"):
        lsio_torch.read_crops(path, [(0, 0, 0)], (2, 2, 2))
