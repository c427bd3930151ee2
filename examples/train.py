"""Trains a small nowcasting CNN on random crops of the demo satellite array.

Each crop is 4 frames of 128x128 pixels; the model sees the first 3 and predicts the 4th.
Batches come from `ZarrCropDataset` through a plain `DataLoader` (num_workers=0: the Rust
engine is already parallel) and are pinned when CUDA is present.

    python -m lsio_torch.demo        # once: writes data/demo-sat.zarr
    python examples/train.py [--steps 300] [--batch 16] [--data data/demo-sat.zarr]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from lsio_torch import ZarrCropDataset, io_backend
from lsio_torch.demo import DEFAULT_PATH, ensure_demo


def model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 1, 3, padding=1),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=128)
    args = parser.parse_args()

    if args.data == DEFAULT_PATH:
        ensure_demo(args.data)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ds = ZarrCropDataset(
        args.data,
        crop=(4, args.crop, args.crop),
        batch_size=args.batch,
        samples_per_epoch=args.steps * args.batch,
        seed=0,
        dtype=torch.float32,  # cast and normalised by the engine, in the same pass as the copy
        mean=8000.0,  # the demo's brightness scale
        std=2000.0,
    )
    print(ds)
    print(f"device {device}, I/O backend {io_backend()}")
    loader = torch.utils.data.DataLoader(ds, batch_size=None)
    net = model().to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)

    waited = 0.0
    delivered = 0
    start = time.perf_counter()
    asked = time.perf_counter()
    for step, batch in enumerate(loader):
        waited += time.perf_counter() - asked
        delivered += batch.nbytes
        x = batch.to(device, non_blocking=True)
        prediction = net(x[:, :3])
        loss = nn.functional.mse_loss(prediction, x[:, 3:4])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")
        asked = time.perf_counter()
    elapsed = time.perf_counter() - start
    steps = len(ds)
    print(
        f"{steps} steps in {elapsed:.1f} s: {steps / elapsed:.1f} batches/s, "
        f"{delivered / elapsed / 1e6:.1f} MB/s of crops, "
        f"{100 * waited / elapsed:.0f}% of the time waiting for data"
    )
    print(f"engine: {ds.stats()}")


if __name__ == "__main__":
    main()
