"""lsio_torch: random N-dimensional crops from Zarr arrays, read by a Rust engine
(io_uring + rayon) straight into (pinned) torch tensors.

>>> from lsio_torch import ZarrCropDataset
>>> ds = ZarrCropDataset("data/sat.zarr", crop=(4, 256, 256), batch_size=16)  # doctest: +SKIP
>>> loader = torch.utils.data.DataLoader(ds, batch_size=None)                 # doctest: +SKIP
"""

from importlib.metadata import PackageNotFoundError, version

from lsio_torch._lsio_torch import LsioError, io_backend, io_fallback_reason
from lsio_torch.dataset import ZarrCropDataset, read_crops
from lsio_torch.references import Icechunk, References

try:
    # One place: Cargo.toml's version, which maturin writes into the package's metadata.
    __version__ = version("lsio-torch")
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "unknown"

__all__ = [
    "Icechunk",
    "LsioError",
    "References",
    "ZarrCropDataset",
    "__version__",
    "io_backend",
    "io_fallback_reason",
    "read_crops",
]
