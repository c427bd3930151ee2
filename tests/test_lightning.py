"""lsio_torch.lightning under a real Trainer: 2 CPU ranks (gloo), ddp and ddp_spawn, 0 and 2
workers: every epoch new, the ranks in step, and a run resumed mid-epoch or from an epoch's
end yielding exactly the uninterrupted run's tail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import write_array

import lsio_torch

pytest.importorskip("lightning", reason="lightning is not installed")

CROP = (2, 9, 7)
DATASET = dict(batch_size=4, samples_per_epoch=52, seed=5, return_origins=True)
SCRIPT = Path(__file__).with_name("lightning_script.py")
STEPS = 7  # a rank's batches of an epoch: 13 over 2 ranks, padded


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lightning")
    return write_array(folder / "a.zarr", "shard-index-end", "int16").path


@pytest.fixture(scope="module")
def ranks_epochs(path):
    """What each rank's steps must see in epochs 0..2: its padded share, from one process."""
    ds = lsio_torch.ZarrCropDataset(path, CROP, **DATASET)
    out = {}
    for rank in (0, 1):
        rows = []
        for e in range(3):
            ds.set_epoch(e)
            batches = [origins.flatten().tolist() for _, origins in ds]
            mine = [batches[(p * 2 + rank) % 13] for p in range(STEPS)]
            rows += [[e, *b] for b in mine]
        out[rank] = rows
    return out


def train(path, out: Path, strategy: str, workers: int, checkpoint: Path | None = None):
    args = [sys.executable, str(SCRIPT), str(path), str(out), strategy, str(workers)]
    if checkpoint is not None:
        args.append(str(checkpoint))
    subprocess.run(args, check=True, timeout=600, cwd=out)
    return {r: json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)}


@pytest.fixture(
    scope="module", params=[("ddp_spawn", 0), ("ddp", 2)], ids=lambda p: f"{p[0]}-{p[1]}w"
)
def uninterrupted(request, path, tmp_path_factory):
    strategy, workers = request.param
    out = tmp_path_factory.mktemp(f"{strategy}{workers}")
    return strategy, workers, out, train(path, out, strategy, workers)


def test_three_epochs_each_new_the_ranks_in_step(uninterrupted, ranks_epochs):
    _, _, _, seen = uninterrupted
    for rank in (0, 1):
        assert len(seen[rank]) == 3 * STEPS
        assert seen[rank] == ranks_epochs[rank], rank
    assert seen[0][:STEPS] != seen[0][STEPS : 2 * STEPS]  # epoch 1 is not epoch 0 again


@pytest.mark.parametrize(
    ("checkpoint", "step"),
    [("epoch=1-step=10.ckpt", 10), ("epoch=0-step=7.ckpt", 7)],
    ids=["mid-epoch", "epoch-end"],
)
def test_a_resumed_run_yields_the_uninterrupted_tail(
    uninterrupted, path, tmp_path, checkpoint, step
):
    strategy, workers, first, seen = uninterrupted
    resumed = train(path, tmp_path, strategy, workers, first / "checkpoints" / checkpoint)
    for rank in (0, 1):
        assert resumed[rank] == seen[rank][step:], rank


def test_validation_reads_epoch_0_every_time_and_is_left_out_without_a_dataset(path):
    from lightning.pytorch.utilities.model_helpers import is_overridden

    from lsio_torch.lightning import ZarrDataModule

    train = lsio_torch.ZarrCropDataset(path, CROP, **DATASET)
    val = lsio_torch.ZarrCropDataset(path, CROP, **{**DATASET, "samples_per_epoch": 12})
    val.set_epoch(0)
    epoch0 = [origins.tolist() for _, origins in val]
    dm = ZarrDataModule(train, val=val, num_workers=2, multiprocessing_context="fork")
    assert is_overridden("val_dataloader", dm)
    loader = dm.val_dataloader()
    assert [[o.tolist() for _, o in loader] for _ in range(2)] == [epoch0, epoch0]
    assert not is_overridden("val_dataloader", ZarrDataModule(train))
    with pytest.raises(ValueError, match="samples_per_epoch"):
        ZarrDataModule(lsio_torch.ZarrCropDataset(path, CROP))
