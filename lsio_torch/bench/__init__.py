"""Measures lsio_torch against its peers and its ceilings, on the same crops, in one run.

    python -m lsio_torch.bench [--data NAME|PATH ...] [--crop T,Y,X] [--batch 16] [--n 2000]
                               [--threads N] [--io-threads N] [--systems lsio,zarr,...]
                               [--small] [--cold] [--direct] [--memory] [--json]
                               [--store http --latency-ms 0,5,20,50 --bandwidth 90
                                --max-requests 32,64 --merge-gap B --concurrency 16,64
                                --plot out.png]

Generates (once, with zarr-python) and caches the standard datasets, then reads the same
seeded crop origins with every system and prints crops/s, MB/s, the ratio to lsio_torch and
the ratio to the ceiling (the decode bound on a warm cache; with ``--cold``, the disk bound).

Systems:
  lsio       ZarrCropDataset through a DataLoader (batch_size=None, num_workers=0), no chunk
             cache (cache_bytes=0: the engine itself; --cache measures the cache)
  zarr       zarr-python 3, crop by crop, in a DataLoader with one worker per core
  zarrs      the same with the zarrs codec pipeline (``pip install zarrs``)
  tensorstore  all crops of a batch in flight at once
  decode     the decode bound: the same chunks, read first, decoded on all threads
  read       the same byte ranges read on all threads, a deep queue of reads each, nothing
             decoded: with --cold the disk bound (the cold ceiling); on a warm cache the read
             bound, the cost of copying the bytes out of the page cache, printed with
             "read + decode", the two bounds one after the other on the same threads (what
             any reader that copies the bytes before decoding them spends on these cores)
With ``--store http`` the data is served over HTTP instead (see ``lsio_torch.bench.remote``), to
lsio_torch, zarr-python and zarrs on obstore, tensorstore's http kvstore, and the GET bound.
Peers that are not installed are reported missing. Every system's every batch is touched
the same way: each of its bytes read once (``view(uint8).max()``), on one torch thread, so
the consumer costs little and the same for all (a ``.sum()`` of int16 would first cast the
batch to int64, and torch's thread pool would compete for the cores being measured).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lsio_torch import _lsio_torch
from lsio_torch._stopwatch import Stopwatch
from lsio_torch.bench.cache import parse_sizes
from lsio_torch.dataset import (
    ZarrCropDataset,
    _default_threads,
    default_prefetch,
)

CACHE = Path(os.environ.get("LSIO_BENCH_CACHE", Path.home() / ".cache" / "lsio_torch" / "bench"))


@dataclass(frozen=True)
class Standard:
    """A standard dataset (BENCHMARK.md)."""

    zarr_format: int
    shape: tuple[int, int, int]
    dtype: str
    chunks: tuple[int, int, int]  # the inner chunk when sharded
    shards: tuple[int, int, int] | None
    codec: str | None
    crop: tuple[int, int, int]


SAT_INNER, SAT_SHARD = (1, 256, 256), (16, 1024, 1024)
STANDARD = {
    "sat-zstd": Standard(
        3, (256, 1024, 1024), "int16", SAT_INNER, SAT_SHARD, "zstd", (4, 256, 256)
    ),
    "sat-blosc": Standard(
        3, (256, 1024, 1024), "float32", SAT_INNER, SAT_SHARD, "blosc", (4, 256, 256)
    ),
    "era-v2": Standard(2, (512, 721, 1440), "float32", (1, 721, 1440), None, "zstd", (4, 128, 128)),
    "raw": Standard(3, (256, 1024, 1024), "uint16", SAT_INNER, SAT_SHARD, None, (4, 256, 256)),
}


def smooth_frame(t: int, shape: tuple[int, int], waves: np.ndarray, rng) -> np.ndarray:
    """Drifting plane waves plus noise: a field that compresses like real data."""
    y, x = np.ogrid[0 : shape[0], 0 : shape[1]]
    field = np.zeros(shape, dtype=np.float32)
    for ky, kx, speed, phase, amplitude in waves:
        field += amplitude * np.sin(ky * y + kx * x + speed * t + phase, dtype=np.float32)
    return field + rng.normal(0.0, 0.01, size=shape).astype(np.float32)


def write_standard(path: Path, spec: Standard, frames: int) -> None:
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    rng = np.random.default_rng(0)
    waves = np.stack(
        [
            rng.uniform(-0.03, 0.03, 12),
            rng.uniform(-0.03, 0.03, 12),
            rng.uniform(-0.3, 0.3, 12),
            rng.uniform(0, 2 * np.pi, 12),
            rng.uniform(0.1, 0.5, 12),
        ],
        axis=1,
    )
    shape = (frames, *spec.shape[1:])
    if spec.zarr_format == 2:
        import numcodecs

        array = zarr.create_array(
            path, shape=shape, chunks=spec.chunks, dtype=spec.dtype, zarr_format=2,
            compressors=numcodecs.Zstd(level=3), fill_value=0, overwrite=True,
        )  # fmt: skip
    else:
        compressors = {
            "zstd": ZstdCodec(level=3),
            "blosc": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
            None: None,
        }[spec.codec]
        array = zarr.create_array(
            path, shape=shape, chunks=spec.chunks, shards=spec.shards, dtype=spec.dtype,
            compressors=compressors, fill_value=0, overwrite=True,
        )  # fmt: skip
    step = spec.shards[0] if spec.shards else 16
    for start in range(0, frames, step):
        block = np.stack(
            [
                smooth_frame(t, shape[1:], waves, rng)
                for t in range(start, min(start + step, frames))
            ]
        )
        if np.dtype(spec.dtype).kind in "iu":
            block = block * 2000 + 8000
        array[start : start + len(block)] = block.astype(spec.dtype)
        progress(f"writing {path.name}", min(start + step, frames), frames, "frames")
    sys.stderr.write(f"\n  wrote {path}\n")


def dataset(name: str, small: bool) -> tuple[Path, Standard | None]:
    """The path of a standard dataset (written if missing), or of a user's array."""
    if name not in STANDARD:
        return Path(name), None
    spec = STANDARD[name]
    frames = spec.shape[0] // 8 if small else spec.shape[0]
    path = CACHE / f"{name}{'-small' if small else ''}.zarr"
    if not (path / ("zarr.json" if spec.zarr_format == 3 else ".zarray")).exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_standard(path, spec, frames)
    return path, spec


_last_draw = 0.0


def progress(label: str, done: int, total: int, unit: str = "crops") -> None:
    """A progress bar on a terminal (at most 10 redraws a second); nothing in a log."""
    global _last_draw
    now = time.monotonic()
    if not sys.stderr.isatty() or (done < total and now - _last_draw < 0.1):
        return
    _last_draw = now
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(
        f"\r  {label:<24} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {unit}"
    )
    sys.stderr.flush()


@dataclass
class Result:
    system: str
    crops_per_s: float | None
    mb_per_s: float | None
    seconds: float | None
    note: str = ""
    # The share of the machine's cores busy during the run (every process): see _stopwatch.
    cpu_busy: float | None = None


def touch(batch: torch.Tensor) -> None:
    """Reads every byte of a batch, so that nothing can be skipped lazily."""
    batch.view(torch.uint8).max()


def batches_of(origins: list[list[int]], batch: int) -> list[list[list[int]]]:
    return [origins[i : i + batch] for i in range(0, len(origins), batch)]


def consume(batches, label: str, total: int) -> float:
    """Touches every batch; returns the seconds from the first request to the last batch."""
    done = 0
    watch = Stopwatch()
    for tensor in batches:
        touch(tensor)
        done += tensor.shape[0]
        progress(label, done, total)
    return watch.stop()


def run_lsio(path, crop, origins, batch, threads, label, direct_io=False, io_threads=0) -> float:
    ds = ZarrCropDataset(
        path, crop, batch_size=batch, samples_per_epoch=len(origins), seed=0, threads=threads,
        direct_io=direct_io, io_threads=io_threads, cache_bytes=0,
    )  # fmt: skip
    return consume(torch.utils.data.DataLoader(ds, batch_size=None), label, len(origins))


class _ZarrCrops(torch.utils.data.Dataset):
    """Crop by crop with zarr-python, as training scripts do today."""

    def __init__(self, path: str, origins, crop, pipeline: str | None) -> None:
        self.path, self.origins, self.crop, self.pipeline = path, origins, crop, pipeline
        self.array = None

    def __len__(self) -> int:
        return len(self.origins)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.array is None:
            import zarr

            if self.pipeline:
                zarr.config.set({"codec_pipeline.path": self.pipeline})
            self.array = zarr.open_array(self.path, mode="r")
        region = tuple(slice(o, o + c) for o, c in zip(self.origins[i], self.crop, strict=True))
        return torch.from_numpy(np.ascontiguousarray(self.array[region]))


def run_zarr(path, crop, origins, batch, threads, label, pipeline=None) -> float:
    ds = _ZarrCrops(str(path), origins, crop, pipeline)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=threads)
    return consume(loader, label, len(origins))


def run_tensorstore(path, crop, origins, batch, threads, label) -> float:
    import tensorstore as ts

    driver = "zarr3" if (Path(path) / "zarr.json").exists() else "zarr"
    context = ts.Context({"data_copy_concurrency": {"limit": threads}})
    store = ts.open(
        {"driver": driver, "kvstore": {"driver": "file", "path": str(path)}},
        read=True,
        context=context,
    ).result()
    done = 0
    watch = Stopwatch()
    for group in batches_of(origins, batch):
        futures = [
            store[tuple(slice(o, o + c) for o, c in zip(origin, crop, strict=True))].read()
            for origin in group
        ]
        tensor = torch.from_numpy(np.stack([f.result() for f in futures]))
        touch(tensor)
        done += len(group)
        progress(label, done, len(origins))
    return watch.stop()


def drop_caches() -> None:
    """Empties the page cache (root only), so the next system reads from the disk."""
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        raise SystemExit(f"--cold needs root to drop the page cache: {e}") from None


def warm(path: Path) -> None:
    """Reads every file of the array once, so a warm run starts with it in the page cache."""
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                while f.read(1 << 24):
                    pass


def missing(module: str) -> str | None:
    return None if importlib.util.find_spec(module) else f"not installed (pip install {module})"


def measure(args, name: str) -> list[Result]:
    path, spec = dataset(name, args.small)
    array = _lsio_torch.Array(str(path))
    crop = tuple(args.crop) if args.crop else (spec.crop if spec else tuple(array.chunk_shape))
    sampler = _lsio_torch.Sampler(list(array.shape), list(crop), 0)
    origins = sampler.origins(0, 0, args.n)
    crop_mb = np.prod(crop) * np.dtype(array.dtype).itemsize / 1e6
    threads = args.threads
    batches = batches_of(origins, args.batch)

    def result(system: str, seconds: float | None, note: str = "") -> Result:
        if seconds is None:
            return Result(system, None, None, None, note)
        rate = len(origins) / seconds
        return Result(system, rate, rate * crop_mb, seconds, note, Stopwatch.take())

    if args.store == "http":
        return measure_remote(args, name, path, array, crop, batches, result)

    def cache_state() -> None:
        if args.cold:
            drop_caches()
        else:
            warm(path)

    runners: dict[str, tuple[Callable[[], float], str | None]] = {
        "lsio_torch": (
            lambda: run_lsio(
                path, crop, origins, args.batch, threads, "lsio_torch", args.direct, args.io_threads
            ),
            None,
        ),
        "zarr-python": (
            lambda: run_zarr(path, crop, origins, args.batch, threads, "zarr-python"),
            missing("zarr"),
        ),
        "zarr-python+zarrs": (
            lambda: run_zarr(
                path,
                crop,
                origins,
                args.batch,
                threads,
                "zarr-python+zarrs",
                pipeline="zarrs.ZarrsCodecPipeline",
            ),
            missing("zarr") or missing("zarrs"),
        ),
        "tensorstore": (
            lambda: run_tensorstore(path, crop, origins, args.batch, threads, "tensorstore"),
            missing("tensorstore"),
        ),
    }
    keys = {
        "lsio": "lsio_torch",
        "zarr": "zarr-python",
        "zarrs": "zarr-python+zarrs",
        "disk": "read",
    }
    chosen = [keys.get(s, s) for s in args.systems.split(",")]
    results = []
    print(
        f"\n{name}: {path} {tuple(array.shape)} {array.dtype}, chunks {tuple(array.chunk_shape)}"
        f"{f', shards {tuple(array.shard_shape)}' if array.shard_shape else ''}; "
        f"crop {crop}, batch {args.batch}, {len(origins)} crops, {threads} threads, "
        f"{'cold' if args.cold else 'warm'} cache, I/O {_lsio_torch.io_backend()}",
        file=sys.stderr,
    )
    for system, (run, absent) in runners.items():
        if system not in chosen:
            continue
        if absent:
            results.append(result(system, None, absent))
            continue
        cache_state()
        seconds = run()
        sys.stderr.write("\n" if sys.stderr.isatty() else f"  {system}: {seconds:.2f} s\n")
        results.append(result(system, seconds))
    decode = read = None
    if "decode" in chosen:
        cache_state()
        sys.stderr.write("  decode bound ...\n")
        decode = _lsio_torch.decode_bound(array, list(crop), batches, threads)
        results.append(
            result("decode bound", decode["seconds"], f"{decode['chunks']} chunk decodes")
        )
    if "read" in chosen:
        ranges = _lsio_torch.read_ranges(array, list(crop), batches)
        cache_state()
        label = "disk bound" if args.cold else "read bound"
        sys.stderr.write(f"  {label} ...\n")
        read = _lsio_torch.disk_bound(ranges, threads)
        note = f"{read['chunks']} reads, {read['encoded_bytes'] / 1e6:.0f} MB"
        results.append(result(label, read["seconds"], note))
    if decode and read and not args.cold:
        seconds = decode["seconds"] + read["seconds"]
        results.append(
            result("read + decode", seconds, "the two bounds above, one after the other")
        )
    return results


def measure_remote(args, name, path, array, crop, batches, result) -> list[Result]:
    """Every system on the same crops of ``path`` served over HTTP at ``args.latency_ms``."""
    from lsio_torch.bench import remote as rb

    threads, chosen = args.threads, args.systems.split(",")
    concurrency = [int(c) for c in args.concurrency.split(",")]
    bandwidth = args.bandwidth * 1e6 if args.bandwidth else None
    options = {} if args.merge_gap is None else {"merge_gap": str(args.merge_gap)}
    ranges = _lsio_torch.read_ranges(array, list(crop), batches, list(options.items()))
    v3 = (path / "zarr.json").exists()
    n, chunks = sum(map(len, batches)), tuple(array.chunk_shape)
    touched = rb.chunks_touched([o for b in batches for o in b], crop, chunks)
    results = []
    with rb.ServedFolder(path.parent, args.latency_ms, bandwidth) as server:
        url = f"{server.url}/{path.name}"
        print(
            f"\n{name}: {url} {tuple(array.shape)} {array.dtype}; crop {crop}, batch "
            f"{args.batch}, {n} crops, {threads} threads; first byte "
            f"+{args.latency_ms:g} ms, {args.bandwidth or 'unlimited'} MB/s a connection",
            file=sys.stderr,
        )
        gap = f", merge_gap={args.merge_gap}" if args.merge_gap is not None else ""
        lsio = {
            f"lsio{i}": (
                "lsio_torch" if i == 0 else f"lsio_torch, max_requests={m}",
                lambda m=m: (
                    rb.run_lsio(url, crop, batches, threads, m, options, consume),
                    f"max_requests={m or 'default'}{gap}; {touched:.2f} chunks a crop",
                ),
                None,
            )
            for i, m in enumerate(args.max_requests)
        }
        if "lsio" in chosen:
            chosen += list(lsio)
        runners = {
            **lsio,
            "zarr": (
                "zarr-python (obstore)",
                lambda: _best(
                    lambda c: rb.run_zarr(url, crop, batches, c, "zarr-python", touch, progress),
                    concurrency,
                ),
                missing("zarr") or missing("obstore"),
            ),
            "zarrs": (
                "zarr-python+zarrs (obstore)",
                lambda: _best(
                    lambda c: rb.run_zarr(
                        url,
                        crop,
                        batches,
                        c,
                        "zarrs",
                        touch,
                        progress,
                        pipeline="zarrs.ZarrsCodecPipeline",
                    ),
                    concurrency,
                ),
                missing("zarr") or missing("obstore") or missing("zarrs"),
            ),
            "tensorstore": (
                "tensorstore (http)",
                lambda: (
                    rb.run_tensorstore(url, crop, batches, v3, "tensorstore", touch, progress),
                    "",
                ),
                missing("tensorstore"),
            ),
            "xbatcher": (
                "xbatcher",
                lambda: rb.run_xbatcher(
                    url, array.shape, crop, n, args.batch, threads, chunks, consume
                ),
                missing("xbatcher") or missing("obstore"),
            ),
            "get": (
                "GET bound",
                lambda: _best(
                    lambda c: rb.run_get_bound(server.url, path.parent, ranges, c), concurrency
                ),
                missing("obstore"),
            ),
        }
        for key, (system, run, absent) in runners.items():
            if key not in chosen:
                continue
            if absent or run is None:
                results.append(result(system, None, absent or "not measured"))
                continue
            seconds, note = run()
            sys.stderr.write(f"\n  {system}: {seconds:.2f} s\n")
            results.append(result(system, seconds, note))
        if "disk" in chosen:
            # Its epochs alternate with the local files' runs: no one run's busy share.
            first, seconds, counters = rb.run_lsio_disk_cache(
                url, path, crop, n, args.batch, threads, options,
                consume, CACHE / "disk-cache",
            )  # fmt: skip
            Stopwatch.take()
            hits, misses = counters["disk_cache_hits"], counters["disk_cache_misses"]
            results.append(result("lsio_torch, cache_dir, epoch 1", first, "from the server"))
            for state, what in (
                ("as written", "the folder as epoch 1 wrote it, the local files as the bench did"),
                ("read from disk", "each read from the disk into the page cache again first"),
            ):
                second, local = seconds[f"cache_dir, {state}"], seconds[f"local, {state}"]
                note = f"{local / second:.2f} x the local files; {what}"
                if state == "as written":
                    # A run's epoch 2 meets the folder as its epoch 1 wrote it, and local
                    # data it did not just write: through readahead.
                    from_disk = seconds["local, read from disk"]
                    note += (
                        f" ({from_disk / second:.2f} x the local files read from disk); "
                        f"chunks from disk {hits}, fetched {misses}"
                    )
                results += [
                    result(f"lsio_torch, cache_dir, epoch 2, {state}", second, note),
                    result(f"lsio_torch, local files, {state}", local, "epoch 2's crops"),
                ]
    return results


def _best(run: Callable[[int], float], choices: list[int]) -> tuple[float, str]:
    timed = []
    for c in choices:
        timed.append((run(c), c, Stopwatch.take()))
    seconds, choice, busy = min(timed, key=lambda t: t[0])
    Stopwatch.keep(busy)
    return seconds, f"concurrency {choice} (best of {','.join(map(str, choices))})"


def plot_latency(report: dict, path: Path) -> None:
    """Crops/s of each system against the first-byte latency, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_data: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for key, results in report["data"].items():
        name, latency = key.rsplit(", ", 1)
        for r in results:
            if r["crops_per_s"]:
                points = by_data.setdefault(name, {}).setdefault(r["system"], [])
                points.append((float(latency.removesuffix(" ms")), r["crops_per_s"]))
    fig, axes = plt.subplots(1, len(by_data), figsize=(6 * len(by_data), 4), squeeze=False)
    for ax, (name, systems) in zip(axes[0], by_data.items(), strict=True):
        for system, points in systems.items():
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", label=system, linestyle="--" if "bound" in system else "-")
        ax.set(title=name, xlabel="first-byte latency (ms)", ylabel="crops/s", yscale="log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"over HTTP, {report['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory(args, name: str) -> dict:
    """Each epoch's peak RSS above the pre-iteration baseline, and time to first batch."""
    path, spec = dataset(name, args.small)
    array = _lsio_torch.Array(str(path))
    crop = tuple(args.crop) if args.crop else (spec.crop if spec else tuple(array.chunk_shape))
    itemsize = np.dtype(array.dtype).itemsize
    batch_bytes = args.batch * int(np.prod(crop)) * itemsize
    prefetch = default_prefetch(batch_bytes, remote=args.store == "http")
    server, source, in_flight_mb = None, path, 0.0
    if args.store == "http":
        from lsio_torch.bench.remote import ServedFolder

        bandwidth = args.bandwidth * 1e6 if args.bandwidth else None
        server = ServedFolder(path.parent, args.latency_ms[0], bandwidth)
        source = f"{server.url}/{path.name}"
        in_flight_mb = 128.0  # the engine's max_bytes_in_flight, by default
    cache_bytes = parse_sizes(args.cache_bytes or "0", int(np.prod(array.shape)) * itemsize)[0]
    folder, folder_bound = None, None
    if server is not None and args.cache_dir_bytes:
        stored = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        folder, folder_bound = (
            CACHE / "disk-cache-memory",
            parse_sizes(args.cache_dir_bytes, stored)[0],
        )
        shutil.rmtree(folder, ignore_errors=True)
    ds = ZarrCropDataset(
        source, crop, batch_size=args.batch, samples_per_epoch=args.n, prefetch=prefetch,
        threads=args.threads, io_threads=args.io_threads, max_requests=args.max_requests[0],
        cache_bytes=cache_bytes, cache_dir=folder, cache_dir_bytes=folder_bound,
    )  # fmt: skip
    n_epochs = args.epochs or 20
    warm(path)
    baseline = _status_kb("VmRSS")
    epochs = []
    for epoch in range(n_epochs):
        Path("/proc/self/clear_refs").write_text("5\n")  # resets VmHWM to the current RSS
        ds.set_epoch(epoch)
        start = time.perf_counter()
        batches = iter(torch.utils.data.DataLoader(ds, batch_size=None))
        touch(next(batches))
        first = time.perf_counter() - start
        for batch in batches:
            touch(batch)
        peak = (_status_kb("VmHWM") - baseline) / 1024
        epochs.append({"epoch": epoch, "first_batch_s": first, "peak_rss_mb": peak})
        if folder is not None:
            # What the folder's shard files take on disk (their holes take nothing).
            held = sum(
                f.stat().st_blocks * 512 for f in folder.rglob("*") if f.suffix in (".data", ".log")
            )
            epochs[-1]["disk_cache_mb"] = held / 2**20
        progress(f"memory {name}", epoch + 1, n_epochs, "epochs")
    sys.stderr.write("\n")
    if server is not None:
        server.close()
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "data": name,
        "batch_mb": batch_bytes / 2**20,
        "budget_mb": 1.5 * prefetch * batch_bytes / 2**20 + 200 + in_flight_mb,
        "cache_mb": cache_bytes / 2**20,
        "disk_cache_bound_mb": None if folder_bound is None else folder_bound / 2**20,
        "baseline_rss_mb": baseline / 1024,
        "epochs": epochs,
    }


def table(name: str, results: list[Result], cold: bool) -> str:
    ceiling_name = "disk bound" if cold else "decode bound"
    if any(r.system == "GET bound" for r in results):
        ceiling_name = "GET bound"
    lsio = next((r for r in results if r.system == "lsio_torch" and r.crops_per_s), None)
    ceiling = next((r for r in results if r.system == ceiling_name and r.crops_per_s), None)
    lines = [
        f"### {name}",
        "| system | crops/s | MB/s | vs lsio_torch | vs ceiling | CPU busy | |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.crops_per_s is None:
            lines.append(f"| {r.system} | - | - | - | - | - | {r.note} |")
            continue
        vs_lsio = f"{r.crops_per_s / lsio.crops_per_s:.2f}" if lsio else "-"
        vs_ceiling = f"{r.crops_per_s / ceiling.crops_per_s:.2f}" if ceiling else "-"
        busy = f"{r.cpu_busy:.0%}" if r.cpu_busy is not None else "-"
        lines.append(
            f"| {r.system} | {r.crops_per_s:,.0f} | {r.mb_per_s:,.0f} | {vs_lsio} | "
            f"{vs_ceiling} | {busy} | {r.note} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Linux {platform.release()}"


def run(argv: Sequence[str]) -> dict:
    """The bench as a library: measures what ``python -m lsio_torch.bench ARGV`` measures
    (crops/s of each system on each dataset; not ``--cache`` or ``--memory``) and returns
    its report, ``{"machine", "threads", "io_threads", "cold", "data": {name: [result, ...]}}``,
    each result ``{"system", "crops_per_s", "mb_per_s", "seconds", "note"}``.

    Sets torch's own threads to one, as the bench does (see the module docstring)."""
    args = _parser().parse_args(list(argv))
    if args.cache or args.memory:
        raise ValueError("run() measures throughput: use main() for --cache and --memory")
    _defaults(args)
    torch.set_num_threads(1)
    return _throughput(args)


def _throughput(args) -> dict:
    report = {
        "machine": machine(),
        "threads": args.threads,
        "io_threads": args.io_threads,
        "cold": args.cold,
        "data": {},
    }
    for name in args.data:
        if args.store == "http":
            latencies = args.latency_ms
            for latency in latencies:
                args.latency_ms = latency
                results = measure(args, name)
                report["data"][f"{name}, {latency:g} ms"] = [asdict(r) for r in results]
            args.latency_ms = latencies
            continue
        report["data"][name] = [asdict(r) for r in measure(args, name)]
    return report


def _defaults(args) -> None:
    """The systems each mode measures unless told."""
    default = _parser().get_default("systems")
    if args.store == "http" and args.systems == default:
        args.systems = "lsio,zarr,zarrs,tensorstore,xbatcher,get"
    if args.cache and args.systems == default:
        args.systems = "lsio,tensorstore,copy"


def main(argv: Iterator[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    _defaults(args)
    torch.set_num_threads(1)  # the consumer: see the module docstring
    _main(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", nargs="+", default=list(STANDARD),
        help="names or paths; wb2: the dataset bench (see lsio_torch.bench.wb2); same-bytes: "
        "1 array against 16 holding the same bytes; virtual: a NetCDF4 archive by reference "
        "against the same chunks as Zarr v2; icechunk: an Icechunk repository against the same "
        "chunks as Zarr v3 (both in lsio_torch.bench.virtual)",
    )  # fmt: skip
    parser.add_argument(
        "--steps", default="0,1", help="--data wb2: the time steps of a sample (0,1 0,4 0,12)"
    )
    parser.add_argument("--crop", type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--n", type=int, default=2000, help="crops per system")
    parser.add_argument("--threads", type=int, default=_default_threads())
    parser.add_argument(
        "--io-threads", type=int, default=0, help="lsio_torch's threads that only read"
    )
    parser.add_argument("--systems", default="lsio,zarr,zarrs,tensorstore,decode,read")
    parser.add_argument("--small", action="store_true", help="1/8 of the time steps")
    parser.add_argument("--cold", action="store_true", help="drop the page cache (root)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--direct", action="store_true", help="lsio_torch reads with O_DIRECT (direct_io=True)"
    )
    parser.add_argument(
        "--memory", action="store_true", help="lsio_torch only: RSS and first batch per epoch"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs for --memory (20) and --cache (4)"
    )
    parser.add_argument(
        "--cache", action="store_true",
        help="the chunk cache: epochs of crops with no cache and with --cache-bytes (systems "
        "lsio, tensorstore with a cache_pool of the same size, copy: the copy bound)",
    )  # fmt: skip
    parser.add_argument(
        "--cache-bytes", default=None,
        help="cache sizes: bytes (512M, 2G) or shares of the decoded dataset (25%%); 0: none. "
        "--cache: a list (0,25%%,100%%); --memory: one (0)",
    )  # fmt: skip
    parser.add_argument(
        "--cache-policy", default="lru,clock,s3fifo", help="--cache: the policies measured"
    )
    parser.add_argument(
        "--cache-dir-bytes", default=None,
        help="--memory --store http: read with a cache_dir of this bound: bytes (512M) or a "
        "share of the stored dataset (25%%)",
    )  # fmt: skip
    parser.add_argument(
        "--store", choices=["file", "http"], default="file",
        help="http: serve the data over HTTP from a local object server (systems lsio, zarr, "
        "zarrs, tensorstore, xbatcher, get; and disk: lsio_torch with cache_dir, epochs 1 and "
        "2, against the local files)",
    )  # fmt: skip
    parser.add_argument(
        "--latency-ms",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[20.0],
        help="--store http: added first-byte latency; a list (0,5,20,50) measures each",
    )
    parser.add_argument(
        "--plot", type=Path, help="--store http: write throughput against latency to this PNG"
    )
    parser.add_argument(
        "--bandwidth", type=float, default=90.0, help="--store http: MB/s per connection (0: any)"
    )
    parser.add_argument(
        "--max-requests",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[None],
        help="--store http: lsio_torch's max_requests; a list measures each",
    )
    parser.add_argument(
        "--merge-gap", type=int, default=None, help="--store http: lsio_torch's merge_gap"
    )
    parser.add_argument(
        "--concurrency",
        default="16,64,128",
        help="--store http: the peers' and the GET bound's concurrencies tried (the best kept)",
    )
    return parser


def _main(args) -> None:
    if {"wb2", "same-bytes", "virtual", "icechunk"} & set(args.data):
        _datasets(args)
        return
    if args.cache:
        from lsio_torch.bench import cache as _cache_bench

        args.cache_bytes = args.cache_bytes or "0,25%,100%"
        reports = []
        for name in args.data:
            path, spec = dataset(name, args.small)
            array = _lsio_torch.Array(str(path))
            args.default_crop = spec.crop if spec else tuple(array.chunk_shape)
            warm(path)
            reports.append(_cache_bench.measure_cache(args, name, path))
        if args.json:
            print(json.dumps({"machine": machine(), "data": reports}, indent=2))
            return
        print(f"\nlsio_torch cache bench on {machine()}; {args.threads} threads\n")
        for report in reports:
            print(_cache_bench.table(report) + "\n")
        return

    if args.memory:
        reports = [memory(args, name) for name in args.data]
        if args.json:
            print(json.dumps(reports, indent=2))
            return
        for r in reports:
            peaks = [e["peak_rss_mb"] for e in r["epochs"]]
            firsts = [e["first_batch_s"] for e in r["epochs"]]
            print(
                f"{r['data']}: batch {r['batch_mb']:.0f} MB, budget {r['budget_mb']:.0f} MB "
                f"+ cache {r['cache_mb']:.0f} MB "
                f"above a baseline of {r['baseline_rss_mb']:.0f} MB; each epoch's peak RSS "
                f"above baseline: epoch 1 {peaks[0]:.0f} MB, epoch {len(peaks)} "
                f"{peaks[-1]:.0f} MB, highest {max(peaks):.0f} MB "
                f"(all: {' '.join(f'{p:.0f}' for p in peaks)}); mean of the first five "
                f"{np.mean(peaks[:5]):.0f} MB, of the last five {np.mean(peaks[-5:]):.0f} MB; "
                f"first batch {min(firsts) * 1000:.0f}-{max(firsts) * 1000:.0f} ms"
            )
            if r["disk_cache_bound_mb"] is not None:
                held = [e["disk_cache_mb"] for e in r["epochs"]]
                print(
                    f"  cache_dir bound {r['disk_cache_bound_mb']:.0f} MB; the folder after "
                    f"each epoch: {' '.join(f'{h:.0f}' for h in held)} MB, highest "
                    f"{max(held):.0f} MB"
                )
        return
    report = _throughput(args)
    if args.plot:
        plot_latency(report, args.plot)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    io = f" (+{args.io_threads} I/O threads for lsio_torch)" if args.io_threads else ""
    print(f"\nlsio_torch bench on {report['machine']}; {args.threads} threads{io}\n")
    for name, results in report["data"].items():
        print(table(name, [Result(**r) for r in results], args.cold) + "\n")


def _datasets(args) -> None:
    """``--data wb2`` (the dataset bench), ``--data same-bytes`` (1 array against 16) and
    ``--data virtual`` (a NetCDF4 archive by reference against the same chunks as Zarr v2)."""
    from lsio_torch.bench import virtual, wb2

    if args.systems == _parser().get_default("systems"):
        args.systems = "lsio,insitubatch,zarr,xbatcher,decode,copy,get"
    reports = []
    for name in args.data:
        if name == "wb2":
            reports.append(wb2.measure(args, CACHE))
        elif name == "same-bytes":
            reports.append(wb2.measure_same_bytes(args, CACHE))
        elif name == "virtual":
            reports.append(virtual.measure(args, CACHE))
        elif name == "icechunk":
            reports.append(virtual.measure_icechunk(args, CACHE))
        else:
            raise SystemExit(
                f"--data {name}: with wb2, same-bytes, virtual or icechunk, only those"
            )
    if args.json:
        print(json.dumps({"machine": machine(), "data": reports}, indent=2))
        return
    print(f"\nlsio_torch dataset bench on {machine()}; {args.threads} threads\n")
    for report in reports:
        if "results" in report:
            print(wb2.table(report) + "\n")
            continue
        if {"virtual", "icechunk", "open_100k_s"} & set(report):
            print(virtual.table(report) + "\n")
            continue
        rates = report["per_epoch"]
        one, many = rates["1 array"], rates["16 arrays"]
        print(
            f"same bytes, {report['samples']} samples in batches of {report['batch']}, no "
            f"cache: 1 array {' '.join(f'{r:.1f}' for r in one)} samples/s by epoch, "
            f"16 arrays {' '.join(f'{r:.1f}' for r in many)}; 16 / 1: "
            f"{' '.join(f'{b / a:.2f}' for a, b in zip(one, many, strict=True))}\n"
        )
