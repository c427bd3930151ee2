"""The chunk-cache half of ``python -m lsio_torch.bench --cache``: several epochs of uniform
random crops, each epoch its own crops, read with no cache and with caches of given sizes and
policies, beside tensorstore with a ``cache_pool`` of the same sizes and the copy bound.

Systems:
  lsio         ZarrCropDataset with ``cache_bytes`` (and ``cache_policy``), one DataLoader
               pass per epoch; each epoch's hit rate from ``stats()``
  tensorstore  one opened store with a ``cache_pool`` of ``cache_bytes``, all crops of a
               batch in flight at once, epoch after epoch
  copy         the copy bound: the same crops copied out of the array already decoded in
               memory (numpy, on the engine's thread count), nothing read or decoded

The hit rate the policy predicts: the policy alone (``_lsio_torch.cache_replay``: the same
cache code, on the same chunks in the same order, each batch's misses handed to it before the
next batch looks up: batches one at a time, where the engine runs several at once). Beside
it, in theory, Che's approximation for LRU (CLOCK approximates LRU), at
the granularity of a batch (a chunk counts once per batch, as the engine reads it): with
``q_i`` the chance that a batch touches chunk ``i`` (from the crop's and the chunk's
geometry, for origins uniform over the array), the characteristic time ``T`` in batches
solves ``sum_i (1 - (1 - q_i)**T) = C`` (C: chunks the cache holds), and the hit rate is
``sum_i q_i (1 - (1 - q_i)**T) / sum_i q_i``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from lsio_torch import _lsio_torch
from lsio_torch.dataset import ZarrCropDataset


def parse_sizes(text: str, dataset_bytes: int) -> list[int]:
    """``0,25%,100%,512M``: bytes, or a share of the decoded dataset."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    sizes = []
    for token in text.split(","):
        token = token.strip()
        if token.endswith("%"):
            sizes.append(int(dataset_bytes * float(token[:-1]) / 100))
        elif token[-1:].upper() in units:
            sizes.append(int(float(token[:-1]) * units[token[-1].upper()]))
        else:
            sizes.append(int(token))
    return sizes


def touch_probabilities(shape, chunks, crop) -> np.ndarray:
    """For each chunk, the chance that one crop at a uniform random origin touches it: a
    product over dimensions, each counted exactly."""
    per_dim = []
    for s, n, c in zip(shape, chunks, crop, strict=True):
        origins = np.arange(s - c + 1)
        k = np.arange(math.ceil(s / n))
        # The crop [o, o + c) meets chunk [k n, (k + 1) n).
        meets = (origins[None, :] < (k[:, None] + 1) * n) & (origins[None, :] + c > k[:, None] * n)
        per_dim.append(meets.mean(axis=1))
    p = per_dim[0]
    for q in per_dim[1:]:
        p = np.multiply.outer(p, q)
    return p.ravel()


def predicted_hit_rate(shape, chunks, crop, batch: int, capacity_chunks: int) -> float:
    """Che's approximation for LRU at batch granularity (see the module docstring)."""
    p = touch_probabilities(shape, chunks, crop)
    q = 1 - (1 - p) ** batch
    q = q[q > 0]
    if capacity_chunks >= len(q):
        return 1.0
    if capacity_chunks <= 0:
        return 0.0

    def held(t: float) -> float:
        return float(np.sum(1 - (1 - q) ** t))

    lo, hi = 0.0, 1.0
    while held(hi) < capacity_chunks:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if held(mid) < capacity_chunks else (lo, mid)
    t = (lo + hi) / 2
    return float(np.sum(q * (1 - (1 - q) ** t)) / np.sum(q))


def batch_chunks(array, crop, n: int, batch: int, epoch: int) -> list[list[int]]:
    """Each batch's chunks, as C-order chunk numbers, in the order the engine looks them up."""
    grid = [math.ceil(s / c) for s, c in zip(array.shape, array.chunk_shape, strict=True)]
    origins = np.array(origins_of(array, crop, n, epoch), dtype=np.int64)
    chunks = np.array(array.chunk_shape, dtype=np.int64)
    first = origins // chunks
    last = (origins + np.array(crop) - 1) // chunks
    out = []
    for i in range(0, n, batch):
        found: set[int] = set()
        for lo, hi in zip(first[i : i + batch], last[i : i + batch], strict=True):
            axes = [np.arange(a, b + 1) for a, b in zip(lo, hi, strict=True)]
            found.update(np.ravel_multi_index(np.ix_(*axes), grid).ravel().tolist())
        out.append(sorted(found))
    return out


def policy_hit_rate(array, crop, n, batch, epochs, cache_bytes, policy) -> float:
    """The policy alone's hit rate over epochs 2+ (see the module docstring)."""
    chunk_bytes = math.prod(array.chunk_shape) * np.dtype(array.dtype).itemsize
    streams = [batch_chunks(array, crop, n, batch, e) for e in range(epochs)]
    first = _lsio_torch.cache_replay(cache_bytes, policy, chunk_bytes, streams[0])
    every = _lsio_torch.cache_replay(
        cache_bytes, policy, chunk_bytes, [b for s in streams for b in s]
    )
    return (every["hits"] - first["hits"]) / (every["lookups"] - first["lookups"])


def _touch(batch: torch.Tensor) -> None:
    batch.view(torch.uint8).max()


def run_lsio(path, crop, n, batch, threads, epochs, cache_bytes, policy) -> list[dict]:
    """Each epoch's seconds and hit rate (hits and waits over lookups)."""
    ds = ZarrCropDataset(
        str(path), crop, batch_size=batch, samples_per_epoch=n, seed=0, threads=threads,
        cache_bytes=cache_bytes, cache_policy=policy,
    )  # fmt: skip
    out = []
    before = ds.stats()
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        start = time.perf_counter()
        for tensor in torch.utils.data.DataLoader(ds, batch_size=None):
            _touch(tensor)
        seconds = time.perf_counter() - start
        after = ds.stats()
        row = {"epoch": epoch, "seconds": seconds, "hit_rate": None}
        if cache_bytes:
            found = sum(after[k] - before[k] for k in ("cache_hits", "cache_waits"))
            looked = found + after["cache_misses"] - before["cache_misses"]
            row["hit_rate"] = found / looked if looked else None
            row["cache_bytes_held"] = after["cache_bytes"]
        out.append(row)
        before = after
    ds.close()
    return out


def origins_of(array, crop, n: int, epoch: int) -> list[list[int]]:
    sampler = _lsio_torch.Sampler(list(array.shape), list(crop), 0)
    return sampler.origins(epoch, 0, n)


def run_tensorstore(path, array, crop, n, batch, threads, epochs, cache_bytes) -> list[dict]:
    import tensorstore as ts

    driver = "zarr3" if (Path(path) / "zarr.json").exists() else "zarr"
    context = ts.Context(
        {
            "data_copy_concurrency": {"limit": threads},
            "cache_pool": {"total_bytes_limit": int(cache_bytes)},
        }
    )
    store = ts.open(
        {"driver": driver, "kvstore": {"driver": "file", "path": str(path)}},
        read=True,
        context=context,
    ).result()
    out = []
    for epoch in range(epochs):
        origins = origins_of(array, crop, n, epoch)
        start = time.perf_counter()
        for i in range(0, n, batch):
            futures = [
                store[tuple(slice(o, o + c) for o, c in zip(origin, crop, strict=True))].read()
                for origin in origins[i : i + batch]
            ]
            _touch(torch.from_numpy(np.stack([f.result() for f in futures])))
        out.append({"epoch": epoch, "seconds": time.perf_counter() - start, "hit_rate": None})
    return out


def run_copy_bound(decoded: np.ndarray, array, crop, n, batch, threads, epochs) -> list[dict]:
    """The same crops copied out of the decoded array in memory, a batch's crops split over
    ``threads`` threads (numpy copies without the GIL)."""
    out = []
    with ThreadPoolExecutor(threads) as pool:
        for epoch in range(epochs):
            origins = origins_of(array, crop, n, epoch)
            start = time.perf_counter()
            for i in range(0, n, batch):
                group = origins[i : i + batch]
                tensor = torch.empty((len(group), *crop), dtype=torch.from_numpy(decoded[:0]).dtype)
                target = tensor.numpy()

                def copy(j: int, group=group, target=target) -> None:
                    region = tuple(slice(o, o + c) for o, c in zip(group[j], crop, strict=True))
                    target[j] = decoded[region]

                list(pool.map(copy, range(len(group))))
                _touch(tensor)
            out.append({"epoch": epoch, "seconds": time.perf_counter() - start, "hit_rate": None})
    return out


def rates(rows: Sequence[dict], n: int) -> tuple[float, float]:
    """Crops/s of the first epoch, and the mean over the later ones."""
    first = n / rows[0]["seconds"]
    later = [n / r["seconds"] for r in rows[1:]] or [first]
    return first, float(np.mean(later))


def measure_cache(args, name: str, path: Path) -> dict:
    array = _lsio_torch.Array(str(path))
    crop = tuple(args.crop) if args.crop else args.default_crop
    itemsize = np.dtype(array.dtype).itemsize
    dataset_bytes = math.prod(array.shape) * itemsize
    chunk_bytes = math.prod(array.chunk_shape) * itemsize
    sizes = parse_sizes(args.cache_bytes, dataset_bytes)
    policies = args.cache_policy.split(",")
    systems = args.systems.split(",")
    n, epochs, threads = args.n, args.epochs or 4, args.threads
    print(
        f"\n{name}: {path} {tuple(array.shape)} {array.dtype}, chunks {tuple(array.chunk_shape)}, "
        f"decoded {dataset_bytes / 2**20:.0f} MiB; crop {crop}, batch {args.batch}, {n} crops "
        f"an epoch, {epochs} epochs, {threads} threads",
        file=sys.stderr,
    )
    runs = []

    def record(system: str, policy: str | None, size: int, rows: list[dict]) -> None:
        first, later = rates(rows, n)
        measured = [r["hit_rate"] for r in rows[1:] if r["hit_rate"] is not None]
        capacity = size // chunk_bytes
        predicted = che = None
        if system == "lsio_torch" and size:
            predicted = policy_hit_rate(array, crop, n, args.batch, epochs, size, policy)
            che = predicted_hit_rate(array.shape, array.chunk_shape, crop, args.batch, capacity)
        runs.append(
            {
                "system": system,
                "policy": policy,
                "cache_bytes": size,
                "cache_share": size / dataset_bytes,
                "epoch_rates": [n / r["seconds"] for r in rows],
                "first_epoch": first,
                "later_epochs": later,
                "hit_rate": float(np.mean(measured)) if measured else None,
                "predicted_hit_rate": predicted,
                "che_lru_hit_rate": che,
            }
        )
        hit = f", hit rate {runs[-1]['hit_rate']:.3f}" if measured else ""
        sys.stderr.write(
            f"  {system} {policy or ''} cache {size / 2**20:.0f} MiB: epoch 1 {first:,.0f} "
            f"crops/s, later {later:,.0f}{hit}\n"
        )

    if "lsio" in systems:
        for size in sizes:
            for policy in policies if size else [policies[0]]:
                rows = run_lsio(path, crop, n, args.batch, threads, epochs, size, policy)
                record("lsio_torch", policy if size else None, size, rows)
    if "tensorstore" in systems:
        try:
            import tensorstore  # noqa: F401
        except ImportError:
            runs.append({"system": "tensorstore", "missing": "not installed"})
        else:
            for size in sizes:
                rows = run_tensorstore(path, array, crop, n, args.batch, threads, epochs, size)
                record("tensorstore", None, size, rows)
    if "copy" in systems:
        import zarr

        decoded = zarr.open_array(str(path), mode="r")[...]
        rows = run_copy_bound(decoded, array, crop, n, args.batch, threads, epochs)
        del decoded
        record("copy bound", None, 0, rows)
    return {"data": name, "dataset_bytes": dataset_bytes, "runs": runs}


def table(report: dict) -> str:
    runs = report["runs"]
    none = next(
        (r for r in runs if r.get("system") == "lsio_torch" and r["cache_bytes"] == 0), None
    )
    bound = next((r for r in runs if r.get("system") == "copy bound"), None)
    lines = [
        f"### {report['data']} (decoded {report['dataset_bytes'] / 2**20:.0f} MiB)",
        "| system | policy | cache | epoch 1 crops/s | epochs 2+ crops/s | each epoch | "
        "vs no cache | vs copy bound | hit rate | the policy alone | Che (LRU) |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        if "missing" in r:
            lines.append(f"| {r['system']} | | | - | - | {r['missing']} | | | | | |")
            continue
        share = f"{r['cache_share']:.0%}" if r["cache_bytes"] else "none"
        vs_none = f"{r['later_epochs'] / none['later_epochs']:.2f}" if none else "-"
        vs_bound = f"{r['later_epochs'] / bound['later_epochs']:.2f}" if bound else "-"
        hit = "-" if r["hit_rate"] is None else f"{r['hit_rate']:.3f}"
        predicted = "-" if r["predicted_hit_rate"] is None else f"{r['predicted_hit_rate']:.3f}"
        che = "-" if r["che_lru_hit_rate"] is None else f"{r['che_lru_hit_rate']:.3f}"
        each = " ".join(f"{x:,.0f}" for x in r["epoch_rates"])
        lines.append(
            f"| {r['system']} | {r['policy'] or ''} | {share} | {r['first_epoch']:,.0f} | "
            f"{r['later_epochs']:,.0f} | {each} | {vs_none} | {vs_bound} | {hit} | {predicted} "
            f"| {che} |"
        )
    return "\n".join(lines)
