"""ZarrCropDataset inside real training setups: DataLoader workers under every start method,
torch.distributed ranks, checkpoint and resume, errors raised inside workers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.multiprocessing
from support import check_crops, gloo_group, junk_head, write_array
from torch.utils.data import DataLoader

import lsio_torch

CROP = (2, 9, 7)
EPOCH = dict(batch_size=4, samples_per_epoch=30, seed=5)  # 8 batches, the last one of 2 crops


def origins_of(loader) -> list[tuple[int, ...]]:
    return [tuple(o) for _, origins in loader for o in origins.tolist()]


def single_process_epoch(path, epoch: int = 0) -> list[tuple[int, ...]]:
    ds = lsio_torch.ZarrCropDataset(path, CROP, return_origins=True, **EPOCH)
    ds.set_epoch(epoch)
    return origins_of(ds)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
@pytest.mark.parametrize("workers", [0, 2, 3])
def test_workers_share_the_epoch_exactly(arrays, method, workers):
    written = arrays[("shard-index-end", "int16")]
    expected = single_process_epoch(written.path, epoch=1)
    assert len(set(expected)) > 20  # random origins, not one repeated
    ds = lsio_torch.ZarrCropDataset(written.path, CROP, return_origins=True, **EPOCH)
    ds.set_epoch(1)
    loader = DataLoader(
        ds,
        batch_size=None,
        num_workers=workers,
        multiprocessing_context=method if workers else None,
    )
    got, batches = [], 0
    for batch, origins in loader:
        batches += 1
        got.extend(tuple(origin) for origin in origins.tolist())
        check_crops(batch, origins.tolist(), written.values, CROP)
    assert batches == len(ds) == 8
    # Each sample exactly once, and in the single process's order: workers take batches in
    # turn and the DataLoader yields them in turn.
    assert got == expected


def _ddp_main(rank: int, world: int, path: str, rendezvous: str, out: str, drop_last: bool):
    with gloo_group(rank, world, rendezvous):
        # 52 samples in batches of 4: 13 batches, which do not divide between 2 ranks.
        ds = lsio_torch.ZarrCropDataset(
            path, CROP, batch_size=4, samples_per_epoch=52, seed=5, return_origins=True,
            dtype=torch.float32, drop_last=drop_last,
        )  # fmt: skip
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(CROP[-1], 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        loader = DataLoader(ds, batch_size=None, num_workers=rank)
        seen = []
        for batch, origins in loader:  # a step per batch: DDP needs as many on every rank
            optimizer.zero_grad()
            model(batch).mean().backward()
            optimizer.step()
            seen.append(origins.tolist())
        del model, optimizer  # DDP's reducer holds the group: gone before the group is
        with open(f"{out}.{rank}", "w") as f:
            json.dump({"len": len(ds), "batches": seen}, f)


@pytest.mark.parametrize("drop_last", [False, True])
def test_an_uneven_epoch_runs_as_many_ddp_steps_on_every_rank(arrays, tmp_path, drop_last):
    written = arrays[("shard-index-start", "float32")]
    out = tmp_path / "origins"
    args = (2, str(written.path), str(tmp_path / "rendezvous"), str(out), drop_last)
    torch.multiprocessing.spawn(_ddp_main, args=args, nprocs=2, join=True)
    ranks = [json.loads(out.with_suffix(f".{r}").read_text()) for r in (0, 1)]
    ds = lsio_torch.ZarrCropDataset(
        written.path, CROP, batch_size=4, samples_per_epoch=52, seed=5, return_origins=True
    )
    whole = [origins.tolist() for _, origins in ds]
    assert len(whole) == 13
    steps = 6 if drop_last else 7
    for seen in ranks:
        assert seen["len"] == len(seen["batches"]) == steps
    assert ranks[0]["batches"] == whole[0 : 2 * steps : 2]
    # Rank 1's share of 13 batches is 6: padded with the epoch's first batch, or both cut to 6.
    pad = [] if drop_last else [whole[0]]
    assert ranks[1]["batches"] == whole[1:12:2] + pad


def _rank_main(rank: int, world: int, path: str, rendezvous: str, out: str) -> None:
    with gloo_group(rank, world, rendezvous):
        ds = lsio_torch.ZarrCropDataset(path, CROP, return_origins=True, **EPOCH)
        # spawn: the workers have no process group; the rank travels with the dataset.
        loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn")
        assert len(loader) == 4  # this rank's half of the 8 batches
        with open(f"{out}.{rank}", "w") as f:
            json.dump(origins_of(loader), f)


def test_distributed_ranks_with_workers_share_the_epoch(arrays, tmp_path):
    written = arrays[("shard-index-start", "float32")]
    out = tmp_path / "origins"
    torch.multiprocessing.spawn(
        _rank_main,
        args=(2, str(written.path), str(tmp_path / "rendezvous"), str(out)),
        nprocs=2,
        join=True,
    )
    ranks = [[tuple(o) for o in json.loads(out.with_suffix(f".{r}").read_text())] for r in (0, 1)]
    expected = single_process_epoch(written.path)
    assert len(ranks[0]) + len(ranks[1]) == len(expected) == 30
    assert not set(ranks[0]) & set(ranks[1])
    # The ranks take batches in turn, each yielding its own in order.
    batches = [expected[i : i + 4] for i in range(0, 30, 4)]
    assert ranks[0] == [o for b in batches[0::2] for o in b]
    assert ranks[1] == [o for b in batches[1::2] for o in b]


def test_explicit_rank_and_world_size_without_a_process_group(arrays):
    written = arrays[("unsharded", "uint8")]
    expected = single_process_epoch(written.path)
    parts = []
    for rank in range(3):
        ds = lsio_torch.ZarrCropDataset(
            written.path, CROP, return_origins=True, rank=rank, world_size=3, **EPOCH
        )
        parts.append(origins_of(DataLoader(ds, batch_size=None, num_workers=2)))
        assert len(ds) == 3  # 8 batches over 3 ranks: rank 2's third is the epoch's first again
    assert parts[2][-4:] == expected[:4]
    assert sorted(o for part in parts for o in part) == sorted(expected + expected[:4])
    with pytest.raises(ValueError, match="rank 3 is not in range"):
        next(iter(lsio_torch.ZarrCropDataset(written.path, CROP, rank=3, world_size=3)))


RESUME_SCRIPT = """
import sys, torch
from torch.utils.data import DataLoader
import lsio_torch

mode, path, phase, state_file, out_file, k = sys.argv[1:]
k = int(k)
ds = lsio_torch.ZarrCropDataset(path, (2, 9, 7), batch_size=4, samples_per_epoch=30, seed=5,
                                 dtype=torch.float32, mean=3.0, std=2.0)
workers = 0 if mode == "single" else 2
if mode == "stateful":
    from torchdata.stateful_dataloader import StatefulDataLoader
    loader = StatefulDataLoader(ds, batch_size=None, num_workers=workers)
else:
    loader = DataLoader(ds, batch_size=None, num_workers=workers)
ds.set_epoch(2)
if phase == "first":
    batches = []
    for i, batch in enumerate(loader):
        batches.append(batch)
        if i + 1 == k:
            break
    if mode == "stateful":
        state = loader.state_dict()
    elif mode == "single":
        state = ds.state_dict()
    else:  # plain DataLoader with workers: the training loop knows how many batches it took
        state = {"epoch": 2, "batch": k}
    torch.save(state, state_file)
else:
    state = torch.load(state_file, weights_only=False)
    if mode == "stateful":
        loader.load_state_dict(state)
    else:
        ds.load_state_dict(state)
    batches = list(loader)
torch.save(batches, out_file)
"""


@pytest.mark.parametrize("mode", ["single", "workers", "stateful"])
def test_resume_in_a_new_process_yields_the_rest_of_the_epoch(arrays, tmp_path, mode):
    if mode == "stateful":
        pytest.importorskip("torchdata.stateful_dataloader", reason="torchdata is not installed")
    written = arrays[("shard-index-end", "uint16")]
    script = tmp_path / "resume.py"
    script.write_text(textwrap.dedent(RESUME_SCRIPT))
    state, k = tmp_path / "state.pt", 3

    def run(phase: str, out: str) -> list[torch.Tensor]:
        args = [mode, str(written.path), phase, str(state), str(tmp_path / out), str(k)]
        subprocess.run([sys.executable, str(script), *args], check=True, timeout=300)
        return torch.load(tmp_path / out)

    first = run("first", "first.pt")
    rest = run("rest", "rest.pt")
    ds = lsio_torch.ZarrCropDataset(
        written.path, CROP, dtype=torch.float32, mean=3.0, std=2.0, **EPOCH
    )
    ds.set_epoch(2)
    whole = list(ds)
    assert len(first) == k and len(whole) == 8
    assert len(rest) == len(whole) - k
    for got, want in zip(first + rest, whole, strict=True):
        assert torch.equal(got, want)


def test_state_dict_tracks_the_position_and_refuses_another_dataset(arrays):
    written = arrays[("unsharded", "int32")]
    ds = lsio_torch.ZarrCropDataset(written.path, CROP, **EPOCH)
    it = iter(ds)
    next(it), next(it)
    state = ds.state_dict()
    assert (state["epoch"], state["batch"]) == (0, 2)
    rest = list(it)
    again = lsio_torch.ZarrCropDataset(written.path, CROP, **EPOCH)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(again, rest, strict=True))
    # The resumed position is used once: the next pass is the whole epoch again.
    assert len(list(again)) == 8
    other = lsio_torch.ZarrCropDataset(
        written.path, CROP, batch_size=5, samples_per_epoch=30, seed=5
    )
    with pytest.raises(ValueError, match="batch_size=4"):
        other.load_state_dict(state)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_rust_error_in_a_worker_reaches_the_main_process_intact(tmp_path, method):
    written = write_array(tmp_path / "a.zarr", "unsharded", "int16")
    chunk = str(junk_head(written.path / "c" / "0" / "0" / "0", 8))  # not a zstd frame
    ds = lsio_torch.ZarrCropDataset(
        written.path, (4, 16, 10), origins=[(0, 0, 0)] * 8, batch_size=2
    )
    with pytest.raises(lsio_torch.LsioError) as in_process:
        next(iter(ds))
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=method)
    with pytest.raises(lsio_torch.LsioError) as from_worker:
        list(loader)
    message = str(in_process.value)
    assert chunk in message and "chunk [0, 0, 0]" in message
    assert message in str(from_worker.value)
