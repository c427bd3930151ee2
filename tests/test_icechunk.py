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
from support.checks import check_batches, chunks_touched, same_values

import lsio_torch
from lsio_torch import Icechunk, ZarrCropDataset, read_crops

icechunk = pytest.importorskip("icechunk")

SHAPE = (4, 30, 40)
CHUNKS = (1, 16, 16)
ARRAYS = ("t2m", "small", "virtual")


def laid_end_to_end(array: Path, out: Path) -> dict[str, tuple[int, int]]:
    """Lays the stored chunks (or shards) of the Zarr v3 array at ``array`` end to end in the
    file ``out``, as an archive holds them; returns each one's ``(offset, length)`` there, by
    its key (``c/0/1/2``)."""
    ranges, blob = {}, b""
    for chunk in sorted((array / "c").rglob("*")):
        if chunk.is_file():
            data = chunk.read_bytes()
            ranges["c/" + chunk.relative_to(array / "c").as_posix()] = (len(blob), len(data))
            blob += data
    out.write_bytes(blob)
    return ranges


def new_repository(path: Path, archive: Path, prefix: str):
    """A repository at ``path`` whose virtual chunks may lie in ``archive`` (URLs ``prefix``)."""
    config = icechunk.RepositoryConfig.default()
    store = icechunk.local_filesystem_store(str(archive))
    config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(prefix, store))
    return icechunk.Repository.create(
        icechunk.local_filesystem_storage(str(path)), config=config,
        authorize_virtual_chunk_access={prefix: None},
    )  # fmt: skip


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
        ranges = laid_end_to_end(root / "encoded.zarr", self.archive / "archive.bin")
        self.ranges = ranges
        repo = new_repository(self.path, self.archive, self.prefix)
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


class ShardedRepo:
    """Sharded arrays in a repository: ``native`` (zstd; each shard an object of the
    repository, one shard never written, inner chunks never written in others), ``inline``
    (shards small enough to be held inline) and ``virtual`` (each shard a range of
    ``archive/shards.bin``, outside the repository)."""

    SHAPE, SHARDS, CHUNKS = (8, 32, 32), (4, 16, 16), (2, 8, 8)

    def __init__(self, root: Path) -> None:
        self.path, self.archive = root / "repo", root / "archive"
        self.archive.mkdir()
        self.prefix = f"file://{self.archive}/"
        rng = np.random.default_rng(9)
        values = rng.normal(size=self.SHAPE).astype("f4")
        values[0:2, 0:8, 8:16] = 0  # an inner chunk of fill values: never written
        codecs = {"chunks": self.CHUNKS, "shards": self.SHARDS, "dtype": "f4",
                  "compressors": [zarr.codecs.ZstdCodec(level=3)],
                  "dimension_names": ("time", "lat", "lon")}  # fmt: skip
        # The virtual shards: a sharded Zarr v3 array's shard files, laid end to end.
        encoded = zarr.create_array(root / "encoded.zarr", shape=self.SHAPE, **codecs)
        encoded[...] = values
        ranges = laid_end_to_end(root / "encoded.zarr", self.archive / "shards.bin")
        self.ranges = ranges
        repo = new_repository(self.path, self.archive, self.prefix)
        session = repo.writable_session("main")
        group = zarr.group(session.store)
        native = group.create_array("native", shape=self.SHAPE, **codecs)
        native[0:4] = values[0:4]
        native[4:8, 0:16] = values[4:8, 0:16]  # shards (1, 1, *) never written
        inline = group.create_array("inline", shape=(4, 6), chunks=(1, 3), shards=(2, 3),
                                    dtype="i2")  # fmt: skip
        inline[...] = np.arange(24, dtype="i2").reshape(4, 6)
        group.create_array("virtual", shape=self.SHAPE, **codecs)
        for key, (offset, length) in ranges.items():
            session.store.set_virtual_ref(
                f"virtual/{key}", f"{self.prefix}shards.bin", offset=offset, length=length
            )
        session.commit("sharded arrays")

    def values(self) -> dict[str, np.ndarray]:
        """What zarr-python reads through the repository's own store."""
        repo = icechunk.Repository.open(
            icechunk.local_filesystem_storage(str(self.path)),
            authorize_virtual_chunk_access={self.prefix: None},
        )
        store = repo.readonly_session(branch="main").store
        return {name: zarr.open_array(store, path=name)[...] for name in SHARDED}


SHARDED = ("native", "inline", "virtual")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> ShardedRepo:
    return ShardedRepo(tmp_path_factory.mktemp("sharded"))


def check_sharded(source: Icechunk, values: dict[str, np.ndarray], names=SHARDED) -> int:
    """Crops at seeded origins (every shard and the unwritten ones among them) equal to
    zarr-python's; returns how many were compared."""
    rng = np.random.default_rng(3)
    n = 0
    for name in names:
        want = values[name]
        crop = (3, 10, 10) if want.ndim == 3 else (2, 2)
        room = [s - c + 1 for s, c in zip(want.shape, crop, strict=True)]
        origins = [tuple(int(rng.integers(0, r)) for r in room) for _ in range(24)]
        origins.append(tuple(r - 1 for r in room))  # the last corner: never written in native
        got = read_crops(dataclasses.replace(source, path=name), origins, crop).numpy()
        for crop_got, origin in zip(got, origins, strict=True):
            region = tuple(slice(o, o + c) for o, c in zip(origin, crop, strict=True))
            assert same_values(crop_got, want[region]), (name, origin)
            n += 1
    return n


def test_sharded_arrays_read_shard_by_shard_as_zarr_python_reads_them(sharded):
    values = sharded.values()
    assert (values["native"][4:, 16:] == 0).all() and not (values["virtual"][4:, 16:] == 0).all()
    # Six shards of ``native`` written (two never were) are the repository's chunk objects;
    # ``inline``'s shards are held inline.
    assert len(list((sharded.path / "chunks").iterdir())) == 6
    source = Icechunk(sharded.path, authorize=[sharded.archive])
    assert check_sharded(source, values) == 3 * 25
    # A dataset of them equals zarr-python's crops too.
    ds = ZarrCropDataset(source, {"lat": 8, "lon": 8}, variables=["native", "virtual"],
                         batch_size=2, samples_per_epoch=4, return_origins=True)  # fmt: skip
    want = {name: values[name] for name in ("native", "virtual")}
    assert check_batches(ds, want, (8, 8, 8), same_values) == 4


def test_only_the_inner_chunks_crops_touch_are_read_with_their_shards_indexes(sharded):
    """Each shard's index (read once) and the inner chunks the crops touch: the bytes read
    are exactly those, counted from the shards' own indexes."""
    blob = (sharded.archive / "shards.bin").read_bytes()
    per_shard = [s // c for s, c in zip(sharded.SHARDS, sharded.CHUNKS, strict=True)]
    index_bytes = 16 * int(np.prod(per_shard)) + 4  # (offset, length) words and a CRC32C

    def inner_lengths(shard: tuple[int, ...]) -> np.ndarray:
        offset, length = sharded.ranges["c/" + "/".join(map(str, shard))]
        index = blob[offset + length - index_bytes : offset + length - 4]
        return np.frombuffer(index, "<u8").reshape(-1, 2)[:, 1]

    source = Icechunk(sharded.path, authorize=[sharded.archive])
    ds = ZarrCropDataset(source, {"time": 2, "lat": 8, "lon": 8}, variables=["virtual"],
                         batch_size=2, samples_per_epoch=2, return_origins=True,
                         cache_bytes=0)  # fmt: skip
    origins = [o for _, batch in ds for o in batch.tolist()]
    touched = chunks_touched(origins, (2, 8, 8), sharded.CHUNKS)
    shards = {tuple(c // p for c, p in zip(chunk, per_shard, strict=True)) for chunk in touched}
    want = index_bytes * len(shards)
    for chunk in touched:
        shard = tuple(c // p for c, p in zip(chunk, per_shard, strict=True))
        within = [c % p for c, p in zip(chunk, per_shard, strict=True)]
        inner = np.ravel_multi_index(within, per_shard)
        want += int(inner_lengths(shard)[inner])
    whole = sum(sharded.ranges["c/" + "/".join(map(str, s))][1] for s in shards)
    assert ds.stats()["bytes_read"] == want < whole, (want, whole)


def test_sharded_arrays_over_http_and_s3(sharded, object_server, s3):
    values = sharded.values()
    server = object_server(sharded.path.parent)
    source = Icechunk(f"{server.url}/repo", authorize=[sharded.archive])
    assert check_sharded(source, values) == 3 * 25
    url = s3.upload(sharded.path, "icechunk", "sharded/repo")
    ds = ZarrCropDataset(
        Icechunk(url, authorize=[sharded.archive]), {"lat": 8, "lon": 8},
        variables=["native", "virtual"], batch_size=3, samples_per_epoch=6,
        return_origins=True, storage_options=s3.storage_options,
    )  # fmt: skip
    want = {name: values[name] for name in ("native", "virtual")}
    assert check_batches(ds, want, (8, 8, 8), same_values) == 6


def test_a_missing_shard_fails_the_batch_that_needs_it_not_the_ones_before(tmp_path, object_server):
    """Over HTTP the indexes of shards that batches queued ahead need are fetched early; a
    shard deleted from the repository fails only the batch that reads it, naming it."""
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    values = np.random.default_rng(4).normal(size=(8, 32, 32)).astype("f4")
    session = repo.writable_session("main")
    array = zarr.group(session.store).create_array(
        "native", shape=values.shape, chunks=(2, 8, 8), shards=(4, 16, 16), dtype="f4",
        dimension_names=("time", "lat", "lon"),
    )  # fmt: skip
    array[0:4] = values[0:4]
    session.commit("the first four steps")
    first = set((tmp_path / "repo" / "chunks").iterdir())
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="native")[4:8] = values[4:8]
    session.commit("the last four")
    later = set((tmp_path / "repo" / "chunks").iterdir()) - first
    assert len(later) == 4  # the shards of steps 4-7
    for shard in later:
        shard.unlink()

    server = object_server(tmp_path)
    ds = ZarrCropDataset(
        Icechunk(f"{server.url}/repo"), {"time": 1, "lat": 8, "lon": 8}, variables=["native"],
        batch_size=2, origins=[(0, 0, 0), (3, 20, 4), (5, 0, 0), (6, 8, 8)],
        return_origins=True, cache_bytes=0,
    )  # fmt: skip
    batches = iter(ds)
    batch, origins = next(batches)
    assert check_batches([(batch, origins)], {"native": values}, (1, 8, 8), same_values) == 2
    with pytest.raises(lsio_torch.LsioError, match="missing") as e:
        next(batches)
    assert "/repo/chunks/" in str(e.value)


def test_a_corrupt_shard_index_by_reference_names_the_shard_and_its_file(tmp_path):
    repo = ShardedRepo(tmp_path)
    want = repo.values()["virtual"]
    archive = repo.archive / "shards.bin"
    blob = bytearray(archive.read_bytes())
    offset, length = repo.ranges["c/0/0/0"]
    end = offset + length - 4  # the index's checksum follows its words
    blob[end - 8 : end] = bytes(8)  # the last inner chunk's length
    archive.write_bytes(bytes(blob))
    source = Icechunk(repo.path, path="virtual", authorize=[repo.archive])
    with pytest.raises(lsio_torch.LsioError, match=r"index of shard \[0, 0, 0\]") as e:
        read_crops(source, [(0, 0, 0)], (1, 1, 1))
    assert "shards.bin" in str(e.value) and f"bytes {offset}..{offset + length}" in str(e.value)
    # The other shards still read.
    got = read_crops(source, [(4, 16, 16)], (4, 16, 16)).numpy()[0]
    assert same_values(got, want[4:8, 16:32, 16:32])


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
