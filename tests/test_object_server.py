"""The servers the object-store tests run against: the HTTP object server and moto's S3."""

from __future__ import annotations

import email.utils
import http.client
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from object_stores import S3

from lsio_torch.bench.server import ObjectServer

SMALL = bytes(range(256)) * 4  # 1000 bytes would not show an off-by-one in a pattern
BIG = os.urandom(2 * 1024 * 1024)
AWS_AT_IMPORT = {name: value for name, value in os.environ.items() if name.startswith("AWS_")}

Start = Callable[..., ObjectServer]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A store: ``a/small.bin``, ``big.bin``, and ``secret`` outside it."""
    (tmp_path / "store" / "a").mkdir(parents=True)
    (tmp_path / "store" / "a" / "small.bin").write_bytes(SMALL)
    (tmp_path / "store" / "big.bin").write_bytes(BIG)
    (tmp_path / "secret").write_bytes(b"outside the store")
    return tmp_path / "store"


def connect(server: ObjectServer, timeout: float = 5) -> http.client.HTTPConnection:
    host, port = server.url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def fetch(
    server: ObjectServer, path: str, ranges: str | None = None, method: str = "GET"
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on a fresh connection: status, headers, body."""
    connection = connect(server)
    try:
        connection.request(method, path, headers={"Range": ranges} if ranges else {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("ranges", "status", "start", "end"),
    [
        (None, 200, 0, 1024),
        ("bytes=10-19", 206, 10, 20),
        ("bytes=1000-", 206, 1000, 1024),
        ("bytes=-5", 206, 1019, 1024),
        ("bytes=100-5000", 206, 100, 1024),  # the end clamped to the file
        ("bytes=-5000", 206, 0, 1024),
        ("bytes=1023-1023", 206, 1023, 1024),
        ("items=0-1", 200, 0, 1024),  # not a byte range: ignored
        ("bytes=5-2", 200, 0, 1024),  # malformed: ignored
    ],
)
def test_ranges(
    object_server: Start, root: Path, ranges: str | None, status: int, start: int, end: int
) -> None:
    server = object_server(root)
    got, headers, body = fetch(server, "/a/small.bin", ranges)
    assert (got, body) == (status, SMALL[start:end])
    assert headers["Content-Length"] == str(end - start)
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["ETag"].startswith('"') and headers["ETag"].endswith('"')
    modified = email.utils.parsedate_to_datetime(headers["Last-Modified"]).timestamp()
    assert abs(modified - (root / "a" / "small.bin").stat().st_mtime) < 1
    if status == 206:
        assert headers["Content-Range"] == f"bytes {start}-{end - 1}/1024"
    else:
        assert headers["Content-Range"] is None
    assert server.log == [("GET", "/a/small.bin", ranges, status)]
    assert server.requests == 1


@pytest.mark.parametrize("ranges", ["bytes=1024-", "bytes=5000-6000", "bytes=-0", "bytes=0-1,4-5"])
def test_unsatisfiable_ranges(object_server: Start, root: Path, ranges: str) -> None:
    status, headers, _ = fetch(object_server(root), "/a/small.bin", ranges)
    assert status == 416
    assert headers["Content-Range"] == "bytes */1024"


@pytest.mark.parametrize(
    "path", ["/missing", "/a", "/", "/../secret", "/a/../../secret", "/%2e%2e/secret"]
)
def test_not_found(object_server: Start, root: Path, path: str) -> None:
    status, headers, body = fetch(object_server(root), path)
    assert status == 404
    assert headers["Content-Length"] == str(len(body))
    assert b"outside" not in body


def test_head(object_server: Start, root: Path) -> None:
    server = object_server(root)
    status, headers, body = fetch(server, "/big.bin", method="HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", str(len(BIG)))
    status, headers, body = fetch(server, "/big.bin", "bytes=-100", method="HEAD")
    assert (status, body, headers["Content-Length"]) == (206, b"", "100")
    assert headers["Content-Range"] == f"bytes {len(BIG) - 100}-{len(BIG) - 1}/{len(BIG)}"
    assert fetch(server, "/missing", method="HEAD")[0] == 404


def test_etag_changes_when_a_file_is_rewritten(object_server: Start, root: Path) -> None:
    server = object_server(root)
    path = root / "a" / "small.bin"
    first = fetch(server, "/a/small.bin", method="HEAD")[1]["ETag"]
    assert fetch(server, "/a/small.bin", method="HEAD")[1]["ETag"] == first
    path.write_bytes(SMALL + b"more")
    second = fetch(server, "/a/small.bin", method="HEAD")[1]["ETag"]
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))  # same size, newer
    third = fetch(server, "/a/small.bin", method="HEAD")[1]["ETag"]
    assert len({first, second, third}) == 3


def test_keep_alive(object_server: Start, root: Path) -> None:
    server = object_server(root)
    connection = connect(server)
    sockets = set()
    for path, status in [("/a/small.bin", 200), ("/missing", 404), ("/big.bin", 200)]:
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == status
        assert response.headers["Connection"] is None
        response.read()
        sockets.add(connection.sock)
    connection.close()
    assert len(sockets) == 1


def test_latency_delays_the_first_byte_and_overlaps(object_server: Start, root: Path) -> None:
    server = object_server(root, latency_ms=300)
    began = time.monotonic()
    assert fetch(server, "/a/small.bin")[0] == 200
    assert time.monotonic() - began >= 0.29  # a lower bound: no load makes a sleep shorter
    assert server.most_waiting == 1
    # Four requests at once wait out their latency together, not in turn: the server holds
    # all four in the wait at one moment (a wait long enough for any machine to start them).
    server.latency_ms = 3000
    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda: statuses.append(fetch(server, "/a/small.bin")[0]))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    server.wait_for(lambda s: s.most_waiting == 4)
    server.latency_ms = 0
    for thread in threads:
        thread.join()
    assert statuses == [200] * 4


def test_bandwidth_paces_a_connection(object_server: Start, root: Path) -> None:
    server = object_server(root, bandwidth=4e6)
    began = time.monotonic()
    status, _, body = fetch(server, "/big.bin")
    took = time.monotonic() - began
    assert (status, body) == (200, BIG)
    assert took > 0.35  # 2 MiB at 4 MB/s: at least 0.5 s less a block; no load makes it less
    # Changed while serving (speed is the bench's to measure, not a test's).
    server.bandwidth = None
    assert fetch(server, "/big.bin")[2] == BIG


def test_fail_counts_down(object_server: Start, root: Path) -> None:
    server = object_server(root)
    server.fail(503, times=2, match="small")
    server.fail(403, times=1)
    assert fetch(server, "/big.bin")[0] == 403  # not "small": meets the second fault
    first = fetch(server, "/a/small.bin")
    assert first[0] == 503 and first[2] == b"injected 503\n"
    assert first[1]["Content-Length"] == str(len(first[2]))
    assert fetch(server, "/a/small.bin", "bytes=0-9")[0] == 503
    assert fetch(server, "/a/small.bin", "bytes=0-9")[:3:2] == (206, SMALL[:10])
    assert fetch(server, "/big.bin")[0] == 200
    assert [entry[3] for entry in server.log] == [403, 503, 503, 206, 200]


@pytest.mark.parametrize(("path", "size"), [("/a/small.bin", 1024), ("/big.bin", len(BIG))])
def test_truncate_sends_half_the_body(
    object_server: Start, root: Path, path: str, size: int
) -> None:
    server = object_server(root)
    server.truncate(1, match=path)
    connection = connect(server)
    connection.request("GET", path)
    response = connection.getresponse()
    assert (response.status, response.headers["Content-Length"]) == (200, str(size))
    with pytest.raises(http.client.IncompleteRead) as short:
        response.read()
    assert len(short.value.partial) == size // 2
    assert server.truncated == 1
    connection.close()
    assert fetch(server, path)[:3:2] == (200, (root / path[1:]).read_bytes())


def test_truncate_spares_head_and_zero_faults_do_nothing(object_server: Start, root: Path) -> None:
    server = object_server(root)
    server.fail(500, times=0)
    server.truncate(1)
    assert fetch(server, "/a/small.bin", method="HEAD")[0] == 200
    with pytest.raises(http.client.IncompleteRead):
        fetch(server, "/a/small.bin")
    assert fetch(server, "/a/small.bin")[2] == SMALL


def test_empty_file(object_server: Start, root: Path) -> None:
    (root / "empty").write_bytes(b"")
    server = object_server(root)
    assert fetch(server, "/empty")[:3:2] == (200, b"")
    assert fetch(server, "/empty", "bytes=0-")[0] == 416
    assert fetch(server, "/empty", "bytes=-1")[0] == 416


def test_stall_blocks_until_unstall(object_server: Start, root: Path) -> None:
    server = object_server(root)
    server.stall(match="small")
    connection = connect(server, timeout=0.3)
    connection.request("GET", "/a/small.bin")
    with pytest.raises(TimeoutError):
        connection.getresponse()
    connection.close()
    assert fetch(server, "/big.bin")[0] == 200  # other paths still served
    held: list[bytes] = []
    waiting = threading.Thread(target=lambda: held.append(fetch(server, "/a/small.bin")[2]))
    arrived = server.arrived
    waiting.start()
    server.wait_for(lambda s: s.arrived == arrived + 1)  # the request is held by the server
    assert held == []
    server.unstall()
    waiting.join(timeout=5)
    assert held == [SMALL]
    assert fetch(server, "/a/small.bin")[2] == SMALL


def test_close_drops_stalled_requests(object_server: Start, root: Path) -> None:
    server = object_server(root)
    server.stall()
    errors: list[Exception] = []

    def request() -> None:
        try:
            fetch(server, "/a/small.bin")
        except Exception as error:
            errors.append(error)

    waiting = threading.Thread(target=request)
    waiting.start()
    server.wait_for(lambda s: s.arrived == 1)
    server.close()  # returns though a request is stalled (a hang fails the test's join)
    waiting.join(timeout=30)
    assert not waiting.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], (ConnectionError, http.client.HTTPException))
    assert server.log == [("GET", "/a/small.bin", None, 0)]


def test_kill_cuts_connections_and_refuses_new_ones(object_server: Start, root: Path) -> None:
    server = object_server(root, bandwidth=1e6)  # the 2 MiB body takes about 2 s
    idle = connect(server)
    idle.request("GET", "/a/small.bin")
    assert idle.getresponse().read() == SMALL
    errors: list[Exception] = []

    def download() -> None:
        try:
            fetch(server, "/big.bin")
        except Exception as error:
            errors.append(error)

    downloading = threading.Thread(target=download)
    downloading.start()
    # The headers are sent as the answer is logged; the body then takes about 2 s.
    server.wait_for(lambda s: ("GET", "/big.bin", None, 200) in s.log)
    server.kill()
    downloading.join(timeout=5)
    assert len(errors) == 1 and isinstance(errors[0], (OSError, http.client.HTTPException))
    with pytest.raises((OSError, http.client.HTTPException)):
        idle.request("GET", "/a/small.bin")
        idle.getresponse()
    with pytest.raises(ConnectionRefusedError):
        fetch(server, "/a/small.bin")


def test_close_leaves_no_threads(root: Path) -> None:
    before = set(threading.enumerate())
    with ObjectServer(root, latency_ms=50) as server:
        connections = [connect(server) for _ in range(3)]
        for connection in connections:  # left open, idle, when the server closes
            connection.request("GET", "/a/small.bin")
            connection.getresponse().read()
        assert len(set(threading.enumerate()) - before) >= 4
    assert set(threading.enumerate()) - before == set()
    for connection in connections:
        connection.close()
    server.close()  # a second close does nothing


def test_s3_upload_read_back(s3: S3, tmp_path: Path) -> None:
    (tmp_path / "store" / "c" / "0").mkdir(parents=True)
    (tmp_path / "store" / "zarr.json").write_bytes(b'{"zarr_format": 3}')
    (tmp_path / "store" / "c" / "0" / "1").write_bytes(SMALL)
    url = s3.upload(tmp_path / "store", "servers", "arrays/one.zarr")
    assert url == "s3://servers/arrays/one.zarr"
    listed = s3.client.list_objects_v2(Bucket="servers", Prefix="arrays/")["Contents"]
    assert sorted(entry["Key"] for entry in listed) == [
        "arrays/one.zarr/c/0/1",
        "arrays/one.zarr/zarr.json",
    ]
    key = "arrays/one.zarr/c/0/1"
    assert s3.client.get_object(Bucket="servers", Key=key)["Body"].read() == SMALL
    part = s3.client.get_object(Bucket="servers", Key=key, Range="bytes=10-19")
    assert part["Body"].read() == SMALL[10:20]
    assert part["ContentRange"] == "bytes 10-19/1024"
    s3.put("servers", key, b"garbage")
    assert s3.client.get_object(Bucket="servers", Key=key)["Body"].read() == b"garbage"
    s3.delete("servers", key)
    with pytest.raises(s3.client.exceptions.NoSuchKey):
        s3.client.get_object(Bucket="servers", Key=key)
    assert s3.upload(tmp_path / "store", "servers", "again") == "s3://servers/again"
    assert s3.storage_options["endpoint"] == s3.endpoint
    assert s3.endpoint.startswith("http://127.0.0.1:")
    assert {n: v for n, v in os.environ.items() if n.startswith("AWS_")} == AWS_AT_IMPORT
