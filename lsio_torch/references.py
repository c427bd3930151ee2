"""Reference sets: a Zarr group whose chunks are byte ranges of other files (NetCDF4/HDF5
archives), described by kerchunk's JSON (versions 0 and 1) and read where the bytes lie."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lsio_torch import _lsio_torch

# This process's opened sets, by what they were opened with: every array of a dataset (and
# every dataset of a process) reads one parse of a reference file.
_opened: dict[tuple[Any, ...], tuple[int, _lsio_torch.References]] = {}


@dataclass(frozen=True)
class References:
    """A kerchunk reference set, usable wherever a dataset takes a path.

    Args:
        url: the reference file (``refs.json``): a local path or an object-store URL
            (``s3://``, ``gs://``, ``az://``, ``http(s)://``), read with the dataset's
            ``storage_options``.
        path: the group or array inside the set (default: its root).
        authorize: places besides the reference file's folder that its targets may lie in
            (folders, or URL prefixes such as ``"s3://noaa-nwm-pds/"``). A target anywhere
            else is refused when the set is opened: a reference file cannot make the
            dataset read other files.

    >>> refs = References("s3://bucket/refs.json", authorize=["s3://archive/"])  # doctest: +SKIP
    >>> ds = ZarrCropDataset(refs, {"lat": 64}, variables=["t2m"])              # doctest: +SKIP
    """

    url: str | os.PathLike[str]
    path: str | None = None
    authorize: Sequence[str | os.PathLike[str]] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", os.fspath(self.url))
        if isinstance(self.authorize, (str, os.PathLike)):
            raise TypeError("authorize must be a list of folders or URL prefixes")
        object.__setattr__(self, "authorize", tuple(os.fspath(a) for a in self.authorize))
        if self.path is not None:
            object.__setattr__(self, "path", self.path.strip("/") or None)

    def __str__(self) -> str:
        return self.url if self.path is None else f"{self.url}#{self.path}"

    def opened(self, options: list[tuple[str, str]] | None) -> _lsio_torch.References:
        """The set, opened once per process for each ``options``."""
        key = (self.url, self.authorize, tuple(options or ()))
        pid, found = _opened.get(key, (None, None))
        if found is None or pid != os.getpid():
            found = _lsio_torch.References(self.url, list(self.authorize), options)
            _opened[key] = (os.getpid(), found)
        return found

    def member(self, name: str | None) -> str | None:
        """The key of array ``name`` (of the group at :attr:`path`) in the set."""
        parts = [p for p in (self.path, name) if p]
        return "/".join(parts) or None


def open_in(
    references: References, name: str | None, options: list[tuple[str, str]] | None
) -> _lsio_torch.Array:
    """Array ``name`` of ``references`` (its root or :attr:`References.path` when None)."""
    return _lsio_torch.Array.in_references(references.opened(options), references.member(name))
