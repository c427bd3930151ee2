"""What a hostile server, another user of a shared machine, or a mistyped option can do, and
what lsio_torch does about it: a response never holds more than the bytes asked for, a cache
folder is its own and private, no credential or token appears in a message, credentials never
follow a redirect to another origin, and member names never leave the store.

The hostile server is a small real one on 127.0.0.1 (``support.hostile``); another user's files
are made by the test as root with ``chown``. Reads that could kill the process run in a child
process, so a regression fails one test, not the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from support import write_zarr
from support.hostile import Hostile
from zarr.codecs import BytesCodec, ShardingCodec, ZstdCodec

import lsio_torch

TB = 10**12


def in_a_child(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs ``code`` (which imports what it needs) in a child Python; what it printed and how
    it ended."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def small_array(path: Path, sharded: bool = False) -> np.ndarray:
    values = np.arange(8 * 12, dtype="int16").reshape(8, 12)
    if sharded:
        sharding = ShardingCodec(chunk_shape=(4, 4), codecs=[BytesCodec()])
        write_zarr(path, values, chunks=(8, 12), serializer=sharding, compressors=None)
    else:
        # Compressed: a chunk is fetched whole, as its size is not known before it lands.
        write_zarr(path, values, chunks=(4, 4), compressors=ZstdCodec(), zarr_format=3)
    return values


# 1 and 2. A response never holds more than the bytes asked for.


def read_in_child(url: str) -> subprocess.CompletedProcess:
    return in_a_child(
        f"""
        import lsio_torch
        try:
            lsio_torch.read_crops({url!r}, [(0, 0)], (8, 12))
        except Exception as e:
            print(type(e).__name__, e)
        else:
            print("read")
        """
    )


@pytest.mark.parametrize("lied_about", ["zarr.json", "c/0/0"])
def test_a_whole_object_declared_1_tb_long_is_refused_before_its_body(tmp_path, lied_about):
    small_array(tmp_path / "a.zarr")
    with Hostile(tmp_path) as server:
        server.lie(f"a.zarr/{lied_about}", declare=TB)
        done = read_in_child(f"{server.url}/a.zarr")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"declared a body of {TB} bytes" in done.stdout, done.stdout
    assert lied_about in done.stdout, done.stdout


def test_a_suffix_range_answered_with_1_tb_costs_at_most_the_range(tmp_path):
    small_array(tmp_path / "a.zarr", sharded=True)
    with Hostile(tmp_path) as server:
        server.lie("a.zarr/c/0/0", declare=TB)
        start = time.monotonic()
        done = read_in_child(f"{server.url}/a.zarr")
        seconds = time.monotonic() - start
        written = server.written
        asked = [r.headers.get("range") for r in server.seen if r.path.endswith("c/0/0")]
    # The shard index: 6 inner chunks' offsets and lengths and a CRC-32C, 100 bytes.
    assert asked == ["bytes=-100"], asked
    assert done.returncode == 0, done.stderr[-2000:]
    assert "reading the shard index" in done.stdout, done.stdout
    assert "more than the 100 asked for" in done.stdout, done.stdout
    # The client hung up after the first pieces, long before a timeout.
    assert written < 64 << 20, written
    assert seconds < 20, seconds


def test_honest_objects_still_read_through_the_caps(tmp_path):
    values = small_array(tmp_path / "a.zarr", sharded=True)
    small_array(tmp_path / "b.zarr")
    with Hostile(tmp_path) as server:
        for name in ("a.zarr", "b.zarr"):
            out = lsio_torch.read_crops(f"{server.url}/{name}", [(2, 3)], (4, 5))
            np.testing.assert_array_equal(out[0].numpy(), values[2:6, 3:8])
            np.testing.assert_array_equal(
                out[0].numpy(), zarr.open_array(tmp_path / name, mode="r")[2:6, 3:8]
            )


# 3 to 6. cache_dir: the user's own folder, lsio_torch's own files, private.


def cached_epoch(url: str, folder: Path, values: np.ndarray) -> dict:
    """One epoch of crops through the disk cache in ``folder`` (no memory cache), each checked
    against zarr-python's values; the dataset's stats."""
    ds = lsio_torch.ZarrCropDataset(
        url, (4, 5), batch_size=2, samples_per_epoch=6, seed=1, return_origins=True,
        cache_bytes=0, cache_dir=folder,
    )  # fmt: skip
    for batch, origins in ds:
        for crop, (y, x) in zip(batch, origins.tolist(), strict=True):
            np.testing.assert_array_equal(crop.numpy(), values[y : y + 4, x : x + 5])
    stats = ds.stats()
    ds.close()
    return stats


def aged(path: Path, seconds: float = 7200) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def users_folder(root: Path) -> tuple[Path, list[Path]]:
    folder = root / "work"
    (folder / "notes").mkdir(parents=True)
    files = [folder / "notes" / "old.txt", folder / "notes" / "app.log", folder / "README"]
    for f in files:
        f.write_text("the user's own")
        aged(f)
    return folder, files


def test_a_cache_dir_holding_a_users_files_is_refused_and_left_as_it_was(tmp_path):
    values = small_array(tmp_path / "data" / "a.zarr", sharded=True)
    folder, files = users_folder(tmp_path)
    # A local array does not even open the folder.
    local = lsio_torch.ZarrCropDataset(
        tmp_path / "data" / "a.zarr", (4, 5), samples_per_epoch=4, cache_dir=folder
    )
    assert sum(len(b) for b in local) > 0
    with (
        Hostile(tmp_path / "data") as server,
        pytest.raises(ValueError, match="not an lsio_torch cache folder") as refused,
    ):
        cached_epoch(f"{server.url}/a.zarr", folder, values)
    assert str(folder) in str(refused.value)
    assert all(f.read_text() == "the user's own" for f in files)
    assert sorted(p.name for p in folder.rglob("*")) == ["README", "app.log", "notes", "old.txt"]


def test_a_cache_folder_and_its_files_are_private_whatever_the_umask(tmp_path):
    values = small_array(tmp_path / "data" / "a.zarr", sharded=True)
    before = os.umask(0o022)
    try:
        with Hostile(tmp_path / "data") as server:
            stats = cached_epoch(f"{server.url}/a.zarr", tmp_path / "c", values)
    finally:
        os.umask(before)
    assert stats["disk_cache_misses"] > 0
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777
             for p in [tmp_path / "c", *(tmp_path / "c").rglob("*")]}  # fmt: skip
    assert modes["c"] == 0o700, modes
    assert all(m == (0o700 if (tmp_path / p).is_dir() else 0o600) for p, m in modes.items()), modes


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
def test_cache_files_of_another_user_are_neither_read_nor_written(tmp_path, caplog):
    values = small_array(tmp_path / "data" / "a.zarr", sharded=True)
    folder = tmp_path / "c"
    with Hostile(tmp_path / "data") as server:
        url = f"{server.url}/a.zarr"
        first = cached_epoch(url, folder, values)
        assert first["disk_cache_misses"] > 0
        planted = [p for p in folder.rglob("*") if p.suffix in (".data", ".log")]
        # Valid records at the computed names, as another user (nobody) could have planted
        # them: forged bytes with a right CRC-32C are as easy to make.
        for p in planted:
            os.chown(p, 65534, 65534)
        contents = {p: p.read_bytes() for p in planted}
        with caplog.at_level("WARNING", logger="lsio_torch"):
            second = cached_epoch(url, folder, values)
    assert second["disk_cache_hits"] == 0, second
    assert second["disk_cache_foreign"] > 0, second
    assert {p: p.read_bytes() for p in planted} == contents
    assert "owned by another user" in caplog.text


def test_a_symlink_planted_at_a_cache_files_path_is_not_written_through(tmp_path):
    values = small_array(tmp_path / "data" / "a.zarr", sharded=True)
    folder = tmp_path / "c"
    with Hostile(tmp_path / "data") as server:
        url = f"{server.url}/a.zarr"
        cached_epoch(url, folder, values)
        victims = {}
        for p in [p for p in folder.rglob("*") if p.suffix in (".data", ".log")]:
            victim = tmp_path / f"victim{p.suffix}"
            victim.write_text("the victim's")
            p.unlink()
            p.symlink_to(victim)
            victims[p] = victim
        stats = cached_epoch(url, folder, values)
    assert stats["disk_cache_foreign"] > 0 and stats["disk_cache_bytes_written"] == 0, stats
    assert all(v.read_text() == "the victim's" for v in victims.values())


# 7. A misspelled or misplaced option names its key, never its value.

SECRET = "SECRETPROBEVALUE"


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("s3://bucket/a.zarr", {"secret_acess_key": SECRET}),
        ("s3://bucket/a.zarr", {"max_requests": SECRET}),
        ("http://127.0.0.1:9/a.zarr", {"aws_secret_access_key": SECRET}),
        ("gs://bucket/a.zarr", {"service_account_keyy": SECRET}),
        ("az://container/a.zarr", {"account_kye": SECRET}),
    ],
    ids=["s3-typo", "s3-setting", "http-misplaced", "gcs-typo", "azure-typo"],
)
def test_a_bad_option_names_its_key_never_its_value(url, options):
    with pytest.raises(ValueError) as refused:
        lsio_torch.read_crops(url, [(0, 0)], (1, 1), storage_options=options)
    message = str(refused.value)
    assert next(iter(options)) in message, message
    assert SECRET not in message, message


# 11. Member names never leave the store.


def group_beside_a_secret(tmp_path: Path) -> tuple[Path, Path]:
    """A group with one array, and an array outside it (beside it, as another user's data
    would be)."""
    group = tmp_path / "store" / "g.zarr"
    zarr.open_group(group, mode="w", zarr_format=2)
    write_zarr(group / "t2m", np.ones((8, 12), "f4"), chunks=(4, 4), zarr_format=2)
    secret = tmp_path / "store" / "outside"
    write_zarr(secret, np.full((8, 12), 7, "f4"), chunks=(4, 4), zarr_format=2)
    return group, secret


@pytest.mark.parametrize("name", ["../outside", "ABSOLUTE", "t2m/../../outside", "", "./t2m"])
def test_a_member_name_that_leaves_the_group_is_refused(tmp_path, name):
    group, secret = group_beside_a_secret(tmp_path)
    name = str(secret) if name == "ABSOLUTE" else name
    with pytest.raises(ValueError, match="is not a name inside the group"):
        lsio_torch.ZarrCropDataset(group, (4, 4), variables=["t2m", name])
    # The check is the engine's own: every way in meets it.
    with pytest.raises(ValueError, match="is not a name inside the group"):
        lsio_torch._lsio_torch.Array.in_group(str(group), name, None)


def test_a_consolidated_member_named_to_leave_the_group_is_refused(tmp_path):
    group, _ = group_beside_a_secret(tmp_path)
    zarr.consolidate_metadata(group)
    zmetadata = group / ".zmetadata"
    doc = json.loads(zmetadata.read_text())
    for file in (".zarray", ".zattrs"):
        doc["metadata"][f"../outside/{file}"] = doc["metadata"][f"t2m/{file}"]
    zmetadata.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"member \"../outside\""):
        lsio_torch.ZarrCropDataset(group, (4, 4), variables=["../outside"])
    with Hostile(tmp_path / "store") as server:
        with pytest.raises(ValueError, match="is not a name inside the group"):
            lsio_torch.ZarrCropDataset(f"{server.url}/g.zarr", (4, 4), variables=["../outside"])
        assert not any("outside" in r.path for r in server.seen)
    # The group's own member still reads.
    ds = lsio_torch.ZarrCropDataset(group, (4, 4), variables=["t2m"], samples_per_epoch=2)
    assert all(float(b["t2m"].min()) == 1.0 for b in ds)


# 8 to 10, and bearer tokens: what the client sends, to whom, and what messages show.

TOKEN = "SECRETTOKEN42"
S3_SECRETS = {
    "aws_access_key_id": "AKIDPROBE",
    "aws_secret_access_key": "SECRETACCESSPROBE",
    "aws_session_token": "SESSIONTOKENPROBE",
    "aws_region": "us-east-1",
}


def s3_options(server: Hostile) -> dict:
    return {**S3_SECRETS, "aws_endpoint": server.url, "aws_allow_http": "true"}


def test_an_http_urls_query_goes_with_every_request_and_never_into_a_message(tmp_path):
    values = small_array(tmp_path / "a.zarr", sharded=True)
    with Hostile(tmp_path) as server:
        url = f"{server.url}/a.zarr?token={TOKEN}&expires=1"
        ds = lsio_torch.ZarrCropDataset(url, (4, 5), batch_size=2, samples_per_epoch=4)
        assert sum(len(b) for b in ds) == 4
        out = lsio_torch.read_crops(url, [(1, 2)], (4, 5))
        np.testing.assert_array_equal(out[0].numpy(), values[1:5, 2:7])
        assert server.seen and all(f"token={TOKEN}&expires=1" in r.path for r in server.seen)
        assert TOKEN not in repr(ds) and "token=***" in repr(ds), repr(ds)
        server.lie("a.zarr/c/0/0", status=403, body="denied")
        with pytest.raises(Exception) as failed:
            lsio_torch.read_crops(url, [(1, 2)], (4, 5))
    assert "403" in str(failed.value) and TOKEN not in str(failed.value), failed.value


def test_a_presigned_s3_url_is_refused_without_its_signature_in_the_message():
    url = f"s3://bucket/a.zarr?X-Amz-Signature={TOKEN}&X-Amz-Credential=AKID"
    with pytest.raises(ValueError, match="presigned URL") as refused:
        lsio_torch.read_crops(url, [(0, 0)], (1, 1))
    assert TOKEN not in str(refused.value) and "X-Amz-Signature=***" in str(refused.value)


SIGNATURE_DOES_NOT_MATCH = f"""<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not
match the signature you provided.</Message><AWSAccessKeyId>AKIDPROBE</AWSAccessKeyId>
<CanonicalRequest>GET /bucket/a.zarr/zarr.json
x-amz-security-token:{S3_SECRETS["aws_session_token"]}</CanonicalRequest>
<RequestId>4442587FB7D0A2F9</RequestId></Error>"""


def test_an_error_body_shows_its_code_and_request_id_and_nothing_else(tmp_path):
    small_array(tmp_path / "bucket" / "a.zarr")
    with Hostile(tmp_path) as server:
        server.lie("zarr.json", status=403, body=SIGNATURE_DOES_NOT_MATCH)
        with pytest.raises(Exception) as failed:
            lsio_torch.read_crops(
                "s3://bucket/a.zarr", [(0, 0)], (1, 1), storage_options=s3_options(server)
            )
    message = str(failed.value)
    assert "SignatureDoesNotMatch" in message and "4442587FB7D0A2F9" in message, message
    for secret in S3_SECRETS.values():
        if secret != "us-east-1":
            assert secret not in message, message
    assert "CanonicalRequest" not in message, message


@pytest.mark.parametrize("store", ["s3", "http-bearer"])
def test_credentials_never_follow_a_redirect_to_another_origin(tmp_path, store):
    small_array(tmp_path / "bucket" / "a.zarr")
    with Hostile(tmp_path) as there, Hostile(tmp_path) as here:
        here.lie("zarr.json", redirect=f"{there.url}/bucket/a.zarr/zarr.json")
        if store == "s3":
            url, options = "s3://bucket/a.zarr", s3_options(here)
        else:
            url, options = f"{here.url}/bucket/a.zarr", {"bearer_token": TOKEN}
        with pytest.raises(Exception) as failed:
            lsio_torch.read_crops(url, [(0, 0)], (1, 1), storage_options=options)
        assert there.seen == [], there.seen  # nothing at all reached the other origin
        sent = here.seen[0].headers
    message = str(failed.value)
    assert here.url in message and there.url in message and "another origin" in message, message
    if store == "s3":
        assert sent["x-amz-security-token"] == S3_SECRETS["aws_session_token"]
    else:
        assert sent["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in message and "SESSIONTOKENPROBE" not in message, message


def test_a_redirect_within_the_origin_is_followed_with_the_bearer_token(tmp_path):
    values = small_array(tmp_path / "a.zarr")
    small_array(tmp_path / "moved.zarr")
    with Hostile(tmp_path) as server:
        server.lie("a.zarr/zarr.json", redirect=f"{server.url}/moved.zarr/zarr.json")
        out = lsio_torch.read_crops(
            f"{server.url}/a.zarr", [(2, 3)], (4, 5), storage_options={"bearer_token": TOKEN}
        )
        np.testing.assert_array_equal(out[0].numpy(), values[2:6, 3:8])
        assert [r.path for r in server.seen[:2]] == ["/a.zarr/zarr.json", "/moved.zarr/zarr.json"]
        assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in server.seen)


# Also: bool arrays whose fill value is written 0 or 1 (as GDAL writes them).


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("fill", [0, 1])
def test_bool_arrays_with_a_numeric_fill_value_read_as_zarr_python_reads_them(tmp_path, fmt, fill):
    path = tmp_path / "mask.zarr"
    values = np.arange(24).reshape(4, 6) % 3 == 0
    write_zarr(path, values, chunks=(2, 3), fill_value=False, zarr_format=fmt)
    meta = path / (".zarray" if fmt == 2 else "zarr.json")
    doc = json.loads(meta.read_text())
    doc["fill_value"] = fill
    meta.write_text(json.dumps(doc))
    (path / ("0.0" if fmt == 2 else "c/0/0")).unlink()  # a chunk of fill values
    expected = zarr.open_array(path, mode="r")[...]
    assert expected[:2, :3].all() == bool(fill)
    out = lsio_torch.read_crops(path, [(0, 0), (1, 2)], (3, 4))
    np.testing.assert_array_equal(out[0].numpy(), expected[0:3, 0:4])
    np.testing.assert_array_equal(out[1].numpy(), expected[1:4, 2:6])


# Done-when 2: nothing a run shows holds a secret.


def test_no_message_repr_stat_or_log_of_a_run_shows_a_credential(tmp_path, s3, caplog):
    """A run with credentials, tokens and presigned URLs in every option, through success and
    every failure we can provoke: every text it produces is searched for every secret."""
    values = small_array(tmp_path / "bucket" / "a.zarr", sharded=True)
    secrets = {
        "access_key_id": "AKIDSECRETPROBE",
        "secret_access_key": "SECRETACCESSKEYPROBE",
        "token": "SESSIONTOKENPROBE",
    }
    options = {**s3.storage_options, **secrets}
    url = s3.upload(tmp_path / "bucket" / "a.zarr", "security", "a.zarr")
    shown: list[str] = []

    def attempt(call) -> None:
        try:
            result = call()
        except Exception as e:  # every failure's message is searched
            shown.extend([str(e), repr(e)])
        else:
            shown.extend([str(result), repr(result)])

    with caplog.at_level("DEBUG", logger="lsio_torch"):
        ds = lsio_torch.ZarrCropDataset(
            url, (4, 5), batch_size=2, samples_per_epoch=4, storage_options=options,
            cache_dir=tmp_path / "cache", return_origins=True,
        )  # fmt: skip
        for batch, origins in ds:
            for crop, (y, x) in zip(batch, origins.tolist(), strict=True):
                np.testing.assert_array_equal(crop.numpy(), values[y : y + 4, x : x + 5])
        shown += [repr(ds), str(ds), str(ds.stats()), str(ds.state_dict())]
        attempt(lambda: lsio_torch.ZarrCropDataset(url, (40, 5), storage_options=options))
        attempt(lambda: lsio_torch.read_crops(url + "-missing", [(0, 0)], (1, 1),
                                              storage_options=options))  # fmt: skip
        typo = {**options, "secret_acess_key": secrets["secret_access_key"]}
        attempt(lambda: lsio_torch.read_crops(url, [(0, 0)], (1, 1), storage_options=typo))
        s3.put("security", "a.zarr/c/0/0", b"not a shard" * 20)
        attempt(lambda: lsio_torch.read_crops(url, [(0, 0)], (4, 5), storage_options=options))
        presigned = f"{url}?X-Amz-Signature={TOKEN}&X-Amz-Security-Token={TOKEN}"
        attempt(lambda: lsio_torch.read_crops(presigned, [(0, 0)], (1, 1)))
        with Hostile(tmp_path) as there, Hostile(tmp_path) as here:
            http = f"{here.url}/bucket/a.zarr?sig={TOKEN}"
            http_options = {"bearer_token": TOKEN}
            ds = lsio_torch.ZarrCropDataset(http, (4, 5), samples_per_epoch=2,
                                            storage_options=http_options)  # fmt: skip
            shown += [repr(ds), str(ds)] + [str(b.shape) for b in ds] + [str(ds.stats())]
            here.lie("c/0/0", status=403, body=SIGNATURE_DOES_NOT_MATCH.replace("AKIDPROBE", TOKEN))
            attempt(lambda: lsio_torch.read_crops(http, [(0, 0)], (4, 5),
                                                  storage_options=http_options))  # fmt: skip
            here.lies.clear()
            here.lie("zarr.json", redirect=f"{there.url}/bucket/a.zarr/zarr.json?sig={TOKEN}")
            attempt(lambda: lsio_torch.read_crops(http, [(0, 0)], (4, 5),
                                                  storage_options=http_options))  # fmt: skip
            s3_here = {**s3_options(here), **secrets}
            attempt(lambda: lsio_torch.read_crops("s3://bucket/a.zarr", [(0, 0)], (1, 1),
                                                  storage_options=s3_here))  # fmt: skip
    shown += [r.getMessage() for r in caplog.records]
    # Each kind of failure above did fail, with a message of its own.
    assert len(shown) >= 20 and sum("Error" in s for s in shown) >= 7, shown
    for secret in [*secrets.values(), TOKEN]:
        leaks = [s for s in shown if secret in s]
        assert not leaks, (secret, leaks)
