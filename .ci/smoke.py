"""Smoke test of an installed wheel, run outside the checkout: crops read through the wheel
equal zarr-python's reads of the same regions, sharded and not."""

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import zarr
from zarr.codecs import ZstdCodec

import lsio_torch

assert "site-packages" in lsio_torch.__file__, lsio_torch.__file__
root = Path(tempfile.mkdtemp())
rng = np.random.default_rng(0)
values = (rng.normal(size=(8, 64, 48)) * 1000).astype(np.int16)
for name, shards in [("sharded", (4, 32, 24)), ("plain", None)]:
    path = root / f"{name}.zarr"
    array = zarr.create_array(
        path, shape=values.shape, dtype="int16", chunks=(2, 16, 12), shards=shards,
        compressors=ZstdCodec(level=3), zarr_format=3,
    )  # fmt: skip
    array[...] = values
    crop = (3, 20, 17)
    origins = [[0, 0, 0], [5, 44, 31], [2, 7, 13]]
    crops = lsio_torch.read_crops(path, origins, crop)
    reference = zarr.open_array(path, mode="r")
    for got, origin in zip(crops, origins, strict=True):
        want = reference[tuple(slice(o, o + c) for o, c in zip(origin, crop, strict=True))]
        assert torch.equal(got, torch.from_numpy(want)), (name, origin)
    ds = lsio_torch.ZarrCropDataset(path, crop, batch_size=4, samples_per_epoch=8, seed=0)
    batches = list(torch.utils.data.DataLoader(ds, batch_size=None))
    assert [tuple(b.shape) for b in batches] == [(4, *crop), (4, *crop)]
print(
    f"lsio_torch {lsio_torch.__version__} from {lsio_torch.__file__}: crops equal to "
    f"zarr-python's, on Python {sys.version.split()[0]}"
)
