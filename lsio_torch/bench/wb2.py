"""The dataset bench, ``python -m lsio_torch.bench --data wb2 --steps 0,1``: a group shaped as
WeatherBench2 publishes ERA5 (written by xarray: Zarr v2, 1.5°, one time step a chunk, blosc
lz4; surface fields ``(time, latitude, longitude)`` beside fields on 13 pressure levels
``(time, level, latitude, longitude)``), whole fields at ``t + s`` for each step ``s``, every
variable, read by each system epoch after epoch at its defaults; samples/s per epoch.

Systems:
  lsio         ZarrCropDataset(variables=every field, steps={"time": steps}), default cache
  insitubatch  insitubatch's InSituDataset, each step a shifted view (``g.shift(s)``), on
               obstore; it needs Python >= 3.12: run in a venv of its own that the bench makes
               (with a Python >= 3.12 it finds, pyenv's included), reported missing otherwise
  zarr         zarr-python 3, sample by sample, in a DataLoader with a worker per core
  xbatcher     xbatcher's BatchGenerator over xarray (dask chunks from zarr-python), windows of
               ``max(steps) + 1`` time steps from which the steps are taken (its way to pair
               t with t+h), whole fields, in a DataLoader with a worker per core
  decode       the decode bound: the chunks of each batch (each once), decoded on all threads
  copy         the copy bound: the bytes of every batch copied from memory on all threads
               (with decode or copy, the consumer's touch of every batch alone is measured too:
               every system's samples/s includes it, the bounds do not; each bound's note
               gives it with the touch added)
  get          (``--store http``) the GET bound: the chunks of each batch fetched by obstore at
               the best of ``--concurrency``, nothing decoded
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lsio_torch import _lsio_torch
from lsio_torch._stopwatch import Stopwatch
from lsio_torch.bench.venv312 import venv_with
from lsio_torch.dataset import ZarrCropDataset

SURFACE = (
    "2m_temperature",
    "10m_u_component_of_wind",
    "10m_v_component_of_wind",
    "mean_sea_level_pressure",
)
LEVELS = ("geopotential", "temperature")
#: 1.5° ERA5 as WeatherBench2 publishes it: 13 pressure levels, 121 x 240.
GRID = {"level": 13, "latitude": 121, "longitude": 240}


@dataclass
class Epochs:
    """A system's samples/s, epoch by epoch (or why it has none)."""

    system: str
    per_epoch: list[float]
    note: str = ""


def write(path: Path, times: int) -> None:
    """The group, written by xarray: smooth fields with noise (as reanalyses compress)."""
    import numcodecs
    import xarray as xr

    rng = np.random.default_rng(0)
    lat, lon = GRID["latitude"], GRID["longitude"]
    yy, xx = np.meshgrid(np.linspace(0, np.pi, lat), np.linspace(0, 2 * np.pi, lon), indexing="ij")

    def field(shape: tuple[int, ...], k: int) -> np.ndarray:
        t = np.arange(shape[0]).reshape(-1, *([1] * (len(shape) - 1)))
        base = np.sin(yy * (k + 1) + t * 0.1) * np.cos(xx * (k + 2))
        noise = rng.normal(scale=0.05, size=shape)
        return (base + noise).astype("float32")

    data = {}
    for k, name in enumerate(SURFACE):
        data[name] = (("time", "latitude", "longitude"), field((times, lat, lon), k))
    for k, name in enumerate(LEVELS):
        levels = field((times, GRID["level"], lat, lon), k + len(SURFACE))
        data[name] = (("time", "level", "latitude", "longitude"), levels)
    ds = xr.Dataset(data, coords={"time": np.arange(times), "level": np.arange(GRID["level"])})
    blosc = numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE)
    encoding = {n: {"chunks": (1, lat, lon), "compressors": blosc} for n in SURFACE}
    shape = (1, GRID["level"], lat, lon)
    encoding.update({n: {"chunks": shape, "compressors": blosc} for n in LEVELS})
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    ds.to_zarr(partial, zarr_format=2, encoding=encoding, consolidated=True, mode="w")
    partial.rename(path)


def dataset(cache: Path, small: bool) -> tuple[Path, int]:
    times = 16 if small else 256
    path = cache / f"wb2-{times}.zarr"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"writing {path} with xarray", file=sys.stderr)
        write(path, times)
    return path, times


def anchors(times: int, steps: list[int], n: int, seed: int) -> list[int]:
    """``n`` uniform anchors leaving room for every step."""
    low, high = -min(steps), times - 1 - max(steps)
    return np.random.default_rng(seed).integers(low, high + 1, size=n).tolist()


def sample_bytes(steps: list[int]) -> int:
    cells = GRID["latitude"] * GRID["longitude"]
    return 4 * len(steps) * cells * (len(SURFACE) + GRID["level"] * len(LEVELS))


def touch(batch) -> None:
    for value in batch.values():
        value.view(torch.uint8).max()


def run_lsio(source: str, steps: list[int], n: int, batch: int, epochs: int, threads: int):
    ds = ZarrCropDataset(
        source,
        {},
        variables=list(SURFACE + LEVELS),
        steps={"time": steps},
        batch_size=batch,
        samples_per_epoch=n,
        threads=threads,
    )
    rates = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        watch = Stopwatch()
        for b in torch.utils.data.DataLoader(ds, batch_size=None):
            touch(b)
        rates.append(n / watch.stop())
    return rates


def _zarr_store(source: str):
    """What zarr-python and xarray open for ``source``: its path, or obstore's HTTPStore."""
    if not source.startswith("http"):
        return source
    import obstore.store
    import zarr

    obs = obstore.store.HTTPStore.from_url(source, client_options={"allow_http": True})
    return zarr.storage.ObjectStore(obs, read_only=True)


class _ZarrSamples(torch.utils.data.Dataset):
    """One sample: every variable at ``t + s`` for each step, read by zarr-python."""

    def __init__(self, source: str, anchors: list[int], steps: list[int]) -> None:
        self.source, self.anchors, self.steps = source, anchors, steps
        self.group = None

    def __len__(self) -> int:
        return len(self.anchors)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        import zarr

        if self.group is None:
            self.group = zarr.open_group(_zarr_store(self.source), mode="r")
        times = [self.anchors[i] + s for s in self.steps]
        return {
            name: torch.from_numpy(self.group[name].get_orthogonal_selection((times,)))
            for name in SURFACE + LEVELS
        }


class _XbatcherSamples(torch.utils.data.Dataset):
    """Samples as xbatcher users cut them: windows of ``span`` time steps from xbatcher's
    BatchGenerator (one per anchor: overlap ``span - 1``), the steps taken out of each."""

    def __init__(self, source: str, anchors: list[int], steps: list[int]) -> None:
        self.source, self.anchors, self.steps = source, anchors, steps
        self.generator = None

    def __len__(self) -> int:
        return len(self.anchors)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.generator is None:
            import xarray as xr
            import xbatcher

            data = xr.open_zarr(_zarr_store(self.source), chunks={})[list(SURFACE + LEVELS)]
            span = max(self.steps) - min(self.steps) + 1
            # Every dimension an input dimension: whole fields, in their own order (left out,
            # xbatcher stacks them into one "sample" dimension).
            self.generator = xbatcher.BatchGenerator(
                data, input_dims={"time": span, **GRID}, input_overlap={"time": span - 1}
            )
        window = self.generator[self.anchors[i] + min(self.steps)]
        picked = window.isel(time=[s - min(self.steps) for s in self.steps])
        return {name: torch.from_numpy(picked[name].values) for name in SURFACE + LEVELS}


def run_loader(samples, source: str, anchors_of, steps, n, batch, epochs, threads):
    """Samples/s of each epoch of a map-style ``samples`` class in a DataLoader with
    ``threads`` workers."""
    rates = []
    for epoch in range(epochs):
        loader = torch.utils.data.DataLoader(
            samples(source, anchors_of(epoch), steps), batch_size=batch, num_workers=threads
        )
        watch = Stopwatch()
        for b in loader:
            touch(b)
        rates.append(n / watch.stop())
    return rates


#: What the insitubatch venv runs: its samples/s per epoch, as JSON.
INSITUBATCH = r"""
import json, sys, time
from insitubatch import InSituDataset, obstore_store, open_geometries, split_by_chunk

url, names, steps, n, batch, epochs = sys.argv[1], sys.argv[2].split(","), [
    int(s) for s in sys.argv[3].split(",")], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
options = {"client_options": {"allow_http": True}} if url.startswith("http") else {}
store = obstore_store(url, **options)
geoms = open_geometries(store, variables=names)
views = {f"{name}@{s}": g.shift(s) for name, g in geoms.items() for s in steps}
times = next(iter(geoms.values())).n_samples
low, high = -min(steps), times - max(steps)
manifest = split_by_chunk(geoms[names[0]], fractions=(1.0, 0.0, 0.0), sample_range=(low, high))
ds = InSituDataset(store, manifest, geometries=views, batch_size=batch)
rates = []
for epoch in range(epochs):
    ds.set_epoch(epoch)
    seen, start = 0, time.perf_counter()
    for b in ds.train:
        for value in b.arrays.values():
            value.view("uint8").max()
        seen += len(b)
        if seen >= n:
            break
    rates.append(seen / (time.perf_counter() - start))
print(json.dumps(rates))
"""


def insitubatch_python(cache: Path) -> tuple[str | None, str]:
    """The venv's Python with insitubatch installed (made once), or None and why not."""
    return venv_with(cache / "venv-insitubatch", ["insitubatch", "xarray"])


def run_insitubatch(python: str, source: str, steps, n, batch, epochs) -> list[float]:
    url = source if source.startswith("http") else Path(source).absolute().as_uri()
    args = [url, ",".join(SURFACE + LEVELS), ",".join(map(str, steps))]
    args += [str(n), str(batch), str(epochs)]
    run = subprocess.run([python, "-c", INSITUBATCH, *args], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(run.stderr.strip()[-2000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def batches_of(anchors: list[int], batch: int) -> list[list[int]]:
    return [anchors[i : i + batch] for i in range(0, len(anchors), batch)]


def decode_bound(path: Path, anchors: list[int], steps, batch, threads) -> float:
    """Seconds to decode each batch's chunks once (every variable), on all threads."""
    seconds = 0.0
    for name in SURFACE + LEVELS:
        array = _lsio_torch.Array.in_group(str(path), name, None)
        rest = [0] * (len(array.shape) - 1)
        crop = [1, *array.shape[1:]]
        batches = [
            sorted({(t + s, *rest) for t in group for s in steps})
            for group in batches_of(anchors, batch)
        ]
        batches = [[list(o) for o in b] for b in batches]
        seconds += _lsio_torch.decode_bound(array, crop, batches, threads)["seconds"]
    return seconds


def copy_bound(n: int, steps, batch: int, threads: int) -> float:
    """Seconds to copy ``n`` samples' bytes into batches on all threads, from a source as large
    as the chunks a cache holds (not one block that stays in the CPU's cache), each batch into
    one of a few buffers taken in turn, as batches in flight are."""
    cells = GRID["latitude"] * GRID["longitude"]
    fields = len(SURFACE) + GRID["level"] * len(LEVELS)
    source = torch.ones(min(256, 64 if n < 256 else 256) * fields * cells, dtype=torch.float32)
    per_batch = batch * sample_bytes(steps) // 4
    if per_batch > source.numel():
        source = source.repeat(math.ceil(per_batch / source.numel()))
    buffers = [torch.empty(per_batch, dtype=torch.float32) for _ in range(3)]
    for out in buffers:  # faulted in once, as reused batch memory is
        out.fill_(0)
    rng = np.random.default_rng(0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        watch = Stopwatch()
        for i in range(math.ceil(n / batch)):
            at = int(rng.integers(0, source.numel() - per_batch + 1))
            buffers[i % 3].copy_(source[at : at + per_batch])
        return watch.stop()
    finally:
        torch.set_num_threads(before)


def touch_seconds(n: int, steps, batch: int, threads: int) -> float:
    """Seconds the consumer's :func:`touch` of ``n`` samples' batches takes alone, on the
    same threads: every system's samples/s includes it, the decode and copy bounds do not."""
    per_batch = batch * sample_bytes(steps) // 4
    buffers = [torch.ones(per_batch, dtype=torch.float32) for _ in range(3)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        watch = Stopwatch()
        for i in range(math.ceil(n / batch)):
            touch({"batch": buffers[i % 3]})
        return watch.stop()
    finally:
        torch.set_num_threads(before)


def get_bound(url: str, path: Path, anchors, steps, batch, concurrency: list[int]) -> tuple:
    """Seconds to fetch each batch's chunks with obstore, at the best concurrency."""
    from lsio_torch.bench.remote import run_get_bound

    ranges = []
    for group in batches_of(anchors, batch):
        chunks = []
        for name in SURFACE + LEVELS:
            rest = ".0" * (3 if name in LEVELS else 2)
            for t in sorted({t + s for t in group for s in steps}):
                file = path / name / f"{t}{rest}"
                chunks.append((str(file), 0, file.stat().st_size))
        ranges.append(chunks)
    best = None
    for c in concurrency:
        seconds = run_get_bound(url, path.parent, ranges, c)
        if best is None or seconds < best[0]:
            best = (seconds, c)
    return best


def measure(args, cache: Path) -> dict:
    steps = [int(s) for s in args.steps.split(",")]
    path, times = dataset(cache, args.small)
    n, batch, epochs, threads = args.n, args.batch, args.epochs or 2, args.threads
    systems = args.systems.split(",")
    results: list[Epochs] = []
    served = None
    source = str(path)
    from lsio_torch.bench import warm

    warm(path)  # every system reads from the page cache, not whichever comes first
    if args.store == "http":
        from lsio_torch.bench.remote import ServedFolder

        bandwidth = args.bandwidth * 1e6 if args.bandwidth else None  # MB/s a connection
        served = ServedFolder(path.parent, args.latency_ms[0], bandwidth)
        source = f"{served.url}/{path.name}"
    try:
        if "lsio" in systems:
            results.append(Epochs("lsio_torch", run_lsio(source, steps, n, batch, epochs, threads)))
        if "insitubatch" in systems:
            python, why = insitubatch_python(cache)
            if python is None:
                results.append(Epochs("insitubatch", [], why))
            else:
                try:
                    rates = run_insitubatch(python, source, steps, n, batch, epochs)
                    results.append(Epochs("insitubatch", rates, "at its defaults"))
                except RuntimeError as e:
                    results.append(Epochs("insitubatch", [], f"failed: {e}"))

        def anchors_of(epoch: int) -> list[int]:
            return anchors(times, steps, n, epoch)

        if "zarr" in systems:
            rates = run_loader(_ZarrSamples, source, anchors_of, steps, n, batch, epochs, threads)
            results.append(Epochs("zarr-python", rates, f"DataLoader, {threads} workers"))
        if "xbatcher" in systems:
            if importlib.util.find_spec("xbatcher") is None:
                results.append(Epochs("xbatcher", [], "missing: pip install xbatcher"))
            else:
                rates = run_loader(
                    _XbatcherSamples, source, anchors_of, steps, n, batch, epochs, threads
                )
                note = f"windows of {max(steps) - min(steps) + 1} steps, {threads} workers"
                results.append(Epochs("xbatcher", rates, note))
        first = anchors(times, steps, n, 0)
        touched = None
        if "decode" in systems or "copy" in systems:
            touched = touch_seconds(n, steps, batch, threads)
            note = "touch(batch) alone: in every system's samples/s, not in the bounds"
            results.append(Epochs("consumer touch", [n / touched], note))
        if "decode" in systems:
            seconds = decode_bound(path, first, steps, batch, threads)
            with_touch = n / (seconds + touched)
            note = f"each batch's chunks once; and the touch: {with_touch:.0f}"
            results.append(Epochs("decode bound", [n / seconds], note))
        if "copy" in systems:
            seconds = copy_bound(n, steps, batch, threads)
            note = f"and the touch: {n / (seconds + touched):.0f}"
            results.append(Epochs("copy bound", [n / seconds], note))
        if served is not None and "get" in systems:
            concurrency = [int(c) for c in args.concurrency.split(",")]
            seconds, c = get_bound(served.url, path, first, steps, batch, concurrency)
            results.append(Epochs("GET bound", [n / seconds], f"obstore, {c} at once"))
    finally:
        if served is not None:
            served.close()
    where = f"http, {args.latency_ms[0]:g} ms" if served else "local"
    return {
        "data": f"wb2 ({times} steps, {len(SURFACE)} surface + {len(LEVELS)} level fields)",
        "steps": steps,
        "store": where,
        "samples": n,
        "batch": batch,
        "sample_mb": sample_bytes(steps) / 1e6,
        "results": [r.__dict__ for r in results],
    }


def table(report: dict) -> str:
    lines = [
        f"{report['data']}, steps {report['steps']}, {report['store']}: {report['samples']} "
        f"samples an epoch ({report['sample_mb']:.1f} MB each), batches of {report['batch']}; "
        f"samples/s",
        f"{'system':<14}{'epoch 1':>10}{'later':>10}{'lsio / it, 1':>14}{'later':>8}  note",
    ]
    lsio = next((r for r in report["results"] if r["system"] == "lsio_torch"), None)
    for r in report["results"]:
        rates = r["per_epoch"]
        first = rates[0] if rates else None
        later = float(np.mean(rates[1:])) if len(rates) > 1 else None

        def cell(v):
            return f"{v:10.1f}" if v is not None else f"{'-':>10}"

        ratio1 = ratio2 = "-"
        if lsio and lsio["per_epoch"] and first:
            ratio1 = f"{lsio['per_epoch'][0] / first:.2f}"
            if later and len(lsio["per_epoch"]) > 1:
                ratio2 = f"{np.mean(lsio['per_epoch'][1:]) / later:.2f}"
        lines.append(
            f"{r['system']:<14}{cell(first)}{cell(later)}{ratio1:>14}{ratio2:>8}  {r['note']}"
        )
    return "\n".join(lines)


def write_same_bytes(path: Path, times: int, arrays: int = 16) -> None:
    """``arrays`` fields ``(time, lat, lon)`` beside one array ``(time, field, lat, lon)`` of
    the same fields: the same bytes in the same chunks (one field of one time step each)."""
    import zarr

    lat, lon = GRID["latitude"], GRID["longitude"]
    rng = np.random.default_rng(1)
    values = (rng.normal(size=(times, arrays, lat, lon)) * 100).round().astype("float32")
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    group = zarr.open_group(partial, mode="w", zarr_format=3)
    codec = [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]
    whole = group.create_array(
        "all",
        shape=values.shape,
        chunks=(1, 1, lat, lon),
        dtype="float32",
        compressors=codec,
        dimension_names=("time", "field", "latitude", "longitude"),
    )
    whole[...] = values
    for i in range(arrays):
        one = group.create_array(
            f"f{i}",
            shape=(times, lat, lon),
            chunks=(1, lat, lon),
            dtype="float32",
            compressors=codec,
            dimension_names=("time", "latitude", "longitude"),
        )
        one[...] = values[:, i]
    partial.rename(path)


def measure_same_bytes(args, cache: Path) -> dict:
    """1 array against 16 holding the same bytes: lsio_torch's samples/s with no cache, epoch
    by epoch, each sample one time step of every field."""
    times = 16 if args.small else 256
    path = cache / f"same-bytes-{times}.zarr"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        write_same_bytes(path, times)
    n, batch, epochs = args.n, args.batch, args.epochs or 2
    arrays = {"1 array": ["all"], "16 arrays": [f"f{i}" for i in range(16)]}
    datasets = {
        label: ZarrCropDataset(
            path,
            {"time": 1},
            variables=variables,
            batch_size=batch,
            samples_per_epoch=n,
            threads=args.threads,
            cache_bytes=0,
        )
        for label, variables in arrays.items()
    }
    out: dict[str, list[float]] = {label: [] for label in arrays}
    # Epochs taken in turn, so that the machine's drift falls on both alike.
    for epoch in range(epochs):
        for label, ds in datasets.items():
            ds.set_epoch(epoch)
            watch = Stopwatch()
            for b in ds:
                touch(b)
            out[label].append(n / watch.stop())
    return {"path": str(path), "samples": n, "batch": batch, "per_epoch": out}
