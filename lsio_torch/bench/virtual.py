"""The virtual-archive bench, ``python -m lsio_torch.bench --data virtual``: a NetCDF4 archive
(written by netCDF4: fields ``(time, lat, lon)`` of float32, chunks ``(1, 128, 128)``, zlib
with shuffle, as archives are) read through kerchunk's references, against a plain Zarr v2
folder holding the very same chunk bytes and metadata (copied out of the archive by the
references). Both read by lsio_torch, the same random crops of every field, no chunk cache,
epochs taken in turn; locally, or over ``--store http`` (one object server serves both).

Also measured: opening a reference set of 100,000 chunks (parsing it and opening an array).
netCDF4 and kerchunk are needed (``pip install netCDF4 kerchunk``); without them the bench
says so and measures nothing.

``--data icechunk``: the same fields written by zarr-python into an Icechunk repository (the
icechunk package) and into a plain Zarr v3 folder, with the same chunks and codecs (zstd),
read the same way; then both again sharded (``SHARDS``: four chunks a shard, so that an
epoch meets new shards, whose indexes are read, batch after batch); and opening a
repository of 100,000 chunks.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from lsio_torch._stopwatch import Stopwatch
from lsio_torch.dataset import ZarrCropDataset
from lsio_torch.references import Icechunk, References

FIELDS = ("t2m", "u10", "v10", "msl")
SHAPE = (32, 512, 512)
CHUNKS = (1, 128, 128)
#: The shards of ``--data icechunk``'s sharded fields: four chunks each.
SHARDS = (1, 256, 256)
#: The crop: a random window of one step, touching up to four chunks of every field.
CROP = {"time": 1, "lat": 128, "lon": 128}


def missing() -> str | None:
    """Why the bench cannot run here, or None."""
    lacking = [m for m in ("netCDF4", "kerchunk") if importlib.util.find_spec(m) is None]
    return f"missing: {', '.join(lacking)} (pip install {' '.join(lacking)})" if lacking else None


def write(folder: Path) -> None:
    """The archive, its references (targets relative to the folder) and the plain copy."""
    import netCDF4
    from kerchunk.hdf import SingleHdf5ToZarr

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    nc = partial / "archive.nc"
    rng = np.random.default_rng(3)
    smooth = np.cumsum(rng.normal(size=SHAPE), axis=2).astype("float32")
    with netCDF4.Dataset(nc, "w") as d:
        for name, n in zip(("time", "lat", "lon"), SHAPE, strict=True):
            d.createDimension(name, n)
        for i, name in enumerate(FIELDS):
            v = d.createVariable(
                name, "f4", ("time", "lat", "lon"), zlib=True, complevel=1, shuffle=True,
                chunksizes=CHUNKS,
            )  # fmt: skip
            v[:] = np.round(smooth * (i + 1), 2)
    with open(nc, "rb") as f:
        refs = SingleHdf5ToZarr(f, "archive.nc", inline_threshold=0).translate()
    (partial / "refs.json").write_text(json.dumps(refs))
    # The same chunks and metadata as a Zarr v2 folder.
    data = nc.read_bytes()
    plain = partial / "plain.zarr"
    for key, value in refs["refs"].items():
        out = plain / key
        out.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(value, str):
            raw = value.encode()
            if value.startswith("base64:"):
                raw = base64.b64decode(value[7:])
            out.write_bytes(raw)
        else:
            _, offset, length = value
            out.write_bytes(data[offset : offset + length])
    partial.rename(folder)


def opening_seconds(folder: Path, chunks: int = 100_000) -> float:
    """Seconds to open a reference set of ``chunks`` chunks and an array of it."""
    at = folder / f"open-{chunks}.json"
    if not at.exists():
        zarray = {
            "shape": [chunks, 64], "chunks": [1, 64], "dtype": "<f4", "fill_value": 0.0,
            "order": "C", "filters": None, "compressor": None, "zarr_format": 2,
        }  # fmt: skip
        refs = {".zgroup": '{"zarr_format":2}', "big/.zarray": json.dumps(zarray)}
        for i in range(chunks):
            refs[f"big/{i}.0"] = ["archive.nc", 4096 + 256 * i, 256]
        at.write_text(json.dumps({"version": 1, "refs": refs}))
    from lsio_torch._sources import open_array

    watch = Stopwatch()
    array = open_array(References(at, path=None), "big")
    seconds = watch.stop()
    assert array.shape == [chunks, 64]
    return seconds


def write_icechunk(folder: Path, shards: tuple[int, ...] | None = None) -> None:
    """The fields as plain Zarr v3 and as an Icechunk repository (branch main), sharded in
    ``shards`` if given; unsharded, the repository also holds an array of 100,000 chunks."""
    import icechunk
    import zarr

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    rng = np.random.default_rng(3)
    smooth = np.cumsum(rng.normal(size=SHAPE), axis=2).astype("float32")
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(partial / "repo")))
    session = repo.writable_session("main")
    for in_repo, store in ((False, partial / "plain.zarr"), (True, session.store)):
        group = zarr.open_group(store, mode="w", zarr_format=3)
        for i, name in enumerate(FIELDS):
            array = group.create_array(
                name, shape=SHAPE, chunks=CHUNKS, shards=shards, dtype="f4",
                compressors=[zarr.codecs.ZstdCodec(level=1)],
                dimension_names=("time", "lat", "lon"),
            )  # fmt: skip
            array[...] = np.round(smooth * (i + 1), 2)
        if in_repo and shards is None:
            big = group.create_array("big", shape=(100_000, 4), chunks=(1, 4), dtype="f4")
            big[...] = 1.0
    session.commit("the bench's fields")
    partial.rename(folder)


def run(sources: dict[str, object], n: int, batch: int, epochs: int, threads: int) -> dict:
    """samples/s per epoch of each source, epochs taken in turn."""
    datasets = {
        label: ZarrCropDataset(
            source,
            CROP,
            variables=list(FIELDS),
            batch_size=batch,
            samples_per_epoch=n,
            threads=threads,
            cache_bytes=0,
        )
        for label, source in sources.items()
    }
    out: dict[str, list[float]] = {label: [] for label in sources}
    for epoch in range(epochs):
        for label, ds in datasets.items():
            ds.set_epoch(epoch)
            watch = Stopwatch()
            for b in torch.utils.data.DataLoader(ds, batch_size=None):
                for value in b.values():
                    value.view(torch.uint8).max()
            out[label].append(n / watch.stop())
    return out


def measure_icechunk(args, cache: Path) -> dict:
    if importlib.util.find_spec("icechunk") is None:
        return {"icechunk": "missing: icechunk (pip install icechunk)"}
    folder, sharded = cache / "icechunk", cache / "icechunk-sharded"
    if not folder.exists():
        write_icechunk(folder)
    if not sharded.exists():
        write_icechunk(sharded, SHARDS)
    epochs = args.epochs or 3
    report: dict = {"samples": args.n, "batch": args.batch, "store": args.store}
    for key, at in (("per_epoch", folder), ("sharded_per_epoch", sharded)):
        labels = ("zarr v3", "icechunk")
        if args.store == "http":
            from lsio_torch.bench.remote import ServedFolder

            bandwidth = args.bandwidth * 1e6 if args.bandwidth else None
            with ServedFolder(at, args.latency_ms[0], bandwidth) as server:
                places = (f"{server.url}/plain.zarr", Icechunk(f"{server.url}/repo"))
                sources = dict(zip(labels, places, strict=True))
                report["latency_ms"] = args.latency_ms[0]
                report[key] = run(sources, args.n, args.batch, epochs, args.threads)
        else:
            places = (at / "plain.zarr", Icechunk(at / "repo"))
            sources = dict(zip(labels, places, strict=True))
            report[key] = run(sources, args.n, args.batch, epochs, args.threads)
    from lsio_torch._sources import open_array

    watch = Stopwatch()
    array = open_array(Icechunk(folder / "repo", snapshot=None), "big")
    report["open_100k_s"] = watch.stop()
    assert array.shape == [100_000, 4]
    return report


def measure(args, cache: Path) -> dict:
    why = missing()
    if why:
        return {"virtual": why}
    folder = cache / "virtual"
    if not folder.exists():
        write(folder)
    epochs = args.epochs or 3
    report: dict = {"samples": args.n, "batch": args.batch, "store": args.store}
    if args.store == "http":
        from lsio_torch.bench.remote import ServedFolder

        bandwidth = args.bandwidth * 1e6 if args.bandwidth else None
        with ServedFolder(folder, args.latency_ms[0], bandwidth) as server:
            sources = {
                "zarr v2": f"{server.url}/plain.zarr",
                "references": References(f"{server.url}/refs.json"),
            }
            report["latency_ms"] = args.latency_ms[0]
            report["per_epoch"] = run(sources, args.n, args.batch, epochs, args.threads)
    else:
        sources = {
            "zarr v2": folder / "plain.zarr",
            "references": References(folder / "refs.json"),
        }
        report["per_epoch"] = run(sources, args.n, args.batch, epochs, args.threads)
    report["open_100k_s"] = opening_seconds(folder)
    return report


def table(report: dict) -> str:
    for missing_peer in ("virtual", "icechunk"):
        if missing_peer in report:
            return f"{missing_peer}: {report[missing_peer]}"
    where = "local" if report["store"] != "http" else f"http, {report['latency_ms']:g} ms"
    lines = []
    for key, sharded in (("per_epoch", ""), ("sharded_per_epoch", f", sharded {SHARDS}")):
        if key not in report:
            continue
        (plain_label, plain), (label, other) = report[key].items()
        what = "virtual NetCDF4" if label == "references" else "Icechunk repository"
        lines.append(
            f"{what} ({where}{sharded}), {report['samples']} samples of {len(FIELDS)} fields "
            f"in batches of {report['batch']}, no cache: plain {plain_label} "
            f"{' '.join(f'{r:.1f}' for r in plain)} samples/s by epoch, {label} "
            f"{' '.join(f'{r:.1f}' for r in other)}; {label} / plain: "
            f"{' '.join(f'{b / a:.2f}' for a, b in zip(plain, other, strict=True))}"
        )
    opened = "a reference set" if "references" in report["per_epoch"] else "a repository"
    lines.append(
        f"opening {opened} of 100,000 chunks and an array of it: {report['open_100k_s']:.3f} s"
    )
    return "\n".join(lines)
