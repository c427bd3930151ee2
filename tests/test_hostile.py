"""Inputs that used to kill the process or read wrong, each now a clean Python exception or a
read equal to zarr-python's: huge and wrapping extents, never-written chunks, huge sizes from
the caller, panics, non-JSON attributes, optional codec fields, 0-d arrays, and messages that
named the wrong cause."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from support import rewrite_json, same_bits, smooth_field, write_zarr
from zarr.codecs import BytesCodec, ZstdCodec

import lsio_torch
from lsio_torch import ZarrCropDataset, read_crops


def small_v3(path: Path, **kwargs) -> np.ndarray:
    values = smooth_field((6, 20), "float32", 3)
    kwargs.setdefault("compressors", None)
    write_zarr(path, values, chunks=(4, 8), zarr_format=3, **kwargs)
    return values


def small_v2(path: Path) -> np.ndarray:
    values = smooth_field((6, 20), "int16", 4)
    write_zarr(path, values, chunks=(4, 8), zarr_format=2, compressors=None)
    return values


# 1. Huge chunks and extents whose products wrap around: refused at open, naming the array.


def test_a_chunk_past_the_limit_is_a_value_error_at_open(tmp_path):
    path = tmp_path / "huge.zarr"
    small_v3(path)
    huge = [2**20] * 3

    def edit(doc):
        doc["shape"] = huge
        doc["chunk_grid"]["configuration"]["chunk_shape"] = huge
        doc["codecs"] = [{"name": "bytes", "configuration": {"endian": "little"}}]

    rewrite_json(path / "zarr.json", edit)
    with pytest.raises(ValueError, match=r"huge\.zarr.*2 GiB"):
        read_crops(path, [(0, 0, 0)], (1, 1, 1))
    with pytest.raises(ValueError, match=r"huge\.zarr"):
        ZarrCropDataset(path, (1, 1, 1))


@pytest.mark.parametrize(
    ("shape", "chunks"),
    [([4, 100, 32], [4, 2**64 - 1, 32]), ([2**32, 2**32], [2**32, 2**32])],
    ids=["chunk-2**64-1", "product-wraps"],
)
def test_extents_whose_product_overflows_are_a_value_error(tmp_path, shape, chunks):
    path = tmp_path / "wraps.zarr"
    small_v2(path)

    def edit(doc):
        doc["shape"], doc["chunks"] = shape, chunks

    rewrite_json(path / ".zarray", edit)
    with pytest.raises(ValueError, match=r"wraps\.zarr.*(overflows 64 bits|2 GiB)"):
        read_crops(path, [[0] * len(shape)], [1] * len(shape))


def test_a_shard_index_past_the_limit_is_refused(tmp_path):
    path = tmp_path / "index.zarr"
    zarr.create_array(
        path, shape=(8, 8), chunks=(2, 2), shards=(8, 8), dtype="uint8", compressors=None
    )

    def edit(doc):
        doc["shape"] = doc["chunk_grid"]["configuration"]["chunk_shape"] = [2**20, 2**20]
        doc["codecs"][0]["configuration"]["chunk_shape"] = [1, 1]

    rewrite_json(path / "zarr.json", edit)
    with pytest.raises(ValueError, match=r"index\.zarr: shard index"):
        lsio_torch.read_crops(path, [(0, 0)], (1, 1))


# 2. Memory follows the crop, not the chunk: a never-written chunk is written as fill runs.

MEASURE_RSS = """
import resource, sys
import lsio_torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
crops = lsio_torch.read_crops(sys.argv[1], [(0, 0), (100, 200)], (4, 4), threads=2)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert crops.shape == (2, 4, 4) and bool((crops == 3.5).all()), crops
print((after - before) // 1024)
"""


def test_a_crop_of_a_never_written_1_gib_chunk_costs_what_the_crop_does(tmp_path):
    path = tmp_path / "empty.zarr"
    zarr.create_array(
        path, shape=(16384, 16384), chunks=(16384, 16384), dtype="float32", fill_value=3.5
    )
    run = subprocess.run(
        [sys.executable, "-c", MEASURE_RSS, str(path)], capture_output=True, text=True, check=True
    )
    grew_mb = int(run.stdout.strip())
    assert grew_mb < 64, f"peak RSS grew by {grew_mb} MB for two 4x4 crops"


# 3. Sizes from the caller are checked before anything is allocated.


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ({"batch_size": 2**40}, "batch_size=1099511627776.*exceed this machine"),
        ({"batch_size": 4, "prefetch": 2**40}, "prefetch=1099511627776.*exceed this machine"),
        ({"threads": 2**40}, "threads must be at most 1024"),
        ({"io_threads": 2**20}, "io_threads must be at most 1024"),
    ],
)
def test_huge_sizes_from_the_caller_are_value_errors(tmp_path, argument, message):
    path = tmp_path / "a.zarr"
    small_v3(path)
    with pytest.raises(ValueError, match=message):
        ZarrCropDataset(path, (2, 4), **argument)


def test_the_sampler_refuses_more_origins_than_it_can_hold():
    sampler = lsio_torch._lsio_torch.Sampler([10, 10], [2, 2], 0)
    assert len(sampler.origins(0, 0, 3)) == 3
    with pytest.raises(ValueError, match="at most"):
        sampler.origins(0, 0, 2**40)
    with pytest.raises(ValueError, match="below 2\\*\\*64"):
        sampler.origins(0, 2**64 - 1, 2)


# 4. No panic reaches Python.


def test_a_panic_reaches_python_as_an_lsio_error():
    with pytest.raises(lsio_torch.LsioError, match=r"internal error while testing.*boom") as info:
        lsio_torch._lsio_torch._panic_at_the_boundary("boom")
    assert type(info.value).__name__ == "LsioError"


# 7. Non-JSON attributes (bare NaN, Infinity) never stop an array from being read.


def test_bare_nan_in_zattrs_zarr_json_and_zmetadata(tmp_path):
    v2 = tmp_path / "v2.zarr"
    expected2 = small_v2(v2)
    (v2 / ".zattrs").write_text('{"valid_min": NaN, "scale": Infinity, "offset": -Infinity}')
    v3 = tmp_path / "v3.zarr"
    expected3 = small_v3(v3)
    text = (v3 / "zarr.json").read_text()
    (v3 / "zarr.json").write_text(text.replace('"attributes": {}', '"attributes": {"m": NaN}'))
    assert '"m": NaN' in (v3 / "zarr.json").read_text()
    for path, expected in [(v2, expected2), (v3, expected3)]:
        got = read_crops(path, [(1, 3)], (4, 10)).numpy()
        assert same_bits(got[0], expected[1:5, 3:13])

    group = tmp_path / "group.zarr"
    root = zarr.open_group(group, mode="w", zarr_format=2)
    values = smooth_field((5, 9), "float32", 5)
    root.create_array("t2m", shape=values.shape, chunks=(2, 4), dtype="float32")[...] = values
    root["t2m"].attrs["missing"] = float("nan")
    zarr.consolidate_metadata(group)
    assert "NaN" in (group / ".zmetadata").read_text()
    ds = ZarrCropDataset(group, (5, 9), variables=["t2m"], origins=[(0, 0)])
    (batch,) = list(ds)
    assert same_bits(batch["t2m"][0].numpy(), values)


def test_attributes_that_are_not_json_at_all_are_left_out(tmp_path):
    path = tmp_path / "v2.zarr"
    expected = small_v2(path)
    (path / ".zattrs").write_text('{"_ARRAY_DIMENSIONS": ["y", "x"], oops')
    got = read_crops(path, [(0, 0)], (6, 20)).numpy()
    assert same_bits(got[0], expected)


# 8. Optional codec fields left out mean their defaults.


def test_zstd_without_checksum_reads_like_zarr_python(tmp_path):
    path = tmp_path / "zstd.zarr"
    values = small_v3(path, compressors=[ZstdCodec(level=3)], serializer=BytesCodec())

    def edit(doc):
        for codec in doc["codecs"]:
            if codec["name"] == "zstd":
                del codec["configuration"]["checksum"]
                del codec["configuration"]["level"]

    rewrite_json(path / "zarr.json", edit)
    assert "checksum" not in (path / "zarr.json").read_text()
    reference = zarr.open_array(path, mode="r")[...]
    assert same_bits(reference, values)
    got = read_crops(path, [(0, 0), (2, 9)], (4, 11)).numpy()
    assert same_bits(got[0], values[0:4, 0:11]) and same_bits(got[1], values[2:6, 9:20])


def test_sharding_without_index_codecs_or_location_reads_like_zarr_python(tmp_path):
    path = tmp_path / "sharded.zarr"
    values = smooth_field((8, 12), "uint16", 6)
    write_zarr(path, values, chunks=(2, 3), shards=(4, 6), compressors=None)

    def edit(doc):
        config = doc["codecs"][0]["configuration"]
        assert config["index_location"] == "end"
        del config["index_location"]

    rewrite_json(path / "zarr.json", edit)
    got = read_crops(path, [(1, 2)], (6, 9)).numpy()
    assert same_bits(got[0], values[1:7, 2:11])


# 9. 0-d arrays through read_crops: one value per origin.


def test_read_crops_of_a_0d_array_returns_one_value_per_origin(tmp_path):
    path = tmp_path / "scalar.zarr"
    array = zarr.create_array(path, shape=(), dtype="float64", fill_value=0)
    array[...] = 2.75
    got = read_crops(path, [(), ()], ())
    assert got.shape == (2,) and got.tolist() == [2.75, 2.75]
    assert read_crops(path, [], ()).shape == (0,)


# 12. Messages that named the wrong cause.


def test_non_integer_crops_and_origins_are_refused(tmp_path):
    path = tmp_path / "a.zarr"
    small_v3(path)
    with pytest.raises(ValueError, match=r"crop extents must be integers, got 2\.5"):
        read_crops(path, [(0, 0)], (2.5, 4))
    with pytest.raises(ValueError, match="origins must be integers"):
        read_crops(path, [(0.5, 0)], (2, 4))
    with pytest.raises(ValueError, match="origins must be integers"):
        read_crops(path, torch.tensor([[1.0, 0.0]]), (2, 4))
    with pytest.raises(ValueError, match="origins must be integers"):
        ZarrCropDataset(path, (2, 4), origins=np.array([[1.5, 2.0]]))
    with pytest.raises(ValueError, match=r"origins must be integers, got 2\.5"):
        next(iter(ZarrCropDataset(path, (2, 4), origins=lambda epoch, i: (2.5, 0))))
    # Integers of any integer type are fine.
    got = read_crops(path, np.array([[1, 2]], dtype=np.uint8), (np.int64(2), 4))
    assert got.shape == (1, 2, 4)


def test_a_uint64_origin_past_int64_is_an_index_error_not_a_negative_one(tmp_path):
    path = tmp_path / "a.zarr"
    small_v3(path)
    for origins in [np.array([[2**64 - 1, 0]], dtype=np.uint64), [(2**64 - 1, 0)]]:
        with pytest.raises(IndexError, match="past the end") as info:
            read_crops(path, origins, (2, 4))
        assert "negative" not in str(info.value)
    with pytest.raises(IndexError, match="leaves the array"):
        read_crops(path, [(2**63 - 1, 0)], (2, 4))


def test_an_all_false_valid_mask_says_so(tmp_path):
    path = tmp_path / "a.zarr"
    small_v3(path)
    with pytest.raises(ValueError, match="all False"):
        ZarrCropDataset(path, (2, 4), valid=np.zeros(6, dtype=bool))


@pytest.mark.parametrize("order", [[1, 0, 2], [0, 0], [0], "C"])
def test_a_transpose_order_that_does_not_fit_is_refused_at_open(tmp_path, order):
    path = tmp_path / "t.zarr"
    small_v3(path)

    def edit(doc):
        doc["codecs"].insert(0, {"name": "transpose", "configuration": {"order": order}})

    rewrite_json(path / "zarr.json", edit)
    with pytest.raises(ValueError, match=r"t\.zarr.*(transpose order|TransposeCodec)"):
        lsio_torch._lsio_torch.Array(str(path))


def test_the_panic_boundary_covers_the_child_too(tmp_path):
    """The boundary holds in a fresh interpreter too: the message, not a PanicException."""
    code = textwrap.dedent(
        """
        import lsio_torch
        try:
            lsio_torch._lsio_torch._panic_at_the_boundary("in a child")
        except lsio_torch.LsioError as e:
            print(type(e).__name__, e)
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.startswith("LsioError internal error"), run.stdout
