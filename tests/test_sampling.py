"""Joint crops over several arrays (same grid and coarser grids), explicit and restricted
origins, and casting with normalisation: each compared with zarr-python's reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from support import check_batches, check_crops, reference_crop, same_bits, smooth_field, write_zarr
from torch.utils.data import DataLoader

import lsio_torch


def write(path, values, chunks, shards=None, compressors="auto"):
    """Writes ``values``; returns zarr-python's read of them (the reference)."""
    write_zarr(path, values, chunks=chunks, shards=shards, compressors=compressors)
    return zarr.open_array(path, mode="r")[...]


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    """A fine int16 array (8, 64, 48), a float32 one on the same grid, and a float32 one on
    a grid 2 times coarser in time and 4 times coarser in space, each written by zarr-python;
    and the int16 one again, stored uncompressed."""
    root = tmp_path_factory.mktemp("joint")
    sat = write(root / "sat.zarr", smooth_field((8, 64, 48), "int16", 1), (1, 16, 16), (4, 32, 48))
    aux = write(root / "aux.zarr", smooth_field((8, 64, 48), "float32", 2), (2, 32, 24))
    nwp = write(root / "nwp.zarr", smooth_field((4, 16, 12), "float32", 3), (2, 8, 8))
    raw = write(root / "raw.zarr", sat, (1, 16, 16), (4, 32, 48), compressors=None)
    return root, {"sat": sat, "aux": aux, "nwp": nwp, "raw": raw}


def test_joint_crops_on_one_grid_equal_zarr_python(joint):
    root, values = joint
    ds = lsio_torch.ZarrCropDataset(
        {"sat": root / "sat.zarr", "aux": root / "aux.zarr"},
        (3, 20, 16),
        batch_size=5,
        samples_per_epoch=40,
        return_origins=True,
    )
    n = 0
    for batch, origins in DataLoader(ds, batch_size=None, num_workers=2):
        assert batch["sat"].dtype == torch.int16 and batch["aux"].dtype == torch.float32
        pair = {name: values[name] for name in ("sat", "aux")}
        n += check_batches([(batch, origins)], pair, (3, 20, 16))
    assert n == 40


def test_joint_crops_with_a_coarser_grid_map_the_same_window(joint):
    root, values = joint
    ds = lsio_torch.ZarrCropDataset(
        {"sat": root / "sat.zarr", "nwp": root / "nwp.zarr"},
        (4, 32, 16),
        scale={"nwp": (2, 4, 4)},
        batch_size=4,
        samples_per_epoch=40,
        return_origins=True,
    )
    starts = set()
    for batch, origins in ds:
        assert batch["sat"].shape[1:] == (4, 32, 16) and batch["nwp"].shape[1:] == (2, 8, 4)
        for i, (t, y, x) in enumerate(origins.tolist()):
            assert t % 2 == 0 and y % 4 == 0 and x % 4 == 0  # on both grids
            starts.add((t, y, x))
            assert same_bits(
                batch["sat"][i].numpy(), reference_crop(values["sat"], (t, y, x), (4, 32, 16))
            )
            coarse = (t // 2, y // 4, x // 4)
            assert same_bits(
                batch["nwp"][i].numpy(), reference_crop(values["nwp"], coarse, (2, 8, 4))
            )
    assert len(starts) > 20


def test_joint_arrays_that_do_not_line_up_are_refused(joint):
    root, _ = joint
    both = {"sat": root / "sat.zarr", "nwp": root / "nwp.zarr"}
    with pytest.raises(ValueError, match=r"do not line up.*nwp\.zarr: \(8, 32, 24\)"):
        lsio_torch.ZarrCropDataset(both, (4, 32, 16), scale={"nwp": (2, 2, 2)})
    with pytest.raises(ValueError, match=r"dimension 1 \(30\) is not a multiple of 4"):
        lsio_torch.ZarrCropDataset(both, (4, 30, 16), scale={"nwp": (2, 4, 4)})
    with pytest.raises(ValueError, match="scale names"):
        lsio_torch.ZarrCropDataset(both, (4, 32, 16), scale={"era": (2, 4, 4)})
    with pytest.raises(ValueError, match="scale applies to joint arrays"):
        lsio_torch.ZarrCropDataset(root / "sat.zarr", (4, 32, 16), scale={"sat": (1, 1, 1)})


def test_explicit_origins_list_and_callable(joint):
    root, values = joint
    given = [(0, 0, 0), (5, 44, 32), (2, 7, 9)]
    ds = lsio_torch.ZarrCropDataset(root / "sat.zarr", (3, 20, 16), origins=given, batch_size=2)
    assert len(ds) == 2
    batches = list(ds)
    assert check_crops(torch.cat(batches), given, values["sat"], (3, 20, 16)) == 3

    def diagonal(epoch, index):
        return (index % 6, index + epoch, 2 * index)

    ds = lsio_torch.ZarrCropDataset(
        root / "sat.zarr",
        (2, 8, 8),
        origins=diagonal,
        batch_size=3,
        samples_per_epoch=9,
        return_origins=True,
    )
    ds.set_epoch(4)
    seen = [tuple(o) for _, origins in ds for o in origins.tolist()]
    assert seen == [diagonal(4, i) for i in range(9)]
    with pytest.raises(IndexError, match=r"at \[60, 0, 0\] leaves"):
        lsio_torch.ZarrCropDataset(root / "sat.zarr", (2, 8, 8), origins=[(60, 0, 0)])
    bad = lsio_torch.ZarrCropDataset(
        root / "sat.zarr", (2, 8, 8), origins=lambda e, i: (7, 0, 0), samples_per_epoch=2
    )
    with pytest.raises(IndexError, match="leaves"):
        list(bad)


def test_valid_mask_and_indices_restrict_where_crops_start(joint):
    root, values = joint
    mask = np.zeros(8, dtype=bool)
    mask[[1, 4, 6, 7]] = True  # 7 cannot start a crop of 2: it is dropped
    for valid in (mask, torch.from_numpy(mask), [1, 4, 6, 7]):
        ds = lsio_torch.ZarrCropDataset(
            root / "sat.zarr",
            (2, 16, 16),
            valid=valid,
            batch_size=8,
            samples_per_epoch=64,
            return_origins=True,
        )
        starts = set()
        for batch, origins in ds:
            starts.update(origin[0] for origin in origins.tolist())
            check_crops(batch, origins.tolist(), values["sat"], (2, 16, 16))
        assert starts == {1, 4, 6}
    # A mask over two leading dimensions.
    mask2 = np.zeros((8, 64), dtype=bool)
    mask2[3, 10] = mask2[5, 40] = True
    ds = lsio_torch.ZarrCropDataset(
        root / "sat.zarr",
        (2, 16, 16),
        valid=mask2,
        batch_size=8,
        samples_per_epoch=32,
        return_origins=True,
    )
    assert {tuple(o[:2]) for _, origins in ds for o in origins.tolist()} == {(3, 10), (5, 40)}
    with pytest.raises(ValueError, match="none of the 1 valid starts"):
        lsio_torch.ZarrCropDataset(root / "sat.zarr", (2, 16, 16), valid=[7])
    with pytest.raises(ValueError, match="must match the leading dimensions"):
        lsio_torch.ZarrCropDataset(root / "sat.zarr", (2, 16, 16), valid=np.ones(9, dtype=bool))


@pytest.mark.parametrize("out", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("source", ["sat", "aux", "raw"])
def test_casting_with_normalisation_equals_numpy(joint, out, source):
    root, values = joint
    mean, std = 12.5, 3.0
    origins = [(0, 0, 0), (5, 44, 32), (3, 17, 5)]
    got = lsio_torch.read_crops(
        root / f"{source}.zarr", origins, (3, 20, 16), dtype=out, mean=mean, std=std
    )
    assert got.dtype == out
    for crop, origin in zip(got, origins, strict=True):
        x = reference_crop(values[source], origin, (3, 20, 16))
        if out == torch.float64:
            want = torch.from_numpy((x.astype(np.float64) - mean) / std)
        else:
            f32 = (x.astype(np.float32) - np.float32(mean)) / np.float32(std)
            want = torch.from_numpy(f32).to(out)
        assert torch.equal(crop, want)
    # The dataset writes the same, without normalisation by default.
    ds = lsio_torch.ZarrCropDataset(
        root / f"{source}.zarr", (3, 20, 16), origins=origins, batch_size=3, dtype=out
    )
    plain = next(iter(ds))
    want = torch.from_numpy(
        np.stack([reference_crop(values[source], o, (3, 20, 16)) for o in origins])
    )
    assert torch.equal(
        plain, want.to(torch.float32).to(out) if out != torch.float64 else want.double()
    )


def test_per_array_dtype_and_normalisation_for_joint_arrays(joint):
    root, values = joint
    ds = lsio_torch.ZarrCropDataset(
        {"sat": root / "sat.zarr", "aux": root / "aux.zarr"},
        (2, 8, 8),
        origins=[(1, 2, 3)],
        dtype={"sat": torch.float32},
        mean={"sat": 100.0},
        std={"sat": 10.0},
    )
    batch = next(iter(ds))
    assert batch["aux"].dtype == torch.float32  # its own type, not normalised
    x = reference_crop(values["sat"], (1, 2, 3), (2, 8, 8)).astype(np.float32)
    assert torch.equal(batch["sat"][0], torch.from_numpy((x - np.float32(100)) / np.float32(10)))
    assert same_bits(batch["aux"][0].numpy(), reference_crop(values["aux"], (1, 2, 3), (2, 8, 8)))
    with pytest.raises(ValueError, match="not an output type"):
        lsio_torch.ZarrCropDataset(root / "sat.zarr", (2, 8, 8), dtype=torch.int32)
    with pytest.raises(ValueError, match="mean and std need a floating dtype"):
        lsio_torch.ZarrCropDataset(root / "sat.zarr", (2, 8, 8), mean=1.0)
    with pytest.raises(ValueError, match="positive finite std"):
        lsio_torch.read_crops(root / "sat.zarr", [(0, 0, 0)], (2, 8, 8), dtype="float32", std=0.0)
