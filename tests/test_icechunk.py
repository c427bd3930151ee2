"""Icechunk repositories written by the icechunk package (with zarr-python): crops at a
branch's tip, a tag and a snapshot, through inline, native and virtual chunks, each equal
to what zarr-python reads through the repository's own store at that version."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from support.checks import check_batches, same_values

import lsio_torch
from lsio_torch import Icechunk, ZarrCropDataset, read_crops

icechunk = pytest.importorskip("icechunk")

SHAPE = (4, 30, 40)
CHUNKS = (1, 16, 16)
ARRAYS = ("t2m", "small", "virtual")


class Repo:
    """A repository: ``main`` with two commits (the first tagged ``v1``), and a branch
    ``dev`` from the first; ``t2m`` (native chunks), ``small`` (chunks small enough to be
    inline) and ``virtual`` (every chunk a range of ``archive/archive.bin``, outside the
    repository)."""

    def __init__(self, root: Path) -> None:
        self.path = root / "repo"
        self.archive = root / "archive"
        self.archive.mkdir()
        self.prefix = f"file://{self.archive}/"
        rng = np.random.default_rng(5)
        # The virtual chunks: a Zarr v3 array's encoded chunks, laid end to end in one file.
        encoded = zarr.create_array(
            root / "encoded.zarr", shape=SHAPE, chunks=CHUNKS, dtype="f4",
            compressors=[zarr.codecs.ZstdCodec(level=3)],
            dimension_names=("time", "lat", "lon"),
        )  # fmt: skip
        encoded[...] = rng.normal(size=SHAPE).astype("f4")
        ranges, blob = {}, b""
        for chunk in sorted((root / "encoded.zarr" / "c").rglob("*")):
            if chunk.is_file():
                key = "c/" + chunk.relative_to(root / "encoded.zarr" / "c").as_posix()
                data = chunk.read_bytes()
                ranges[key] = (len(blob), len(data))
                blob += data
        (self.archive / "archive.bin").write_bytes(blob)
        self.ranges = ranges

        config = icechunk.RepositoryConfig.default()
        store = icechunk.local_filesystem_store(str(self.archive))
        config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(self.prefix, store))
        repo = icechunk.Repository.create(
            icechunk.local_filesystem_storage(str(self.path)), config=config,
            authorize_virtual_chunk_access={self.prefix: None},
        )  # fmt: skip
        session = repo.writable_session("main")
        group = zarr.group(session.store)
        t2m = group.create_array(
            "t2m", shape=SHAPE, chunks=CHUNKS, dtype="f4", dimension_names=("time", "lat", "lon")
        )
        t2m[...] = rng.normal(size=SHAPE).astype("f4")
        small = group.create_array("small", shape=(4, 4), chunks=(2, 2), dtype="i2")
        small[...] = np.arange(16, dtype="i2").reshape(4, 4)
        metadata = zarr.open_array(root / "encoded.zarr").metadata.to_dict()
        group.create_array(
            "virtual", shape=SHAPE, chunks=CHUNKS, dtype="f4",
            compressors=[zarr.codecs.ZstdCodec(level=3)],
            dimension_names=tuple(metadata["dimension_names"]),
        )  # fmt: skip
        for key, (offset, length) in ranges.items():
            session.store.set_virtual_ref(
                f"virtual/{key}", f"{self.prefix}archive.bin", offset=offset, length=length
            )
        self.first = session.commit("first")
        repo.create_tag("v1", self.first)
        repo.create_branch("dev", self.first)
        session = repo.writable_session("main")
        zarr.open_array(session.store, path="t2m")[0] = -1.0
        self.second = session.commit("second")
        session = repo.writable_session("dev")
        zarr.open_array(session.store, path="t2m")[1] = 7.0
        session.commit("on dev")

    def values(self, **version) -> dict[str, np.ndarray]:
        """What zarr-python reads through the repository's own store at ``version``."""
        repo = icechunk.Repository.open(
            icechunk.local_filesystem_storage(str(self.path)),
            authorize_virtual_chunk_access={self.prefix: None},
        )
        store = repo.readonly_session(**version).store
        return {name: zarr.open_array(store, path=name)[...] for name in ARRAYS}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Repo:
    return Repo(tmp_path_factory.mktemp("icechunk"))


def check_crops(source: Icechunk, values: dict[str, np.ndarray], names=ARRAYS) -> None:
    for name in names:
        want = values[name]
        crop = (1, 16, 16) if want.ndim == 3 else (2, 3)
        origins = [(0, 0, 0), (1, 3, 5), (3, 14, 24)] if want.ndim == 3 else [(0, 0), (2, 1)]
        member = dataclasses.replace(source, path=name)
        got = read_crops(member, origins, crop).numpy()
        for crop_got, origin in zip(got, origins, strict=True):
            region = tuple(slice(o, o + c) for o, c in zip(origin, crop, strict=True))
            assert same_values(crop_got, want[region]), (name, origin)


def versions(repo: Repo):
    return [
        ({}, {"branch": "main"}),
        ({"tag": "v1"}, {"tag": "v1"}),
        ({"snapshot": repo.first}, {"snapshot_id": repo.first}),
        ({"branch": "dev"}, {"branch": "dev"}),
    ]


def test_each_version_reads_its_own_data(repo):
    seen = []
    for ours, theirs in versions(repo):
        values = repo.values(**theirs)
        check_crops(Icechunk(repo.path, **ours, authorize=[repo.archive]), values)
        seen.append(values["t2m"])
    # The versions differ where they were written to differ.
    main, v1, first, dev = seen
    assert (main[0] == -1).all() and not (v1[0] == -1).all()
    assert np.array_equal(v1, first) and (dev[1] == 7).all() and not (v1[1] == 7).all()


def test_inline_native_and_virtual_chunks_are_all_there(repo):
    manifests = list((repo.path / "chunks").iterdir())
    assert manifests, "native chunks are objects of the repository's chunks/ folder"
    source = Icechunk(repo.path, tag="v1", authorize=[repo.archive])
    ds = ZarrCropDataset(source, {"lat": 8, "lon": 8}, variables=["t2m", "virtual"], batch_size=2,
                         samples_per_epoch=4, cache_bytes=0)  # fmt: skip
    list(ds)
    # Native and virtual chunks are read by the engine; inline ones are not reads at all.
    assert ds.stats()["bytes_read"] > 0
    check_crops(source, repo.values(tag="v1"), ["small"])


def test_a_sharded_array_in_a_repository_is_refused_by_name_and_its_neighbours_read(tmp_path):
    """Sharding inside a repository is not read yet: the sharded array is a ValueError that
    names it and says so, never garbage from a shard taken for a chunk; the arrays beside it
    still read, alone and as a dataset's variables."""
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    session = repo.writable_session("main")
    group = zarr.group(session.store)
    values = np.arange(8 * 16 * 16, dtype="f4").reshape(8, 16, 16)
    sharded = group.create_array(
        "sharded", shape=values.shape, chunks=(2, 4, 4), shards=(4, 8, 8), dtype="f4",
        dimension_names=("time", "lat", "lon"),
    )  # fmt: skip
    sharded[...] = values
    plain = group.create_array(
        "plain", shape=values.shape, chunks=(2, 8, 8), dtype="f4",
        dimension_names=("time", "lat", "lon"),
    )  # fmt: skip
    plain[...] = -values
    session.commit("a sharded array beside a plain one")
    source = Icechunk(tmp_path / "repo")

    for variables in (["sharded"], ["plain", "sharded"]):
        with pytest.raises(ValueError, match=r"sharding \(sharding_indexed\)") as e:
            ZarrCropDataset(source, {"lat": 4, "lon": 4}, variables=variables)
        assert "sharded" in str(e.value) and "Icechunk repository" in str(e.value)
    with pytest.raises(ValueError, match="not read yet"):
        read_crops(dataclasses.replace(source, path="sharded"), [(0, 0, 0)], (1, 4, 4))

    want = zarr.open_array(repo.readonly_session("main").store, path="plain", mode="r")[...]
    assert np.array_equal(want, -values)
    origins = [(0, 0, 0), (3, 5, 9), (7, 12, 12)]
    got = read_crops(dataclasses.replace(source, path="plain"), origins, (1, 4, 4)).numpy()
    for crop, (t, y, x) in zip(got, origins, strict=True):
        assert same_values(crop, want[t : t + 1, y : y + 4, x : x + 4]), (t, y, x)
    ds = ZarrCropDataset(source, {"lat": 4, "lon": 4}, variables=["plain"], batch_size=2,
                         samples_per_epoch=4, return_origins=True)  # fmt: skip
    assert check_batches(ds, {"plain": want}, (8, 4, 4), same_values) == 4


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_an_epoch_with_workers(repo, method):
    values = repo.values(tag="v1")
    ds = ZarrCropDataset(
        Icechunk(repo.path, tag="v1", authorize=[repo.archive]), {"lat": 8, "lon": 8},
        variables=["t2m", "virtual"], batch_size=3, samples_per_epoch=6, return_origins=True,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=2, multiprocessing_context=method, timeout=60
    )
    want = {name: values[name] for name in ("t2m", "virtual")}
    assert check_batches(loader, want, (SHAPE[0], 8, 8), same_values) == 6
    assert "@tag=v1" in repr(ds)


def test_a_repository_over_http_and_s3(repo, object_server, s3):
    server = object_server(repo.path.parent)
    source = Icechunk(f"{server.url}/repo", tag="v1")
    check_crops(source, repo.values(tag="v1"), ["t2m", "small"])
    url = s3.upload(repo.path, "icechunk", "era5/repo")
    for ours, theirs in versions(repo):
        values = repo.values(**theirs)
        for name in ("t2m", "small"):
            want = values[name]
            crop = (1, 16, 16) if want.ndim == 3 else (2, 3)
            origin = (3, 14, 24) if want.ndim == 3 else (2, 1)
            got = read_crops(
                Icechunk(url, **ours, path=name), [origin], crop,
                storage_options=s3.storage_options,
            )  # fmt: skip
            region = tuple(slice(o, o + c) for o, c in zip(origin, crop, strict=True))
            assert same_values(got.numpy()[0], want[region]), (ours, name)
    ds = ZarrCropDataset(
        Icechunk(url, tag="v1"), {"lat": 8, "lon": 8}, variables=["t2m"], batch_size=3,
        samples_per_epoch=6, return_origins=True, storage_options=s3.storage_options,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=2, multiprocessing_context="spawn", timeout=60
    )
    want = {"t2m": repo.values(tag="v1")["t2m"]}
    assert check_batches(loader, want, (SHAPE[0], 8, 8), same_values) == 6


def test_versions_that_do_not_exist_are_named(repo):
    for version, says in [
        ({"branch": "nope"}, "branch nope"),
        ({"tag": "nope"}, "tag nope"),
        ({"snapshot": "00000000000000000000"}, "snapshot 00000000000000000000"),
        ({"snapshot": "not-an-id"}, "not a snapshot id"),
    ]:
        with pytest.raises(ValueError, match=says) as e:
            read_crops(Icechunk(repo.path, path="t2m", **version), [(0, 0, 0)], (1, 1, 1))
        assert str(repo.path) in str(e.value)
    with pytest.raises(ValueError, match="one of branch, tag and snapshot"):
        Icechunk(repo.path, branch="main", tag="v1")
    with pytest.raises(FileNotFoundError, match="no Icechunk repository"):
        read_crops(Icechunk(repo.path.parent / "nothing", path="t2m"), [(0, 0, 0)], (1, 1, 1))


def test_virtual_chunks_outside_the_authorized_places_are_refused(repo):
    with pytest.raises(ValueError, match="outside the places") as e:
        read_crops(Icechunk(repo.path, tag="v1", path="virtual"), [(0, 0, 0)], (1, 1, 1))
    assert "archive.bin" in str(e.value) and "authorize" in str(e.value)


def test_a_deleted_virtual_target_or_a_corrupt_manifest_is_an_error(repo, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(repo.path.parent, copy)
    archive = copy / "archive" / "archive.bin"
    # The copy's virtual chunks still point at the original archive: authorize that one.
    source = Icechunk(copy / "repo", tag="v1", path="virtual", authorize=[repo.archive])
    assert read_crops(source, [(0, 0, 0)], (1, 4, 4)).shape == (1, 1, 4, 4)
    del archive
    moved = repo.archive / "archive.bin"
    os.rename(moved, moved.with_suffix(".moved"))
    try:
        with pytest.raises(lsio_torch.LsioError, match="missing") as e:
            read_crops(source, [(1, 0, 0)], (1, 4, 4))
        assert "archive.bin" in str(e.value)
    finally:
        os.rename(moved.with_suffix(".moved"), moved)
    for manifest in (copy / "repo" / "manifests").iterdir():
        manifest.write_bytes(b"not a manifest")
    with pytest.raises(ValueError, match="manifest") as e:
        read_crops(Icechunk(copy / "repo", branch="dev", path="t2m"), [(0, 0, 0)], (1, 1, 1))
    assert "repo" in str(e.value)


def checked_repository(repo: Repo, at: Path, prefix: str, container, checksum) -> None:
    """A repository at ``at`` whose array ``virtual`` has the fixture's virtual chunks, moved
    to ``prefix`` (read through ``container``), each written with ``checksum``."""
    config = icechunk.RepositoryConfig.default()
    config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(prefix, container))
    storage = icechunk.local_filesystem_storage(str(at))
    session = icechunk.Repository.create(storage, config=config).writable_session("main")
    zarr.group(session.store).create_array(
        "virtual", shape=SHAPE, chunks=CHUNKS, dtype="f4",
        compressors=[zarr.codecs.ZstdCodec(level=3)], dimension_names=("time", "lat", "lon"),
    )  # fmt: skip
    for key, (offset, length) in sorted(repo.ranges.items()):
        session.store.set_virtual_ref(
            f"virtual/{key}", f"{prefix}archive.bin", offset=offset, length=length,
            checksum=checksum,
        )  # fmt: skip
    session.commit("checked")


def test_a_virtual_target_changed_since_it_was_referenced_is_an_error(repo, tmp_path):
    """A virtual chunk written with its target's last-modified time is read only while the
    target is unmodified since: a target rewritten later is an error naming it."""
    from datetime import datetime, timezone

    archive = tmp_path / "archive"
    shutil.copytree(repo.archive, archive)
    target = archive / "archive.bin"
    referenced_at = datetime.fromtimestamp(int(target.stat().st_mtime) + 1, tz=timezone.utc)
    container = icechunk.local_filesystem_store(str(archive))
    checked_repository(repo, tmp_path / "repo", f"file://{archive}/", container, referenced_at)
    source = Icechunk(tmp_path / "repo", path="virtual", authorize=[archive])
    want = repo.values(tag="v1")["virtual"]
    got = read_crops(source, [(0, 0, 0)], (1, 16, 16)).numpy()[0]
    assert same_values(got, want[0:1, :16, :16])
    later = referenced_at.timestamp() + 100
    os.utime(target, (later, later))
    with pytest.raises(lsio_torch.LsioError, match="changed since it was referenced") as e:
        read_crops(source, [(0, 0, 0)], (1, 16, 16))
    assert "archive.bin" in str(e.value)


@pytest.mark.parametrize("check", ["etag", "last_modified"])
def test_a_virtual_object_changed_since_it_was_referenced_is_an_error(repo, tmp_path, s3, check):
    """In an object store, a virtual chunk written with its object's ETag, or with a time it
    was last modified by, is read only at that version (If-Match, If-Unmodified-Since): an
    object replaced or rewritten since is the store's 412, an error; never other bytes."""
    import time
    from datetime import timedelta, timezone

    blob = (repo.archive / "archive.bin").read_bytes()
    key = f"{check}/archive.bin"
    s3.put("icechunk", key, blob)
    head = s3.client.head_object(Bucket="icechunk", Key=key)
    if check == "etag":
        checksum = head["ETag"]
    else:
        checksum = head["LastModified"].astimezone(timezone.utc) + timedelta(seconds=1)
    prefix = f"s3://icechunk/{check}/"
    container = icechunk.s3_store(
        region="us-east-1", endpoint_url=s3.endpoint, allow_http=True, s3_compatible=True
    )
    checked_repository(repo, tmp_path / "repo", prefix, container, checksum)
    url = s3.upload(tmp_path / "repo", "icechunk", f"{check}/repo")
    source = Icechunk(url, path="virtual", authorize=[prefix])
    want = repo.values(tag="v1")["virtual"]
    got = read_crops(source, [(1, 3, 5)], (1, 16, 16), storage_options=s3.storage_options)
    assert same_values(got.numpy()[0], want[1:2, 3:19, 5:21])
    if check == "etag":
        s3.put("icechunk", key, blob[:-1] + b"\0")  # the same length, a new ETag
    else:
        while time.time() < checksum.timestamp() + 1.5:
            time.sleep(0.2)
        s3.put("icechunk", key, blob)  # the same bytes, written again later
    with pytest.raises(lsio_torch.LsioError, match=r"archive\.bin") as e:
        read_crops(source, [(1, 3, 5)], (1, 16, 16), storage_options=s3.storage_options)
    assert "after it was referenced" in str(e.value) and "412" in str(e.value)


def test_a_session_or_its_store_reads_its_snapshot(repo):
    """An icechunk.Session (or its store) stands for its repository at its snapshot: the
    dataset reads what the session reads, and names the snapshot."""
    opened = icechunk.Repository.open(
        icechunk.local_filesystem_storage(str(repo.path)),
        authorize_virtual_chunk_access={repo.prefix: None},
    )
    for theirs in [{"tag": "v1"}, {"branch": "dev"}]:
        session = opened.readonly_session(**theirs)
        values = repo.values(**theirs)
        source = Icechunk(session, authorize=[repo.archive])
        assert source.snapshot == session.snapshot_id and source.url == str(repo.path)
        check_crops(source, values)
        ds = ZarrCropDataset(
            session.store, {"lat": 8, "lon": 8}, variables=["t2m"], batch_size=3,
            samples_per_epoch=6, return_origins=True,
        )  # fmt: skip
        assert f"@snapshot={session.snapshot_id}" in repr(ds)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=None, num_workers=2, multiprocessing_context="spawn", timeout=60
        )
        assert check_batches(loader, {"t2m": values["t2m"]}, (SHAPE[0], 8, 8), same_values) == 6
    # A writable session reads its branch's tip, unless it has changes a dataset would miss.
    session = opened.writable_session("main")
    assert Icechunk(session).snapshot == repo.second
    zarr.open_array(session.store, path="t2m")[2] = 3.0
    with pytest.raises(ValueError, match="uncommitted changes"):
        ZarrCropDataset(session, {"lat": 8}, variables=["t2m"])
    with pytest.raises(ValueError, match="own snapshot"):
        Icechunk(opened.readonly_session("main"), tag="v1")


def test_a_session_of_a_repository_in_s3_carries_its_credentials(repo, s3, object_server, tmp_path):
    from object_stores import ACCESS_KEY, REGION, SECRET_KEY

    url = s3.upload(repo.path, "icechunk", "sessions/repo")
    storage = icechunk.s3_storage(
        bucket="icechunk", prefix="sessions/repo", region=REGION, endpoint_url=s3.endpoint,
        allow_http=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
        force_path_style=True,
    )  # fmt: skip
    session = icechunk.Repository.open(storage).readonly_session(tag="v1")
    source = Icechunk(session)
    assert source.url == url and source.snapshot == repo.first
    assert SECRET_KEY not in repr(source)
    values = repo.values(tag="v1")
    check_crops(source, values, ["t2m", "small"])  # no storage_options: the session's
    ds = ZarrCropDataset(
        session, {"lat": 8, "lon": 8}, variables=["t2m"], batch_size=3, samples_per_epoch=6,
        return_origins=True,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=2, multiprocessing_context="spawn", timeout=60
    )
    assert check_batches(loader, {"t2m": values["t2m"]}, (SHAPE[0], 8, 8), same_values) == 6
    # The dataset's options are over the session's: another endpoint (one with no such
    # repository) is the one asked.
    elsewhere = object_server(tmp_path)
    with pytest.raises(FileNotFoundError, match="no Icechunk repository"):
        read_crops(Icechunk(session, path="t2m"), [(0, 0, 0)], (1, 1, 1),
                   storage_options={"endpoint": elsewhere.url})  # fmt: skip
