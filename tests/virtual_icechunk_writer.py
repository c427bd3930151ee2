"""Writes a VirtualiZarr virtual Icechunk store, run by the tests under the Python of the icechunk
line they test (ours has icechunk 1; a Python >= 3.12 venv has icechunk 2).

    python virtual_icechunk_writer.py '{"nc": ..., "repo": ..., "prefix": ..., "container": ...}'

The archive at ``nc`` is referenced by VirtualiZarr, its chunks renamed to lie under ``prefix``
(where the archive is served), and committed to a new repository at ``repo`` (a folder) on
branch ``main``, with one virtual chunk container, ``prefix``. ``container`` says what serves
it: ``{"local": folder}``, ``{"http": true}`` or ``{"s3": endpoint}`` (moto's)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import icechunk
from obspec_utils.registry import ObjectStoreRegistry
from obstore.store import LocalStore
from virtualizarr import open_virtual_dataset
from virtualizarr.parsers import HDFParser


def container_store(container: dict):
    if "local" in container:
        return icechunk.local_filesystem_store(container["local"])
    if "http" in container:
        return icechunk.http_store()
    return icechunk.s3_store(
        region="us-east-1", endpoint_url=container["s3"], allow_http=True, s3_compatible=True
    )


def main(args: dict) -> None:
    nc = Path(args["nc"])
    registry = ObjectStoreRegistry({"file://": LocalStore(prefix="/")})
    vds = open_virtual_dataset(f"file://{nc}", registry=registry, parser=HDFParser())
    vds = vds.vz.rename_paths(f"{args['prefix']}{nc.name}")
    config = icechunk.RepositoryConfig.default()
    store = container_store(args["container"])
    config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(args["prefix"], store))
    storage = icechunk.local_filesystem_storage(args["repo"])
    session = icechunk.Repository.create(storage, config=config).writable_session("main")
    vds.vz.to_icechunk(session.store)
    session.commit("virtual")
    print(json.dumps({"icechunk": icechunk.__version__}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
