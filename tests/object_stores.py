"""Object stores on 127.0.0.1 for the tests: moto's S3 server and the HTTP object server.

Nothing here reads ``~/.aws`` or sets ``AWS_*`` variables: the credentials are the
arguments of one boto3 client, and the ``storage_options`` handed to the engine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lsio_torch.bench.server import ObjectServer

#: moto accepts any credentials; these are the ones its docs use.
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


class S3:
    """moto's S3 API at ``endpoint``, and a boto3 client that writes stores into it."""

    def __init__(self, endpoint: str) -> None:
        import boto3
        import botocore.session

        self.endpoint = endpoint
        #: Options of the Rust ``object_store`` S3 builder, all strings.
        self.storage_options: dict[str, str] = {
            "endpoint": endpoint,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "region": REGION,
            "allow_http": "true",
        }
        # A botocore session that reads no config or credentials file of this machine.
        core = botocore.session.Session()
        core.set_config_variable("config_file", os.devnull)
        core.set_config_variable("credentials_file", os.devnull)
        self.client: Any = boto3.session.Session(botocore_session=core).client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )
        self._buckets: set[str] = set()

    def bucket(self, bucket: str) -> None:
        """Creates ``bucket`` unless it exists."""
        if bucket in self._buckets:
            return
        existing = {entry["Name"] for entry in self.client.list_buckets()["Buckets"]}
        if bucket not in existing:
            self.client.create_bucket(Bucket=bucket)
        self._buckets.add(bucket)

    def upload(self, local_dir: str | Path, bucket: str, prefix: str) -> str:
        """Uploads every file under ``local_dir`` to ``prefix/relative/path`` in ``bucket``
        (created if needed); returns the store's URL, ``s3://bucket/prefix``."""
        self.bucket(bucket)
        root = Path(local_dir)
        prefix = prefix.strip("/")
        for path in sorted(root.rglob("*")):
            if path.is_file():
                relative = path.relative_to(root).as_posix()
                key = f"{prefix}/{relative}" if prefix else relative
                self.client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        return f"s3://{bucket}/{prefix}"

    def put(self, bucket: str, key: str, data: bytes) -> None:
        """Writes one object (a chunk replaced by garbage, say)."""
        self.bucket(bucket)
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def delete(self, bucket: str, key: str) -> None:
        """Deletes one object (a chunk gone missing, say)."""
        self.client.delete_object(Bucket=bucket, Key=key)


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    """moto's S3 server on a free port of 127.0.0.1, for the whole session. Buckets persist
    across tests: each test writes under its own bucket or prefix."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def object_server() -> Iterator[Callable[..., ObjectServer]]:
    """Starts :class:`ObjectServer` over a folder, ``object_server(root, latency_ms=...,
    bandwidth=...)``; each one is closed when the test ends."""
    servers: list[ObjectServer] = []

    def start(root: str | Path, **options: Any) -> ObjectServer:
        server = ObjectServer(root, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
