"""Datasets whose chunks are located through an index rather than by their keys: kerchunk
reference sets (a Zarr group whose chunks are byte ranges of NetCDF4/HDF5 archives, in JSON or
parquet) and Icechunk repositories (versioned Zarr: a branch, a tag or a snapshot). The engine
reads the bytes where they lie."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lsio_torch import _lsio_torch

# This process's opened sets, by what they were opened with: every array of a dataset (and
# every dataset of a process) reads one parse of a reference file.
_opened: dict[tuple[Any, ...], tuple[int, _lsio_torch.References]] = {}
#: The most sets kept opened for datasets still to be made.
MAX_OPENED = 32


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
            dataset read other files. A mapping gives each place its own storage options
            (``{"s3://noaa-nwm-pds/": {"skip_signature": True}}``; ``None`` for the
            dataset's): targets in other buckets or servers than the set's own.

    >>> refs = References("s3://bucket/refs.json", authorize=["s3://archive/"])  # doctest: +SKIP
    >>> ds = ZarrCropDataset(refs, {"lat": 64}, variables=["t2m"])              # doctest: +SKIP
    """

    url: str | os.PathLike[str]
    path: str | None = None
    authorize: Sequence[str | os.PathLike[str]] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", os.fspath(self.url))
        object.__setattr__(self, "authorize", _authorized(self.authorize))
        if self.path is not None:
            object.__setattr__(self, "path", self.path.strip("/") or None)

    def __repr__(self) -> str:
        return f"References({self.url!r}, path={self.path!r}, authorize={_places(self)})"

    def __str__(self) -> str:
        return self.url if self.path is None else f"{self.url}#{self.path}"

    def opened(self, options: list[tuple[str, str]] | None) -> _lsio_torch.References:
        """The set, opened once per process for each ``options``."""
        return _open_once(
            ("references", self.url, self.authorize, tuple(options or ())),
            lambda: _lsio_torch.References(self.url, _for_engine(self.authorize), options),
        )

    def member(self, name: str | None) -> str | None:
        """The key of array ``name`` (of the group at :attr:`path`) in the set."""
        return _member(self.path, name)


@dataclass(frozen=True)
class Icechunk:
    """An Icechunk repository at one version, usable wherever a dataset takes a path.

    Args:
        url: the repository: a local folder, an ``s3://`` or an ``http(s)://`` URL; or an
            ``icechunk.Session`` (or its ``IcechunkStore``) from the icechunk package, which
            gives the repository, its snapshot and its storage's credentials (a session with
            uncommitted changes is refused: commit them first).
        branch, tag, snapshot: the version read, at most one of them (default: the tip of
            branch ``main``, taken when the dataset is made: a run reads one snapshot
            throughout; pin ``snapshot=`` or ``tag=`` to make it reproducible).
        path: the group or array inside the repository (default: its root).
        authorize: places (folders, URL prefixes) the repository's virtual chunks may be
            read from; a virtual chunk anywhere else is refused with an error naming it. A
            mapping gives each place its own storage options (the credentials of the
            bucket an archive is in), as for :class:`References`.
        storage_options: options of the repository's store (a session's credentials, say),
            under those the dataset is given, which take precedence key by key.

    >>> repo = Icechunk("era5-repo", tag="v2024.1")                     # doctest: +SKIP
    >>> ds = ZarrCropDataset(repo, {"lat": 64}, variables=["t2m"])      # doctest: +SKIP
    >>> ds = ZarrCropDataset(Icechunk(session), {"lat": 64})            # doctest: +SKIP
    """

    url: str | os.PathLike[str]
    branch: str | None = None
    tag: str | None = None
    snapshot: str | None = None
    path: str | None = None
    authorize: Sequence[str | os.PathLike[str]] = ()
    storage_options: Any = field(default=(), repr=False)

    def __post_init__(self) -> None:
        given = [k for k in ("branch", "tag", "snapshot") if getattr(self, k) is not None]
        if is_icechunk_session(self.url):
            if given:
                raise ValueError(f"a session is at its own snapshot: give no {given[0]}")
            session = getattr(self.url, "session", self.url)  # a store, or the session
            if session.has_uncommitted_changes:
                raise ValueError(
                    "the icechunk session has uncommitted changes, which a dataset would not "
                    "see: commit them first, or read a readonly_session"
                )
            url, options = _lsio_torch.icechunk_session_repository(session._session.as_bytes())
            object.__setattr__(self, "url", url)
            object.__setattr__(self, "snapshot", session.snapshot_id)
            own = {**dict(options), **dict(string_pairs(self.storage_options or ()))}
            object.__setattr__(self, "storage_options", own)
            given = ["snapshot"]
        object.__setattr__(self, "url", os.fspath(self.url))
        if len(given) > 1:
            raise ValueError(f"give one of branch, tag and snapshot, not {' and '.join(given)}")
        if not given:
            object.__setattr__(self, "branch", "main")
        object.__setattr__(self, "authorize", _authorized(self.authorize))
        pairs = tuple(sorted(dict(string_pairs(self.storage_options or ())).items()))
        object.__setattr__(self, "storage_options", pairs)
        if self.path is not None:
            object.__setattr__(self, "path", self.path.strip("/") or None)

    def __repr__(self) -> str:
        kind, name = self.version
        return (
            f"Icechunk({self.url!r}, {kind}={name!r}, path={self.path!r}, "
            f"authorize={_places(self)})"
        )

    def options(self, given: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """The storage options to open the repository with: its own, under ``given``."""
        if not self.storage_options:
            return given
        return {**dict(self.storage_options), **dict(given or {})}

    @property
    def version(self) -> tuple[str, str]:
        """``(kind, name)``: ``("branch", "main")``, ``("tag", "v1")``, ``("snapshot", id)``."""
        for kind in ("snapshot", "tag", "branch"):
            value = getattr(self, kind)
            if value is not None:
                return kind, value
        raise AssertionError("a version is always set")

    def __str__(self) -> str:
        kind, name = self.version
        where = self.url if self.path is None else f"{self.url}#{self.path}"
        return f"{where}@{kind}={name}"

    def opened(self, options: list[tuple[str, str]] | None) -> _lsio_torch.References:
        """The repository at this version, opened once per process for each ``options``."""
        kind, name = self.version
        return _open_once(
            ("icechunk", self.url, kind, name, self.authorize, tuple(options or ())),
            lambda: _lsio_torch.References.icechunk(
                self.url, kind, name, _for_engine(self.authorize), options
            ),
        )

    def member(self, name: str | None) -> str | None:
        """The path of array ``name`` (of the group at :attr:`path`) in the repository."""
        return _member(self.path, name)


#: What may stand where a dataset takes a path, besides a path or a URL.
Indexed = (References, Icechunk)


def is_icechunk_session(value: Any) -> bool:
    """Whether ``value`` is an ``icechunk.Session`` or ``IcechunkStore`` (without importing
    the icechunk package, which a dataset does not need)."""
    kind = type(value)
    return kind.__module__.partition(".")[0] == "icechunk" and kind.__name__ in (
        "Session",
        "IcechunkStore",
    )


#: An authorized place, and its own storage options (``None``: the dataset's).
Place = tuple[str, "tuple[tuple[str, str], ...] | None"]


def _authorized(authorize: Any) -> tuple[Place, ...]:
    """``authorize`` (places, or a mapping of places to their storage options) as a tuple of
    ``(place, options or None)``, hashable and picklable."""
    if isinstance(authorize, (str, os.PathLike)):
        raise TypeError("authorize must be a list of folders or URL prefixes, or a mapping")
    if isinstance(authorize, Mapping):
        items = list(authorize.items())
    else:
        items = [a if isinstance(a, tuple) else (a, None) for a in authorize]
    out = []
    for place, options in items:
        if options is not None:
            options = tuple(sorted(string_pairs(options)))
        out.append((os.fspath(place), options))
    return tuple(out)


def string_pairs(
    options: Mapping[str, Any] | Sequence[tuple[str, Any]],
) -> tuple[tuple[str, str], ...]:
    """Storage options (a mapping, or pairs) as the engine takes them: strings, booleans as
    ``"true"``/``"false"``."""
    pairs = []
    for key, value in options.items() if isinstance(options, Mapping) else options:
        if not isinstance(key, str):
            raise TypeError(f"storage_options keys must be strings, got {key!r}")
        if isinstance(value, bool):
            value = "true" if value else "false"
        pairs.append((key, str(value)))
    return tuple(pairs)


def _places(source: References | Icechunk) -> list[str]:
    """The authorized places, for a repr (their options hold credentials: not shown)."""
    return [place for place, _ in source.authorize]


def _for_engine(authorize: tuple[Place, ...]) -> list[tuple[str, list[tuple[str, str]] | None]]:
    return [(place, None if o is None else list(o)) for place, o in authorize]


def _open_once(key: tuple[Any, ...], open_: Any) -> _lsio_torch.References:
    pid, found = _opened.get(key, (None, None))
    if found is None or pid != os.getpid():
        found = open_()
        _opened.pop(key, None)
        _opened[key] = (os.getpid(), found)
        # The oldest go first: a set still read is held by its arrays, and is opened again
        # only by a dataset made after it left.
        while len(_opened) > MAX_OPENED:
            del _opened[next(iter(_opened))]
    return found


def _member(path: str | None, name: str | None) -> str | None:
    parts = [p for p in (path, name) if p]
    return "/".join(parts) or None


def open_in(
    references: References | Icechunk, name: str | None, options: list[tuple[str, str]] | None
) -> _lsio_torch.Array:
    """Array ``name`` of ``references`` (its root or :attr:`References.path` when None)."""
    return _lsio_torch.Array.in_references(references.opened(options), references.member(name))
